"""Mean ± std over seeds, and the paired difference improved − original with its Student-t interval.

`runs`: one row per experiment with `seed`, `ablation` and `<metric>_<encoder>` columns (results.py)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from .metrics import METRICS


def mean_ci(values, level: float = 0.95) -> tuple[int, float, float, float, float]:
    """n, mean, sample std (n − 1), and the Student-t confidence interval of the mean; NaN where n is too
    small (std and interval need n >= 2). Missing values are left out."""
    v = pd.Series(values, dtype=float).dropna().to_numpy()
    n = len(v)
    if n < 2:
        return n, (float(v[0]) if n else math.nan), math.nan, math.nan, math.nan
    mean, sd = float(np.mean(v)), float(np.std(v, ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, df=n - 1)) * sd / math.sqrt(n)  # 0 when every value is equal
    return n, mean, sd, mean - half, mean + half


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per group (random init, original, improved per ablation) and metric.
    The random and original encoders do not depend on the ablation, so they count once per seed."""
    rows = []
    per_seed = runs.sort_values("seed").groupby("seed").first()
    for metric, m in METRICS.items():
        for encoder in ("random", "original"):
            if encoder in m.encoders:
                rows.append(_summary_row(encoder, None, metric, per_seed[f"{metric}_{encoder}"]))
        for ablation, sub in runs.groupby("ablation", sort=False):
            rows.append(_summary_row(f"improved: {ablation}", ablation, metric, sub[f"{metric}_improved"]))
    return pd.DataFrame(rows)


def _summary_row(group: str, ablation, metric: str, values: pd.Series) -> dict:
    n, mean, sd, _, _ = mean_ci(values)
    return {"group": group, "ablation": ablation, "metric": metric, "n": n, "mean": mean, "std": sd}


def paired_differences(runs: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Per ablation and metric: improved − original within each seed (same experiment), its mean, std and
    Student-t interval over seeds (the paired t interval, as `scipy.stats.ttest_rel` computes it), and
    whether the interval excludes 0."""
    rows = []
    for ablation, sub in runs.groupby("ablation", sort=False):
        for metric in METRICS:
            n, mean, sd, lo, hi = mean_ci(sub[f"{metric}_improved"] - sub[f"{metric}_original"], level)
            rows.append({"ablation": ablation, "metric": metric, "n": n, "diff_mean": mean, "diff_std": sd,
                         "ci_low": lo, "ci_high": hi, "beyond_noise": bool(n >= 2 and (lo > 0 or hi < 0))})
    return pd.DataFrame(rows)
