"""Compute curves: every readout against pre-training FLOPs, and the tested recipe − the baseline read from them.

A study with several budgets (study.budgets) trains both recipes of study.compare at each (`pair`: the
baseline, then the tested recipe); the baseline also at the tested recipe's largest FLOPs (an arm that
changes the baseline's steps at the top budget), so that its curve spans every FLOPs the tested recipe spent.
Then, per seed and budget:

- equal steps: the tested recipe − the baseline at the same budget (the tested recipe may spend more FLOPs
  per step);
- equal FLOPs: the tested recipe − the baseline's curve read at the tested run's FLOPs, interpolated linearly
  in log FLOPs between the baseline's own points of that seed (never extrapolated: NaN outside its range, but
  for FLOPs within stats.FLOPS_TOLERANCE of an end, which count as equal there as in the paired reading).

Bands are percentile bootstraps over seeds (resampling whole seeds, so a seed's points stay together); the
verdicts use Student-t intervals (stats.mean_ci), which the bootstrap undercuts at 5 seeds. How the gap
changes with compute is the slope of the gap on log2 FLOPs per seed, averaged over seeds.
The primary gets an equivalence reading (two one-sided t-tests against study.primary.margin) and one verdict
by VERDICT_RULE, the rule's only written form (params.yaml and docs/study.md quote it).
Pure functions of the runs table (results.collect_runs), tested on constructed curves with a known answer.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from ..plumbing.config import RANDOM
from .metrics import METRICS
from .stats import FLOPS_TOLERANCE, mean_ci

BOOTSTRAP = 10_000  # resamples of the seeds
BOOTSTRAP_SEED = 0  # the intervals are a function of the committed rows alone


def points(runs: pd.DataFrame, baseline_arms, ablation_of, *, pair) -> pd.DataFrame:
    """One row per (metric, group, seed, budget): group random | the baseline | the tested recipe (each by its
    name in `pair`, study.compare), with the run's FLOPs. `ablation_of`: arm name -> ablation. The tested
    recipe's points are every arm's that does not change the baseline; the baseline's are every arm's baseline
    side (an arm of `baseline_arms`, which gives the baseline other steps, adds one)."""
    baseline, tested = pair
    rows = []
    for r in runs.to_dict("records"):
        changes_baseline = r["ablation"] in baseline_arms
        for metric in METRICS:
            if not changes_baseline:
                for group in (RANDOM, tested):
                    flops = 0.0 if group == RANDOM else r[f"flops_{tested}"]
                    rows.append(
                        _point(
                            metric, group, r, flops, r.get(f"{metric}_{group}", math.nan), ablation_of(r["ablation"])
                        )
                    )
            rows.append(
                _point(
                    metric,
                    baseline,
                    r,
                    r[f"flops_{baseline}"],
                    r.get(f"{metric}_{baseline}", math.nan),
                    ablation_of(r["ablation"]),
                )
            )
    frame = pd.DataFrame(rows, columns=["metric", "group", "ablation", "seed", "budget", "flops", "value"])
    # the baseline of a seed and budget is one run, whatever arm carried it (the run-cache shares it)
    return frame.drop_duplicates(["metric", "group", "seed", "flops", "value"]).reset_index(drop=True)


def _point(metric, group, r, flops, value, ablation) -> dict:
    return {
        "metric": metric,
        "group": group,
        "ablation": ablation,
        "seed": r["seed"],
        "budget": r["budget"],
        "flops": flops,
        "value": value,
    }


def curve(pts: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Mean, Student-t interval over seeds and mean FLOPs per (metric, group, budget) point of the curves."""
    rows = []
    # the baseline's extra point (more steps at the top budget) is its own point of the curve: FLOPs tell it
    # apart (to within a part in 10^3, so runs of the same schedule group together)
    key = np.round(np.log(pts["flops"].clip(lower=1.0)), 3).rename("flops_key")
    for (metric, group, budget, _), sub in pts.groupby(["metric", "group", "budget", key], sort=True):
        n, mean, _, low, high = mean_ci(sub["value"], level)
        rows.append(
            {
                "metric": metric,
                "group": group,
                "budget": budget,
                "flops": float(sub["flops"].mean()),
                "n": n,
                "mean": mean,
                "ci_low": low,
                "ci_high": high,
            }
        )
    return pd.DataFrame(rows, columns=["metric", "group", "budget", "flops", "n", "mean", "ci_low", "ci_high"])


def gaps(pts: pd.DataFrame, *, pair) -> pd.DataFrame:
    """Per (metric, seed, budget): the tested recipe − the baseline (`pair`, study.compare) at equal steps and
    at equal FLOPs (interpolated)."""
    baseline, tested = pair
    rows = []
    for (metric, seed), sub in pts.groupby(["metric", "seed"], sort=True):
        base = sub[sub["group"] == baseline].dropna(subset=["value"]).sort_values("flops")
        x = np.log(base["flops"].to_numpy(float))
        y = base["value"].to_numpy(float)
        for r in sub[sub["group"] == tested].to_dict("records"):
            same = base[base["budget"] == r["budget"]].sort_values("flops")
            steps = r["value"] - same["value"].iloc[0] if len(same) else math.nan  # fewest steps: the arm-free one
            at = math.log(r["flops"]) if r["flops"] > 0 else math.nan
            slack = math.log1p(FLOPS_TOLERANCE)  # FLOPs within 1% of an end of the curve count as that end
            inside = len(x) >= 1 and x[0] - slack <= at <= x[-1] + slack
            flops = r["value"] - float(np.interp(at, x, y)) if inside else math.nan
            rows.append(
                {
                    "metric": metric,
                    "seed": seed,
                    "budget": r["budget"],
                    "flops": r["flops"],
                    "equal_steps": steps,
                    "equal_flops": flops,
                }
            )
    return pd.DataFrame(rows, columns=["metric", "seed", "budget", "flops", "equal_steps", "equal_flops"])


def bootstrap_mean(values: np.ndarray, level: float, rng: np.random.Generator) -> tuple[float, float]:
    """Percentile interval of the mean over resampled seeds."""
    v = values[~np.isnan(values)]
    if len(v) < 2:
        return math.nan, math.nan
    means = v[rng.integers(0, len(v), size=(BOOTSTRAP, len(v)))].mean(axis=1)
    return tuple(float(q) for q in np.quantile(means, [(1 - level) / 2, (1 + level) / 2]))


def gap_table(g: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Per (metric, budget, reading): n seeds, mean gap, its bootstrap and Student-t intervals over seeds."""
    rows = []
    for (metric, budget), sub in g.groupby(["metric", "budget"], sort=True):
        for reading in ("equal_steps", "equal_flops"):
            v = sub[reading].to_numpy(float)
            rng = np.random.default_rng(BOOTSTRAP_SEED)
            lo, hi = bootstrap_mean(v, level, rng)
            n, gap, _, t_lo, t_hi = mean_ci(v, level)  # Student-t: the bootstrap's is too narrow at 5 seeds
            rows.append(
                {
                    "metric": metric,
                    "budget": budget,
                    "flops": float(sub["flops"].mean()),
                    "reading": reading.replace("_", " ").replace("flops", "FLOPs"),
                    "n": n,
                    "gap": gap,
                    "boot_low": lo,
                    "boot_high": hi,
                    "t_low": t_lo,
                    "t_high": t_hi,
                }
            )
    return pd.DataFrame(
        rows, columns=["metric", "budget", "flops", "reading", "n", "gap", "boot_low", "boot_high", "t_low", "t_high"]
    )


def trend(g: pd.DataFrame, level: float = 0.95, *, pair) -> pd.DataFrame:
    """Per metric: how the equal-FLOPs gap changes per doubling of compute: the mean over seeds of each seed's
    least-squares slope of gap on log2 FLOPs, its Student-t and bootstrap intervals; the word (from the
    t interval) says which way, naming the recipes of `pair` (study.compare)."""
    baseline, tested = pair
    rows = []
    for metric, sub in g.groupby("metric", sort=True):
        slopes = []
        for _, s in sub.dropna(subset=["equal_flops"]).groupby("seed"):
            if s["budget"].nunique() >= 2:
                slopes.append(np.polyfit(np.log2(s["flops"].to_numpy(float)), s["equal_flops"].to_numpy(float), 1)[0])
        v = np.array(slopes, dtype=float)
        n, mean, _, lo, hi = mean_ci(v, level)
        b_lo, b_hi = bootstrap_mean(v, level, np.random.default_rng(BOOTSTRAP_SEED))
        better = 1 if METRICS[metric].higher_better else -1  # a rising MSE gap favours the baseline
        word = (
            "not enough seeds"
            if not np.isfinite(lo)
            else f"moves in the {tested} recipe's favour"
            if better * lo > 0 and better * hi > 0
            else f"moves in the {baseline}'s favour"
            if better * lo < 0 and better * hi < 0
            else "stays within noise"
        )
        rows.append(
            {
                "metric": metric,
                "n": n,
                "slope_per_doubling": mean,
                "ci_low": lo,
                "ci_high": hi,
                "boot_low": b_lo,
                "boot_high": b_hi,
                "trend": word,
            }
        )
    return pd.DataFrame(
        rows, columns=["metric", "n", "slope_per_doubling", "ci_low", "ci_high", "boot_low", "boot_high", "trend"]
    )


# The one verdict rule of the primary, as equivalence() applies it (alpha = 0.05). The report prints it under
# the verdict; params.yaml's study comment and docs/study.md quote it verbatim (tests/test_curves.py checks).
VERDICT_RULE = (
    '"no difference (equivalent within the margin)" when the 90% interval of the paired difference lies '
    'inside -margin to +margin (two one-sided t-tests, TOST p < 0.05); "beyond noise" when its 95% interval '
    "excludes 0 (paired t-test p < 0.05), wherever the 90% interval lies against the margin; "
    '"a difference beyond noise, smaller than the margin" when both hold; "inconclusive" otherwise.'
)


def equivalence(diff: pd.Series, margin: float, alpha: float = 0.05) -> dict:
    """Two one-sided paired t-tests (TOST) of the tested recipe − the baseline against ±margin, and the verdict by
    VERDICT_RULE (at alpha = 0.05): "no difference" when the 1 − 2·alpha interval lies inside ±margin,
    "beyond noise" when the 1 − alpha interval excludes 0 whatever the 1 − 2·alpha interval does at the
    margin, both when both hold, otherwise "inconclusive" (the data allow a difference as large as the
    margin and allow none). `p_t` is the paired t-test's two-sided p-value (the 1 − alpha interval's test).
    """
    v = pd.Series(diff, dtype=float).dropna().to_numpy()
    n = len(v)
    out = {"n": n, "mean": float(v.mean()) if n else math.nan, "margin": margin}
    if n < 2:
        return {
            **out,
            "verdict": "not enough seeds",
            "p_tost": math.nan,
            "p_t": math.nan,
            "ci90_low": math.nan,
            "ci90_high": math.nan,
            "ci95_low": math.nan,
            "ci95_high": math.nan,
        }
    se = v.std(ddof=1) / math.sqrt(n)
    mean = out["mean"]
    if se == 0:
        p_lower = p_upper = 0.0 if abs(mean) < margin else 1.0
    else:
        p_lower = float(stats.t.sf((mean + margin) / se, n - 1))  # H0: diff <= -margin
        p_upper = float(stats.t.cdf((mean - margin) / se, n - 1))  # H0: diff >= +margin
    p_t = (0.0 if mean else 1.0) if se == 0 else float(2 * stats.t.sf(abs(mean) / se, n - 1))
    ci90, ci95 = mean_ci(v, 1 - 2 * alpha)[3:], mean_ci(v, 1 - alpha)[3:]
    equivalent = max(p_lower, p_upper) < alpha
    beyond = ci95[0] > 0 or ci95[1] < 0
    verdict = (
        "a difference beyond noise, smaller than the margin"
        if equivalent and beyond
        else "no difference (equivalent within the margin)"
        if equivalent
        else "beyond noise"
        if beyond
        else "inconclusive"
    )
    return {
        **out,
        "verdict": verdict,
        "p_tost": max(p_lower, p_upper),
        "p_t": p_t,
        "ci90_low": ci90[0],
        "ci90_high": ci90[1],
        "ci95_low": ci95[0],
        "ci95_high": ci95[1],
    }


def correlation(runs: pd.DataFrame, a: str, b: str, *, pair) -> float:
    """Pearson r of two measures over every (experiment, recipe of `pair`) that has both: one finding or two?"""
    xs, ys = [], []
    for recipe in pair:
        both = runs[[f"{a}_{recipe}", f"{b}_{recipe}"]].dropna()
        xs += both.iloc[:, 0].tolist()
        ys += both.iloc[:, 1].tolist()
    return float(np.corrcoef(xs, ys)[0, 1]) if len(xs) >= 3 else math.nan
