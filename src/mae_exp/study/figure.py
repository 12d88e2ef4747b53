"""plots/study.png: the study's means over seeds and its paired differences, one column per metric."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..files import atomic_write
from .metrics import METRICS


def save_figure(summary: pd.DataFrame, diffs: pd.DataFrame, runs: pd.DataFrame, path: str | Path) -> None:
    """Top row: each encoder's mean ± std over seeds (bars from 0, dots = single seeds). Bottom row: the
    paired difference improved − original per ablation, its 95% CI, the per-seed differences and 0."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(summary["group"]))
    palette = {"random": "#9e9e9e", "original": "#1f77b4"}
    others = ["#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf"]
    colours = {g: others[i % len(others)] for i, g in enumerate(g for g in groups if g not in palette)}
    colours.update(palette)
    per_seed = runs.sort_values("seed").groupby("seed").first()
    fig, axes = plt.subplots(2, len(METRICS), figsize=(3.6 * len(METRICS), 7.0))
    for col, (metric, m) in enumerate(METRICS.items()):
        scale, unit = m.scale, m.unit
        title = f"{m.label}{f' ({unit})' if unit else ''}, {'higher' if m.higher_better else 'lower'} is better"
        ax = axes[0, col]
        sub = summary[(summary["metric"] == metric) & (summary["n"] > 0)].set_index("group")
        names = [g for g in groups if g in sub.index]
        ax.bar(range(len(names)), sub.loc[names, "mean"] * scale, yerr=sub.loc[names, "std"].fillna(0) * scale,
               capsize=3, color=[colours[g] for g in names], alpha=0.85)
        for i, g in enumerate(names):  # each seed as a dot
            if g.startswith("improved: "):
                vals = runs.loc[runs["ablation"] == g[len("improved: "):], f"{metric}_improved"]
            else:
                vals = per_seed[f"{metric}_{g}"]
            vals = vals.dropna() * scale
            ax.scatter([i] * len(vals), vals, s=10, color="black", zorder=3)
        ax.set_xticks(range(len(names)), [g.replace("improved: ", "") for g in names], rotation=35, ha="right",
                      fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=8)

        ax = axes[1, col]
        d = diffs[(diffs["metric"] == metric) & (diffs["n"] > 0)]
        ablations = list(d["ablation"])
        for i, row in enumerate(d.to_dict("records")):
            colour = colours[f"improved: {row['ablation']}"]
            if row["n"] >= 2:
                ax.errorbar([i], [row["diff_mean"] * scale],
                            yerr=[[(row["diff_mean"] - row["ci_low"]) * scale],
                                  [(row["ci_high"] - row["diff_mean"]) * scale]],
                            fmt="D", color=colour, capsize=4, markersize=6)
            else:
                ax.plot([i], [row["diff_mean"] * scale], "D", color=colour, markersize=6)
            sub = runs[runs["ablation"] == row["ablation"]]
            vals = (sub[f"{metric}_improved"] - sub[f"{metric}_original"]).dropna() * scale
            ax.scatter([i + 0.15] * len(vals), vals, s=10, color="black", zorder=3)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xlim(-0.6, max(len(ablations), 1) - 0.4)
        ax.set_xticks(range(len(ablations)), ablations, rotation=35, ha="right", fontsize=8)
        ax.set_title(f"improved − original{f' ({unit})' if unit else ''}, 95% CI", fontsize=9)
        ax.tick_params(labelsize=8)
    counts = runs.groupby("ablation")["seed"].nunique()  # ablations may have different numbers of seeds
    low, high = int(counts.min()), int(counts.max())
    n = f"{low}" if low == high else f"{low}-{high}"
    fig.suptitle(f"top: mean ± std over {n} seed{'s' if high != 1 else ''}; bottom: paired difference to the "
                 "original with its 95% CI (dots: single seeds)", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
