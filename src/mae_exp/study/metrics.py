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


def number(value: float, metric: str, signed: bool = True) -> str:
    """A study measure's value as the report writes it: its scale and decimals, a true minus sign."""
    m = METRICS[metric]
    v = round(value * m.scale, m.decimals) + 0.0  # + 0.0: no "-0.0"
    return f"{v:{'+' if signed else ''}.{m.decimals}f}".replace("-", "\u2212")


def label_of(metric: str) -> str:
    """A study measure's name as a sentence starts with it, saying so when lower is better."""
    m = METRICS[metric]
    return m.label if m.higher_better else f"{m.label} (lower is better)"


def with_unit(text: str, metric: str) -> str:
    unit = METRICS[metric].unit
    return f"{text} {unit}" if unit else text
