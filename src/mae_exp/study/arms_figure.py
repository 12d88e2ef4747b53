"""plots/study_arms.png: every arm's encoder at its pre-training FLOPs against the baseline's curve, seed by seed.

`pair`: the two recipes compared, study.compare (the baseline, then the tested recipe), by name. One panel per
readout (metrics.METRICS), FLOPs on a log axis. The baseline's curve, per seed: a thin line through that
seed's baseline encoders sorted by FLOPs: the plain baseline (the same encoder in every arm that leaves the
baseline alone, so read from the first such arm of the seed and budget) and the baseline of each arm in
`baseline_arms` (results.baseline_arms: an arm that gives the baseline x1.146 the steps adds a second point of
its curve); the mean over seeds of each point, thick, with markers. Every other arm's tested encoder: one
small point per seed at its own FLOPs, its mean over seeds a large marker with the Student-t 95% interval
over seeds (stats.mean_ci; none with one seed). The random encoder (no pre-training: 0 FLOPs, off a log
axis): its mean over seeds, a dashed line. A baseline arm's tested branch is the full recipe again, and is
not drawn. NaN values (not run, not measured, no FLOPs logged) are left out.

Markers are nudged sideways in log space, so that nothing hides another: arms within NEAR of each other's
FLOPs (e.g. the single-change arms that spend the baseline's) are spread DODGE apart, and an arm's seeds sit
SEEDS_SHIFT to the right of its mean marker and its bar, JITTER from the first seed to the last. The nudges
follow the arms' and seeds' ranks, so the figure is the same on every run.

Every drawn artist carries a gid naming what it shows (tests/test_arms_figure.py reads them):
"<arm>|seed=<seed>", "<arm>|mean", "<arm>|ci", "<baseline>|seed=<seed>", "<baseline>|mean", "random|mean".
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..evaluation.palette import encoder_colours
from ..plumbing.config import RANDOM
from ..plumbing.files import atomic_write
from .metrics import METRICS, encoders
from .stats import mean_ci

COLUMNS = 5  # panels per row at most
JITTER = 0.003  # decades from an arm's first seed to its last
SEEDS_SHIFT = 0.004  # decades from an arm's mean marker to the middle of its seeds' points
DODGE = 0.008  # decades between neighbouring arms at the same FLOPs
NEAR = 0.01  # decades: arms closer than this in FLOPs (2.3%) count as at the same FLOPs
QUALITATIVE = "tab10"  # the arms' colours, in their order in the runs, less those too close to an encoder's
SUPTITLE = (  # {baseline}: the baseline recipe's name
    "Each arm at its pre-training FLOPs against the {baseline}'s curve: each small point a seed; "
    "large marker: mean, bar: 95% t-interval over seeds\n"
    "(thin lines: the {baseline} per seed, thick: its mean; dashed: random init; arms and seeds nudged "
    "sideways to stay apart)"
)


def save_arms_figure(runs: pd.DataFrame, baseline_arms, path: str | Path, metrics=None, *, pair) -> None:
    fig = arms_figure(runs, baseline_arms, metrics, pair=pair)
    import matplotlib.pyplot as plt

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def shown_metrics(runs: pd.DataFrame, metrics=None, *, pair) -> list[str]:
    """`metrics` (checked), or every metric of METRICS, in its order, with a finite value for some encoder
    (random or a recipe of `pair`)."""
    if metrics is not None:
        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(METRICS)}")
        return list(metrics)
    return [m for m in METRICS if any(np.isfinite(_column(runs, f"{m}_{e}")).any() for e in encoders(pair))]


def arm_colours(arms: list[str], *, pair) -> dict[str, str]:
    """A colour per arm, by its rank in `arms`, from a qualitative colormap without the colours that could be
    taken for the baseline's or random init's (tab10's blue and grey); cycled past the colormap's end."""
    import matplotlib
    import matplotlib.colors

    colours = encoder_colours(encoders(pair))
    taken = [np.array(matplotlib.colors.to_rgb(colours[e])) for e in (pair[0], RANDOM)]
    palette = [
        matplotlib.colors.to_hex(c)
        for c in matplotlib.colormaps[QUALITATIVE].colors
        if all(np.linalg.norm(np.array(c[:3]) - t) > 0.15 for t in taken)
    ]
    return {a: palette[i % len(palette)] for i, a in enumerate(arms)}


def arms_figure(runs: pd.DataFrame, baseline_arms, metrics=None, *, pair):
    """The figure of the module's docstring: one panel per metric of `metrics` (default: shown_metrics),
    up to COLUMNS in a row, one legend for the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    baseline_arms = set(baseline_arms)
    shown = shown_metrics(runs, metrics, pair=pair)
    order = list(dict.fromkeys(runs["ablation"])) if "ablation" in runs else []
    compared = [a for a in order if a not in baseline_arms]
    colours = arm_colours(compared, pair=pair)
    seeds = sorted(set(runs["seed"])) if "seed" in runs else []
    jitter = {
        s: SEEDS_SHIFT + JITTER * ((i / (len(seeds) - 1)) - 0.5 if len(seeds) > 1 else 0.0) for i, s in enumerate(seeds)
    }
    dodge = _dodges(runs, compared, pair[1])

    n = max(len(shown), 1)
    cols = min(COLUMNS, n)
    rows = math.ceil(n / cols)
    legend_in = 0.6  # inches under the panels for the figure's legend
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.1 * rows + legend_in + 0.5), squeeze=False)
    for ax in axes.flat[len(shown) :]:
        fig.delaxes(ax)
    drawn: set[str] = set()
    for ax, metric in zip(axes.flat, shown):
        drawn |= _panel(ax, runs, metric, baseline_arms, compared, colours, jitter, dodge, pair)
    if not shown:
        axes[0, 0].text(0.5, 0.5, "no readout with a finished value", ha="center", va="center")
        axes[0, 0].set_axis_off()

    handles = [
        Line2D([], [], ls="none", marker="o", ms=7, mfc=colours[a], mec="black", mew=0.6, label=_arm_label(a, drawn))
        for a in compared
    ]
    baseline, encoder_colour = pair[0], encoder_colours(encoders(pair))
    points = ", ".join(["plain", *(a for a in order if a in baseline_arms)])
    handles.append(
        Line2D([], [], color=encoder_colour[baseline], lw=2.2, marker="o", ms=5, label=f"{baseline} ({points})")
    )
    handles.append(Line2D([], [], color=encoder_colour[RANDOM], lw=1.2, ls="--", label="random init (mean)"))
    height = fig.get_figheight()
    fig.legend(
        handles=handles,
        loc="lower center",
        ncol=min(len(handles), max(2 * cols, 3)),
        fontsize=8,
        frameon=False,
        bbox_to_anchor=(0.5, 0.0),
    )
    fig.suptitle(SUPTITLE.format(baseline=baseline), fontsize=9)
    fig.tight_layout(rect=(0, legend_in / height, 1, 1))  # it makes room for the suptitle itself
    return fig


def _panel(ax, runs, metric, baseline_arms, compared, colours, jitter, dodge, pair) -> set[str]:
    """One metric's panel; returns the arms it drew a value of."""
    import matplotlib.ticker

    m = METRICS[metric]
    unit = "%" if m.unit == "pp" else m.unit
    drawn = set()
    baseline, tested = pair
    encoder_colour = encoder_colours(encoders(pair))

    curves = _baseline_points(runs, metric, baseline_arms, baseline)
    for seed, g in curves.groupby("seed", sort=True):
        g = g.sort_values("flops")
        ax.plot(
            g["flops"],
            g["value"] * m.scale,
            "-",
            marker="o" if len(g) == 1 else None,
            ms=3,
            lw=0.8,
            alpha=0.55,
            color=encoder_colour[baseline],
            gid=f"{baseline}|seed={seed}",
            zorder=2,
        )
    if len(curves):
        mean = curves.groupby("point", sort=False)[["flops", "value"]].mean().sort_values("flops")
        ax.plot(
            mean["flops"],
            mean["value"] * m.scale,
            "-o",
            lw=2.2,
            ms=5,
            color=encoder_colour[baseline],
            gid=f"{baseline}|mean",
            zorder=3,
        )

    for arm in compared:
        rows = runs[runs["ablation"] == arm]
        x = _column(rows, f"flops_{tested}")
        y = _column(rows, f"{metric}_{tested}")
        ok = np.isfinite(x) & np.isfinite(y)
        if not ok.any():
            continue
        drawn.add(arm)
        for seed, xs, ys in zip(rows["seed"][ok], x[ok], y[ok]):
            ax.plot(
                [xs * 10 ** (dodge[arm] + jitter[seed])],
                [ys * m.scale],
                "o",
                ms=3.5,
                alpha=0.75,
                mec="none",
                color=colours[arm],
                gid=f"{arm}|seed={seed}",
                zorder=4,
            )
        n, mean_y, _, low, high = mean_ci(y[ok])
        mean_x = float(np.mean(x[ok])) * 10 ** dodge[arm]
        if n >= 2 and np.isfinite(low):
            bars = ax.errorbar(
                [mean_x],
                [mean_y * m.scale],
                yerr=[[(mean_y - low) * m.scale], [(high - mean_y) * m.scale]],
                fmt="none",
                ecolor=colours[arm],
                elinewidth=1.4,
                capsize=3,
                zorder=5,
            )
            for artist in (*bars.lines[1], *bars.lines[2]):
                artist.set_gid(f"{arm}|ci")
        ax.plot(
            [mean_x],
            [mean_y * m.scale],
            "o",
            ms=7.5,
            mfc=colours[arm],
            mec="black",
            mew=0.6,
            gid=f"{arm}|mean",
            zorder=6,
        )

    floor = _random_mean(runs, metric)
    if np.isfinite(floor):
        ax.axhline(floor * m.scale, color=encoder_colour[RANDOM], ls="--", lw=1.2, gid=f"{RANDOM}|mean", zorder=1)

    ax.set_xscale("log")
    ax.margins(x=0.1)  # the large markers at either end stay inside the frame
    if not ax.has_data():
        ax.text(0.5, 0.5, "no finished value", ha="center", va="center", transform=ax.transAxes, fontsize=8)
        ax.set_xticks([], minor=True)
        ax.set_xticks([])
        ax.set_yticks([])
    elif ax.get_xlim()[1] / ax.get_xlim()[0] > 10:  # minor labels collide over a decade
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_title(f"{m.label}\n({'higher' if m.higher_better else 'lower'} is better)", fontsize=8.5)
    ax.set_xlabel("pre-training FLOPs (log)", fontsize=8)
    ax.set_ylabel(unit or "value", fontsize=8)
    ax.tick_params(labelsize=7.5)
    ax.tick_params(which="minor", labelsize=7)
    return drawn


def _column(frame: pd.DataFrame, name: str) -> np.ndarray:
    """A column as floats, all NaN where the frame lacks it."""
    if name not in frame:
        return np.full(len(frame), np.nan)
    return pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float)


def _baseline_points(runs: pd.DataFrame, metric: str, baseline_arms: set[str], baseline: str) -> pd.DataFrame:
    """seed, point, flops, value: each seed's `baseline` encoders with a finite value and FLOPs. `point` names
    the encoder across seeds: "plain e<budget>" for the baseline every other arm shares (its first such row
    of the seed and budget), "arm <name>" for a baseline arm's."""
    frame = pd.DataFrame(
        {
            "seed": runs["seed"].to_numpy() if "seed" in runs else [],
            "ablation": runs["ablation"].to_numpy() if "ablation" in runs else [],
            "budget": runs["budget"].to_numpy() if "budget" in runs else np.full(len(runs), np.nan),
            "flops": _column(runs, f"flops_{baseline}"),
            "value": _column(runs, f"{metric}_{baseline}"),
        }
    )
    frame = frame[np.isfinite(frame["flops"]) & np.isfinite(frame["value"])]
    own = frame["ablation"].isin(baseline_arms)
    plain = frame[~own].drop_duplicates(["seed", "budget"], keep="first")
    points = [
        plain.assign(point=[f"plain e{b if pd.notna(b) else '?'}" for b in plain["budget"]]),
        frame[own].assign(point=[f"arm {a}" for a in frame.loc[own, "ablation"]]),
    ]
    return pd.concat(points, ignore_index=True)[["seed", "point", "flops", "value"]]


def _random_mean(runs: pd.DataFrame, metric: str) -> float:
    """The random encoder's mean over seeds (each seed's rows averaged first, so no seed counts twice)."""
    values = pd.Series(_column(runs, f"{metric}_{RANDOM}"))
    if "seed" not in runs or not values.notna().any():
        return math.nan
    return float(values.groupby(runs["seed"].to_numpy()).mean().mean())


def _dodges(runs: pd.DataFrame, compared: list[str], tested: str) -> dict[str, float]:
    """Each arm's sideways offset in decades: arms whose mean FLOPs of the `tested` recipe lie within NEAR of
    the first of their run are spread DODGE apart around it, in their order in the runs; an arm without FLOPs
    stays put."""
    flops = {}
    for arm in compared:
        x = _column(runs[runs["ablation"] == arm], f"flops_{tested}")
        x = x[np.isfinite(x) & (x > 0)]
        if len(x):
            flops[arm] = math.log10(float(np.mean(x)))
    dodge = dict.fromkeys(compared, 0.0)
    ranked = sorted(flops, key=flops.get)
    while ranked:
        near = [a for a in ranked if flops[a] - flops[ranked[0]] < NEAR]
        group = [a for a in compared if a in near]
        for i, a in enumerate(group):
            dodge[a] = DODGE * (i - (len(group) - 1) / 2)
        ranked = ranked[len(near) :]
    return dodge


def _arm_label(arm: str, drawn: set[str]) -> str:
    return arm if arm in drawn else f"{arm} (no finished value)"
