"""plots/study.png: the study's means over seeds and its paired differences, one column per metric."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..evaluation import palette
from ..plumbing.files import atomic_write
from .metrics import METRICS, encoders


def save_figure(
    summary: pd.DataFrame,
    diffs: pd.DataFrame,
    runs: pd.DataFrame,
    path: str | Path,
    curves: pd.DataFrame | None = None,
    *,
    pair,
) -> None:
    """Top row: each encoder's mean ± std over seeds (bars from 0, dots = single seeds). Middle row: the
    paired difference the tested recipe − the baseline (`pair`, study.compare) per arm and reading (equal
    steps / equal FLOPs), its 95% CI (the primary in bold) and 0. Bottom row (`curves`:
    results.finetune_curves): fine-tuning validation top-1 after each epoch, mean over seeds per encoder, so a
    reader sees whether it levelled off."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    baseline, tested = pair
    groups = list(dict.fromkeys(summary["group"]))
    colours = palette.colours(groups, encoders(pair))  # each encoder and arm its own, the same in every figure
    per_seed = runs.sort_values("seed").groupby("seed").first()
    fig, axes = plt.subplots(3, len(METRICS), figsize=(3.6 * len(METRICS), 10.5), squeeze=False)
    for col, (metric, m) in enumerate(METRICS.items()):
        scale, unit = m.scale, m.unit
        title = f"{m.label}{f' ({unit})' if unit else ''}, {'higher' if m.higher_better else 'lower'} is better"
        ax = axes[0, col]
        sub = summary[(summary["metric"] == metric) & (summary["n"] > 0)].set_index("group")
        names = [g for g in groups if g in sub.index]
        ax.bar(
            range(len(names)),
            sub.loc[names, "mean"] * scale,
            yerr=sub.loc[names, "std"].fillna(0) * scale,
            capsize=3,
            color=[colours[g] for g in names],
            alpha=0.85,
        )
        for i, g in enumerate(names):  # each seed as a dot
            if ": " in g:
                side, arm = g.split(": ", 1)
                vals = runs.loc[runs["ablation"] == arm, f"{metric}_{side}"]
            elif "-e" in g:  # the baseline at one budget of a compute-curve study: the arm-free run
                enc, _, budget = g.rpartition("-e")
                at = runs[runs["budget"] == int(budget)].sort_values(f"flops_{baseline}").groupby("seed").first()
                vals = at[f"{metric}_{enc}"]
            else:
                vals = per_seed[f"{metric}_{g}"]
            vals = vals.dropna() * scale
            ax.scatter([i] * len(vals), vals, s=10, color="black", zorder=3)
        ax.set_xticks(
            range(len(names)), [g.removeprefix(f"{tested}: ") for g in names], rotation=35, ha="right", fontsize=7
        )
        ax.set_title(title, fontsize=9)
        ax.set_ylabel(f"{m.label}{f' ({unit})' if unit else ''}", fontsize=8)
        ax.tick_params(labelsize=8)

        ax = axes[1, col]
        d = diffs[(diffs["metric"] == metric) & (diffs["n"] > 0)]
        labels = [f"{a} ({r.replace('equal ', '=')})" for a, r in zip(d["ablation"], d["reading"])]
        for i, row in enumerate(d.to_dict("records")):
            colour = colours.get(f"{tested}: {row['ablation']}", "black")
            size = 9 if row.get("primary") else 6
            if row["n"] >= 2:
                ax.errorbar(
                    [i],
                    [row["diff_mean"] * scale],
                    yerr=[[(row["diff_mean"] - row["ci_low"]) * scale], [(row["ci_high"] - row["diff_mean"]) * scale]],
                    fmt="D",
                    color=colour,
                    capsize=4,
                    markersize=size,
                    markeredgecolor="black" if row.get("primary") else colour,
                )
            else:
                ax.plot([i], [row["diff_mean"] * scale], "D", color=colour, markersize=size)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xlim(-0.6, max(len(labels), 1) - 0.4)
        ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=7)
        ax.set_title(f"{tested} − {baseline}{f' ({unit})' if unit else ''}, 95% CI", fontsize=9)
        ax.set_ylabel(f"difference{f' ({unit})' if unit else ''}", fontsize=8)
        ax.tick_params(labelsize=8)
    _curves(axes[2], curves, colours, tested)
    counts = runs.groupby("ablation")["seed"].nunique()  # ablations may have different numbers of seeds
    low, high = int(counts.min()), int(counts.max())
    n = f"{low}" if low == high else f"{low}-{high}"
    fig.suptitle(
        f"top: mean ± std over {n} seed{'s' if high != 1 else ''} (dots: single seeds); middle: paired "
        f"difference to the {baseline} with its 95% CI, at equal steps / FLOPs; bottom: fine-tuning "
        "validation top-1 per epoch",
        fontsize=10,
    )
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def _curves(axes, curves: pd.DataFrame | None, colours: dict, tested: str) -> None:
    """Fine-tuning validation top-1 per epoch, mean over seeds (band: min to max) per encoder, in one panel
    as wide as the row; a bare arm's group is the `tested` recipe's of that arm."""
    fig = axes[0].figure
    spec = axes[0].get_subplotspec().get_gridspec()
    for ax in axes:
        ax.remove()
    ax = fig.add_subplot(spec[2, :])
    if curves is None or curves.empty:
        ax.text(0.5, 0.5, "no fine-tuning curves read", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    markers = "osD^vP*X"
    for i, (group, sub) in enumerate(curves.groupby("group", sort=False)):
        by_epoch = sub.groupby("epoch")["val_top1"]
        mean, low, high = by_epoch.mean() * 100, by_epoch.min() * 100, by_epoch.max() * 100
        colour = colours.get(group, colours.get(f"{tested}: {group}", "black"))
        ax.plot(
            mean.index,
            mean.values,
            marker=markers[i % len(markers)],
            markersize=4,
            color=colour,
            label=f"{group} ({sub['seed'].nunique()} seeds)",
        )
        ax.fill_between(mean.index, low.values, high.values, color=colour, alpha=0.12)
    ax.set_xlabel("fine-tuning epoch", fontsize=8)
    ax.set_ylabel("validation top-1 (%)", fontsize=8)
    ax.set_title("fine-tuning: validation top-1 after each epoch (mean; band: min-max over seeds)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right", ncol=2)
    ax.tick_params(labelsize=8)
