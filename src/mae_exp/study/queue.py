"""`study queue`: one DVC experiment per seed and ablation, named `s<seed>-<ablation>`, run through DVC's
queue N at a time (and one waiting), and waited for.

What it reads comes from DVC's Python side: the experiments (results.experiment_rows, `dvc.api.exp_show`),
the queue's tasks and workers (`Repo.experiments.celery_queue.status()` and `.worker_status()`, what
`dvc queue status` prints), the experiment names on this commit (`Repo.experiments.ls()`, `dvc exp ls`).
Two things stay `dvc` commands:
- `dvc exp run --queue`: dvc.api has no way to queue an experiment; the command is DVC's supported one,
  the same a user would type, and it parses `-S key=value` overrides exactly as documented.
- `dvc queue start -j N`: dvc.api has none either, and the Python-side `celery_queue.start_workers` forks
  the calling process to detach each worker; from here that fork would copy this process (its progress-bar
  thread, its signal handlers), while the command does it from a short-lived process of its own.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

from . import StudyError, out
from .results import arm_overrides, collect_runs, distinct_ablations, experiment_rows, load_study

TERMINAL = {"Success", "Failed", "Removed"}  # "Removed": gone from the queue (dvc queue remove)


class Job(NamedTuple):
    name: str  # s<seed>-<ablation>
    seed: int
    ablation: str
    overrides: tuple[str, ...]  # for `dvc exp run -S`


def plan(params, seeds: list[int] | None, ablations: list[str] | None) -> list[Job]:
    """One experiment per seed and ablation, ablation by ablation. The first ablation gives every seed
    its original branch; the others get it from DVC's run-cache instead of training it again (with -j N,
    as long as N is at most the number of seeds). And a study cut short has every seed of the first
    ablations rather than every ablation of the first seeds."""
    known = params.study.ablations
    distinct_ablations(params)
    for a in ablations or []:
        if a not in known:
            raise StudyError(f"unknown ablation {a!r}; study.ablations in params.yaml has: {', '.join(known)}")
    jobs = []
    for a in ablations or known:
        for seed in seeds or params.study.seeds:
            overrides = (f"seed={seed}", *arm_overrides(params, a))
            jobs.append(Job(f"s{seed}-{a}", seed, a, overrides))
    return jobs


# --------------------------------------------------------------------------- DVC


def _dvc() -> str:
    here = Path(sys.executable).parent / "dvc"  # the dvc of this environment, else the one on PATH
    return str(here) if here.exists() else (shutil.which("dvc") or "dvc")


def queue_status(with_workers: bool = False, tries: int = 3):
    """task id -> (name, status) of every task in DVC's queue (and the number of workers, active or idle)."""
    from dvc.repo import Repo
    from kombu.exceptions import KombuError
    for attempt in range(1, tries + 1):
        try:
            with Repo() as repo:
                q = repo.experiments.celery_queue
                tasks = {e["rev"]: (e.get("name") or "", e["status"]) for e in q.status()}
                workers = len(q.worker_status()) if with_workers else 0
            return (tasks, workers) if with_workers else tasks
        except (ValueError, OSError, KombuError) as e:
            # DVC's queue is a folder of message files (kombu's file transport); reading one while a worker
            # writes it fails (an empty reply: JSONDecodeError). Seen once in the end-to-end test: read again.
            if attempt == tries:
                raise StudyError(f"could not read DVC's queue ({type(e).__name__}: {e}), {tries} tries; "
                                 "see `dvc queue status`; the same command resumes") from None
            time.sleep(1.0)


def experiment_names() -> set[str]:
    """Names of the finished experiments on the current commit: DVC refuses to queue one of these names
    again without -f."""
    from dvc.repo import Repo
    with Repo() as repo:
        return {name for exps in repo.experiments.ls().values() for name, _ in exps}


def finished_cells(current, study_raw: dict) -> dict[tuple[int, str], str]:
    """(seed, ablation) -> name of a finished experiment that the report would use, on any commit."""
    runs, _ = collect_runs(experiment_rows(), study_raw, current)
    return {(int(r["seed"]), r["ablation"]): r["name"] for r in runs.to_dict("records")}


def enqueue(job: Job, names_here: set[str]) -> str | None:
    """`dvc exp run --queue` one experiment; its task id (names can repeat in the queue, ids do not)."""
    before = set(queue_status())
    args = [_dvc(), "exp", "run", "--queue", "-n", job.name, *(a for o in job.overrides for a in ("-S", o))]
    args += ["-f"] if job.name in names_here else []  # DVC refuses a name done on this commit
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        raise StudyError(f"`dvc {' '.join(args[1:])}` failed (exit {proc.returncode}): "
                         f"{(proc.stderr or proc.stdout).strip()}")
    new = [t for t, (n, _) in queue_status().items() if t not in before and n == job.name]
    out.print(f"{job.name}: queued ({' '.join(job.overrides)})")
    return new[0] if new else None


def start_workers(jobs: int) -> None:
    # the worker it starts outlives it: no pipes, or waiting for their end would wait for the queue.
    # Not reliably idempotent: DVC starts the workers (1..N) it believes are not running, and its count
    # can read 0 while one runs; so `run` calls this only when queued experiments are not being taken up.
    proc = subprocess.run([_dvc(), "queue", "start", "-j", str(jobs)], stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise StudyError(f"`dvc queue start -j {jobs}` failed (exit {proc.returncode}): see `dvc queue status`")


# --------------------------------------------------------------------------- the command


def queue(seeds=None, ablations=None, jobs: int = 1, start: bool = True, force: bool = False,
          poll_s: float = 10.0) -> int:
    params, study_raw = load_study("params.yaml")
    todo = plan(params, seeds, ablations)
    done = finished_cells(params, study_raw)  # by params, on any commit: a commit in between loses nothing
    names_here = experiment_names()
    pending = {t: name for t, (name, status) in queue_status().items() if status in ("Queued", "Running")}
    mine: dict[str, str] = {}  # task id -> name
    waiting: list[Job] = []
    for job in todo:
        if job.name in pending.values():
            out.print(f"{job.name}: already queued or running, not queued again (waited for below)")
            mine.update({t: n for t, n in pending.items() if n == job.name})
        elif (job.seed, job.ablation) in done and not force:
            out.print(f"{job.name}: already done ({done[job.seed, job.ablation]}), skipped "
                      "(--force runs it again)")
        else:
            waiting.append(job)
    if not mine and not waiting:
        out.print("nothing new to run; `python -m mae_exp.study report` reads what is there")
        return 0
    if not start:
        for job in waiting:
            enqueue(job, names_here)
        out.print(f"{len(mine) + len(waiting)} experiment(s) in the queue; start it with `dvc queue start -j N`")
        return 0
    out.print(f"{len(waiting)} to run, {jobs} at a time (and one waiting in DVC's queue)")
    return run(mine, waiting, jobs, poll_s, names_here)


def run(mine: dict[str, str], waiting: list[Job], jobs: int, poll_s: float, names_here: set[str]) -> int:
    """Feed DVC's queue `jobs` experiments to run and one waiting behind them, and poll its status until
    every one has finished, with a progress bar and a line per change of state.

    Why not queue everything up front: then stopping this command stops the study (nothing is left
    queued to run unattended), and running it again resumes it. Entries removed by hand
    (`dvc queue remove`) are reported as not run."""
    from ..progress import progress
    waiting = list(waiting)
    total = len(mine) + len(waiting)
    started = no_worker_since = time.monotonic()
    status: dict[str, str] = {}
    seen = set(queue_status())  # older tasks of the same names are not ours
    workers_started, stalled_since = False, None
    try:
        with progress(running="") as bar:
            task = bar.add_task("experiments", total=total, running="")
            while True:
                tasks, workers = queue_status(with_workers=True)
                for t in [t for t in mine if t not in tasks]:
                    # DVC sometimes re-stashes a queued experiment under a new task id: follow it
                    new = [u for u, (n, _) in tasks.items() if n == mine[t] and u not in mine and u not in seen]
                    if new:
                        mine[new[0]] = mine.pop(t)
                        status[new[0]] = status.pop(t, None)
                seen |= set(tasks)
                now = {t: tasks.get(t, ("", "Removed"))[1] for t in mine}
                for t, s in now.items():  # a line per change, so a log file tells the story too
                    if status.get(t) != s:
                        bar.console.print(f"{time.strftime('%H:%M:%S')} {mine[t]}: {s.lower()}")
                status = now
                in_flight = sum(s in ("Queued", "Running") for s in status.values())
                # one more than the workers: DVC's worker stops when it finds the queue empty, and one that
                # stopped while the next experiment was being queued took it along, left "Running" forever
                if waiting and in_flight < jobs + 1:
                    while waiting and in_flight < jobs + 1:
                        job = waiting.pop(0)
                        t = enqueue(job, names_here)
                        if t:
                            mine[t] = job.name
                            seen.add(t)
                            in_flight += 1
                    continue  # poll again at once: the new tasks' state
                # Start workers only when queued experiments are not being taken up: DVC's worker count
                # (`dvc queue status`) showed none while one ran, and each `dvc queue start` then added one
                short = sum(s == "Running" for s in status.values()) < min(jobs, in_flight)
                stalled_since = (stalled_since or time.monotonic()) if short else None
                if short and (not workers_started or time.monotonic() - stalled_since > max(30.0, 3 * poll_s)):
                    start_workers(jobs)
                    workers_started, stalled_since = True, None
                    no_worker_since = time.monotonic()
                finished = sum(s in TERMINAL for s in status.values())
                failed = sum(s in ("Failed", "Removed") for s in status.values())
                running = [mine[t] for t, s in status.items() if s == "Running"]
                bar.update(task, completed=finished,
                           running=f"{', '.join(running) or '-'} (failed: {failed})")
                if finished == len(mine) and not waiting:
                    break
                if workers or running:  # the queue can show no worker while a task still runs
                    no_worker_since = time.monotonic()
                elif time.monotonic() - no_worker_since > max(60.0, 3 * poll_s):
                    raise StudyError(f"no queue worker is running but {total - finished} experiment(s) "
                                     "have not finished: `dvc queue status`; the same command resumes")
                time.sleep(poll_s)
    except KeyboardInterrupt:
        out.print("stopped; the experiments already in DVC's queue go on in the background "
                  "(`dvc queue status`); the same command queues the rest, "
                  "`python -m mae_exp.study report` reads what is done")
        return 130
    failed = [t for t, s in status.items() if s != "Success"]
    minutes = (time.monotonic() - started) / 60
    out.print(f"{len(mine) - len(failed)} of {len(mine)} experiments succeeded in {minutes:.1f} min")
    for t in failed:
        if status[t] == "Removed":
            out.print(f"[bold red]not run:[/] {mine[t]}: removed from the queue (task {t[:7]}); "
                      "the same command queues it again")
        else:
            out.print(f"[bold red]failed:[/] {mine[t]}: see `dvc queue logs {t[:7]}`")
    return 1 if failed else 0
