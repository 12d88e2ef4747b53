"""Compute curves (study/curves.py) on constructed results with a known answer."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mae_exp.study import curves
from mae_exp.study.design import design_of
from mae_exp.study.metrics import METRICS

BUDGETS = (4, 8, 16, 32)
PAIR = ("original", "improved")  # study.compare: the baseline, the tested recipe


def curve_study():
    """params.yaml with the first photos10 study's shape (4 budgets, the original given x1.146 the steps at 32
    epochs, the primary at equal FLOPs one way): the design these compute-curve tests construct results for
    (metrics/history/photo_study_1/params.yaml; today's design is one budget)."""
    import yaml

    from conftest import REPO
    from mae_exp.plumbing.config import parse_params

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["study"].update(
        budgets=list(BUDGETS),
        ablation_budgets={"original_flops_matched": [32]},
        primary={"arm": "all", "budget": 32, "reading": "flops", "metric": "linear_cls_top1", "margin": 0.015},
        ablations={"all": {}, "original_flops_matched": {"original.steps_factor": 1.146}},
    )
    return parse_params(raw)


F0 = 1e12  # the original's FLOPs per epoch
RATIO = 1.146  # the improved recipe's FLOPs per step over the original's


def constructed(gap_at, seeds=(1, 2, 3, 4, 5), noise=0.0) -> pd.DataFrame:
    """Runs of a curve study where every metric of the original is 0.3 + 0.02 log2(FLOPs / F0) (linear in
    log FLOPs, so interpolation is exact) and the improved recipe is `gap_at(budget)` above the original's
    curve at its own FLOPs. Arms: all-e<b> for each budget, original_flops_matched-e32."""
    rng = np.random.default_rng(0)
    rows = []

    def orig(flops):
        return 0.3 + 0.02 * math.log2(flops / F0)

    for seed in seeds:
        for b in BUDGETS:
            f_o, f_i = F0 * b, F0 * b * RATIO
            row = {"seed": seed, "ablation": f"all-e{b}", "budget": b, "flops_original": f_o, "flops_improved": f_i}
            for m in METRICS:
                row[f"{m}_original"] = orig(f_o) + noise * rng.standard_normal()
                row[f"{m}_improved"] = orig(f_i) + gap_at(b) + noise * rng.standard_normal()
                row[f"{m}_random"] = 0.1
            rows.append(row)
        f_m = F0 * 32 * RATIO
        rows.append(
            {
                "seed": seed,
                "ablation": "original_flops_matched-e32",
                "budget": 32,
                "flops_original": f_m,
                "flops_improved": F0 * 32 * RATIO,
                **{f"{m}_original": orig(f_m) + noise * rng.standard_normal() for m in METRICS},
                **{f"{m}_improved": math.nan for m in METRICS},
                **{f"{m}_random": 0.1 for m in METRICS},
            }
        )
    return pd.DataFrame(rows)


def analyse(runs, pair=PAIR):
    pts = curves.points(runs, {"original_flops_matched-e32"}, lambda arm: arm.split("-e")[0], pair=pair)
    return pts, curves.gaps(pts, pair=pair)


def test_equal_flops_gap_is_read_off_the_original_curve():
    runs = constructed(lambda b: 0.01 * math.log2(b))  # the gap grows with compute: 0.02 .. 0.05
    pts, g = analyse(runs)
    lp = g[g["metric"] == "linear_cls_top1"].set_index(["seed", "budget"])
    for b in BUDGETS:
        assert lp.loc[(1, b), "equal_flops"] == pytest.approx(0.01 * math.log2(b), abs=1e-9)
        # at equal steps the improved recipe also gets its extra FLOPs' worth: 0.02 log2(1.146) more
        assert lp.loc[(1, b), "equal_steps"] == pytest.approx(0.01 * math.log2(b) + 0.02 * math.log2(RATIO))
    t = curves.trend(g, pair=PAIR).set_index("metric").loc["linear_cls_top1"]
    assert t["slope_per_doubling"] == pytest.approx(0.01 * math.log2(b) / math.log2(b), rel=1e-6)
    assert t["trend"] == "moves in the improved recipe's favour"
    mse = (
        curves.trend(g, pair=PAIR).set_index("metric").loc["mse"]
    )  # lower is better: the same rise favours the original
    assert mse["trend"] == "moves in the original's favour"


def test_a_constant_gap_stays_and_the_bootstrap_brackets_it():
    runs = constructed(lambda b: 0.02, noise=0.005)
    _, g = analyse(runs)
    table = curves.gap_table(g).query("metric == 'knn_mean_top1' and reading == 'equal FLOPs'")
    assert len(table) == len(BUDGETS) and (table["n"] == 5).all()
    assert table["gap"].mean() == pytest.approx(0.02, abs=0.003)  # noise 0.005 a point, 20 seed-budgets
    assert ((table["t_low"] < table["boot_low"]) & (table["t_high"] > table["boot_high"])).all()  # t: wider
    words = curves.trend(g, pair=PAIR)["trend"]  # 8 metrics, each a 5% chance of a false trend: expect 0.4 of them
    assert (words == "stays within noise").sum() >= 7 and not words.str.contains("improved").any()


def test_no_extrapolation_beyond_the_original_curve():
    runs = constructed(lambda b: 0.0)
    runs = runs[runs["ablation"] != "original_flops_matched-e32"]  # the original's curve now ends at 32 F0
    _, g = analyse(runs)
    top = g[(g["budget"] == 32)]
    assert top["equal_flops"].isna().all() and top["equal_steps"].notna().all()


def test_curve_points_separate_the_flops_matched_original():
    pts, _ = analyse(constructed(lambda b: 0.0))
    c = curves.curve(pts).query("metric == 'ft_top1' and group == 'original'")
    assert len(c) == len(BUDGETS) + 1 and (c["n"] == 5).all()


@pytest.mark.parametrize(
    ("diffs", "verdict"),
    [
        ([0.001, -0.002, 0.0015, -0.001, 0.0005], "no difference (equivalent within the margin)"),
        ([0.05, 0.06, 0.055, 0.045, 0.052], "beyond noise"),
        ([0.03, -0.02, 0.04, -0.01, 0.02], "inconclusive"),
        ([0.004, 0.0045, 0.005, 0.0042, 0.0048], "a difference beyond noise, smaller than the margin"),
    ],
)
def test_equivalence_reading(diffs, verdict):
    e = curves.equivalence(pd.Series(diffs), margin=0.015)
    assert e["verdict"] == verdict
    inside = -0.015 < e["ci90_low"] and e["ci90_high"] < 0.015
    assert inside == verdict.startswith(("no difference", "a difference beyond noise, smaller"))


def _prose(text: str) -> str:
    """Text with its line breaks and runs of spaces made one space, so that a wrapped quotation reads whole."""
    return " ".join(text.split())


def test_the_verdict_rule_is_written_once_and_quoted_verbatim():
    """One verdict rule: curves.VERDICT_RULE names every verdict equivalence() gives, and params.yaml's study
    comment, docs/study.md, the report's headline and the committed metrics/study.md quote it word for word
    (issue 42: params.yaml once said a 90% interval across a margin edge reads "inconclusive", the code
    "beyond noise" whenever the 95% interval excludes 0)."""
    from conftest import REPO
    from mae_exp.study.report import headline_lines
    from mae_exp.study.stats import paired_differences

    rule = curves.VERDICT_RULE
    cases = ([0.001, -0.002, 0.0015, -0.001, 0.0005], [0.05, 0.06, 0.055, 0.045, 0.052])
    cases += ([0.03, -0.02, 0.04, -0.01, 0.02], [0.004, 0.0045, 0.005, 0.0042, 0.0048])
    verdicts = {curves.equivalence(pd.Series(d), margin=0.015)["verdict"] for d in cases}
    assert len(verdicts) == 4 and all(f'"{v}"' in rule for v in verdicts), (verdicts, rule)
    for d in cases:  # the p-value the verdict line prints beside the 95% interval is the paired t-test's
        assert curves.equivalence(pd.Series(d), 0.015)["p_t"] == pytest.approx(stats.ttest_1samp(d, 0.0).pvalue)

    params = (REPO / "params.yaml").read_text()
    study = params[params.index("\nstudy:") :]
    comment = _prose(" ".join(line.split("#", 1)[1] for line in study.splitlines() if "#" in line))
    assert rule in comment, "params.yaml's study comment no longer quotes curves.VERDICT_RULE verbatim"
    assert "across an edge" not in params
    assert rule in _prose((REPO / "docs" / "study.md").read_text()), "docs/study.md does not quote VERDICT_RULE"
    assert f"Verdict rule: {rule}" in (REPO / "metrics" / "study.md").read_text().splitlines()

    p = curve_study()
    runs = constructed(lambda b: 0.01, noise=0.002)
    primary = design_of(p).primary.model_copy(update={"arm": "all-e32"})
    diffs = paired_differences(runs, {"original_flops_matched-e32"}, primary, pair=PAIR)
    lines = headline_lines(primary, runs, diffs, pair=PAIR)
    assert lines[1] == f"Verdict rule: {rule}"


def test_the_report_labels_the_slopes_exploratory():
    """The slopes per doubling are in no Holm family: the report's section on them says they are exploratory."""
    from conftest import REPO
    from mae_exp.study.report import TRENDS_HEADER

    assert "exploratory" in TRENDS_HEADER and "no multiplicity family" in TRENDS_HEADER
    first_study = REPO / "metrics" / "history" / "photo_study_1" / "study.md"  # the one study of several budgets
    header = TRENDS_HEADER.format(baseline="original", tested="improved")  # that study's pair
    assert any(line.startswith(header) for line in first_study.read_text().splitlines())


def test_correlation_finds_one_finding():
    runs = constructed(lambda b: 0.0, noise=0.01)
    runs["psnr_original"] = -10 * runs["mse_original"]
    runs["psnr_improved"] = -10 * runs["mse_improved"]
    assert curves.correlation(runs, "mse", "psnr", pair=PAIR) == pytest.approx(-1.0)


def test_report_writes_the_curves_their_figure_and_a_line_per_readout(tmp_path):

    from mae_exp.study.report import compute_curves, verdict_line
    from mae_exp.study.stats import primary_differences

    p = curve_study()
    runs = constructed(lambda b: 0.01 * math.log2(b), noise=0.002)
    primary = design_of(p).primary.model_copy(update={"arm": "all-e32"})
    lines = compute_curves(runs, p, {"original_flops_matched-e32"}, primary, tmp_path / "c.csv", tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 10_000
    frame = pd.read_csv(tmp_path / "c.csv")
    assert set(frame["kind"]) == {"curve", "gap", "trend"}
    assert sum("per doubling" in line for line in lines) == len(METRICS)
    assert any(line.startswith("masked MSE and PSNR") for line in lines)
    # the primary: at 32 epochs the gap is 0.05 (> the 1.5 pp margin), beyond noise
    d = primary_differences(runs, primary, pair=PAIR)
    assert len(d) == 5 and d.mean() == pytest.approx(0.05, abs=0.005)
    line = verdict_line(primary, curves.equivalence(d, primary.margin), pair=PAIR)
    assert "BEYOND NOISE" in line and "margin ±1.5 pp" in line


def test_one_seed_gives_a_slope_and_says_it_has_no_interval(tmp_path):
    """A study one seed in (as a session leaves it): each readout's line gives the slope and says plainly
    that one seed has no interval, never `+nan to +nan`."""
    from mae_exp.study.report import compute_curves

    p = curve_study()
    runs = constructed(lambda b: 0.01 * math.log2(b), seeds=(1,))
    primary = design_of(p).primary.model_copy(update={"arm": "all-e32"})
    lines = compute_curves(runs, p, {"original_flops_matched-e32"}, primary, tmp_path / "c.csv", tmp_path / "c.png")
    per_readout = [line for line in lines if "per doubling" in line]
    assert len(per_readout) == len(METRICS)
    assert all("(1 seed, no interval): not enough seeds." in line for line in per_readout), per_readout
    assert not any("nan" in line for line in lines), lines


def test_one_seed_primary_gives_its_value_and_unpaired_readings_leave_the_table():
    """One seed: the primary's line gives the difference it has and says it has no interval; an arm and
    reading with no finished pair (equal FLOPs below the largest budget) is one line, not a row of dashes."""
    from mae_exp.study.report import headline_lines, markdown, verdict_line
    from mae_exp.study.stats import paired_differences, primary_differences, summarize

    p = curve_study()
    runs = constructed(lambda b: 0.01, seeds=(1,))
    runs = runs.assign(flops_random=math.nan, **{f"wall_time_s_{e}": 60.0 for e in ("original", "improved", "random")})
    primary = design_of(p).primary.model_copy(update={"arm": "all-e32"})
    d = primary_differences(runs, primary, pair=PAIR)
    line = verdict_line(primary, curves.equivalence(d, primary.margin), pair=PAIR)
    assert "equal FLOPs): 1 seed, improved − original +1.0 pp; no interval and no reading yet" in line, line
    assert "nan" not in line

    originals = {"original_flops_matched-e32"}
    diffs = paired_differences(runs, originals, primary, pair=PAIR)
    assert headline_lines(primary, runs, diffs, pair=PAIR) == [
        line,
        f"Verdict rule: {curves.VERDICT_RULE}",
        "Every other comparison is exploratory: the primary has no reading yet.",
    ]
    text = markdown(summarize(runs, originals, pair=PAIR), diffs, runs, [], pair=PAIR)
    rows = [r for r in text.splitlines() if r.startswith("| all-e")]
    assert {tuple(c.strip() for c in r.split("|")[1:3]) for r in rows} == {
        *((f"all-e{b}", "equal steps") for b in BUDGETS),
        ("all-e32", "equal FLOPs"),
    }
    unpaired = [r for r in text.splitlines() if r.startswith("No finished pair")]
    assert unpaired == [r for r in unpaired if "all-e4 at equal FLOPs" in r and "all-e32" not in r] != []
    assert "no finished experiment pair" not in text


def test_the_gap_panels_band_is_the_verdicts_interval_and_each_point_names_its_seeds():
    """With 2 seeds the bootstrap over seeds is no wider than their range; the band drawn is the Student-t
    interval the verdicts use, the bootstrap its dashed pair, and each point says how many seeds it has."""
    from mae_exp.study.curve_figure import SHOWN, compute_figure

    runs = constructed(lambda b: 0.02, seeds=(1, 2), noise=0.01)
    pts, g = analyse(runs)
    table = curves.gap_table(g)
    fig = compute_figure(curves.curve(pts), table, None, pair=PAIR)
    col = SHOWN.index("knn_mean_top1")
    ax = fig.axes[len(SHOWN) + col]  # the bottom row follows the top row
    t = table.query("metric == 'knn_mean_top1' and reading == 'equal FLOPs'").sort_values("flops")
    [band] = ax.collections
    ys = band.get_paths()[0].vertices[:, 1]
    scale = METRICS["knn_mean_top1"].scale
    assert ys.min() == pytest.approx(t["t_low"].min() * scale) and ys.max() == pytest.approx(t["t_high"].max() * scale)
    assert (t["t_high"] - t["t_low"] > t["boot_high"] - t["boot_low"]).all()  # so the band is the wider one
    dashed = [line for line in ax.lines if line.get_linestyle() == "--"]
    assert [list(line.get_ydata()) for line in dashed] == [
        pytest.approx(list(t[e] * scale)) for e in ("boot_low", "boot_high")
    ]
    assert [a.get_text() for a in ax.texts] == ["n=2"] * len(t)
    import matplotlib.pyplot as plt

    plt.close(fig)
