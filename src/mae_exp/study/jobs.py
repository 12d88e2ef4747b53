"""What `study queue` runs, here (queue.py) or as SLURM jobs (slurm.py): one experiment, and how its process
starts. Both import this module; it imports neither."""

from __future__ import annotations

import signal
from typing import NamedTuple


class Job(NamedTuple):
    name: str  # s<seed>-<ablation>
    seed: int
    ablation: str  # the arm (an ablation at a budget)
    overrides: tuple[str, ...]  # for `dvc exp run -S`
    budget: int = 0  # pretrain.epochs: the jobs of one seed and budget share the branches no arm changes


def sigint_default() -> None:
    """preexec_fn of an experiment: SIGINT at its default. A runner started in the background (`cmd &`
    in a script, a batch job) inherits SIGINT ignored, and so would each experiment: the SIGINT that
    queue.stop or a SLURM job's signal handler sends would not reach DVC or its stage, which would run on
    until killed."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
