"""The measures the study compares over seeds: the test-set rows of the one registry (measures.py)."""

from __future__ import annotations

from ..evaluation.measures import MEASURES

# the studies' encoders: the random floor and the two recipes their designs compare (study.ablations override them)
ENCODERS = ("random", "original", "improved")

METRICS = {name: m for name, m in MEASURES.items() if m.study}


# ---- study statistics (issue 19): what each pre-training spent, read per experiment to pair encoders at
# equal FLOPs; not compared (no p-value)
COSTS = {"flops": MEASURES["pretrain_flops"], "wall_time_s": MEASURES["pretrain_wall_s"]}
