"""Mean ± std over seeds, the paired difference the tested recipe − the baseline with its Student-t interval
and paired t-test, read at equal steps and at equal FLOPs, and Holm's correction over every comparison but the
primary.

`runs`: one row per experiment with `seed`, `ablation` (the arm) and `<metric>_<encoder>` columns, including
`flops_<encoder>` (results.py). `pair`: the two recipes compared, study.compare (the baseline, then the
tested recipe; params.yaml's: original, then improved), whose names those columns and the groups carry."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests

from ..plumbing.config import RANDOM
from .metrics import COSTS, METRICS, encoders

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


def summarize(runs: pd.DataFrame, baseline_arms=frozenset(), *, pair) -> pd.DataFrame:
    """Mean and std over seeds per group and metric: random init, the baseline (counted once per seed and
    budget: it does not depend on the arm; "<baseline>-e<budget>" when the study has several budgets), each
    arm that changes the baseline ("<baseline>: <arm>"), and the tested recipe of every other arm
    ("<tested>: <arm>")."""
    baseline, tested = pair
    rows = []
    plain = runs[~runs["ablation"].isin(baseline_arms)]
    budgets = sorted(set(plain["budget"])) if "budget" in plain else [None]
    for metric, m in {**METRICS, **COSTS}.items():
        for encoder in (RANDOM, baseline):
            if encoder not in m.encoders_in(encoders(pair)):
                continue
            for budget in budgets[:1] if encoder == RANDOM else budgets:  # random: no pre-training budget
                at = plain if budget is None or encoder == RANDOM else plain[plain["budget"] == budget]
                per_seed = at.sort_values("seed").groupby("seed").first()
                if len(per_seed):
                    group = encoder if encoder == RANDOM or len(budgets) == 1 else f"{encoder}-e{budget}"
                    rows.append(_summary_row(group, None, metric, per_seed[f"{metric}_{encoder}"]))
        for ablation, sub in runs.groupby("ablation", sort=False):
            side = baseline if ablation in baseline_arms else tested
            rows.append(_summary_row(f"{side}: {ablation}", ablation, metric, sub[f"{metric}_{side}"]))
    return pd.DataFrame(rows)


def _summary_row(group: str, ablation, metric: str, values: pd.Series) -> dict:
    n, mean, sd, _, _ = mean_ci(values)
    return {"group": group, "ablation": ablation, "metric": metric, "n": n, "mean": mean, "std": sd}


def _equal(a: float, b: float) -> bool:
    return bool(np.isfinite(a) and np.isfinite(b) and abs(a - b) <= FLOPS_TOLERANCE * max(abs(a), abs(b)))


def baselines(runs: pd.DataFrame, arm: str, *, pair) -> dict[str, pd.DataFrame]:
    """reading -> per seed (index), the experiment whose baseline `arm`'s tested recipe is compared with:
    "equal steps" (the arm's own experiment), "equal FLOPs" (the seed's experiment, of any arm, whose
    baseline spent the FLOPs this tested recipe did, within FLOPS_TOLERANCE); one reading, "equal steps and
    FLOPs", where the own baseline already spent the same FLOPs. FLOPs not logged: "equal steps" alone."""
    base_flops, tested_flops = (f"flops_{name}" for name in pair)
    own = runs[runs["ablation"] == arm].set_index("seed")
    if own[tested_flops].isna().all():
        return {"equal steps": own}
    if all(_equal(r[tested_flops], r[base_flops]) for _, r in own.iterrows()):
        return {"equal steps and FLOPs": own}
    matched = {}
    for seed, r in own.iterrows():
        candidates = runs[runs["seed"] == seed]
        gap = (candidates[base_flops] - r[tested_flops]).abs()
        best = candidates.loc[gap.idxmin()] if gap.notna().any() else None
        if best is not None and _equal(best[base_flops], r[tested_flops]):
            matched[seed] = best
    flops = pd.DataFrame(list(matched.values()), index=list(matched), columns=runs.columns)
    return {"equal steps": own, "equal FLOPs": flops}


BOTH_WAYS = "equal FLOPs, both ways"


def paired_differences(
    runs: pd.DataFrame, baseline_arms=frozenset(), primary=None, level: float = 0.95, partners=None, *, pair
) -> pd.DataFrame:
    """Per arm (those that change the baseline supply baselines only), reading and metric: the tested recipe
    − the baseline within each seed, its mean, std and Student-t interval over seeds, the paired t-test's p-value
    (scipy.stats.ttest_rel), the p-value Holm-adjusted within its family (`families`; `primary`:
    study.primary, its own p-value used as it is), and whether it is beyond noise: adjusted p < 1 − level.
    `partners`: arm -> the arm that is the same recipe with other steps (results.steps_partners); such a pair
    also gets the reading "equal FLOPs, both ways" (both_ways)."""
    baseline, tested = pair
    rows = []
    for arm in dict.fromkeys(runs["ablation"]):
        if arm in baseline_arms:
            continue
        own = runs[runs["ablation"] == arm].set_index("seed")
        for reading, base in baselines(runs, arm, pair=pair).items():
            for metric in METRICS:
                both = pd.concat(
                    [own[f"{metric}_{tested}"], base[f"{metric}_{baseline}"]], axis=1, keys=["t", "b"]
                ).dropna()
                rows.append(_difference_row(arm, reading, metric, both["t"] - both["b"], level))
        if arm in (partners or {}) and (runs["ablation"] == partners[arm]).any():
            for metric in METRICS:
                d = both_ways(runs, arm, partners[arm], metric, pair=pair)
                rows.append(_difference_row(arm, BOTH_WAYS, metric, d, level))
    diffs = pd.DataFrame(
        rows, columns=["ablation", "reading", "metric", "n", "diff_mean", "diff_std", "ci_low", "ci_high", "p_value"]
    )
    return holm(diffs, primary, 1 - level, partners)


def _difference_row(arm: str, reading: str, metric: str, d: pd.Series, level: float) -> dict:
    """One comparison's per-seed differences `d`: mean, std, Student-t interval and the paired t-test's p
    (a one-sample t-test of the differences: the same p as scipy's ttest_rel on the pairs)."""
    n, mean, sd, lo, hi = mean_ci(d, level)
    p = math.nan
    if n >= 2:
        p = 1.0 if sd == 0 and mean == 0 else float(stats.ttest_1samp(d.dropna(), 0.0).pvalue)
    return {
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


def flops_matched(runs: pd.DataFrame, arm: str, metric: str, *, pair) -> pd.Series:
    """Per seed, the arm's tested recipe − the baseline that spent its FLOPs (within FLOPS_TOLERANCE)."""
    baseline, tested = pair
    own = runs[runs["ablation"] == arm].set_index("seed")[f"{metric}_{tested}"]
    for reading, base in baselines(runs, arm, pair=pair).items():
        if "FLOPs" in reading:
            return (own - base[f"{metric}_{baseline}"]).dropna()
    return pd.Series(dtype=float)


def both_ways(runs: pd.DataFrame, arm: str, partner: str, metric: str, *, pair) -> pd.Series:
    """The tested recipe − the baseline at equal FLOPs matched both ways, per seed: the mean of (the arm's
    tested recipe − the baseline given the arm's FLOPs) and (the partner's tested recipe, the same recipe given
    the baseline's FLOPs, − that baseline), so neither recipe alone is the one stretched. Seeds with both
    halves only."""
    one, other = flops_matched(runs, arm, metric, pair=pair), flops_matched(runs, partner, metric, pair=pair)
    return ((one + other) / 2).dropna()


def reading_of(primary) -> str:
    return {"steps": "equal steps", "flops": "FLOPs", "both": BOTH_WAYS}[primary.reading]


def _matches(reading: pd.Series, primary) -> pd.Series:
    """The readings that are the primary's: at equal steps, at equal FLOPs (one way) or both ways."""
    if primary.reading == "both":
        return reading == BOTH_WAYS
    return reading.str.contains(reading_of(primary)) & (reading != BOTH_WAYS)


def is_primary(diffs: pd.DataFrame, primary) -> pd.Series:
    """`primary`: study.primary with `arm` the arm's name in the runs (results.arm_name: ablation at budget)."""
    if primary is None:
        return pd.Series(False, index=diffs.index)
    return (
        (diffs["ablation"] == primary.arm) & (diffs["metric"] == primary.metric) & _matches(diffs["reading"], primary)
    )


FAMILIES = ("primary", "the primary's arm, other measures", "other arms at equal FLOPs")


def families(diffs: pd.DataFrame, primary, partners=None) -> pd.Series:
    """The Holm family of each comparison, "" for one shown and not tested. (1) The primary. (2) The primary's
    arm at the primary's reading on every other measure. (3) Every other arm (not the primary's steps partner)
    at equal FLOPs, every measure: the single-change arms, one family. Equal-steps readings, and the one-way
    FLOPs readings of a both-ways primary, are descriptive. No primary: every comparison in one family."""
    fam = pd.Series("", index=diffs.index, dtype=object)
    flops = diffs["reading"].str.contains("FLOPs") & (diffs["reading"] != BOTH_WAYS)
    if primary is None:
        fam[:] = FAMILIES[2]
        return fam
    own = (diffs["ablation"] == primary.arm) & _matches(diffs["reading"], primary)
    fam[own] = FAMILIES[1]
    fam[is_primary(diffs, primary)] = FAMILIES[0]
    partner = (partners or {}).get(primary.arm)
    others = (diffs["ablation"] != primary.arm) & (diffs["ablation"] != partner) & flops
    fam[others] = FAMILIES[2]
    return fam


def holm(diffs: pd.DataFrame, primary, alpha: float, partners=None) -> pd.DataFrame:
    """Holm's correction within each family (families()); the primary's p as it is; an untested comparison
    has no adjusted p and is never "beyond noise"."""
    diffs = diffs.copy()
    diffs["primary"] = is_primary(diffs, primary)
    diffs["family"] = families(diffs, primary, partners)
    diffs["p_holm"] = np.where(diffs["primary"], diffs["p_value"], np.nan)
    for family in FAMILIES[1:]:
        members = (diffs["family"] == family) & diffs["p_value"].notna()
        if members.any():
            diffs.loc[members, "p_holm"] = multipletests(diffs.loc[members, "p_value"], alpha=alpha, method="holm")[1]
    diffs["beyond_noise"] = (diffs["p_holm"] < alpha).fillna(False).astype(bool)
    return diffs


def primary_differences(runs: pd.DataFrame, primary, partners=None, *, pair) -> pd.Series:
    """Per seed, the tested recipe − the baseline of study.primary (its `arm` the arm's name in the runs): the
    paired differences its equivalence reading tests; empty where it has no finished pair."""
    baseline, tested = pair
    if not (runs["ablation"] == primary.arm).any():
        return pd.Series(dtype=float)
    if primary.reading == "both":
        partner = (partners or {}).get(primary.arm)
        if partner is None or not (runs["ablation"] == partner).any():
            return pd.Series(dtype=float)
        return both_ways(runs, primary.arm, partner, primary.metric, pair=pair)
    word = reading_of(primary)
    own = runs[runs["ablation"] == primary.arm].set_index("seed")[f"{primary.metric}_{tested}"]
    for reading, base in baselines(runs, primary.arm, pair=pair).items():
        if word in reading:
            return (own - base[f"{primary.metric}_{baseline}"]).dropna()
    return pd.Series(dtype=float)


def primary_terms(runs: pd.DataFrame, primary, partners=None, *, pair) -> dict[int, list[tuple[float, str, str]]]:
    """Per seed, the primary's difference as a weighted sum of encoders' scores: [(weight, rev, encoder)], so
    that it can be recomputed on resampled test images (each encoder's per-image predictions, saved by its
    experiment). Seeds with a finished pair only; the same seeds primary_differences uses."""
    baseline, tested = pair

    def flops_terms(arm: str) -> dict[int, list[tuple[float, str, str]]]:
        own = runs[runs["ablation"] == arm].set_index("seed")
        for reading, base in baselines(runs, arm, pair=pair).items():
            if (primary.reading == "steps" and "steps" in reading) or (
                primary.reading != "steps" and "FLOPs" in reading
            ):
                return {
                    int(s): [(1.0, own.loc[s, "rev"], tested), (-1.0, base.loc[s, "rev"], baseline)]
                    for s in own.index.intersection(base.index)
                    if pd.notna(own.loc[s, f"{primary.metric}_{tested}"])
                    and pd.notna(base.loc[s, f"{primary.metric}_{baseline}"])
                }
        return {}

    if not (runs["ablation"] == primary.arm).any():
        return {}
    if primary.reading != "both":
        return flops_terms(primary.arm)
    partner = (partners or {}).get(primary.arm)
    if partner is None:
        return {}
    one, other = flops_terms(primary.arm), flops_terms(partner)
    return {s: [(w / 2, rev, enc) for w, rev, enc in one[s] + other[s]] for s in sorted(set(one) & set(other))}
