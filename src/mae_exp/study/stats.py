"""Mean ± std over seeds, the paired difference improved − original with its Student-t interval and paired
t-test, read at equal steps and at equal FLOPs, and Holm's correction over every comparison but the primary.

`runs`: one row per experiment with `seed`, `ablation` (the arm) and `<metric>_<encoder>` columns, including
`flops_<variant>` (results.py)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests

from .metrics import COSTS, METRICS

FLOPS_TOLERANCE = 0.01  # two pre-trainings within 1% of each other's FLOPs count as equal compute


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


def summarize(runs: pd.DataFrame, original_arms=frozenset()) -> pd.DataFrame:
    """Mean and std over seeds per group and metric: random init, the original (counted once per seed and
    budget: it does not depend on the arm; "original-e<budget>" when the study has several budgets), each arm
    that changes the original ("original: <arm>"), and the improved recipe of every other arm
    ("improved: <arm>")."""
    rows = []
    plain = runs[~runs["ablation"].isin(original_arms)]
    budgets = sorted(set(plain["budget"])) if "budget" in plain else [None]
    for metric, m in {**METRICS, **COSTS}.items():
        for encoder in ("random", "original"):
            if encoder not in m.encoders:
                continue
            for budget in budgets[:1] if encoder == "random" else budgets:  # random: no pre-training budget
                at = plain if budget is None or encoder == "random" else plain[plain["budget"] == budget]
                per_seed = at.sort_values("seed").groupby("seed").first()
                if len(per_seed):
                    group = encoder if encoder == "random" or len(budgets) == 1 else f"{encoder}-e{budget}"
                    rows.append(_summary_row(group, None, metric, per_seed[f"{metric}_{encoder}"]))
        for ablation, sub in runs.groupby("ablation", sort=False):
            side = "original" if ablation in original_arms else "improved"
            rows.append(_summary_row(f"{side}: {ablation}", ablation, metric, sub[f"{metric}_{side}"]))
    return pd.DataFrame(rows)


def _summary_row(group: str, ablation, metric: str, values: pd.Series) -> dict:
    n, mean, sd, _, _ = mean_ci(values)
    return {"group": group, "ablation": ablation, "metric": metric, "n": n, "mean": mean, "std": sd}


def _equal(a: float, b: float) -> bool:
    return bool(np.isfinite(a) and np.isfinite(b) and abs(a - b) <= FLOPS_TOLERANCE * max(abs(a), abs(b)))


def baselines(runs: pd.DataFrame, arm: str) -> dict[str, pd.DataFrame]:
    """reading -> per seed (index), the experiment whose original `arm`'s improved is compared with:
    "equal steps" (the arm's own experiment), "equal FLOPs" (the seed's experiment, of any arm, whose
    original spent the FLOPs this improved did, within FLOPS_TOLERANCE); one reading, "equal steps and
    FLOPs", where the own original already spent the same FLOPs. FLOPs not logged: "equal steps" alone."""
    own = runs[runs["ablation"] == arm].set_index("seed")
    if own["flops_improved"].isna().all():
        return {"equal steps": own}
    if all(_equal(r["flops_improved"], r["flops_original"]) for _, r in own.iterrows()):
        return {"equal steps and FLOPs": own}
    matched = {}
    for seed, r in own.iterrows():
        candidates = runs[runs["seed"] == seed]
        gap = (candidates["flops_original"] - r["flops_improved"]).abs()
        best = candidates.loc[gap.idxmin()] if gap.notna().any() else None
        if best is not None and _equal(best["flops_original"], r["flops_improved"]):
            matched[seed] = best
    flops = pd.DataFrame(list(matched.values()), index=list(matched), columns=runs.columns)
    return {"equal steps": own, "equal FLOPs": flops}


def paired_differences(
    runs: pd.DataFrame, original_arms=frozenset(), primary=None, level: float = 0.95
) -> pd.DataFrame:
    """Per arm (those that change the original supply baselines only), reading and metric: improved −
    original within each seed, its mean, std and Student-t interval over seeds, the paired t-test's p-value
    (scipy.stats.ttest_rel), the p-value Holm-adjusted over every comparison but the primary (`primary`:
    study.primary; its own p-value is used as it is), and whether it is beyond noise: adjusted p < 1 − level."""
    rows = []
    for arm in dict.fromkeys(runs["ablation"]):
        if arm in original_arms:
            continue
        improved = runs[runs["ablation"] == arm].set_index("seed")
        for reading, base in baselines(runs, arm).items():
            for metric in METRICS:
                pair = pd.concat(
                    [improved[f"{metric}_improved"], base[f"{metric}_original"]], axis=1, keys=["i", "o"]
                ).dropna()
                n, mean, sd, lo, hi = mean_ci(pair["i"] - pair["o"], level)
                p = math.nan
                if n >= 2:
                    p = 1.0 if sd == 0 and mean == 0 else float(stats.ttest_rel(pair["i"], pair["o"]).pvalue)
                rows.append(
                    {
                        "ablation": arm,
                        "reading": reading,
                        "metric": metric,
                        "n": n,
                        "diff_mean": mean,
                        "diff_std": sd,
                        "ci_low": lo,
                        "ci_high": hi,
                        "p_value": p,
                    }
                )
    diffs = pd.DataFrame(
        rows, columns=["ablation", "reading", "metric", "n", "diff_mean", "diff_std", "ci_low", "ci_high", "p_value"]
    )
    return holm(diffs, primary, 1 - level)


def is_primary(diffs: pd.DataFrame, primary) -> pd.Series:
    """`primary`: study.primary with `arm` the arm's name in the runs (results.arm_name: ablation at budget)."""
    if primary is None:
        return pd.Series(False, index=diffs.index)
    word = {"steps": "equal steps", "flops": "FLOPs"}[primary.reading]
    return (
        (diffs["ablation"] == primary.arm) & (diffs["metric"] == primary.metric) & diffs["reading"].str.contains(word)
    )


def holm(diffs: pd.DataFrame, primary, alpha: float) -> pd.DataFrame:
    diffs = diffs.copy()
    diffs["primary"] = is_primary(diffs, primary)
    diffs["p_holm"] = np.where(diffs["primary"], diffs["p_value"], np.nan)
    family = ~diffs["primary"] & diffs["p_value"].notna()
    if family.any():
        diffs.loc[family, "p_holm"] = multipletests(diffs.loc[family, "p_value"], alpha=alpha, method="holm")[1]
    diffs["beyond_noise"] = (diffs["p_holm"] < alpha).fillna(False).astype(bool)
    return diffs


def primary_differences(runs: pd.DataFrame, primary) -> pd.Series:
    """Per seed, improved − original of study.primary (its `arm` the arm's name in the runs): the paired
    differences its equivalence reading tests; empty where it has no finished pair."""
    word = {"steps": "equal steps", "flops": "FLOPs"}[primary.reading]
    if not (runs["ablation"] == primary.arm).any():
        return pd.Series(dtype=float)
    improved = runs[runs["ablation"] == primary.arm].set_index("seed")[f"{primary.metric}_improved"]
    for reading, base in baselines(runs, primary.arm).items():
        if word in reading:
            return (improved - base[f"{primary.metric}_original"]).dropna()
    return pd.Series(dtype=float)
