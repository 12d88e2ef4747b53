"""Every measure the report and the study show: how it is labelled, where it is read, whose objective it is.

One table for both (report.py's rows, study/metrics.py's METRICS), so a readout added here appears in the
console table, metrics/comparison.json, plots/comparison.png and metrics/study.csv alike. Torch-free.

`objective` names the loss term the measure scores (mse, freq): a recipe whose pre-training loss contains
it (every recipe's holds mse; freq where its weight is above 0, recipes.Recipe.objectives) is marked ahead on
its "own objective", which shows only that it optimised what it was told to; such rows are left out of any
"ahead on N of M" count (report.py, `counted`).
"""

from __future__ import annotations

from typing import NamedTuple

from ..plumbing.config import RANDOM


class Measure(NamedTuple):
    label: str
    unit: str  # shown after the value ("pp" for accuracies, which are stored as fractions)
    higher_better: bool
    scale: float  # shown as value * scale (accuracy: fraction -> percent)
    decimals: int
    pretrained_only: bool  # the untrained encoder has none (a reconstruction or pre-training figure)
    path: str  # metrics file of the DVC stage that writes it, under metrics/; {enc} = the encoder
    key: str  # key in that file, nested keys joined by "."
    objective: str | None  # the loss term it scores ("mse", "freq"), whichever recipe's loss holds it; None: none
    study: bool  # compared over seeds by the study (test-set quality), not a validation or cost figure

    def encoders_in(self, encoders) -> tuple[str, ...]:
        """Those of `encoders` (random, then recipes) that have this measure."""
        return tuple(e for e in encoders if not (self.pretrained_only and e == RANDOM))

    def file(self, enc: str, metrics_dir: str = "metrics") -> str:
        """Where encoder `enc`'s value lives: metrics/... as DVC names it, or under another `metrics_dir`."""
        return f"{metrics_dir}/{self.path.format(enc=enc)}"


PROBE = "linear_probe/{enc}/metrics.json"
FINETUNE = "finetune/{enc}/metrics.json"
VISUALIZE = "visualize/metrics.json"
PRETRAIN = "pretrain/{enc}/metrics.json"
# the probe stage's readouts: cls = the class token, mean = the mean of the patch tokens
READOUTS = {
    "logreg_cls": "logistic probe cls",
    "logreg_mean": "logistic probe mean",
    "linear_cls": "linear probe cls",
    "linear_mean": "linear probe mean",
    "knn_cls": "kNN cls",
    "knn_mean": "kNN mean",
}


def _accuracy(label: str, path: str, key: str, study: bool) -> Measure:
    return Measure(label, "pp", True, 100.0, 1, False, path, key, None, study)


MEASURES: dict[str, Measure] = {
    **{f"{r}_top1": _accuracy(f"{label} top-1 (test)", PROBE, f"{r}_top1", True) for r, label in READOUTS.items()},
    "ft_top1": _accuracy("fine-tune top-1 (test)", FINETUNE, "top1", True),
    # masked MSE against normalised pixels: every recipe's loss holds it (MAE's all of it)
    "mse": Measure("masked MSE (test)", "", False, 1.0, 4, True, VISUALIZE, "{enc}.mse", "mse", True),
    # the masked Laplacian L1: the `freq` term of the recipes that weight it
    "hf_error": Measure("masked HF error (test)", "", False, 1.0, 4, True, VISUALIZE, "{enc}.hf_error", "freq", True),
    "psnr": Measure("masked PSNR (test)", "dB", True, 1.0, 2, True, VISUALIZE, "{enc}.psnr", None, True),
    **{
        f"{r}_val_top1": _accuracy(f"{label} top-1 (validation)", PROBE, f"{r}_val_top1", False)
        for r, label in READOUTS.items()
    },
    "ft_val_top1": _accuracy("fine-tune top-1 (validation)", FINETUNE, "val_top1", False),
    "pretrain_mse": Measure(
        "masked MSE, last pre-training epoch", "", False, 1.0, 4, True, PRETRAIN, "final.mse", "mse", False
    ),
    "pretrain_wall_s": Measure(
        "pre-training wall time", "s", False, 1.0, 0, True, PRETRAIN, "wall_time_s", None, False
    ),
    "pretrain_flops": Measure("pre-training FLOPs", "", False, 1.0, 0, True, PRETRAIN, "flops", None, False),
    "pretrain_images_per_s": Measure(
        "pre-training images/s", "", True, 1.0, 0, True, PRETRAIN, "images_per_s", None, False
    ),
}


def whose(m: Measure, objectives: dict[str, tuple[str, ...]]) -> str:
    """Whose training objective the measure is, in words; `objectives`: recipe -> the terms its loss weights
    (recipes.Recipe.objectives; the masked MSE is every recipe's)."""
    if m.objective is None:
        return "no recipe's"
    if m.objective == "mse":
        alone = [r for r, terms in objectives.items() if not terms]
        return "every recipe's" + (f" ({' and '.join(alone)}: all of it)" if alone else "")
    holders = [r for r, terms in objectives.items() if m.objective in terms]
    return " and ".join(f"{r}'s" for r in holders) or "no recipe's"


def counted(m: Measure) -> bool:
    """Whether a win on it counts as evidence: a test-set measure that neither variant trains on."""
    return m.study and m.objective is None


def grid_edges(search: dict, chosen: dict) -> dict[str, str]:
    """{axis: "lowest" | "highest"} for each axis of a searched grid (`search`: axis -> the value at every point,
    as the stages write it) whose chosen value is its grid's smallest or largest: the best setting may lie beyond
    it, and the readout understates that encoder. An axis of one value was not searched; a smallest value of 0
    (no weight decay) is a natural bound, not an edge."""
    marks = {}
    for axis, value in chosen.items():
        values = sorted(set(search.get(axis, ())))
        if len(values) < 2 or value not in values:
            continue
        if value == values[-1]:
            marks[axis] = "highest"
        elif value == values[0] and value != 0:
            marks[axis] = "lowest"
    return marks


def searched(search: dict, chosen: dict) -> bool:
    """Whether the chosen setting was searched for: some axis of it has at least 2 values in its grid. A
    one-point grid (fine-tuning's may be) has no edge to sit at, so it is not counted among the settings that
    might."""
    return any(len(set(search.get(axis, ()))) >= 2 for axis in chosen)
