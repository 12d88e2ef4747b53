"""The metrics the study compares: how each is shown, and where an experiment keeps its value."""

from __future__ import annotations

from typing import NamedTuple

from ..config import ENCODERS

VARIANTS = ("original", "improved")  # the pre-trained encoders (no reconstruction from a random one)


class Metric(NamedTuple):
    label: str
    unit: str
    higher_better: bool
    scale: float  # shown as value * scale (accuracy: fraction -> percentage points)
    decimals: int
    encoders: tuple[str, ...]  # which encoders have this metric
    path: str  # metrics file of the DVC stage that writes it; {enc} = the encoder
    key: str  # key in that file, nested keys joined by "."


METRICS = {
    "lp_top1": Metric("LP top-1", "pp", True, 100.0, 1, ENCODERS, "metrics/linear_probe_{enc}/metrics.json", "top1"),
    "ft_top1": Metric("FT top-1", "pp", True, 100.0, 1, ENCODERS, "metrics/finetune_{enc}/metrics.json", "top1"),
    "hf_error": Metric("HF error", "", False, 1.0, 4, VARIANTS, "metrics/visualize/metrics.json", "{enc}.hf_error"),
    "psnr": Metric("PSNR", "dB", True, 1.0, 2, VARIANTS, "metrics/visualize/metrics.json", "{enc}.psnr"),
}



# ---- study statistics (issue 19, item 3): the original's own objective, and each pre-training's cost.
# Added here only if the registry above does not have them under these ids.
METRICS.setdefault("mse", Metric("masked MSE (original's objective)", "", False, 1.0, 4, VARIANTS,
                                 "metrics/visualize/metrics.json", "{enc}.mse"))
COSTS = {  # not compared (no p-value): what each pre-training spent, to pair encoders at equal FLOPs
    "flops": Metric("pre-training FLOPs", "", False, 1.0, 3, VARIANTS, "metrics/pretrain_{enc}/metrics.json", "flops"),
    "wall_time_s": Metric("pre-training wall time", "s", False, 1.0, 0, VARIANTS,
                          "metrics/pretrain_{enc}/metrics.json", "wall_time_s"),
}
