"""`python -m mae_exp.study queue|status|report|doctor` (also installed as `mae-study`)."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from pathlib import Path

from ..plumbing.config import ConfigError
from . import StudyError, out


def _interrupted(*_) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    from dvc.exceptions import DvcException

    ap = argparse.ArgumentParser(
        prog="python -m mae_exp.study", description="Is the improvement real? Seeds x ablations as DVC experiments."
    )
    sub = ap.add_subparsers(dest="command", required=True)
    q = sub.add_parser("queue", help="run seeds x ablations as DVC experiments (dvc exp run --temp)")
    q.add_argument("--seeds", type=int, nargs="+", help="default: study.seeds in params.yaml")
    q.add_argument("--ablations", nargs="+", help="default: every one in study.ablations")
    q.add_argument("--budgets", type=int, nargs="+", help="default: every one in study.budgets (pretrain.epochs)")
    q.add_argument(
        "-j",
        "--jobs",
        type=int,
        help="experiments run at once (default: 2 on a CPU, each with half its cores; 1 where there are GPUs)",
    )
    q.add_argument(
        "--no-start", action="store_true", help="only put them in DVC's queue; run them with dvc queue start"
    )
    q.add_argument("--force", action="store_true", help="run again experiments already done")
    q.add_argument("--poll", type=float, default=2.0, help="seconds between status checks")
    s = q.add_argument_group("SLURM (docs/distributed.md): one sbatch job per experiment, in its own clone")
    s.add_argument("--slurm", action="store_true", help="submit each experiment as a SLURM job, print the ids, return")
    s.add_argument(
        "--slurm-dir",
        type=Path,
        default=Path("scratch/slurm"),
        help="the jobs' workspaces, logs and state, on the shared filesystem (default: %(default)s)",
    )
    s.add_argument("--partition", help="sbatch --partition")
    s.add_argument("--gpus", type=int, default=0, help="GPUs per job (sbatch --gpus)")
    s.add_argument("--cpus", type=int, default=1, help="CPUs per job (sbatch --cpus-per-task)")
    s.add_argument("--mem", help="memory per job (sbatch --mem), e.g. 32G")
    s.add_argument("--time", help="time limit per job (sbatch --time), e.g. 4:00:00; a requeue resumes it")
    s.add_argument(
        "--signal-s",
        type=int,
        default=300,
        help="seconds of warning before a time limit or preemption (sbatch --signal=B:USR1@S)",
    )
    s.add_argument("--sbatch", default="", help="further sbatch flags, one string: --sbatch='--qos=low --account=x'")
    s.add_argument("--push-to", help="git remote (name or URL) the jobs `dvc exp push` to (default: this repository)")
    s.add_argument("--cache", help="the DVC cache the jobs share (default: this repository's, `dvc cache dir`)")
    st = sub.add_parser("status", help="the SLURM jobs of `queue --slurm`: pending, running, done, failed")
    st.add_argument(
        "--slurm-dir", type=Path, default=Path("scratch/slurm"), help="as given to queue (default: %(default)s)"
    )
    r = sub.add_parser("report", help="tables, sentences and a figure from the finished experiments")
    r.add_argument("--rev", help="only experiments based on this commit (default: all commits)")
    r.add_argument(
        "--from-csv",
        metavar="FILE",
        help="read this saved `dvc exp show --csv --all-commits` output instead of asking DVC",
    )
    sub.add_parser("doctor", help="warn of a DVC remote with verify off, naming the command that turns it on")
    a = ap.parse_args(argv)
    if a.command == "doctor":
        from .doctor import main as doctor

        return doctor()
    signal.signal(signal.SIGTERM, _interrupted)  # `kill`: stop waiting as Ctrl-C does
    try:
        if a.command == "queue":
            from .queue import queue

            slurm = None
            if a.slurm:
                from .slurm import SlurmOptions

                slurm = SlurmOptions(
                    a.slurm_dir,
                    a.partition,
                    a.gpus,
                    a.cpus,
                    a.mem,
                    a.time,
                    a.signal_s,
                    shlex.split(a.sbatch),
                    a.push_to,
                    a.cache,
                )
            return queue(a.seeds, a.ablations, a.jobs, not a.no_start, a.force, a.poll, slurm, a.budgets)
        if a.command == "status":
            from .slurm import status

            return status(a.slurm_dir)
        from .results import csv_rows, experiment_rows

        rows = csv_rows(a.from_csv) if a.from_csv else experiment_rows(a.rev)
        from .report import report  # scipy and matplotlib: only once the input is good

        report(rows, curves=not a.from_csv)
        return 0
    except (StudyError, ConfigError, DvcException) as e:
        out.print(f"[bold red]error:[/] {e}")
        return 1
    except KeyboardInterrupt:  # before the wait began (queue's wait says more itself)
        out.print("stopped")
        return 130


if __name__ == "__main__":
    sys.exit(main())
