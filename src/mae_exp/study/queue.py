"""`study queue`: one DVC experiment per seed and ablation, named `s<seed>-<ablation>`, each run by DVC's
public command `dvc exp run --temp` (in a temporary copy of the repository: the workspace is left alone),
N at a time, each one's output in scratch/study/<name>.log.

Why child processes rather than DVC's queue (`dvc exp run --queue` + `dvc queue start`): what that queue
is doing can be read only through DVC's private Python (`celery_queue`) or by parsing `dvc queue status`,
and its workers stop when they find it empty. A child process says all of it: its exit status whether the
experiment succeeded, its output the log, and Ctrl-C stops it. `--no-start` still hands the experiments
to DVC's queue, to run them unattended with `dvc queue start`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from . import StudyError, dvc_command, out
from .design import design_of
from .jobs import Job, sigint_default
from .results import (
    arm_overrides,
    arms,
    collect_runs,
    distinct_ablations,
    experiment_rows,
    load_study,
    merged,
    saved_rows,
)
from .slurm import job_states, submit

LOGS = Path("scratch/study")  # one log per experiment, overwritten by its next run (scratch/: git-ignored)
# DVC's words for a lock another `dvc exp run` holds: the repository's (while it copies the workspace) or
# an experiments lock (`... is busy`). Not the experiment's failure: it is run again, up to LOCK_TRIES times.
LOCK_BUSY = ("Unable to acquire lock", "is busy, it is being blocked by")
LOCK_TRIES = 3


def plan(params, seeds: list[int] | None, ablations: list[str] | None, budgets: list[int] | None = None) -> list[Job]:
    """One experiment per seed and arm (ablation x budget), ablation by ablation, budget by budget. The first
    ablation gives every seed its baseline branch; the others get it from DVC's run-cache instead of training
    it again (with -j N, `startable` holds them until it has). And a study cut short has every seed of the
    first arms rather than every arm of the first seeds (`--seeds S` one at a time: whole seeds)."""
    design = design_of(params)
    known = design.ablations
    distinct_ablations(params)
    for a in ablations or []:
        if a not in known:
            raise StudyError(f"unknown ablation {a!r}; study.ablations in params.yaml has: {', '.join(known)}")
    for b in budgets or []:
        if b not in design.budgets:
            raise StudyError(
                f"unknown budget {b}; study.budgets in params.yaml has: {', '.join(map(str, design.budgets))}"
            )
    jobs = []
    for name, arm in arms(params).items():
        if (ablations and arm.ablation not in ablations) or (budgets and arm.budget not in budgets):
            continue
        for seed in seeds or design.seeds:
            overrides = (f"seed={seed}", *arm_overrides(params, name))
            jobs.append(Job(f"s{seed}-{name}", seed, name, overrides, arm.budget))
    return jobs


def default_jobs() -> int:
    """Experiments at once when `-j` is not given: on a CPU of 2 or more cores, 2 (each with half the cores:
    `child_threads`), which finished the study's stages on photos10 1.13-1.44x sooner than one at a time
    with every core on the 2-core development machine (benchmarks/queue_threads.py, docs/study.md); where
    there are GPUs, 1 (give `-j` to split them)."""
    return 1 if gpu_slots(1) is not None else min(2, os.cpu_count() or 1)


def child_threads(params, jobs: int) -> tuple[str, ...]:
    """The `threads=N` override that shares a CPU's cores among `jobs` experiments: params.yaml's `threads: 0`
    means every core, and two children each taking every core run slower than one (oversubscribed). Nothing
    where params.yaml fixes threads, where one job runs, or on GPUs. `threads` re-runs no stage and is no
    part of an arm's params (results.identify leaves it out)."""
    if params.threads or jobs <= 1 or gpu_slots(1) is not None:
        return ()
    return (f"threads={max(1, (os.cpu_count() or 1) // jobs)}",)


def startable(job: Job, waiting: list[Job], running: set[str], first: dict[tuple[int, int], str]) -> bool:
    """Whether `job` may start now: the first job of its seed and budget trains the branches that every other
    arm of that seed and budget takes from DVC's run-cache (the baseline, the random encoder, the full
    tested recipe), so those wait until it has finished, rather than train the same branch side by side."""
    head = first[(job.seed, job.budget)]
    return job.name == head or (head not in running and all(w.name != head for w in waiting))


# --------------------------------------------------------------------------- DVC's commands


def exp_run(job: Job, names_here: set[str], mode: str) -> list[str]:
    """`dvc exp run --temp` (mode "--temp") or `--queue` of one job; it waits for the repository's lock
    rather than failing at once when another experiment is being set up."""
    args = [
        dvc_command(),
        "--wait-for-lock",
        "exp",
        "run",
        mode,
        "-n",
        job.name,
        *(a for o in job.overrides for a in ("-S", o)),
    ]
    return args + (["-f"] if job.name in names_here else [])  # DVC refuses a name done on this commit


def experiment_names() -> set[str]:
    """Names of the experiments on the current commit (`dvc exp ls --name-only`)."""
    proc = subprocess.run([dvc_command(), "exp", "ls", "--name-only"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise StudyError(
            f"`dvc exp ls --name-only` failed (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()}"
        )
    return set(proc.stdout.split())


def finished_cells(current, study_raw: dict) -> dict[tuple[int, str], str]:
    """(seed, ablation) -> name of a finished experiment that the report would use, on any commit or saved
    by an earlier report (results.SAVED)."""
    runs, _ = collect_runs(merged(experiment_rows(), saved_rows()), study_raw, current)
    return {(int(r["seed"]), r["ablation"]): r["name"] for r in runs.to_dict("records")}


def lock_busy(log: Path, start: int) -> bool:
    """Whether the attempt logged from byte `start` on failed on a lock another DVC process held."""
    with log.open("rb") as f:
        f.seek(start)
        text = f.read().decode(errors="replace")
    return any(words in text for words in LOCK_BUSY)


def last_error(log: Path) -> str:
    """The last `ERROR:` line DVC wrote to a log, for the failure's one line."""
    lines = [s for s in log.read_text(errors="replace").splitlines() if s.startswith("ERROR")] if log.is_file() else []
    return f": {lines[-1][:200]}" if lines else ""


# --------------------------------------------------------------------------- the command


def queue(
    seeds=None,
    ablations=None,
    jobs: int | None = None,
    start: bool = True,
    force: bool = False,
    poll_s: float = 2.0,
    slurm=None,
    budgets=None,
) -> int:
    """`slurm` (study.slurm.SlurmOptions): submit the experiments as SLURM jobs instead of running them here;
    `budgets`: only these of study.budgets; `jobs`: experiments at once (default_jobs() if None)."""
    params, study_raw = load_study("params.yaml")
    todo = plan(params, seeds, ablations, budgets)
    jobs = jobs or default_jobs()
    done = finished_cells(params, study_raw)  # by params, on any commit: a commit in between loses nothing
    if slurm is not None:  # jobs that pushed elsewhere (`dvc exp pull` brings them here) said so themselves
        base = slurm.dir if slurm.dir.is_absolute() else Path.cwd() / slurm.dir
        finished = {name for name, s in job_states(base).items() if s["state"] == "done"}
        done.update({(j.seed, j.ablation): j.name for j in todo if j.name in finished})
    waiting = []
    for job in todo:
        if (job.seed, job.ablation) in done and not force:
            out.print(f"{job.name}: already done ({done[job.seed, job.ablation]}), skipped (--force runs it again)")
        else:
            waiting.append(job)
    if not waiting:
        out.print("nothing new to run; `python -m mae_exp.study report` reads what is there")
        return 0
    if slurm is not None:
        return submit(waiting, slurm, force)
    names_here = experiment_names()
    threads = child_threads(params, jobs if start else 1)
    waiting = [job._replace(overrides=job.overrides + threads) for job in waiting]
    if not start:
        for job in waiting:
            proc = subprocess.run(exp_run(job, names_here, "--queue"), capture_output=True, text=True)
            if proc.returncode != 0:
                raise StudyError(
                    f"`dvc exp run --queue -n {job.name}` failed (exit {proc.returncode}): "
                    f"{(proc.stderr or proc.stdout).strip()}"
                )
            out.print(f"{job.name}: queued ({' '.join(job.overrides)})")
        out.print(
            f"{len(waiting)} experiment(s) in DVC's queue: `dvc queue start -j N` runs them, "
            "`dvc queue status` and `dvc queue logs NAME` follow them"
        )
        return 0
    each = f", {threads[0].replace('=', ' ')} each" if threads else ""
    out.print(f"{len(waiting)} to run with `dvc exp run --temp`, {jobs} at a time{each}; logs in {LOGS}/")
    return run(waiting, jobs, poll_s, names_here)


def gpu_slots(jobs: int) -> list[str] | None:
    """The GPUs of this machine split among `jobs` children, one CUDA_VISIBLE_DEVICES value each (the
    parent's CUDA_VISIBLE_DEVICES, else every GPU torch sees); None without GPUs. More children than GPUs:
    each gets one, shared round-robin."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        import torch

        gpus = [str(i) for i in range(torch.cuda.device_count())]
    else:
        gpus = [g.strip() for g in visible.split(",") if g.strip()]
    if not gpus:
        return None
    if jobs > len(gpus):
        out.print(f"-j {jobs} on {len(gpus)} GPU(s): experiments share GPUs")
        return [gpus[i % len(gpus)] for i in range(jobs)]
    per = len(gpus) // jobs
    return [",".join(gpus[i * per : (i + 1) * per]) for i in range(jobs)]


def run(waiting: list[Job], jobs: int, poll_s: float, names_here: set[str], logs: Path = LOGS, command=exp_run) -> int:
    """Run the jobs, `jobs` at a time, each `dvc exp run --temp` in its own process group (so that Ctrl-C
    reaches this process only, which then stops each experiment once and waits for DVC to clean up), each
    on its own GPU(s) (CUDA_VISIBLE_DEVICES) where there are GPUs; a progress bar and a line per change of
    state. `command(job, names_here, mode)`: the child's command line."""
    from ..plumbing.progress import progress

    logs.mkdir(parents=True, exist_ok=True)
    slots = gpu_slots(jobs)
    free = list(range(jobs))  # slot index of each child that may start
    slot_of: dict[str, int] = {}
    waiting, total, started = list(waiting), len(waiting), time.monotonic()
    first: dict[tuple[int, int], str] = {}
    for job in waiting:
        first.setdefault((job.seed, job.budget), job.name)
    running: dict[str, tuple[Job, subprocess.Popen]] = {}
    failed: dict[str, int] = {}  # name -> exit status
    tries: dict[str, int] = {}
    log_start: dict[str, int] = {}  # where the current attempt's lines begin in the log
    try:
        with progress(running="") as bar:
            task = bar.add_task("experiments", total=total, running="")
            while waiting or running:
                while len(running) < jobs:
                    ready = [j for j in waiting if startable(j, waiting, set(running), first)]
                    if not ready:
                        break
                    job = ready[0]
                    waiting.remove(job)
                    tries[job.name] = tries.get(job.name, 0) + 1
                    slot_of[job.name] = free.pop(0)
                    child_env = (
                        None if slots is None else {**os.environ, "CUDA_VISIBLE_DEVICES": slots[slot_of[job.name]]}
                    )
                    with (logs / f"{job.name}.log").open("w" if tries[job.name] == 1 else "a") as log:
                        log_start[job.name] = log.tell()
                        running[job.name] = (
                            job,
                            subprocess.Popen(
                                command(job, names_here, "--temp"),
                                stdin=subprocess.DEVNULL,
                                stdout=log,
                                stderr=subprocess.STDOUT,
                                start_new_session=True,
                                preexec_fn=sigint_default,
                                env=child_env,
                            ),
                        )
                    on_gpus = "" if slots is None else f" on GPU {slots[slot_of[job.name]]}"
                    bar.console.print(f"{time.strftime('%H:%M:%S')} {job.name}: running{on_gpus}")
                for name, (job, proc) in list(running.items()):
                    if proc.poll() is None:
                        continue
                    del running[name]
                    free.append(slot_of.pop(name))
                    if (
                        proc.returncode
                        and tries[name] < LOCK_TRIES
                        and lock_busy(logs / f"{name}.log", log_start[name])
                    ):
                        waiting.insert(0, job)
                        bar.console.print(f"{time.strftime('%H:%M:%S')} {name}: DVC's lock was busy, run again")
                        continue
                    if proc.returncode:
                        failed[name] = proc.returncode
                    state = f"failed (exit {proc.returncode})" if proc.returncode else "success"
                    bar.console.print(f"{time.strftime('%H:%M:%S')} {name}: {state}")
                bar.update(
                    task,
                    completed=total - len(waiting) - len(running),
                    running=f"{', '.join(running) or '-'} (failed: {len(failed)})",
                )
                if running:
                    time.sleep(poll_s)
    except KeyboardInterrupt:
        stop(running)
        out.print(
            f"stopped; interrupted: {', '.join(running) or 'none'}. The same command runs what is not "
            "done (the stages an interrupted experiment finished come from DVC's run-cache); "
            "`python -m mae_exp.study report` reads what is done"
        )
        return 130
    minutes = (time.monotonic() - started) / 60
    out.print(f"{total - len(failed)} of {total} experiments succeeded in {minutes:.1f} min")
    for name, status in failed.items():
        out.print(
            f"[bold red]failed:[/] {name} (exit {status}): see {logs / name}.log{last_error(logs / f'{name}.log')}"
        )
    return 1 if failed else 0


def stop(running: dict, grace_s: float = 60.0) -> None:
    """SIGINT to each experiment's process group (DVC and the stage it runs: the stage stops, DVC removes
    its temporary copy), then SIGKILL to what is left after `grace_s`."""
    procs = [proc for _, proc in running.values()]
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
    deadline = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
