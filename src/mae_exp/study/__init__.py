"""Is the improvement real? Seeds x ablations as DVC experiments, and an honest report.

    python -m mae_exp.study queue [--seeds 42 43] [--ablations all laplacian_only] [-j N] [--no-start] [--force]
    python -m mae_exp.study report [--rev REV] [--from-csv FILE]

- `metrics.py`: the metrics compared (every test-set row of measures.py), how each is shown and
  where each experiment's value is.
- `stats.py`: mean ± std over seeds and paired differences with Student-t intervals; pure functions of a
  DataFrame with one row per experiment, so they are tested on constructed results.
- `results.py`: DVC's experiments (`dvc.api.exp_show` rows) -> that DataFrame, recognising each study
  experiment by its params; it keeps the experiments it read in metrics/study_experiments.csv and
  metrics/study_curves.csv, committed, since DVC's experiment refs do not travel with a clone.
- `report.py`, `figure.py`: sentences, tables, metrics/study.{csv,md} and plots/study.png.
- `queue.py`: one DVC experiment per seed and ablation, each run by `dvc exp run --temp`, N at a time;
  `slurm.py`: each one a SLURM job instead. `jobs.py`: what both run, one experiment (`Job`) and how its
  process starts. queue.py imports slurm.py, never the reverse.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from rich.console import Console

out = Console(width=None if sys.stdout.isatty() else 130, highlight=False)


class StudyError(RuntimeError):
    """A user-facing failure: printed as one line, exit code 1."""


def dvc_command() -> str:
    """The `dvc` to run: this environment's (beside sys.executable, as the stages use it), else the one on PATH."""
    here = Path(sys.executable).with_name("dvc")
    return str(here) if here.exists() else (shutil.which("dvc") or "dvc")
