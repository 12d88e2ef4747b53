"""The seeds x ablations study: statistics on constructed results with a known answer, experiments
recognised from `dvc.api.exp_show` rows (constructed, and real ones from `dvc exp save`), the study
section's validation, and `python -m mae_exp.study queue` + `report` end to end through the real
`dvc exp run --temp`."""

from __future__ import annotations

import copy
import json
import math
import os
import re
import signal
import subprocess
import time
from collections import Counter
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml
from scipy import stats

from conftest import BIN, REPO, copy_repo, dvc, git, ran_stages, run
from mae_exp.plumbing.config import ConfigError, as_dict, load_params, parse_params
from mae_exp.study import StudyError
from mae_exp.study import queue as study_queue
from mae_exp.study.design import arm_params, check_design, design_of
from mae_exp.study.edges import choices, edge_counts, summary_warning, unsearched, warning_lines
from mae_exp.study.jobs import Job, sigint_default
from mae_exp.study.metrics import METRICS, encoders
from mae_exp.study.queue import plan
from mae_exp.study.report import sentence
from mae_exp.study.results import (
    collect_runs,
    csv_rows,
    distinct_ablations,
    experiment_rows,
    finetune_curves,
    flatten,
    identify,
    save_rows,
)
from mae_exp.study.stats import mean_ci, paired_differences, summarize

TINY = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
PAIR = ("original", "improved")  # study.compare of params.yaml and configs/tiny.yaml: the baseline, the tested recipe
ENCODERS = encoders(PAIR)


# --------------------------------------------------------------------------- statistics


@pytest.mark.parametrize(
    "level, n, table",
    [  # Student's t table: t(1 - (1 - level) / 2, n - 1)
        (0.95, 2, 12.706),
        (0.95, 3, 4.303),
        (0.95, 5, 2.776),
        (0.95, 11, 2.228),
        (0.90, 6, 2.015),
        (0.99, 4, 5.841),
        (0.95, 1001, 1.962),
    ],
)
def test_the_interval_uses_the_t_table(level, n, table):
    values = [float(i % 7) for i in range(n)]
    count, mean, sd, lo, hi = mean_ci(values, level)
    assert count == n and sd > 0
    assert (hi - mean) / (sd / math.sqrt(n)) == pytest.approx(table, abs=1e-3)
    assert mean - lo == pytest.approx(hi - mean)


def runs_frame(ablation: str, original: dict, diff: dict, seeds=(42, 43, 44), flops=(1e12, 1e12)) -> pd.DataFrame:
    """Experiments with known values: improved = original + diff, per metric, seed by seed (a metric not
    given: 0.3 on both sides); `flops`: (original, improved) FLOPs of every pre-training."""
    rows = []
    for i, seed in enumerate(seeds):
        row = {
            "seed": seed,
            "ablation": ablation,
            "name": f"s{seed}-{ablation}",
            "flops_original": flops[0],
            "flops_improved": flops[1],
            "wall_time_s_original": 60.0,
            "wall_time_s_improved": 66.0,
        }
        for metric in METRICS:  # a metric not given: no experiment has it
            given = metric in original
            change = diff[metric][i] if metric in diff else 0.0
            row[f"{metric}_original"] = original[metric][i] if given else math.nan
            row[f"{metric}_improved"] = original[metric][i] + change if given else math.nan
            row[f"{metric}_random"] = 0.1 + 0.01 * i if given and metric.endswith("top1") else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


ORIGINAL = {
    "linear_mean_top1": [0.50, 0.52, 0.51],
    "ft_top1": [0.60, 0.61, 0.59],
    "hf_error": [0.100, 0.104, 0.098],
    "psnr": [20.0, 20.5, 19.8],
}


def by_metric(diffs: pd.DataFrame, ablation: str) -> dict:
    return {r["metric"]: r for r in diffs[diffs["ablation"] == ablation].to_dict("records")}


def test_a_clear_difference_is_beyond_noise():
    # LP +5, +6, +4 pp: mean 5 pp, sd 1 pp, CI 5 +- 4.303 * 1 / sqrt(3) = [2.52, 7.48] pp
    # HF error -0.010, -0.012, -0.011: lower is better, so an improvement
    diff = {
        "linear_mean_top1": [0.05, 0.06, 0.04],
        "ft_top1": [0.0, 0.0, 0.0],
        "hf_error": [-0.010, -0.012, -0.011],
        "psnr": [-0.5, -0.6, -0.4],
    }
    primary = SimpleNamespace(arm="all", reading="flops", metric="linear_mean_top1")  # taken as it is, not corrected
    d = by_metric(paired_differences(runs_frame("all", ORIGINAL, diff), primary=primary, pair=PAIR), "all")
    lp = d["linear_mean_top1"]
    assert lp["n"] == 3 and lp["diff_mean"] == pytest.approx(0.05)
    assert lp["diff_std"] == pytest.approx(0.01)
    half = 4.3027 * 0.01 / math.sqrt(3)
    assert (lp["ci_low"], lp["ci_high"]) == pytest.approx((0.05 - half, 0.05 + half), abs=1e-5)
    assert lp["beyond_noise"]
    text = sentence(lp, pair=PAIR)
    p = stats.ttest_rel([0.55, 0.58, 0.55], [0.50, 0.52, 0.51]).pvalue
    assert lp["p_value"] == pytest.approx(p) and lp["p_holm"] == lp["p_value"] and lp["primary"]
    assert text == (
        "linear probe mean top-1 (test), equal steps and FLOPs [PRIMARY]: all three improvements change "
        f"it by +5.0 pp (95% CI +2.5 to +7.5 pp, p = {p:.2g}, 3 seeds): beyond seed-to-seed noise, better."
    )
    assert not d["hf_error"]["primary"] and d["hf_error"]["p_holm"] > d["hf_error"]["p_value"]
    assert d["hf_error"]["beyond_noise"] and sentence(d["hf_error"], pair=PAIR).endswith("better.")
    assert "lower is better" in sentence(d["hf_error"], pair=PAIR)
    assert d["psnr"]["beyond_noise"] and sentence(d["psnr"], pair=PAIR).endswith("worse.")
    assert not d["ft_top1"]["beyond_noise"] and "no difference" in sentence(d["ft_top1"], pair=PAIR)


def test_no_difference_stays_within_noise():
    # differences that average to zero: the CI must contain 0
    diff = {
        "linear_mean_top1": [0.02, -0.03, 0.01],
        "ft_top1": [0.01, -0.01, 0.0],
        "hf_error": [0.002, -0.003, 0.001],
        "psnr": [0.3, -0.2, -0.1],
    }
    d = by_metric(paired_differences(runs_frame("laplacian_only", ORIGINAL, diff), pair=PAIR), "laplacian_only")
    for metric in diff:
        row = d[metric]
        assert row["n"] == 3
        assert row["ci_low"] < 0 < row["ci_high"], metric
        assert not row["beyond_noise"]
        assert sentence(row, pair=PAIR).endswith("within seed-to-seed noise."), sentence(row, pair=PAIR)
    assert sentence(d["linear_mean_top1"], pair=PAIR).startswith(
        "linear probe mean top-1 (test), equal steps and FLOPs: the Laplacian loss alone changes it by +0.0 pp (95% CI "
    )


def test_the_paired_interval_is_that_of_scipys_paired_t_test():
    diff = {
        "linear_mean_top1": [0.02, -0.03, 0.01],
        "ft_top1": [0.01, 0.03, 0.02],
        "hf_error": [0.002, -0.003, 0.001],
        "psnr": [0.3, -0.2, 0.4],
    }
    runs = runs_frame("all", ORIGINAL, diff)
    for metric, row in by_metric(paired_differences(runs, level=0.9, pair=PAIR), "all").items():
        if metric not in diff:  # no experiment has it
            continue
        test = stats.ttest_rel(runs[f"{metric}_improved"], runs[f"{metric}_original"])
        ci = test.confidence_interval(confidence_level=0.9)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((ci.low, ci.high)), metric
        assert row["p_value"] == pytest.approx(test.pvalue), metric


def test_one_seed_gives_no_interval():
    diff = {m: [0.05] for m in ORIGINAL}
    runs = runs_frame("all", {m: v[:1] for m, v in ORIGINAL.items()}, diff, seeds=(42,))
    row = by_metric(paired_differences(runs, pair=PAIR), "all")["linear_mean_top1"]
    assert row["n"] == 1 and math.isnan(row["ci_low"]) and not row["beyond_noise"]
    assert "needs at least 2 seeds" in sentence(row, pair=PAIR)


def test_summary_counts_the_original_once_per_seed():
    zero = {m: [0.0, 0.0, 0.0] for m in ORIGINAL}
    runs = pd.concat([runs_frame("all", ORIGINAL, zero), runs_frame("laplacian_only", ORIGINAL, zero)])
    s = summarize(runs, pair=PAIR).set_index(["group", "metric"])
    assert s.loc[("original", "linear_mean_top1"), "n"] == 3  # not 6: both ablations share a seed's original run
    assert s.loc[("original", "linear_mean_top1"), "mean"] == pytest.approx(0.51)
    assert s.loc[("original", "linear_mean_top1"), "std"] == pytest.approx(0.01)
    assert s.loc[("random", "ft_top1"), "mean"] == pytest.approx(0.11)
    assert ("random", "psnr") not in s.index  # no reconstruction from a random encoder
    assert s.loc[("improved: laplacian_only", "psnr"), "n"] == 3


def test_holm_corrects_within_two_families_and_beyond_noise_follows_it():
    """(2) the primary's arm and reading on the other measures, (3) the other arms at equal FLOPs (the
    single-change arms): each family Holm-corrected on its own; an equal-steps reading of an arm that costs
    more is shown, not tested."""
    from statsmodels.stats.multitest import multipletests

    from mae_exp.study.stats import FAMILIES

    diff = {
        "linear_mean_top1": [0.05, 0.06, 0.04],
        "ft_top1": [0.03, 0.05, 0.02],
        "hf_error": [-0.010, -0.012, -0.011],
        "psnr": [0.3, -0.2, 0.4],
    }
    single = [runs_frame(a, ORIGINAL, diff) for a in ("laplacian_only", "uniformity_only")]
    costly = runs_frame("curriculum_only", ORIGINAL, diff, flops=(1.0e12, 1.15e12))
    longer = runs_frame("original_flops_matched", ORIGINAL, {}, flops=(1.15e12, 1.0e12))  # its baseline
    runs = pd.concat([runs_frame("all", ORIGINAL, diff), *single, costly, longer], ignore_index=True)
    primary = SimpleNamespace(arm="all", reading="steps", metric="ft_top1")
    d = paired_differences(runs, {"original_flops_matched"}, primary=primary, pair=PAIR)
    assert d["primary"].sum() == 1
    first = d[d["primary"]].iloc[0]
    assert (first["ablation"], first["metric"], first["p_holm"]) == ("all", "ft_top1", first["p_value"])
    assert first["family"] == FAMILIES[0]
    tested = d["p_value"].notna()  # measures no experiment has: no p-value, in no family
    own = d[(d["family"] == FAMILIES[1]) & tested]
    assert set(own["ablation"]) == {"all"} and len(own) == len(ORIGINAL) - 1
    others = d[(d["family"] == FAMILIES[2]) & tested]
    assert len(others) == 3 * len(ORIGINAL)  # laplacian and uniformity alone, curriculum at equal FLOPs only
    for fam in (own, others):
        assert list(fam["p_holm"]) == pytest.approx(list(multipletests(fam["p_value"], method="holm")[1]))
    untested = d[d["family"] == ""]
    assert set(untested["ablation"]) == {"curriculum_only"} and set(untested["reading"]) == {"equal steps"}
    assert untested["p_holm"].isna().all() and not untested["beyond_noise"].any()
    assert "descriptive, not tested" in sentence(untested[untested["n"] > 0].iloc[0].to_dict(), pair=PAIR)
    assert list(d["beyond_noise"]) == list(d["p_holm"] < 0.05)
    # LP: beyond noise on its own (p 0.013), not after correcting within its family of 12
    lp = others[(others["ablation"] == "laplacian_only") & (others["metric"] == "linear_mean_top1")].iloc[0]
    assert lp["p_value"] < 0.05 and lp["p_holm"] >= 0.05 and not lp["beyond_noise"]
    assert "within seed-to-seed noise" in sentence(lp.to_dict(), pair=PAIR)


def test_the_primary_read_both_ways_averages_the_two_matched_differences_per_seed():
    """The full recipe against the original given its FLOPs, and the full recipe given the original's FLOPs
    against the original: per seed the mean of the two; the one-way readings beside it are descriptive."""
    from mae_exp.study.stats import BOTH_WAYS, primary_differences

    seeds = [1, 2, 3]
    base = {"seed": seeds, "budget": 32}
    o, o_long, i, i_short = [0.40, 0.42, 0.41], [0.43, 0.44, 0.45], [0.41, 0.45, 0.42], [0.39, 0.44, 0.40]

    def frame(arm, original, improved, flops):
        f = pd.DataFrame({**base, "ablation": arm, **{f"{m}_{e}": math.nan for m in METRICS for e in ENCODERS}})
        f["logreg_cls_top1_original"], f["logreg_cls_top1_improved"] = original, improved
        f["flops_original"], f["flops_improved"] = flops
        return f

    runs = pd.concat(
        [
            frame("all", o, i, (1.0e12, 1.145e12)),
            frame("original_flops_matched", o_long, i, (1.146e12, 1.145e12)),
            frame("improved_flops_matched", o, i_short, (1.0e12, 1.0001e12)),
        ],
        ignore_index=True,
    )
    primary = SimpleNamespace(arm="all", reading="both", metric="logreg_cls_top1")
    partners = {"all": "improved_flops_matched"}
    want = [((a - b) + (c - e)) / 2 for a, b, c, e in zip(i, o_long, i_short, o)]
    got = primary_differences(runs, primary, partners, pair=PAIR)
    assert list(got) == pytest.approx(want) and list(got.index) == seeds
    d = paired_differences(runs, {"original_flops_matched"}, primary, partners=partners, pair=PAIR)
    row = d[d["primary"]].iloc[0]
    assert (row["reading"], row["n"]) == (BOTH_WAYS, 3)
    assert row["diff_mean"] == pytest.approx(sum(want) / 3)
    assert row["p_value"] == pytest.approx(stats.ttest_1samp(want, 0.0).pvalue)
    one_way = d[(d["metric"] == "logreg_cls_top1") & (d["reading"] != BOTH_WAYS) & d["reading"].str.contains("FLOPs")]
    assert len(one_way) == 2 and (one_way["family"] == "").all()  # shown beside it, not tested
    # the partner missing (its runs not done): no primary reading yet
    assert primary_differences(runs[runs["ablation"] != "improved_flops_matched"], primary, partners, pair=PAIR).empty


def test_an_arm_that_costs_more_is_read_at_equal_steps_and_at_equal_flops():
    """The full recipe spends 15% more FLOPs than its own original; the original_flops_matched arm's
    original spends the same as the full recipe and is 2 pp better: the equal-FLOPs reading pairs with it."""
    diff = {"linear_mean_top1": [0.03, 0.04, 0.035]}
    full = runs_frame("all", ORIGINAL, diff, flops=(1.0e12, 1.15e12))
    longer = {m: [v + 0.02 for v in values] for m, values in ORIGINAL.items()}
    matched = runs_frame("original_flops_matched", longer, diff, flops=(1.1495e12, 1.15e12))
    runs = pd.concat([full, matched], ignore_index=True)
    d = paired_differences(runs, baseline_arms={"original_flops_matched"}, pair=PAIR)
    lp = d[d["metric"] == "linear_mean_top1"].set_index("reading")
    assert set(d["ablation"]) == {"all"}  # the matched arm supplies a baseline, it is no comparison itself
    assert lp.loc["equal steps", "diff_mean"] == pytest.approx(0.035)
    assert lp.loc["equal FLOPs", "diff_mean"] == pytest.approx(0.015)
    summary = summarize(runs, {"original_flops_matched"}, pair=PAIR).set_index(["group", "metric"])
    assert summary.loc[("original: original_flops_matched", "linear_mean_top1"), "mean"] == pytest.approx(0.53)
    assert summary.loc[("original: original_flops_matched", "flops"), "mean"] == pytest.approx(1.1495e12)
    assert ("improved: original_flops_matched", "linear_mean_top1") not in summary.index
    # FLOPs more than 1% apart are no match: the equal-FLOPs reading then has no pair
    far = runs.assign(flops_original=lambda r: r["flops_original"].where(r["ablation"] == "all", 1.3e12))
    lp = paired_differences(far, baseline_arms={"original_flops_matched"}, pair=PAIR).query(
        "metric == 'linear_mean_top1'"
    )
    assert lp.set_index("reading").loc["equal FLOPs", "n"] == 0


def test_the_study_csv_marks_the_primary_and_has_raw_and_adjusted_p_values(tmp_path):
    from mae_exp.study.report import csv_frame

    runs = runs_frame("all", ORIGINAL, {"linear_mean_top1": [0.05, 0.06, 0.04]})
    diffs = paired_differences(runs, primary=SimpleNamespace(arm="all", reading="flops", metric="ft_top1"), pair=PAIR)
    frame = csv_frame(summarize(runs, pair=PAIR), diffs, pair=PAIR)
    assert {"p_value", "p_holm", "primary", "beyond_noise", "reading"} <= set(frame.columns)
    compared = frame[frame["diff_n"].notna()]
    assert compared["primary"].sum() == 1 and compared.loc[compared["primary"], "metric"].item() == "ft_top1"
    assert "mse" in set(compared["metric"])  # the original's own objective is compared too


def test_the_compared_pair_is_data_other_names_give_the_same_numbers_under_their_names():
    """study.compare names the two recipes: the same experiments with the baseline called `plain` and the
    tested recipe `fancy` (columns ft_top1_fancy, flops_plain, ...; arms that change `plain.` keys supply
    baselines) give the same numbers as with `original` and `improved`, under labels that carry the new names;
    the report's text is the same but for those names. Nothing in the study assumes either name."""
    from mae_exp.evaluation import palette
    from mae_exp.study import curves
    from mae_exp.study.predictions import wanted_encoders
    from mae_exp.study.report import csv_frame, markdown, sentence, verdict_line
    from mae_exp.study.results import baseline_arms, steps_partners
    from mae_exp.study.stats import BOTH_WAYS, primary_differences

    other = ("plain", "fancy")

    def renamed(text: str) -> str:  # a label or text of the default pair, in the other names
        return text.replace("original", "plain").replace("improved", "fancy")

    def design(pair) -> SimpleNamespace:  # params whose study section is all that is read here
        baseline, tested = pair
        ablations = {  # arm names free of recipe names, so that `renamed` leaves them alone
            "all": {},
            "longer_baseline": {f"{baseline}.steps_factor": 1.15},
            "shorter_tested": {f"{tested}.steps_factor": 0.87},
            "laplacian_only": {f"{tested}.lambda_unif": 0.0},
        }
        primary = {**TINY["study"]["primary"], "budget": 32}
        return SimpleNamespace(
            study={**TINY["study"], "compare": list(pair), "budgets": [32], "ablations": ablations, "primary": primary}
        )

    diff = {"linear_mean_top1": [0.05, 0.06, 0.04], "ft_top1": [0.01, -0.01, 0.02], "psnr": [0.3, -0.2, 0.4]}
    longer = {m: [v + 0.02 for v in values] for m, values in ORIGINAL.items()}
    runs = pd.concat(
        [
            runs_frame("all", ORIGINAL, diff, flops=(1.0e12, 1.15e12)),
            runs_frame("longer_baseline", longer, diff, flops=(1.1495e12, 1.15e12)),
            runs_frame("shorter_tested", ORIGINAL, {"linear_mean_top1": [0.01, 0.03, 0.02]}, flops=(1.0e12, 1.0e12)),
            runs_frame("laplacian_only", ORIGINAL, diff),
        ],
        ignore_index=True,
    ).assign(budget=32)
    runs["rev"] = runs["name"]
    plain = runs.rename(columns=renamed)
    assert "ft_top1_fancy" in plain and "flops_plain" in plain and not plain.columns.str.contains("improved").any()

    bases, partners = baseline_arms(design(PAIR)), steps_partners(design(PAIR))
    assert (bases, partners) == ({"longer_baseline"}, {"all": "shorter_tested"})
    assert (baseline_arms(design(other)), steps_partners(design(other))) == (bases, partners)
    primary = SimpleNamespace(arm="all", reading="both", metric="linear_mean_top1", margin=0.015)

    summary, summary_other = summarize(runs, bases, pair=PAIR), summarize(plain, bases, pair=other)
    pd.testing.assert_frame_equal(summary_other, summary.assign(group=summary["group"].map(renamed)))
    assert {"random", "plain", "plain: longer_baseline", "fancy: all"} <= set(summary_other["group"])

    diffs = paired_differences(runs, bases, primary, partners=partners, pair=PAIR)
    diffs_other = paired_differences(plain, bases, primary, partners=partners, pair=other)
    pd.testing.assert_frame_equal(diffs_other, diffs)
    assert diffs_other["primary"].sum() == 1 and (diffs_other["reading"] == BOTH_WAYS).any()
    assert diffs_other["n"].max() == 3
    pd.testing.assert_series_equal(
        primary_differences(plain, primary, partners, pair=other),
        primary_differences(runs, primary, partners, pair=PAIR),
    )

    frame = csv_frame(summary_other, diffs_other, pair=other)
    assert "fancy: all − plain" in set(frame["group"])
    default_frame = csv_frame(summary, diffs, pair=PAIR)
    pd.testing.assert_frame_equal(frame, default_frame.assign(group=default_frame["group"].map(renamed)))
    text = markdown(summary_other, diffs_other, plain, [], pair=other)
    assert "Paired difference fancy − plain (same seed)" in text
    assert text == renamed(markdown(summary, diffs, runs, [], pair=PAIR))
    e = curves.equivalence(primary_differences(plain, primary, partners, pair=other), primary.margin)
    assert "fancy − plain" in verdict_line(primary, e, pair=other)
    row = {**diffs_other.iloc[0].to_dict(), "ablation": "improved_flops_matched"}  # an arm described by name
    assert "given the plain's FLOPs" in sentence(row, pair=other)

    pts = curves.points(runs, bases, lambda arm: arm, pair=PAIR)
    pts_other = curves.points(plain, bases, lambda arm: arm, pair=other)
    pd.testing.assert_frame_equal(pts_other, pts.assign(group=pts["group"].map(renamed)))
    assert set(pts_other["group"]) == {"random", "plain", "fancy"}
    pd.testing.assert_frame_equal(curves.gaps(pts_other, pair=other), curves.gaps(pts, pair=PAIR))
    assert curves.correlation(plain, "linear_mean_top1", "psnr", pair=other) == pytest.approx(
        curves.correlation(runs, "linear_mean_top1", "psnr", pair=PAIR)
    )

    assert wanted_encoders("longer_baseline", bases, other) == ("plain",)
    assert wanted_encoders("all", bases, other) == ("random", "plain", "fancy")
    groups = list(summary["group"].drop_duplicates())
    colours = palette.colours(groups, encoders(PAIR))
    assert palette.colours([renamed(g) for g in groups], encoders(other)) == {renamed(g): c for g, c in colours.items()}


# --------------------------------------------------------------------------- experiments -> runs


def exp_params(seed: int, ablation: str | None = None, **changes) -> dict:
    raw = copy.deepcopy(TINY)
    raw["seed"] = seed
    for dotted, value in (TINY["study"]["ablations"][ablation] if ablation else {}).items():
        raw["improved"][dotted.split(".")[1]] = value
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        raw[section][key] = value
    del raw["study"]  # an experiment made before the study section existed
    return raw


def exp_metrics(lp_original: float, lp_improved: float) -> dict:
    """The metrics files of one experiment, in the pipeline's layout (one DVCLive directory per stage)."""
    m = {
        f"metrics/linear_probe/{e}/metrics.json": {"linear_mean_top1": v, "linear_mean_val_top1": v - 0.01}
        for e, v in (("random", 0.1), ("original", lp_original), ("improved", lp_improved))
    }
    m.update(
        {
            f"metrics/finetune/{e}/metrics.json": {"top1": 0.2, "val_top1": 0.19}
            for e in ("random", "original", "improved")
        }
    )
    m["metrics/visualize/metrics.json"] = {
        "original": {"hf_error": 0.1, "psnr": 20.0, "mse": 0.5},
        "improved": {"hf_error": 0.09, "psnr": 20.1, "mse": 0.4},
    }
    return m


def exp_row(name, params: dict, metrics: dict, created, state=None, typ="branch_base") -> dict:
    """A row as dvc.api.exp_show gives it: a key alone names its column unless two files have it, numbers
    as floats, anything else as str()."""
    files = {"params.yaml": params, **metrics}
    count = Counter(k for d in files.values() for k in flatten(d))
    row = {
        "Experiment": name,
        "rev": f"{abs(hash((name, created))):07x}"[:7],
        "typ": typ,
        "Created": created,
        "parent": None,
        "State": state,
        "Executor": None,
    }
    for path, d in files.items():
        for k, v in flatten(d).items():
            number = isinstance(v, (int, float)) and not isinstance(v, bool)
            row[k if count[k] == 1 else f"{path}:{k}"] = float(v) if number else str(v)
    return row


def test_experiments_are_recognised_by_their_params():
    current = load_params(REPO / "configs" / "tiny.yaml")
    rows = [
        exp_row(None, exp_params(42), exp_metrics(0.5, 0.6), None, typ="baseline") | {"rev": "workspace"},
        exp_row(None, exp_params(42), exp_metrics(0.5, 0.6), "2026-01-01T09:00:00", typ="baseline"),
        exp_row("s42-all", exp_params(42), exp_metrics(0.5, 0.6), "2026-01-01T10:00:00"),
        exp_row("s42-lap", exp_params(42, "laplacian_only"), exp_metrics(0.5, 0.55), "2026-01-01T10:05:00"),
        exp_row("s43-all", exp_params(43), exp_metrics(0.4, 0.5), "2026-01-01T10:10:00"),
        exp_row("s43-all-again", exp_params(43), exp_metrics(0.4, 0.45), "2026-01-01T11:00:00"),
        exp_row("other-lr", exp_params(42, pretrain__base_lr=0.01), exp_metrics(0, 0), "2026-01-01T12:00:00"),
        exp_row("freq02", exp_params(42, improved__lambda_freq=0.2), exp_metrics(0, 0), "2026-01-01T12:00:00"),
        exp_row("yes", exp_params(44, model__norm_pix_loss="yes"), exp_metrics(0, 0), "2026-01-01T12:00:00"),
        exp_row("broken", exp_params(44), {}, "2026-01-01T12:00:00", state="Failed"),
        exp_row("waiting", exp_params(44), {}, "2026-01-01T12:00:00", state="Queued"),
    ]
    runs, notes = collect_runs(rows, TINY["study"], current)
    got = {(r["seed"], r["ablation"]): (r["name"], r["linear_mean_top1_improved"]) for r in runs.to_dict("records")}
    assert got == {
        (42, "all"): ("s42-all", 0.6),
        (43, "all"): ("s43-all-again", 0.45),  # the newer one
        (42, "laplacian_only"): ("s42-lap", 0.55),
    }
    s42 = runs.iloc[0].to_dict()
    assert (
        s42["linear_mean_top1_random"],
        s42["ft_top1_original"],
        s42["hf_error_improved"],
        s42["psnr_original"],
    ) == (0.1, 0.2, 0.09, 20.0)
    assert math.isnan(s42["hf_error_random"])  # no reconstruction from a random encoder
    text = " ".join(notes)
    assert "older duplicate" in text and "s43-all" in text
    assert "params match no study arm" in text
    assert "params do not validate" in text and "model.norm_pix_loss" in text


def test_an_experiment_is_recognised_by_a_fine_tuning_setting_its_design_adds():
    """A study whose overrides add finetune.per_encoder entries (keys params.yaml lacks) still finds its
    experiments by their params, and not one whose entry differs."""
    raw = copy.deepcopy(TINY)
    own = {"finetune.per_encoder.original.base_lr": [8e-3], "finetune.per_encoder.original.layer_decay": [0.85]}
    raw["study"]["overrides"] = own
    current = parse_params(raw)
    params = exp_params(42)
    params["finetune"]["per_encoder"] = {"original": {"base_lr": [8e-3], "layer_decay": [0.85]}}
    other = copy.deepcopy(params)
    other["finetune"]["per_encoder"]["original"]["layer_decay"] = [0.65]
    rows = [
        exp_row("s42-all", params, exp_metrics(0.5, 0.6), "2026-01-01T10:00:00"),
        exp_row("s42-other", other, exp_metrics(0.5, 0.6), "2026-01-01T10:05:00"),
        exp_row("s43-plain", exp_params(43), exp_metrics(0.5, 0.6), "2026-01-01T10:10:00"),
    ]
    runs, notes = collect_runs(rows, raw["study"], current)
    assert list(runs["name"]) == ["s42-all"]
    assert "left out 2 experiments: params match no study arm" in " ".join(notes)


def save_experiment(repo, name: str, params: dict, metrics: dict) -> None:
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for path, value in metrics.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(json.dumps(value))
    for encoder in ("random", "original", "improved"):  # DVCLive's fine-tuning curve: two epochs, ending at top1
        curve = repo / f"metrics/finetune/{encoder}/plots/metrics/val_top1.tsv"
        curve.parent.mkdir(parents=True, exist_ok=True)
        top1 = metrics.get(f"metrics/linear_probe/{encoder}/metrics.json", {}).get("linear_mean_top1", 0.0)
        curve.write_text(f"step\tval_top1\n10\t{top1 / 2}\n20\t{top1}\n")
    if name:
        dvc("exp", "save", "-n", name, cwd=repo)


@pytest.mark.slow
def test_real_dvc_experiments_and_their_csv_give_the_same_runs(tmp_path):
    """Experiments saved by the real `dvc exp save`, read back through dvc.api.exp_show and through a
    saved `dvc exp show --csv`: DVC's own column names, values and times."""
    repo = tmp_path / "exps"
    repo.mkdir()
    git("init", "-q", "-b", "main", cwd=repo)
    dvc("init", "-q", cwd=repo)
    save_experiment(repo, "", TINY, exp_metrics(0.5, 0.5))
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"metrics": sorted(exp_metrics(0, 0))}))
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "baseline", cwd=repo)
    with_study = {"study": TINY["study"]}
    save_experiment(repo, "s42-all", exp_params(42) | with_study, exp_metrics(0.5, 0.6))
    save_experiment(repo, "s43-all", exp_params(43) | with_study, exp_metrics(0.4, 0.5))
    save_experiment(repo, "lap", exp_params(43, "laplacian_only") | with_study, exp_metrics(0.4, 0.55))
    save_experiment(repo, "other-lr", exp_params(42, pretrain__base_lr=0.01) | with_study, exp_metrics(0, 0))
    (repo / "notes.txt").write_text("a commit between runs\n")  # the newer s43-all is on another commit
    git("add", "notes.txt", cwd=repo)
    git("commit", "-q", "-m", "notes", cwd=repo)
    time.sleep(1.1)  # commit times are in seconds
    save_experiment(repo, "s43-all-again", exp_params(43) | with_study, exp_metrics(0.4, 0.45))

    current = load_params(REPO / "configs" / "tiny.yaml")
    runs, notes = collect_runs(experiment_rows(root=repo), TINY["study"], current)
    got = {(r["seed"], r["ablation"]): (r["name"], r["linear_mean_top1_improved"]) for r in runs.to_dict("records")}
    assert got == {
        (42, "all"): ("s42-all", 0.6),
        (43, "all"): ("s43-all-again", 0.45),
        (43, "laplacian_only"): ("lap", 0.55),
    }
    assert (runs["ft_top1_random"] == 0.2).all() and (runs["psnr_improved"] == 20.1).all()
    assert (runs["hf_error_original"] == 0.1).all() and (runs["linear_mean_top1_original"] > 0.3).all()
    assert notes == [
        "left out 1 experiment: params match no study arm (params.yaml with study.overrides, one of "
        "study.budgets and one of study.ablations)",
        "left out 1 older duplicate(s) of a seed and ablation: s43-all",
    ]

    saved = tmp_path / "shown.csv"
    saved.write_text(dvc("exp", "show", "--csv", "--all-commits", cwd=repo).stdout)
    from_csv, csv_notes = collect_runs(csv_rows(saved), TINY["study"], current)
    pd.testing.assert_frame_equal(from_csv, runs)
    # the report's own saved copy of the experiments it used reads back as the same runs
    save_rows(experiment_rows(root=repo), runs["rev"], tmp_path / "kept.csv")
    kept, _ = collect_runs(csv_rows(tmp_path / "kept.csv"), TINY["study"], current)
    pd.testing.assert_frame_equal(kept, runs)

    # each experiment's fine-tuning curve, read from its own commit through dvc.api
    curves, read, curve_notes = finetune_curves(runs, set(), repo, pair=PAIR)
    assert curve_notes == []
    assert len(read) == len(curves) and set(read["rev"]) <= set(runs["rev"])
    last = curves[curves["epoch"] == 2].set_index(["group", "seed"])["val_top1"]
    assert last[("improved: all", 43)] == 0.45 and last[("improved: laplacian_only", 43)] == 0.55  # the newer s43-all
    assert last[("original", 42)] == 0.5 and last[("random", 43)] == 0.1
    assert len(curves) == 2 * (2 + 2 + 3)  # two epochs: random and original once per seed (2), improved per run (3)
    assert csv_notes == notes


def test_a_bad_saved_csv_is_one_line(tmp_path):
    proc = study("report", "--from-csv", "missing.csv", cwd=tmp_path, check=False)
    assert proc.returncode == 1
    assert proc.stdout.strip() == (
        "error: missing.csv not found: save one with `dvc exp show --csv --all-commits > missing.csv`"
    )
    (tmp_path / "table.csv").write_text("a,b\n1,2\n")
    proc = study("report", "--from-csv", "table.csv", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "table.csv is not the output of `dvc exp show --csv`" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


# --------------------------------------------------------------------------- settings at the edge of their grid

EDGE_GRIDS = {  # the probe's grids in these experiments' params: 4 lrs, 3 ks, 3 temperatures
    "linear_probe__lr": [0.03, 0.1, 0.3, 1.0],
    "linear_probe__knn_k": [10, 20, 50],
    "linear_probe__knn_temperature": [0.03, 0.07, 0.2],
}


def chosen_row(name: str, seed: int, created: str, lr: dict | None = None, k: dict | None = None) -> dict:
    """An experiment whose probes chose `lr` (linear_cls) and `k` (knn_cls) for the encoders named, every other
    choice inside its grid with no weight decay (a natural bound, not an edge); fine-tuning from its one-point
    grid; no logistic probe (an experiment from before it)."""
    metrics = exp_metrics(0.5, 0.6)
    for e in ("random", "original", "improved"):
        metrics[f"metrics/linear_probe/{e}/metrics.json"]["chosen"] = {
            "linear_cls": {"lr": (lr or {}).get(e, 0.1), "weight_decay": 0.0},
            "knn_cls": {"k": (k or {}).get(e, 20), "temperature": 0.07},
        }
        metrics[f"metrics/finetune/{e}/metrics.json"]["chosen"] = {"base_lr": 1e-3, "layer_decay": 0.75}
    return exp_row(name, exp_params(seed, **EDGE_GRIDS), metrics, created)


def test_choices_at_an_edge_are_counted_per_readout_and_encoder_and_over_ten_percent_is_flagged(tmp_path):
    # ten experiments: the original's linear_cls at the grid's highest lr in 2 (20%: flagged), its knn_cls at
    # the highest k in 1 (10%: not more than 10%), every other choice inside its grid
    rows = [
        chosen_row(
            f"s{seed}",
            seed,
            f"2026-01-01T10:0{seed}:00",
            lr={"original": 1.0} if seed < 2 else None,
            k={"original": 50} if seed == 0 else None,
        )
        for seed in range(10)
    ]
    chosen = choices(rows, pair=PAIR)
    assert set(chosen["readout"]) == {"linear_cls", "knn_cls", "finetune"}  # no logistic probe then: skipped
    counts = edge_counts(chosen, pair=PAIR).set_index(["readout", "encoder"])
    columns = ["searched", "at_edge", "share", "sides", "over_limit"]
    assert counts.loc[("linear_cls", "original"), columns].tolist() == [10, 2, 0.2, "lr highest 2", True]
    assert counts.loc[("linear_cls", "all"), columns].tolist() == [30, 2, 0.0667, "lr highest 2", False]
    assert counts.loc[("linear_cls", "improved"), columns].tolist() == [10, 0, 0.0, "", False]  # 0 weight decay
    assert counts.loc[("knn_cls", "original"), columns].tolist() == [10, 1, 0.1, "k highest 1", False]
    assert unsearched(chosen) == ["finetune"] and "finetune" not in counts.index.get_level_values("readout")
    assert warning_lines(counts.reset_index()) == [
        "linear_cls chose an edge of its grid in 7% of encoders (2 of 30; random 0%, original 20%, improved 0%), "
        "over 10% for original: its grid must be widened before its numbers are read (lr highest 2)"
    ]
    assert summary_warning(counts.reset_index(), "linear_cls_top1") == (
        "1 readout chose an edge of its grid more than 10% of the time (linear_cls 7%, original's 20%): widen its "
        "grid before reading its numbers; the primary's readout, linear_cls, is it (see \"Settings at the edge of "
        'their grid")'
    )
    # the same from the saved `dvc exp show --csv` rows: the grids parsed from their text ("[0.03, 0.1, 0.3, 1.0]")
    save_rows(rows, [r["rev"] for r in rows], tmp_path / "saved.csv")
    assert edge_counts(choices(csv_rows(tmp_path / "saved.csv"), pair=PAIR), pair=PAIR).equals(
        edge_counts(chosen, pair=PAIR)
    )


def test_the_report_warns_of_a_readout_at_an_edge_beside_the_verdict(tmp_path):
    from mae_exp.study.report import report

    raw = copy.deepcopy(TINY)
    raw["linear_probe"].update({key.split("__")[1]: grid for key, grid in EDGE_GRIDS.items()})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    rows = [  # the improved's linear_cls at the grid's lowest lr in one of three seeds: 1 of 9 encoders, 11%
        chosen_row(f"s{seed}-all", seed, f"2026-01-01T10:0{i}:00", lr={"improved": 0.03} if seed == 42 else None)
        for i, seed in enumerate((42, 43, 44))
    ]
    out = {name: tmp_path / name for name in ("study.csv", "study.md", "study.png", "study_edges.csv")}
    report(
        rows,
        tmp_path / "params.yaml",
        *(out[n] for n in ("study.csv", "study.md", "study.png")),
        curves=False,
        edges_csv=out["study_edges.csv"],
        arms_png=tmp_path / "study_arms.png",
    )
    md = out["study.md"].read_text()
    warning = (
        "**Warning:** 1 readout chose an edge of its grid more than 10% of the time (linear_cls 11%): widen its "
        'grid before reading its numbers (see "Settings at the edge of their grid").'
    )
    assert md.startswith("Primary (") and warning in md and md.index(warning) < md.index("| encoder | seeds |")
    assert "**Settings at the edge of their grid**" in md
    assert "| linear_cls | 0 of 3 (0%) | 0 of 3 (0%) | 1 of 3 (33%) ⚠ | 1 of 9 (11%) ⚠ | lr lowest 1 |" in md
    assert "| knn_cls | 0 of 3 (0%) | 0 of 3 (0%) | 0 of 3 (0%) | 0 of 9 (0%) | – |" in md
    assert "- **Warning:** linear_cls chose an edge of its grid in 11% of encoders (1 of 9;" in md
    saved = pd.read_csv(out["study_edges.csv"]).set_index(["readout", "encoder"])
    assert saved.loc[("linear_cls", "improved"), ["searched", "at_edge", "over_limit"]].tolist() == [3, 1, True]


# --------------------------------------------------------------------------- the study section


def with_study(**study) -> dict:
    raw = copy.deepcopy(TINY)
    raw["study"].update(study)
    return raw


def test_the_study_section_parses_into_overrides():
    p = parse_params(TINY)
    assert design_of(p).seeds == (42, 43, 44)
    assert list(design_of(p).ablations) == [
        "all",
        "original_flops_matched",
        "curriculum_only",
        "laplacian_only",
        "uniformity_only",
    ]
    assert arm_params(p, "original_flops_matched").original.steps_factor == 1.1036
    assert arm_params(p, "original_flops_matched").improved == p.improved  # the full recipe against a longer original
    lap = arm_params(p, "laplacian_only").improved
    assert (lap.mask_ratio_start, lap.curriculum_fraction, lap.lambda_freq, lap.lambda_unif) == (
        lap.mask_ratio,
        0.0,
        p.improved.lambda_freq,
        0.0,
    )
    assert arm_params(p, "all").improved == p.improved
    distinct_ablations(p)


@pytest.mark.parametrize(
    "study, words",
    [
        ({"seeds": []}, ["study.seeds", "must not be empty"]),
        ({"seeds": [42, "x"]}, ["study.seeds[1]", "integer"]),
        ({"seeds": [42, 42]}, ["study.seeds", "repeat", "42"]),
        (
            {"ablations": {"x": {"improved.lamda_freq": 0.0}}},
            ["study.ablations.x", "'improved.lamda_freq'", "lambda_freq"],
        ),
        ({"ablations": {"x": {"pretrain.epochs": 1}}}, ["study.ablations.x", "'pretrain.epochs'"]),
        ({"overrides": {"finetune.epochs": 0}}, ["study.overrides", "finetune.epochs", "greater than or equal to 1"]),
        ({"overrides": {"finetune.epocs": 3}}, ["study.overrides", "unknown key", "finetune.epocs"]),
        ({"overrides": {"seed": 3}}, ["study.overrides", "'seed'"]),
        (
            {"primary": {"arm": "nope", "budget": 3, "reading": "flops", "metric": "ft_top1", "margin": 0.01}},
            ["study.primary.arm", "'nope'"],
        ),
        (
            {"primary": {"arm": "all", "budget": 3, "reading": "work", "metric": "ft_top1", "margin": 0.01}},
            ["study.primary.reading", "'steps'"],
        ),
        (
            {"primary": {"arm": "all", "budget": 5, "reading": "flops", "metric": "ft_top1", "margin": 0.01}},
            ["study.primary.budget", "does not run at 5"],
        ),
        (
            {"primary": {"arm": "all", "budget": 3, "reading": "flops", "metric": "ft_top1", "margin": 0}},
            ["study.primary.margin", "greater than 0"],
        ),
        ({"budgets": []}, ["study.budgets", "must not be empty"]),
        ({"overrides": {"pretrain.epochs": 2}}, ["study.overrides", "study.budgets"]),
        (
            {"ablations": {"x": {"improved.lambda_freq": "lots"}}},
            ["study.ablations.x", "improved.lambda_freq", "a valid number"],
        ),
        (
            {"ablations": {"x": {"improved.mask_ratio_start": 1.5}}},
            ["study.ablations.x", "improved.mask_ratio_start", "less than 1"],
        ),
        (
            {"ablations": {"x": {"improved.lambda_unif": -1}}},
            ["study.ablations.x", "improved.lambda_unif", "greater than or equal to 0"],
        ),
        ({"ablations": {"no spaces": {}}}, ["study.ablations", "'no spaces'"]),
        ({"ablations": {}}, ["study.ablations", "must not be empty"]),
        ({"ablations": {"x": [1]}}, ["study.ablations.x", "mapping"]),
        ({"colour": "red"}, ["unknown key", "study.colour"]),
        ({"compare": ["original", "original"]}, ["study.compare", "must not repeat"]),
        ({"compare": ["original", "smae"]}, ["study.compare", "'smae' is not in recipes (original, improved)"]),
        ({"compare": ["original"]}, ["study.compare", "must name two recipes", "got ['original']"]),
    ],
)
def test_bad_study_sections_name_the_key(study, words):
    if "ablations" in study:  # the primary names an arm
        study = {
            "primary": {
                "arm": next(iter(study["ablations"]), "all"),
                "budget": TINY["study"]["budgets"][0],
                "reading": "steps",
                "metric": "ft_top1",
                "margin": 0.015,
            }
            if isinstance(study["ablations"], dict) and all(re.fullmatch(r"\w+", k) for k in study["ablations"])
            else TINY["study"]["primary"],
            **study,
        }
    with pytest.raises(ConfigError) as err:  # stages ignore the section: the study checks it (and each arm's recipes)
        check_design(parse_params(with_study(**study)))
    for word in words:
        assert word in str(err.value)


def test_a_missing_study_section_is_an_error():
    raw = copy.deepcopy(TINY)
    del raw["study"]
    with pytest.raises(ConfigError, match="missing key 'study'"):
        parse_params(raw)


def test_two_ablations_with_the_same_recipe_are_refused():
    p = parse_params(
        with_study(ablations={"all": {}, "same": {"improved.lambda_freq": TINY["improved"]["lambda_freq"]}})
    )
    with pytest.raises(StudyError, match="study.ablations.same gives the same params as study.ablations.all"):
        distinct_ablations(p)


def test_plan_names_and_overrides():
    p = parse_params(TINY)
    jobs = plan(p, [1, 2], ["all", "uniformity_only"])
    assert [j.name for j in jobs] == ["s1-all", "s2-all", "s1-uniformity_only", "s2-uniformity_only"]
    assert (jobs[2].seed, jobs[2].ablation) == (1, "uniformity_only")
    assert jobs[2].overrides == (
        "seed=1",
        "pretrain.epochs=3",
        "improved.mask_ratio_start=0.75",
        "improved.curriculum_fraction=0.0",
        "improved.lambda_freq=0.0",
    )
    with pytest.raises(StudyError, match="unknown ablation 'nope'"):
        plan(p, None, ["nope"])
    with pytest.raises(StudyError, match="unknown budget 5"):
        plan(p, None, None, [5])


def test_a_curve_study_plans_each_ablation_at_its_budgets():
    """Several budgets: arms are <ablation>-e<budget>; ablation_budgets restricts an arm to some of them."""
    raw = copy.deepcopy(TINY)
    raw["study"].update(
        budgets=[1, 2, 4],
        ablation_budgets={"original_flops_matched": [4]},
        ablations={"all": {}, "original_flops_matched": {"original.steps_factor": 1.1}},
        primary={**raw["study"]["primary"], "budget": 4, "reading": "flops"},
    )
    p = parse_params(raw)
    jobs = plan(p, [7], None)
    assert [j.name for j in jobs] == ["s7-all-e1", "s7-all-e2", "s7-all-e4", "s7-original_flops_matched-e4"]
    assert jobs[3].overrides == ("seed=7", "pretrain.epochs=4", "original.steps_factor=1.1")
    assert [j.name for j in plan(p, [7], ["all"], [2])] == ["s7-all-e2"]
    matched_at_2 = {**raw["study"]["primary"], "arm": "original_flops_matched", "budget": 2}
    with pytest.raises(ConfigError, match="study.primary.budget: 'original_flops_matched' does not run at 2"):
        design_of(parse_params({**raw, "study": {**raw["study"], "primary": matched_at_2}}))
    raw["study"]["ablation_budgets"] = {"nope": [4]}
    with pytest.raises(ConfigError, match="study.ablation_budgets: 'nope' is not in ablations"):
        design_of(parse_params(raw))


def test_a_seeds_first_arm_runs_before_its_others_and_two_seeds_run_side_by_side(tmp_path, monkeypatch):
    """The real runner, each child a real process logging when it started and ended: at -j 2 the first arm of
    a seed (it trains the branches the others take from the run-cache) never runs beside another arm of that
    seed; another seed's first arm does."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPUs: the CPU's way
    times = tmp_path / "times"
    times.mkdir()

    def command(job, names_here, mode):
        return ["sh", "-c", f"date +%s.%N > {times / job.name}; sleep 0.6; date +%s.%N >> {times / job.name}"]

    p = parse_params(TINY)
    todo = plan(p, [1, 2], ["all", "original_flops_matched", "uniformity_only"])
    assert study_queue.run(todo, 2, 0.05, set(), logs=tmp_path / "logs", command=command) == 0
    span = {j.name: [float(t) for t in (times / j.name).read_text().split()] for j in todo}

    def overlap(a, b):
        return span[a][0] < span[b][1] and span[b][0] < span[a][1]

    assert overlap("s1-all", "s2-all")  # two seeds' first arms together
    for seed in (1, 2):
        for arm in ("original_flops_matched", "uniformity_only"):
            assert span[f"s{seed}-{arm}"][0] >= span[f"s{seed}-all"][1]  # after its seed's first arm
    # one seed at -j 2: its first arm alone, then two of its other arms together
    todo = plan(p, [3], ["all", "original_flops_matched", "uniformity_only"])
    assert study_queue.run(todo, 2, 0.05, set(), logs=tmp_path / "logs", command=command) == 0
    span.update({j.name: [float(t) for t in (times / j.name).read_text().split()] for j in todo})
    assert not overlap("s3-all", "s3-original_flops_matched") and not overlap("s3-all", "s3-uniformity_only")
    assert overlap("s3-original_flops_matched", "s3-uniformity_only")


def test_on_a_cpu_the_queue_runs_two_experiments_with_half_the_cores_each(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    p = parse_params({**TINY, "threads": 0})  # every core
    assert study_queue.default_jobs() == 2
    assert p.threads == 0 and study_queue.child_threads(p, 2) == ("threads=4",)
    assert study_queue.child_threads(p, 1) == ()  # alone: every core, as params.yaml says
    assert study_queue.child_threads(parse_params({**TINY, "threads": 3}), 2) == ()  # params.yaml fixed it
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert study_queue.default_jobs() == 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert study_queue.default_jobs() == 1 and study_queue.child_threads(p, 2) == ()


def test_the_threads_an_experiment_ran_with_are_no_part_of_its_arm():
    """The queue sets `threads` per child; an experiment is still recognised by the rest of its params."""
    p = parse_params(TINY)
    row = {"params.yaml:" + k: v for k, v in flatten(as_dict(p)).items()}
    row.update({"params.yaml:seed": 5.0, "params.yaml:threads": 2.0, "params.yaml:pretrain.epochs": 3.0})
    assert identify(row, TINY["study"], p) == (5, "all")


def test_no_stage_reads_the_study_section():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        stage = stage.get("do", stage)
        assert not any(str(p).split(".")[0] == "study" for p in stage.get("params", [])), name


TOY_PIPELINE = """\
stages:
  a:
    cmd: python -c "import yaml; p = yaml.safe_load(open('params.yaml')); open('a.txt', 'w').write(str(p['x']))"
    params: [x]
    outs: [a.txt]
  b:
    cmd: >-
      python -c "import time, yaml; p = yaml.safe_load(open('params.yaml')); print('b: sleeping', flush=True);
      time.sleep(p['sleep']);
      assert p['y'] != 13, 'y is 13'; open('b.txt', 'w').write(str(p['y']))"
    deps: [a.txt]
    params: [y, sleep]
    outs: [b.txt]
"""


@pytest.fixture
def toy_repo(tmp_path, monkeypatch):
    """A two-stage DVC pipeline that runs in a second (stage b sleeps `sleep` s, fails when y is 13): the runner
    on the real dvc and git, without training anything."""
    repo = tmp_path / "toy"
    repo.mkdir()
    (repo / "dvc.yaml").write_text(TOY_PIPELINE)
    (repo / "params.yaml").write_text("x: 1\ny: 2\nsleep: 0\n")
    (repo / ".gitignore").write_text("/scratch/\n")
    git("init", "-q", "-b", "main", cwd=repo)
    dvc("init", "-q", cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "toy", cwd=repo)
    monkeypatch.chdir(repo)
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ['PATH']}")  # the stages' `python`
    return repo


def test_the_runner_names_failed_experiments_and_their_logs(toy_repo, capsys):
    jobs = [Job("s1-ok", 1, "ok", ("x=3",)), Job("s1-bad", 1, "bad", ("y=13",))]
    assert study_queue.run(jobs, jobs=2, poll_s=0.2, names_here=set()) == 1
    printed = capsys.readouterr()
    assert "1 of 2 experiments succeeded" in printed.out
    assert "failed: s1-bad (exit 255): see scratch/study/s1-bad.log: ERROR: failed to reproduce 'b'" in printed.out
    assert "y is 13" in (toy_repo / "scratch" / "study" / "s1-bad.log").read_text()
    assert "s1-ok: running" in printed.err and "s1-bad: failed (exit 255)" in printed.err  # one line per change
    assert study_queue.experiment_names() == {"s1-ok"}  # a real DVC experiment; the workspace untouched
    assert (toy_repo / "params.yaml").read_text() == "x: 1\ny: 2\nsleep: 0\n"
    assert not (toy_repo / "a.txt").exists()
    # the same name again on this commit: -f, else DVC refuses it
    assert study_queue.run(jobs[:1], jobs=1, poll_s=0.2, names_here={"s1-ok"}) == 0


def sigint_ignored() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("launched", "stop_with"),
    [(sigint_default, signal.SIGINT), (sigint_ignored, signal.SIGTERM)],
    ids=["ctrl-c-at-a-terminal", "kill-of-a-background-runner"],
)
def test_ctrl_c_stops_the_running_experiment_and_the_same_command_finishes_it(toy_repo, launched, stop_with):
    """SIGINT to the runner (what Ctrl-C sends it: the experiments have their own process group) stops
    the running experiment within seconds, exit 130; run again, its finished stage comes from the run-cache.
    A runner started in the background (`cmd &` in a script) inherits SIGINT ignored and is stopped with
    SIGTERM (the study's CLI maps it to Ctrl-C); its experiments must still stop on the SIGINT it sends them
    (before, they inherited the ignore and ran on until SIGKILLed 60 s later). The pytest process's own
    SIGINT depends on how it was started, so each case sets the runner's."""
    script = (
        "import signal, sys; from mae_exp.study.__main__ import _interrupted; "
        "from mae_exp.study.jobs import Job; from mae_exp.study.queue import run; "
        "signal.signal(signal.SIGTERM, _interrupted); "
        "sys.exit(run([Job('s1-slow', 1, 'slow', ('x=5', 'sleep=60'))], jobs=1, poll_s=0.2, names_here=set()))"
    )
    proc = subprocess.Popen(
        [str(BIN / "python"), "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=launched,
    )
    log = toy_repo / "scratch" / "study" / "s1-slow.log"
    deadline = time.monotonic() + 60
    while "b: sleeping" not in (log.read_text() if log.is_file() else ""):
        assert time.monotonic() < deadline and proc.poll() is None, proc.stdout.read() if proc.poll() else ""
        time.sleep(0.2)
    t0 = time.monotonic()
    proc.send_signal(stop_with)
    output = proc.communicate(timeout=90)[0]
    assert proc.returncode == 130, output
    assert time.monotonic() - t0 < 30  # not the stage's 60 s
    assert "stopped; interrupted: s1-slow" in output
    assert study_queue.experiment_names() == set()
    assert study_queue.run([Job("s1-slow", 1, "slow", ("x=5",))], 1, 0.2, set()) == 0
    log = log.read_text()
    assert "Stage 'a' is cached - skipping run" in log and "Running stage 'b'" in log
    assert study_queue.experiment_names() == {"s1-slow"}


# --------------------------------------------------------------------------- end to end


def study(*args: str, cwd, **kw):
    return run([str(BIN / "python"), "-m", "mae_exp.study", *args], cwd, **kw)


@pytest.mark.slow
def test_no_start_hands_the_experiments_to_dvcs_queue(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    proc = study("queue", "--seeds", "42", "43", "--ablations", "laplacian_only", "--no-start", cwd=repo)
    assert "2 experiment(s) in DVC's queue: `dvc queue start -j N` runs them" in proc.stdout, proc.stdout
    queued = dvc("queue", "status", cwd=repo).stdout
    assert re.search(r"s42-laplacian_only\s.*Queued", queued) and re.search(r"s43-laplacian_only\s.*Queued", queued), (
        queued
    )


@pytest.mark.slow
def test_a_study_end_to_end(tiny_reproduced, tmp_path):
    """`queue` + `report` through the real `dvc exp run --temp`, on a copy whose DVC cache is the session's
    shared one. Two seeds, two budgets (1 epoch and the tiny config's own 3): `all` at both, the original at the
    improved recipe's FLOPs (`original_flops_matched`) and `laplacian_only` at 3, 8 experiments. s42-all-e3 has
    the tiny config's params, so every stage of it comes from the run-cache of the session's whole `dvc repro`;
    the later arms take the branch they share with an earlier one from the run-cache too."""
    repo = copy_repo(tmp_path / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["study"].update(
        seeds=[42, 43],
        budgets=[1, 3],
        ablation_budgets={"original_flops_matched": [3], "laplacian_only": [3]},
        ablations={
            name: params["study"]["ablations"][name] for name in ("all", "original_flops_matched", "laplacian_only")
        },
        primary={"arm": "all", "budget": 3, "reading": "flops", "metric": "linear_cls_top1", "margin": 0.015},
    )
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git("commit", "-qam", "a study of two budgets", cwd=repo)
    arms = ["all", "laplacian_only", "original_flops_matched"]
    # -j 2: both seeds of an arm together; a guard against a hang (the CPU may be shared)
    proc = study("queue", "-j", "2", "--poll", "1", cwd=repo, timeout=1800)
    out = proc.stdout + proc.stderr
    assert "8 of 8 experiments succeeded" in out, out
    names = {f"s{seed}-{arm}" for seed in (42, 43) for arm in ("all-e1", "all-e3", *(f"{a}-e3" for a in arms[1:]))}
    assert set(dvc("exp", "ls", "--name-only", cwd=repo).stdout.split()) == names
    restored = (repo / "scratch" / "study" / "s42-all-e3.log").read_text()
    # every stage that trains or reads an encoder is restored; `report` may run: its deps are the metrics files,
    # which hold wall times, and the run-cache holds two runs of some stages (tiny_built's, tiny_reproduced's)
    assert ran_stages(restored) <= {"report"}, restored
    assert "Stage 'pretrain@improved' is cached - skipping run" in restored
    logs = (repo / "scratch" / "study" / "s43-laplacian_only-e3.log").read_text()
    assert "Stage 'pretrain@original' is cached - skipping run" in logs
    assert "Running stage 'pretrain@improved'" in logs

    # again: nothing new is queued, and existing names are no error
    proc = study("queue", cwd=repo)
    assert "s42-all-e3: already done (s42-all-e3), skipped" in proc.stdout
    assert "nothing new to run" in proc.stdout

    out = study("report", cwd=repo).stdout
    assert "Paired difference improved − original" in out
    assert re.search(
        r"Primary \(linear probe cls top-1 \(test\), all-e3, equal FLOPs; margin ±1\.5 pp.*2 seeds\): "
        r"(INCONCLUSIVE|BEYOND NOISE|NO DIFFERENCE|A DIFFERENCE BEYOND NOISE, SMALLER THAN THE MARGIN)",
        " ".join(out.split()),
    ), out
    # the tiny config's numbers mean nothing; whatever they are, one sentence per metric and comparison
    assert re.search(
        r"linear probe mean top-1 \(test\), equal steps and FLOPs: the Laplacian loss alone at 3 pre-training "
        r"epochs changes it by .*2 seeds.*: (within seed-to-seed noise|beyond seed-to-seed noise|no difference)",
        out,
    ), out
    assert re.search(
        r"linear probe mean top-1 \(test\), equal steps: all three improvements at 3 pre-training epochs change "
        r"it by .*2 seeds.*: descriptive, not tested",  # it costs more than the original: equal FLOPs is tested
        out,
    ), out
    csv = pd.read_csv(repo / "metrics" / "study.csv")
    groups = csv[csv["diff_n"].isna()]
    assert set(groups["group"]) == {  # with several budgets, each group at its budget
        "random",
        "original-e1",
        "original-e3",
        "original: original_flops_matched-e3",
        "improved: all-e1",
        "improved: all-e3",
        "improved: laplacian_only-e3",
    }
    assert (groups["n"] == 2).all()
    compared = csv[csv["diff_n"].notna()].fillna({"reading": ""})
    # the curriculum costs FLOPs: `all` is read at equal steps and at equal FLOPs (against the FLOPs-matched
    # original at 3 epochs; at 1 epoch no experiment pairs it); the Laplacian alone costs what the original does
    readings = set(zip(compared["ablation"], compared["reading"]))
    assert readings == {
        ("all-e1", "equal steps"),
        ("all-e1", "equal FLOPs"),
        ("all-e3", "equal steps"),
        ("all-e3", "equal FLOPs"),
        ("laplacian_only-e3", "equal steps and FLOPs"),
    }, readings
    paired = compared[compared["diff_n"] == 2]
    assert len(paired) == 4 * len(METRICS)  # every reading but all-e1 at equal FLOPs has both seeds' pairs
    assert (paired["ci_low"] <= paired["diff_mean"]).all() and (paired["diff_mean"] <= paired["ci_high"]).all()
    tested = paired["family"].notna()  # equal steps of an arm that costs more: shown, not tested
    assert (paired.loc[tested, "p_holm"] >= paired.loc[tested, "p_value"]).all()
    assert set(paired.loc[~tested, "reading"]) == {"equal steps"} and paired.loc[~tested, "p_holm"].isna().all()
    assert compared.loc[compared["primary"], ["ablation", "reading", "metric"]].values.tolist() == [
        ["all-e3", "equal FLOPs", "linear_cls_top1"]
    ]
    assert "mse" in set(compared["metric"])
    md = (repo / "metrics" / "study.md").read_text()
    assert md.startswith("Primary (") and "per doubling of pre-training compute" in md
    assert "| improved: laplacian_only-e3 | 2 |" in md and "| laplacian_only-e3 | equal steps and FLOPs | 2 |" in md
    sentences = re.findall(r"^- .*, equal (?:steps|FLOPs)", md, re.MULTILINE)  # not the trends' lines
    assert len(sentences) == 4 * len(METRICS)  # one sentence per comparison with a finished pair
    assert "No finished pair, so not in the table: all-e1 at equal FLOPs" in md  # one line, not 8 sentences
    assert "could not be read" not in md  # every experiment's fine-tuning curve came from its commit
    assert "Second interval, resampling seeds and the" in md  # the predictions came from each experiment's commit
    for figure in ("study.png", "study_compute.png", "study_arms.png"):
        assert (repo / "plots" / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    frame = pd.read_csv(repo / "metrics" / "study_compute.csv")
    curve = frame[(frame["kind"] == "curve") & (frame["metric"] == "linear_cls_top1")]
    assert sorted(curve.loc[curve["group"] == "original", "budget"]) == [1, 3, 3]  # + the FLOPs-matched point
    improved = frame[(frame["kind"] == "curve") & (frame["group"] == "improved")]
    assert (improved["n"] == 2).all()  # the primary's recipe alone: laplacian_only's runs are not pooled into it
    gap = frame[(frame["kind"] == "gap") & (frame["reading"] == "equal FLOPs")]
    assert (gap["n"] == 2).all() and len(gap) == 2 * len(METRICS)  # both budgets read off the original's curve
    assert len(frame[frame["kind"] == "trend"]) == len(METRICS)

    # a saved `dvc exp show --csv` gives the same report
    saved = tmp_path / "shown.csv"
    saved.write_text(dvc("exp", "show", "--csv", "--all-commits", cwd=repo).stdout)
    study("report", "--from-csv", str(saved), cwd=repo)
    assert (repo / "metrics" / "study.md").read_text() == md

    # DVC's experiments stay in this clone; the report's saved copy of them, once committed, carries the
    # study to another: there the report is the same and the queue has nothing left to run
    git("add", "metrics/study_experiments.csv", "metrics/study_curves.csv", "metrics/study_predictions.csv", cwd=repo)
    git("commit", "-q", "-m", "the study's experiments", cwd=repo)
    clone = tmp_path / "clone"
    git("clone", "-q", str(repo), str(clone), cwd=tmp_path)
    assert dvc("exp", "ls", "--name-only", cwd=clone).stdout.split() == []
    study("report", cwd=clone)
    assert (clone / "metrics" / "study.md").read_text() == md
    proc = study("queue", cwd=clone)
    assert "nothing new to run" in proc.stdout and "s43-laplacian_only-e3: already done" in proc.stdout

    # the study section is no stage's param: editing it leaves the pipeline up to date
    dvc("exp", "apply", "s42-all-e3", cwd=repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["study"]["seeds"] = [1, 2, 3, 4, 5]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "Data and pipelines are up to date" in dvc("status", cwd=repo).stdout


def test_experiments_on_different_code_are_named_and_the_same_code_passes():
    """`dvc exp show` gives each dependency's hash; the study's experiments must share the code and data."""
    from mae_exp.study.results import dependency_disagreements

    def row(rev, model_hash):
        return {"rev": rev, "src/mae_exp/model.py": model_hash, "stages/pretrain.py": "aa11", "data/prepared": "d1",
                "models/original/encoder.pt": rev * 4, "metrics/x.json:top1": 0.5}  # fmt: skip

    rows = [row("r1", "m1"), row("r2", "m1"), row("r3", "m2"), row("r4", "m3")]
    assert dependency_disagreements(rows, ["r1", "r2"]) == []  # encoders differ by design: not checked
    found = dependency_disagreements(rows, ["r1", "r2", "r3"])
    assert found == ["src/mae_exp/model.py (m1: 2, m2: 1)"]
    assert dependency_disagreements(rows, ["r1"]) == []


def test_the_second_interval_resamples_the_primarys_own_encoders_per_image():
    """stats.primary_terms names, per seed, the four encoders of the both-ways difference with weights ±1/2;
    the report's second interval is the two-way bootstrap of exactly that per-image difference, and its
    point value (the mean of those differences) is the primary's Student-t mean."""
    import numpy as np

    from mae_exp.study.predictions import COLUMNS, pack, two_way_bootstrap
    from mae_exp.study.report import IMAGE_DRAWS, image_interval_line
    from mae_exp.study.stats import primary_differences, primary_terms

    rng = np.random.default_rng(0)
    images, seeds = 400, [1, 2, 3]
    arms = {"all": (1.0e12, 1.145e12), "original_flops_matched": (1.146e12, 1.145e12),
            "improved_flops_matched": (1.0e12, 1.0001e12)}  # fmt: skip
    frames, table, correct = [], [], {}
    for arm, flops in arms.items():
        for seed in seeds:
            rev = f"{arm}-{seed}"
            row = {"seed": seed, "ablation": arm, "budget": 32, "rev": rev, "flops_original": flops[0]}
            row["flops_improved"] = flops[1]
            for enc, p in (("original", 0.40 + 0.05 * (arm == "original_flops_matched")), ("improved", 0.42)):
                c = rng.random(images) < p + 0.01 * seed
                if enc == "original" and arm != "original_flops_matched":  # the plain original: one encoder a seed
                    c = correct.setdefault(("plain", seed), c)
                correct[rev, enc] = c
                table.append(
                    {"rev": rev, "encoder": enc, "metric": "logreg_cls_top1", "images": images, "correct": pack(c)}
                )
                row[f"logreg_cls_top1_{enc}"] = c.mean()
            frames.append(row)
    runs = pd.DataFrame(frames)
    for m in METRICS:
        for e in ENCODERS:
            runs[f"{m}_{e}"] = runs.get(f"{m}_{e}", math.nan)
    primary = SimpleNamespace(arm="all", reading="both", metric="logreg_cls_top1", margin=0.015)
    partners = {"all": "improved_flops_matched"}
    terms = primary_terms(runs, primary, partners, pair=PAIR)
    assert sorted(terms) == seeds
    assert sorted(w for w, _, _ in terms[2]) == [-0.5, -0.5, 0.5, 0.5]
    assert {r for w, r, e in terms[2] if e == "improved"} == {"all-2", "improved_flops_matched-2"}
    assert "original_flops_matched-2" in {r for w, r, e in terms[2] if e == "original" and w < 0}
    per_image = np.stack([sum(w * correct[rev, enc] for w, rev, enc in terms[s]) for s in seeds])
    assert per_image.mean(axis=1) == pytest.approx(list(primary_differences(runs, primary, partners, pair=PAIR)))
    low, high = two_way_bootstrap(per_image, draws=IMAGE_DRAWS, seed=0)
    line = image_interval_line(primary, runs, partners, pd.DataFrame(table, columns=COLUMNS), pair=PAIR)
    assert f"95% CI {low * 100:+.1f} to {high * 100:+.1f} pp".replace("-", "\u2212") in line
    assert "400 test images" in line and "3 seeds" in line and "Student-t" in line
    # a seed whose partner's predictions are missing is left out, and said so
    fewer = pd.DataFrame([t for t in table if t["rev"] != "improved_flops_matched-3"], columns=COLUMNS)
    assert "2 seeds; 1 seed(s) without predictions left out" in image_interval_line(
        primary, runs, partners, fewer, pair=PAIR
    )


def test_the_report_carries_each_earlier_studys_primary_as_it_stated_it(tmp_path):
    from mae_exp.study.report import history_lines

    assert history_lines(tmp_path) == []
    first = tmp_path / "metrics" / "history" / "b_first"
    first.mkdir(parents=True)
    (first / "study.md").write_text(
        "Primary (x, all, equal FLOPs): improved − original −2.3 pp: BEYOND NOISE.\n\nmore\n"
    )
    older = tmp_path / "metrics" / "history" / "a_older"
    older.mkdir()
    (older / "study.md").write_text("Study: 35 experiments\n")
    assert history_lines(tmp_path) == [
        "- `metrics/history/a_older/`: its report has no verdict line (it predates them): see its README.md",
        "- `metrics/history/b_first/`: Primary (x, all, equal FLOPs): improved − original −2.3 pp: BEYOND NOISE.",
    ]


def test_the_steps_partner_is_the_same_recipe_given_other_steps_alone():
    from mae_exp.study.results import steps_partners

    raw = copy.deepcopy(TINY)
    raw["study"]["ablations"].update(
        improved_flops_matched={"improved.steps_factor": 0.9},
        laplacian_short={**raw["study"]["ablations"]["laplacian_only"], "improved.steps_factor": 0.9},
        other_short={"improved.steps_factor": 0.9, "improved.lambda_freq": 0.0},  # another recipe as well
    )
    assert steps_partners(parse_params(raw)) == {"all": "improved_flops_matched", "laplacian_only": "laplacian_short"}


def test_a_design_from_before_recipes_were_data_still_reads(tmp_path):
    """A clone pinned to the second study's design (27db230) has no `recipes:` and no `recipe:` keys: load_study
    fills them with what those experiments ran with (results.LEGACY), and params_of does the same for their rows,
    so today's report identifies them."""
    from mae_exp.plumbing.config import with_overrides
    from mae_exp.study.results import LEGACY, arm_override_values, arms, identify, load_study

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    old = copy.deepcopy(raw)
    del old["recipes"], old["smae"]
    for name in ("original", "improved"):
        del old[name]["recipe"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(old))
    current, study_raw = load_study(tmp_path / "params.yaml")
    assert current.recipes == tuple(LEGACY["recipes"]) and current.recipe("improved").recipe == "mae"
    # an experiment of that design: its params as exp_show gives them, without the keys added since
    p = with_overrides(current, {**arm_override_values(current, arms(current)["all"]), "seed": 201})
    row = {"params.yaml:" + k: v for k, v in flatten(as_dict(p)).items() if k.split(".")[0] not in ("recipes", "smae")}
    row = {k: v for k, v in row.items() if not k.endswith(".recipe")}
    assert identify(row, study_raw, current)[1] == "all"
    # today's report reads them too; and where their rows came from a clone of main checked out at that commit,
    # exp_show gave each row today's keys as well, empty: a section with only empty keys is one it lacks
    now, now_raw = load_study(REPO / "params.yaml")
    p = as_dict(with_overrides(now, {**arm_override_values(now, arms(now)["all"]), "seed": 201}))
    row = {"params.yaml:" + k: v for k, v in flatten(p).items() if k.split(".")[0] not in ("recipes", "smae")}
    row = {k: v for k, v in row.items() if not k.endswith(".recipe")}
    assert identify(row, now_raw, now)[1] == "all"
    empty = {k: None for k in ("params.yaml:" + k for k in flatten(p)) if k not in row}
    assert any(".smae" in k or ":smae" in k for k in empty) and identify({**row, **empty}, now_raw, now)[1] == "all"
    broken = {**row, "params.yaml:improved.lambda_freq": 0.5}
    assert isinstance(identify(broken, study_raw, current), str)  # a changed value still tells arms apart


def test_an_experiment_of_either_file_layout_reads_where_exp_show_gives_both_layouts_columns():
    """exp_show gives every row the columns of every commit it reads, so in a clone of main checked out at
    the design's commit an experiment of that commit has today's metrics/linear_probe/<enc>/ columns too,
    empty ("None"), beside its metrics/linear_probe_<enc>/ ones; and today's experiments the other way round.
    Each reads its own value, not the other layout's empty one."""
    from mae_exp.study.results import cell, metric_values

    today, older = "metrics/linear_probe/original/metrics.json", "metrics/linear_probe_original/metrics.json"
    old_row = {f"{today}:logreg_cls_top1": None, f"{older}:logreg_cls_top1": 0.47}
    new_row = {f"{today}:logreg_cls_top1": 0.52, f"{older}:logreg_cls_top1": "None"}
    assert cell(old_row, today, "logreg_cls_top1") == 0.47
    assert cell(new_row, today, "logreg_cls_top1") == 0.52
    assert cell({f"{today}:logreg_cls_top1": "None"}, today, "logreg_cls_top1") is None
    assert cell({"logreg_cls_top1": 0.5}, today, "logreg_cls_top1") == 0.5  # DVC's column named by the key alone
    assert metric_values(old_row, ("original", "improved"))["logreg_cls_top1_original"] == 0.47


def test_a_change_carries_an_effect_when_it_alone_moves_that_measure_beyond_noise_with_its_sign():
    """The design's rule (params.yaml, study): per measure, the full recipe at the primary's reading, then
    each single change; "carried by" names the changes beyond noise with the full recipe's sign."""
    from mae_exp.study.carriers import carrier_lines

    steady = [0.0500, 0.0502, 0.0498]  # a clear effect: beyond noise after Holm in any family here
    full = {"ft_top1": steady, "psnr": [0.50, 0.51, 0.49], "hf_error": [0.001, -0.002, 0.001]}
    uniformity = {"ft_top1": steady, "psnr": [-0.50, -0.51, -0.49]}  # carries fine-tuning, opposes PSNR
    laplacian = {"hf_error": [-0.0100, -0.0101, -0.0099]}  # beyond noise where the full recipe is not
    runs = pd.concat(
        [
            runs_frame("all", ORIGINAL, full),
            runs_frame("uniformity_only", ORIGINAL, uniformity),
            runs_frame("laplacian_only", ORIGINAL, laplacian),
        ],
        ignore_index=True,
    )
    primary = SimpleNamespace(arm="all", reading="steps", metric="ft_top1")
    d = paired_differences(runs, primary=primary, pair=PAIR)
    names = {"laplacian_only": "Laplacian alone", "uniformity_only": "uniformity alone"}
    lines = {
        line.split(":")[0].removesuffix(" (lower is better)"): line for line in carrier_lines(d, pair=PAIR, names=names)
    }
    ft, psnr, hf = (lines[METRICS[m].label] for m in ("ft_top1", "psnr", "hf_error"))
    assert hf.startswith("masked HF error (test) (lower is better): ")
    assert ft.startswith(
        "fine-tune top-1 (test): full recipe +5.0 pp*; Laplacian alone +0.0 pp; uniformity alone +5.0 pp*"
    )
    assert ft.endswith("the full recipe is better beyond noise; carried by uniformity alone.")
    assert psnr.endswith(
        "uniformity alone −0.50 dB*: the full recipe is better beyond noise; no single change carries it beyond noise."
    )
    assert hf.endswith("beyond noise for Laplacian alone, not for the full recipe."), hf
    assert lines[METRICS["linear_mean_top1"].label].endswith("nothing beyond noise.")
    assert not any(line.startswith("No measure") for line in lines.values())
    quiet = paired_differences(runs_frame("all", ORIGINAL, {}), primary=primary, pair=PAIR)
    assert carrier_lines(quiet, pair=PAIR, names=names)[-1].startswith("No measure moves beyond noise")
