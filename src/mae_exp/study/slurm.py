"""`study queue --slurm`: each experiment one SLURM job (`sbatch`), run as an ordinary DVC experiment in a
workspace of its own on the cluster's shared filesystem, then `dvc exp push`ed; `study status` follows them.

Under the jobs folder (`--slurm-dir`, default scratch/slurm), one folder per experiment:

    <name>/job.json    what the job runs: overrides, the study's commit, where to clone from, push to, cache
    <name>/job.sh      the batch script sbatch runs: `python -m mae_exp.study.slurm <name>/`
    <name>/state.json  what the job last said: submitted | running | requeued | stopped | done | failed
    <name>/slurm.log   the job's output (appended across requeues)
    <name>/repo/       the workspace: a clone at the study's commit, its own DVC lock, the shared DVC cache;
                       its scratch/ (the stages' resumable state) survives a requeue

Why a clone per job rather than `dvc exp run --temp` in one repository: every DVC command in a repository
takes its lock, and on a cluster dozens of jobs would wait on it (treeverse/dvc#7419). A clone is a
repository of its own: its experiment is a plain `dvc exp run -n NAME`, and the shared cache
(`cache.dir`, `cache.shared group`, links where the filesystem allows) and DVC's run-cache in it spare the
stages another job already ran. Only DVC's and git's commands are used.

Preemption and time limits: sbatch's `--signal=B:USR1@S` warns this job's process S seconds before SLURM
stops it (and `scancel --signal=USR1 --batch ID` does the same by hand). It sends SIGINT to the running
`dvc exp run`, whose stage stops as on Ctrl-C (its last checkpoint is in the workspace's scratch/), and
requeues the job (`scontrol requeue`, with `--requeue`): the same job, started again in the same workspace,
resumes the stage exactly where the checkpoint left it. SIGTERM (`scancel`, `scontrol requeue` from
outside) stops it the same way without requeueing it itself.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..plumbing.files import atomic_write, save_json
from . import StudyError, dvc_command, out
from .jobs import sigint_default

STATES = ("submitted", "running", "requeued", "stopped", "done", "failed")
WAITING = ("submitted", "running", "requeued")  # the job has not reported an end (yet)
CACHE_TYPE = "reflink,hardlink,copy"  # links instead of copies where the filesystem allows


@dataclass
class SlurmOptions:
    """sbatch's resources per experiment and where the jobs work."""

    dir: Path = Path("scratch/slurm")  # on the shared filesystem
    partition: str | None = None
    gpus: int = 0
    cpus: int = 1
    mem: str | None = None  # sbatch's --mem, e.g. 16G
    time: str | None = None  # sbatch's --time, e.g. 4:00:00
    signal_s: int = 300  # --signal=B:USR1@signal_s: warning before a time limit or preemption
    sbatch: list[str] = field(default_factory=list)  # further sbatch flags, as given
    push_to: str | None = None  # git remote (name or URL) the jobs push their experiment to; default: this repo
    cache: str | None = None  # the shared DVC cache; default: this repository's (`dvc cache dir`)


# --------------------------------------------------------------------------- commands


def _run(args: list[str], cwd: Path | str | None = None, what: str | None = None) -> str:
    """A command's output; a failure is a StudyError naming the command and its last words."""
    try:
        proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise StudyError(f"`{args[0]}` not found: {what or 'is this a SLURM login node?'}") from None
    if proc.returncode != 0:
        said = (proc.stderr or proc.stdout).strip().splitlines()
        raise StudyError(
            f"`{' '.join(Path(args[0]).name if i == 0 else a for i, a in enumerate(args))}` failed "
            f"(exit {proc.returncode}){': ' + said[-1] if said else ''}"
        )
    return proc.stdout.strip()


def squeue_states() -> dict[str, str]:
    """SLURM job id -> its state (PENDING, RUNNING, ...) for the jobs SLURM still holds."""
    lines = _run(["squeue", "-h", "-o", "%i %T"]).splitlines()
    return dict(line.split(maxsplit=1) for line in lines if line.strip())


# --------------------------------------------------------------------------- state files


def read_state(job_dir: Path) -> dict:
    try:
        return json.loads((job_dir / "state.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def write_state(job_dir: Path, state: str, **info) -> None:
    """Replace state.json, keeping what earlier states said."""
    record = {**read_state(job_dir), **info, "state": state, "at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    save_json(record, job_dir / "state.json")  # whole or not at all: `study status` may be reading it


def job_states(root: Path) -> dict[str, dict]:
    """name -> state.json of every job under root, with `state` read against squeue: a job that SLURM
    holds is `pending` or `running` whatever it last said; one that SLURM no longer holds and that never
    said how it ended is `failed` (killed: time limit without warning, node failure, scancel -s KILL)."""
    if not root.is_dir():
        return {}
    held = squeue_states()
    states = {}
    for job_dir in sorted(p for p in root.iterdir() if (p / "job.json").is_file()):
        record = read_state(job_dir) or {"state": "submitted"}
        if (job_dir / "slurm_job_id").is_file():  # what sbatch said, written after it: the job may have begun
            record["job_id"] = (job_dir / "slurm_job_id").read_text().strip()
        slurm_state = held.get(str(record.get("job_id")))
        if slurm_state:
            record["state"] = "running" if slurm_state in ("RUNNING", "COMPLETING", "CONFIGURING") else "pending"
        elif record["state"] in WAITING:
            record["state"] = "failed"
            record["reason"] = "the job ended without saying how (killed? see its log)"
        record["log"] = str(job_dir / "slurm.log")
        states[job_dir.name] = record
    return states


# --------------------------------------------------------------------------- submitting


def check_clean(root: Path) -> str:
    """The commit the jobs clone: HEAD, with no uncommitted change to a tracked file (a job would not see it)."""
    changed = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, what="git is needed")
    if changed:
        files = ", ".join(line.split(maxsplit=1)[-1] for line in changed.splitlines()[:3])
        raise StudyError(f"uncommitted changes ({files}): the SLURM jobs clone the last commit; commit them first")
    return _run(["git", "rev-parse", "HEAD"], cwd=root)


def push_url(root: Path, push_to: str | None) -> str:
    """Where jobs push their experiments: a git remote of this repository by name, a URL, or this repository."""
    if not push_to:
        return str(root)
    remotes = _run(["git", "remote"], cwd=root).split()
    return _run(["git", "remote", "get-url", push_to], cwd=root) if push_to in remotes else push_to


def sbatch_args(name: str, job_dir: Path, opts: SlurmOptions) -> list[str]:
    args = [
        "sbatch",
        "--parsable",
        f"--job-name=mae-{name}",
        f"--output={job_dir / 'slurm.log'}",
        "--open-mode=append",
        "--requeue",
        f"--signal=B:USR1@{opts.signal_s}",
        f"--cpus-per-task={opts.cpus}",
        f"--chdir={job_dir}",
    ]
    args += [f"--partition={opts.partition}"] if opts.partition else []
    args += [f"--gpus={opts.gpus}"] if opts.gpus else []
    args += [f"--mem={opts.mem}"] if opts.mem else []
    args += [f"--time={opts.time}"] if opts.time else []
    return args + list(opts.sbatch) + [str(job_dir / "job.sh")]


def submit(jobs, opts: SlurmOptions, force: bool = False, root: Path | None = None) -> int:
    """One sbatch job per experiment not already pending or running; prints the job ids and returns."""
    for flag, value, least in (("--cpus", opts.cpus, 1), ("--gpus", opts.gpus, 0), ("--signal-s", opts.signal_s, 0)):
        if value < least:
            raise StudyError(f"{flag} must be at least {least}, got {value}")
    root = (root or Path.cwd()).resolve()
    base = opts.dir if opts.dir.is_absolute() else root / opts.dir
    commit = check_clean(root)
    target = push_url(root, opts.push_to)
    cache = opts.cache or _run([dvc_command(), "cache", "dir"], cwd=root)
    states = job_states(base)
    submitted = 0
    for job in jobs:
        known = states.get(job.name, {})
        if known.get("state") in ("pending", "running"):
            out.print(f"{job.name}: already {known['state']} (SLURM job {known.get('job_id')}), not submitted again")
            continue
        job_dir = base / job.name
        job_dir.mkdir(parents=True, exist_ok=True)
        if (job_dir / "repo").exists() and read_state(job_dir).get("commit") not in (None, commit):
            shutil.rmtree(job_dir / "repo")  # a workspace of another commit: start afresh
        spec = {
            "name": job.name,
            "overrides": list(job.overrides),
            "commit": commit,
            "clone_from": str(root),
            "push_to": target,
            "cache": cache,
            "force": force,
        }
        save_json(spec, job_dir / "job.json")
        script = (
            "#!/bin/bash\n# written by `python -m mae_exp.study queue --slurm`: sbatch's "
            "options are on its command line, what this job runs in job.json\n"
            f"exec {shlex.quote(sys.executable)} -m mae_exp.study.slurm {shlex.quote(str(job_dir))}\n"
        )
        atomic_write(job_dir / "job.sh", lambda tmp, text=script: (Path(tmp).write_text(text), os.chmod(tmp, 0o755)))
        (job_dir / "slurm_job_id").unlink(missing_ok=True)
        # before sbatch: a job that starts at once writes its own state after this one
        write_state(job_dir, "submitted", job_id=None, commit=commit, exit=None, reason=None, restarts=0)
        try:
            job_id = _run(sbatch_args(job.name, job_dir, opts)).split(";")[0]
        except StudyError as e:
            write_state(job_dir, "failed", reason=str(e))
            raise
        atomic_write(job_dir / "slurm_job_id", lambda tmp, text=job_id + "\n": Path(tmp).write_text(text))
        out.print(f"{job.name}: submitted as SLURM job {job_id} ({' '.join(job.overrides)})")
        submitted += 1
    out.print(
        f"{submitted} job(s) submitted; `python -m mae_exp.study status --slurm-dir {opts.dir}` follows them, "
        f"logs in {base}/<name>/slurm.log",
        soft_wrap=True,
    )
    return 0


# --------------------------------------------------------------------------- following them


def status(root: Path) -> int:
    """One line per experiment and a count per state; each failed one named with its log. Exit 1 if any failed."""
    states = job_states(root.resolve())
    if not states:
        out.print(f"no SLURM jobs under {root}: `python -m mae_exp.study queue --slurm` submits them")
        return 0
    counts: dict[str, int] = {}
    for name, s in states.items():
        counts[s["state"]] = counts.get(s["state"], 0) + 1
        if s["state"] != "failed":
            restarts = f", requeued {s['restarts']}x" if s.get("restarts") else ""
            out.print(f"{name}: {s['state']} (SLURM job {s.get('job_id')}{restarts})")
    for name, s in states.items():
        if s["state"] == "failed":
            why = s.get("reason") or f"exit {s.get('exit')}"
            out.print(
                f"[bold red]failed:[/] {name} (SLURM job {s.get('job_id')}, {why}): see {s['log']}", soft_wrap=True
            )  # one line, never wrapped
    out.print(", ".join(f"{counts[k]} {k}" for k in ("pending", "running", "done", "stopped", "failed") if k in counts))
    return 1 if counts.get("failed") else 0


# --------------------------------------------------------------------------- inside the job


def _say(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} study job: {text}", flush=True)


def prepare(work: Path, spec: dict) -> None:
    """The workspace: a clone at the study's commit (made once: a requeued job finds it, scratch/ and all),
    on the shared DVC cache."""
    if not (work / ".git").is_dir():
        part = work.with_name(work.name + ".part")
        shutil.rmtree(part, ignore_errors=True)
        _run(["git", "clone", "-q", "--no-checkout", spec["clone_from"], str(part)])
        _run(["git", "checkout", "-q", "--detach", spec["commit"]], cwd=part)
        os.replace(part, work)
    dvc = dvc_command()
    for key, value in (("cache.dir", spec["cache"]), ("cache.shared", "group"), ("cache.type", CACHE_TYPE)):
        _run([dvc, "config", "--local", key, value], cwd=work)


def job_main(job_dir: Path) -> int:
    spec = json.loads((job_dir / "job.json").read_text())
    name, work = spec["name"], job_dir / "repo"
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # stages' python
    job_id = os.environ.get("SLURM_JOB_ID", "")
    restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    write_state(job_dir, "running", job_id=job_id, restarts=restarts, host=os.uname().nodename)
    _say(f"{name}: SLURM job {job_id} on {os.uname().nodename}" + (f", restart {restarts}" if restarts else ""))
    signals: list[int] = []
    child: list[subprocess.Popen] = []

    def on_signal(signum, _frame):  # stop the experiment once; the stage keeps its last checkpoint
        if not signals and child and child[0].poll() is None:
            os.killpg(child[0].pid, signal.SIGINT)
        signals.append(signum)

    signal.signal(signal.SIGUSR1, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    dvc = dvc_command()
    try:
        prepare(work, spec)
        done_here = set(_run([dvc, "exp", "ls", "--name-only"], cwd=work).split())
        if name not in done_here or spec["force"]:
            args = [dvc, "exp", "run", "-n", name, *(a for o in spec["overrides"] for a in ("-S", o))]
            args += ["-f"] if name in done_here else []
            _say(" ".join(["dvc", *args[1:]]))
            if not signals:
                child.append(
                    subprocess.Popen(
                        args,
                        cwd=work,
                        start_new_session=True,
                        stdin=subprocess.DEVNULL,
                        preexec_fn=sigint_default,
                    )
                )
                code = child[0].wait()
            if signals:
                return stopped(job_dir, signals[0], job_id)
            if code:
                write_state(job_dir, "failed", exit=code, reason=f"`dvc exp run` exit {code}")
                _say(f"{name}: failed (`dvc exp run` exit {code})")
                return code
        # the outputs go to the DVC remote if the workspace has a default one; the shared cache has them anyway
        has_remote = subprocess.run(
            [dvc, "remote", "default"], cwd=work, capture_output=True, text=True, check=False
        ).stdout.strip()
        push = [dvc, "exp", "push", *([] if has_remote else ["--no-cache"]), spec["push_to"], name]
        _say(" ".join(["dvc", *push[1:]]))
        _run(push, cwd=work)
    except StudyError as e:
        write_state(job_dir, "failed", exit=1, reason=str(e))
        _say(f"{name}: failed: {e}")
        return 1
    write_state(job_dir, "done", exit=0, reason=None)
    _say(f"{name}: done, pushed to {spec['push_to']}")
    return 0


def stopped(job_dir: Path, signum: int, job_id: str) -> int:
    """After the experiment stopped: on SIGUSR1 (sbatch's --signal warning), requeue this job; on SIGTERM
    (scancel, or a requeue from outside, which restarts the job itself), only record it."""
    if signum == signal.SIGUSR1 and job_id:
        write_state(job_dir, "requeued", exit=None, reason=None)
        _say("stopped by SIGUSR1: requeueing this job; it resumes from the last checkpoint")
        try:
            _run(["scontrol", "requeue", job_id])
        except StudyError as e:
            write_state(job_dir, "failed", exit=1, reason=f"could not requeue: {e}")
            return 1
        return 0
    write_state(job_dir, "stopped", exit=128 + signum, reason=f"stopped by {signal.Signals(signum).name}")
    _say(f"stopped by {signal.Signals(signum).name}; the same `queue --slurm` submits it again and it resumes")
    return 128 + signum


if __name__ == "__main__":
    sys.exit(job_main(Path(sys.argv[1])))
