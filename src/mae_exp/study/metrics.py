"""The measures the study compares over seeds: the test-set rows of the one registry (measures.py)."""

from __future__ import annotations

from ..evaluation.measures import MEASURES
from ..plumbing.config import RANDOM

METRICS = {name: m for name, m in MEASURES.items() if m.study}


def encoders(pair) -> tuple[str, ...]:
    """A study's encoders: the random floor, then the two recipes its design compares (`pair`: study.compare,
    the baseline then the tested recipe)."""
    return (RANDOM, *pair)


# ---- study statistics (issue 19): what each pre-training spent, read per experiment to pair encoders at
# equal FLOPs; not compared (no p-value)
COSTS = {"flops": MEASURES["pretrain_flops"], "wall_time_s": MEASURES["pretrain_wall_s"]}
