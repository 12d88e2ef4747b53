"""`python -m mae_exp.study queue|report|doctor` (also installed as `mae-study`)."""

from __future__ import annotations

import argparse
import signal
import sys

from ..config import ConfigError
from . import StudyError, out


def _interrupted(*_) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    from dvc.exceptions import DvcException

    ap = argparse.ArgumentParser(prog="python -m mae_exp.study",
                                 description="Is the improvement real? Seeds x ablations as DVC experiments.")
    sub = ap.add_subparsers(dest="command", required=True)
    q = sub.add_parser("queue", help="run seeds x ablations as DVC experiments (dvc exp run --temp)")
    q.add_argument("--seeds", type=int, nargs="+", help="default: study.seeds in params.yaml")
    q.add_argument("--ablations", nargs="+", help="default: every one in study.ablations")
    q.add_argument("--budgets", type=int, nargs="+", help="default: every one in study.budgets (pretrain.epochs)")
    q.add_argument("-j", "--jobs", type=int, default=1, help="experiments run at once")
    q.add_argument("--no-start", action="store_true", help="only put them in DVC's queue; run them with dvc queue start")
    q.add_argument("--force", action="store_true", help="run again experiments already done")
    q.add_argument("--poll", type=float, default=2.0, help="seconds between status checks")
    r = sub.add_parser("report", help="tables, sentences and a figure from the finished experiments")
    r.add_argument("--rev", help="only experiments based on this commit (default: all commits)")
    r.add_argument("--from-csv", metavar="FILE",
                   help="read this saved `dvc exp show --csv --all-commits` output instead of asking DVC")
    sub.add_parser("doctor", help="warn of a DVC remote with verify off, naming the command that turns it on")
    a = ap.parse_args(argv)
    if a.command == "doctor":
        from .doctor import main as doctor
        return doctor()
    signal.signal(signal.SIGTERM, _interrupted)  # `kill`: stop waiting as Ctrl-C does
    try:
        if a.command == "queue":
            from .queue import queue
            return queue(a.seeds, a.ablations, a.jobs, not a.no_start, a.force, a.poll, a.budgets)
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
