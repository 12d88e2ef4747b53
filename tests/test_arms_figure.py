"""plots/study_arms.png (mae_exp.study.arms_figure) on constructed study results: what each panel draws, read
back from the returned Figure's artists (their gids name what they show), not only that a file appears."""

from __future__ import annotations

import math
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.colors
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection
from scipy import stats as scipy_stats

from mae_exp.evaluation.palette import encoder_colours
from mae_exp.study.arms_figure import arms_figure, save_arms_figure
from mae_exp.study.metrics import COSTS, METRICS, encoders

PAIR = ("original", "improved")  # study.compare: the baseline, the tested recipe
ENCODERS = encoders(PAIR)
COLOURS = encoder_colours(ENCODERS)

SEEDS = [201, 202, 203]
ORDER = ["all", "original_flops_matched", "improved_flops_matched", "curriculum_only"]
ORIGINALS = {"original_flops_matched"}
COMPARED = ["all", "improved_flops_matched", "curriculum_only"]
SHOWN = ["logreg_cls_top1", "mse", "psnr"]  # in METRICS' order; every other metric is NaN throughout

PLAIN_FLOPS, MATCHED_FLOPS = 1.0e13, 2.0e13  # the original, and the original given more steps
# as in the study: improved_flops_matched at the original's FLOPs; all and curriculum_only at one FLOPs
IMPROVED_FLOPS = {"all": 2.2e13, "original_flops_matched": 2.2e13, "improved_flops_matched": 1.0001e13}
IMPROVED_FLOPS["curriculum_only"] = 2.2e13
BASE = {"logreg_cls_top1": 0.50, "mse": 0.30, "psnr": 20.0}
# each encoder's offset from BASE, and how far apart its seeds are (seed i adds i² * step: mean ≠ median)
OFFSET = {
    "plain": (0.00, 0.010),
    "matched": (0.03, 0.020),
    "all": (0.06, 0.015),
    "improved_flops_matched": (0.04, 0.030),
    "curriculum_only": (0.02, 0.005),
    "flops_matched_improved": (0.40, 0.0),  # original_flops_matched's improved branch: never drawn
    "random": (-0.30, 0.010),
}
TOL = 0.015  # decades: the sideways nudges are well under this, the FLOPs of distinct arms well over


def value(metric: str, who: str, i: int) -> float:
    offset, step = OFFSET[who]
    return BASE[metric] + offset + step * i**2


def make_runs(seeds=SEEDS, arms=ORDER) -> pd.DataFrame:
    columns = [f"{m}_{e}" for m in {**METRICS, **COSTS} for e in ENCODERS]
    rows = []
    for arm in arms:
        for i, seed in enumerate(seeds):
            row = dict.fromkeys(columns, math.nan)
            row.update(seed=seed, ablation=arm, budget=32, name=f"{arm}-{seed}", rev=f"{i:040d}")
            row["flops_original"] = MATCHED_FLOPS if arm in ORIGINALS else PLAIN_FLOPS
            row["flops_improved"] = IMPROVED_FLOPS[arm]
            for m in SHOWN:
                row[f"{m}_random"] = value(m, "random", i)
                row[f"{m}_original"] = value(m, "matched" if arm in ORIGINALS else "plain", i)
                row[f"{m}_improved"] = value(m, "flops_matched_improved" if arm in ORIGINALS else arm, i)
            if arm == "curriculum_only":
                row["psnr_improved"] = math.nan  # not measured: nothing of the arm on the PSNR panel
            if arm == "all" and i == 1:
                row["mse_original"] = math.nan  # the plain original is read from another arm of the seed
            rows.append(row)
    return pd.DataFrame(rows)


def by_gid(ax) -> dict[str, list]:
    found: dict[str, list] = {}
    for artist in [*ax.lines, *ax.collections]:
        if artist.get_gid():
            found.setdefault(artist.get_gid(), []).append(artist)
    return found


def panel(fig, metric: str):
    (ax,) = [a for a in fig.axes if a.get_title().startswith(METRICS[metric].label)]
    return ax


@pytest.fixture(scope="module")
def fig():
    f = arms_figure(make_runs(), ORIGINALS, pair=PAIR)
    yield f
    plt.close(f)


def test_one_panel_per_shown_metric_in_metrics_order(fig):
    assert [ax.get_title().split("\n")[0] for ax in fig.axes] == [METRICS[m].label for m in SHOWN]
    assert "(lower is better)" in panel(fig, "mse").get_title()
    assert "(higher is better)" in panel(fig, "psnr").get_title()
    assert all(ax.get_xscale() == "log" for ax in fig.axes)
    assert "each small point a seed" in fig._suptitle.get_text()

    chosen = arms_figure(make_runs(), ORIGINALS, metrics=["psnr"], pair=PAIR)
    assert [ax.get_title().split("\n")[0] for ax in chosen.axes] == [METRICS["psnr"].label]
    seven = arms_figure(make_runs(), ORIGINALS, metrics=list(METRICS)[:7], pair=PAIR)
    assert len(seven.axes) == 7  # 2 rows of 5, the 3 unused cells removed
    assert {ax.get_subplotspec().get_gridspec().ncols for ax in seven.axes} == {5}
    assert [t.get_text() for t in seven.axes[1].texts] == ["no finished value"]  # logreg_mean_top1: all NaN
    with pytest.raises(ValueError, match="unknown metric"):
        arms_figure(make_runs(), ORIGINALS, metrics=["no_such_metric"], pair=PAIR)
    for f in (chosen, seven):
        plt.close(f)


def test_each_arm_one_point_per_seed_at_its_flops_and_value(fig):
    for metric in SHOWN:
        ax, scale = panel(fig, metric), METRICS[metric].scale
        found = by_gid(ax)
        for arm in COMPARED:
            if arm == "curriculum_only" and metric == "psnr":
                continue
            seeds_drawn = sorted(g for g in found if g.startswith(f"{arm}|seed="))
            assert seeds_drawn == [f"{arm}|seed={s}" for s in SEEDS], (metric, arm)
            xs = []
            for i, seed in enumerate(SEEDS):
                (point,) = found[f"{arm}|seed={seed}"]
                (x,), (y,) = point.get_xdata(), point.get_ydata()
                assert abs(math.log10(x) - math.log10(IMPROVED_FLOPS[arm])) < TOL, (metric, arm, seed, x)
                assert y == pytest.approx(value(metric, arm, i) * scale), (metric, arm, seed)
                xs.append(x)
            assert len(set(xs)) == len(SEEDS)  # jittered: no two seeds on one spot
        # the original arm's improved branch (the full recipe again) is not drawn
        assert not [g for g in found if g.startswith("original_flops_matched|")]
        assert not any(np.isclose(y, value(metric, "flops_matched_improved", 0) * scale) for y in _all_y(ax))


def test_arms_at_the_same_flops_and_seeds_are_set_apart(fig):
    found = by_gid(panel(fig, "mse"))
    means = {arm: found[f"{arm}|mean"][0].get_xdata()[0] for arm in COMPARED}
    assert means["all"] != means["curriculum_only"]  # at the same FLOPs: dodged
    for arm in COMPARED:
        seeds = [found[f"{arm}|seed={s}"][0].get_xdata()[0] for s in SEEDS]
        assert means[arm] not in seeds  # the points stand beside the mean marker and its bar
        assert not set(seeds) & {x for other, x in means.items() if other != arm}


def test_the_jitter_is_the_same_on_every_build(fig):
    again = arms_figure(make_runs(), ORIGINALS, pair=PAIR)
    for a, b in zip(fig.axes, again.axes):
        first, second = by_gid(a), by_gid(b)
        for gid in first:
            if "|seed=" in gid and not gid.startswith("original"):
                assert list(first[gid][0].get_xdata()) == list(second[gid][0].get_xdata())
    plt.close(again)


def test_arm_mean_marker_and_student_t_interval(fig):
    for metric in SHOWN:
        ax, scale = panel(fig, metric), METRICS[metric].scale
        found = by_gid(ax)
        for arm in ("all", "improved_flops_matched"):
            values = np.array([value(metric, arm, i) for i in range(len(SEEDS))])
            mean = values.mean()
            half = scipy_stats.t.ppf(0.975, df=len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
            (marker,) = found[f"{arm}|mean"]
            (x,), (y,) = marker.get_xdata(), marker.get_ydata()
            assert y == pytest.approx(mean * scale)
            assert abs(math.log10(x) - math.log10(IMPROVED_FLOPS[arm])) < TOL
            (bar,) = [c for c in found[f"{arm}|ci"] if isinstance(c, LineCollection)]
            ((_, low), (_, high)) = bar.get_segments()[0]
            assert sorted((low, high)) == pytest.approx([(mean - half) * scale, (mean + half) * scale])


def test_original_curve_per_seed_and_its_mean_through_both_flops(fig):
    for metric in SHOWN:
        ax, scale = panel(fig, metric), METRICS[metric].scale
        found = by_gid(ax)
        for i, seed in enumerate(SEEDS):
            (line,) = found[f"original|seed={seed}"]
            assert list(line.get_xdata()) == [PLAIN_FLOPS, MATCHED_FLOPS]
            assert list(line.get_ydata()) == pytest.approx(
                [value(metric, "plain", i) * scale, value(metric, "matched", i) * scale]
            )
            assert matplotlib.colors.same_color(line.get_color(), COLOURS["original"])
        (mean,) = found["original|mean"]
        assert list(mean.get_xdata()) == [PLAIN_FLOPS, MATCHED_FLOPS]
        expected = [np.mean([value(metric, who, i) for i in range(len(SEEDS))]) * scale for who in ("plain", "matched")]
        assert list(mean.get_ydata()) == pytest.approx(expected)
        assert mean.get_linewidth() > line.get_linewidth()


def test_random_floor_is_a_dashed_line_at_its_mean(fig):
    for metric in SHOWN:
        ax = panel(fig, metric)
        (floor,) = by_gid(ax)["random|mean"]
        expected = np.mean([value(metric, "random", i) for i in range(len(SEEDS))]) * METRICS[metric].scale
        assert list(floor.get_ydata()) == pytest.approx([expected, expected])
        assert floor.get_linestyle() == "--"
        assert matplotlib.colors.same_color(floor.get_color(), COLOURS["random"])


def test_an_arm_with_nan_draws_nothing_in_that_panel(fig):
    assert not [g for g in by_gid(panel(fig, "psnr")) if g.startswith("curriculum_only|")]
    assert [g for g in by_gid(panel(fig, "mse")) if g.startswith("curriculum_only|")]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[: len(COMPARED)] == COMPARED  # one legend for the figure: the arms, the original, random
    assert any(t.startswith("original") for t in labels) and any(t.startswith("random") for t in labels)


def test_arm_colours_are_distinct_and_not_an_encoders(fig):
    ax = panel(fig, "mse")
    found = by_gid(ax)
    colours = [found[f"{arm}|mean"][0].get_markerfacecolor() for arm in COMPARED]
    assert len({matplotlib.colors.to_hex(c) for c in colours}) == len(COMPARED)
    for c in colours:
        assert not matplotlib.colors.same_color(c, COLOURS["original"])
        assert not matplotlib.colors.same_color(c, COLOURS["random"])


def test_one_seed_draws_points_and_means_without_error_bars():
    f = arms_figure(make_runs(seeds=[201]), ORIGINALS, pair=PAIR)
    for metric in SHOWN:
        ax = panel(f, metric)
        found = by_gid(ax)
        assert not ax.containers and not [c for c in ax.collections if isinstance(c, LineCollection)]
        assert not [g for g in found if g.endswith("|ci")]
        for arm in ("all", "improved_flops_matched"):
            assert len(found[f"{arm}|seed=201"]) == 1
            (marker,) = found[f"{arm}|mean"]
            assert list(marker.get_ydata()) == pytest.approx([value(metric, arm, 0) * METRICS[metric].scale])
        assert len(found["original|mean"][0].get_xdata()) == 2
    plt.close(f)


def test_no_baseline_arms_gives_a_curve_of_one_point_with_markers():
    runs = make_runs(arms=["all", "improved_flops_matched"])
    f = arms_figure(runs, set(), pair=PAIR)
    ax = panel(f, "logreg_cls_top1")
    found = by_gid(ax)
    (mean,) = found["original|mean"]
    assert list(mean.get_xdata()) == [PLAIN_FLOPS] and mean.get_marker() not in (None, "None", "", " ")
    for seed in SEEDS:
        (line,) = found[f"original|seed={seed}"]
        assert len(line.get_xdata()) == 1 and line.get_marker() not in (None, "None", "", " ")
    plt.close(f)


def test_an_arm_with_no_finished_value_is_named_in_the_legend_only():
    runs = make_runs()
    unfinished = runs["ablation"] == "curriculum_only"
    runs.loc[unfinished, [c for c in runs if c.endswith(("_improved", "_original", "_random"))]] = math.nan
    f = arms_figure(runs, ORIGINALS, pair=PAIR)
    assert [ax.get_title().split("\n")[0] for ax in f.axes] == [METRICS[m].label for m in SHOWN]
    for ax in f.axes:
        assert not [g for g in by_gid(ax) if g.startswith("curriculum_only|")]
    labels = [t.get_text() for t in f.legends[0].get_texts()]
    assert "curriculum_only (no finished value)" in labels
    plt.close(f)


def test_saved_png(tmp_path):
    open_before = set(plt.get_fignums())
    path = tmp_path / "plots" / "study_arms.png"
    save_arms_figure(make_runs(), ORIGINALS, path, pair=PAIR)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["study_arms.png"]  # no temporary file left
    assert set(plt.get_fignums()) == open_before  # closed after saving


def _all_y(ax) -> list[float]:
    return [float(y) for line in ax.lines for y in np.atleast_1d(line.get_ydata())]


def drawn(artist) -> tuple:
    """What an artist draws, and in which colour."""
    if isinstance(artist, LineCollection):
        return [s.tolist() for s in artist.get_segments()], [matplotlib.colors.to_hex(c) for c in artist.get_colors()]
    colour = matplotlib.colors.to_hex(artist.get_color())
    return list(artist.get_xdata()), list(artist.get_ydata()), colour, matplotlib.colors.to_hex(artist.get_mfc())


def test_the_recipes_are_named_by_the_pair(fig):
    """The same runs with the baseline called `plain` and the tested recipe `fancy` (study.compare) draw the
    same points in the same colours; the baseline's curve, legend and title carry its name."""
    rename = {"original": "plain", "improved": "fancy"}
    runs = make_runs().rename(columns=lambda c: re.sub(r"_(original|improved)$", lambda m: f"_{rename[m[1]]}", c))
    other = arms_figure(runs, ORIGINALS, pair=("plain", "fancy"))
    for metric in SHOWN:
        found, again = by_gid(panel(fig, metric)), by_gid(panel(other, metric))
        as_named = {gid.replace("original|", "plain|"): artists for gid, artists in found.items()}
        assert set(again) == set(as_named) and "plain|mean" in again
        for gid, artists in as_named.items():
            assert [drawn(a) for a in again[gid]] == [drawn(a) for a in artists], gid
    labels = [t.get_text() for t in other.legends[0].get_texts()]
    assert "plain (plain, original_flops_matched)" in labels  # the arm keeps its name: design data
    assert "against the plain's curve" in other.get_suptitle()
    plt.close(other)
