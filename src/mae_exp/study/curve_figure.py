"""plots/study_compute.png: every readout against pre-training FLOPs, and the tested recipe − the baseline read
off it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..evaluation.measures import READOUTS
from ..evaluation.palette import encoder_colours
from ..plumbing.config import RANDOM
from ..plumbing.files import atomic_write
from .metrics import METRICS, encoders

# every readout, fine-tuning and PSNR; a study without some (the logistic probe came with issue 42) shows the rest
SHOWN = (*(f"{r}_top1" for r in READOUTS), "ft_top1", "psnr")


def save_compute_figure(curve: pd.DataFrame, table: pd.DataFrame, primary, path: str | Path, *, pair) -> None:
    fig = compute_figure(curve, table, primary, pair=pair)
    import matplotlib.pyplot as plt

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def compute_figure(curve: pd.DataFrame, table: pd.DataFrame, primary, *, pair):
    """Top row: each readout's mean over seeds against pre-training FLOPs (log axis), 95% Student-t bands,
    the random encoder as the floor. Bottom row: the tested recipe − the baseline (`pair`, study.compare) at
    equal FLOPs (interpolated on the baseline's curve), 0, and on the primary's panel its margin. Its band is
    the Student-t interval the verdicts use; the bootstrap over seeds is the dashed pair inside it (with few
    seeds it is no wider than the seeds' range, which is why it decides nothing); each point says how many
    seeds it rests on."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    baseline, tested = pair
    colours = encoder_colours(encoders(pair))
    difference = f"{tested} − {baseline}, equal FLOPs"
    shown = [m for m in SHOWN if m in set(curve["metric"])]
    fig, axes = plt.subplots(2, len(shown), figsize=(3.3 * len(shown), 6.6), squeeze=False, sharex="col")
    for col, metric in enumerate(shown):
        m = METRICS[metric]
        unit = "%" if m.unit == "pp" else m.unit
        ax = axes[0, col]
        c = curve[curve["metric"] == metric]
        for group in pair:
            g = c[c["group"] == group].sort_values("flops")
            ax.plot(g["flops"], g["mean"] * m.scale, "o-", ms=3.5, lw=1.5, color=colours[group], label=group)
            ax.fill_between(
                g["flops"], g["ci_low"] * m.scale, g["ci_high"] * m.scale, color=colours[group], alpha=0.18, lw=0
            )
        floor = c[c["group"] == RANDOM]
        if len(floor) and floor["mean"].notna().any():
            mean = floor["mean"].mean() * m.scale
            lo, hi = floor["ci_low"].mean() * m.scale, floor["ci_high"].mean() * m.scale
            ax.axhline(mean, color=colours[RANDOM], ls="--", lw=1, label="random init")
            if pd.notna(lo):
                ax.axhspan(lo, hi, color=colours[RANDOM], alpha=0.12, lw=0)
        ax.set_xscale("log")
        ax.set_title(
            f"{m.label.replace(' (test)', '')}\n(test, {'higher' if m.higher_better else 'lower'} is better)",
            fontsize=8.5,
        )
        ax.set_ylabel(f"{unit}" if unit else "value", fontsize=8)
        ax.tick_params(labelsize=7.5)
        if col == 0:
            ax.legend(fontsize=7, loc="best", frameon=False)

        ax = axes[1, col]
        t = table[(table["metric"] == metric) & (table["reading"] == "equal FLOPs")].sort_values("flops")
        t = t[t["n"] > 0]
        ax.axhline(0, color="black", lw=0.8)
        if len(t):
            ax.plot(t["flops"], t["gap"] * m.scale, "o-", ms=3.5, color=colours[tested])
            ax.fill_between(
                t["flops"],
                t["t_low"] * m.scale,
                t["t_high"] * m.scale,
                color=colours[tested],
                alpha=0.18,
                lw=0,
                label="95% Student-t over seeds",
            )
            for edge, label in (("boot_low", "bootstrap 95% over seeds"), ("boot_high", None)):
                ax.plot(t["flops"], t[edge] * m.scale, ls="--", lw=0.8, color=colours[tested], label=label)
            for x, y, n in zip(t["flops"], t["gap"] * m.scale, t["n"]):
                ax.annotate(f"n={n}", (x, y), xytext=(3, 4), textcoords="offset points", fontsize=6.5)
            if col == 0:
                ax.legend(fontsize=6.5, loc="best", frameon=False)
        if primary is not None and metric == primary.metric:
            for edge in (-primary.margin, primary.margin):
                ax.axhline(edge * m.scale, color="black", ls=":", lw=1)
            ax.set_title(f"{difference}\n(PRIMARY at the largest budget; dotted: margin)", fontsize=8)
        else:
            ax.set_title(difference, fontsize=8)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels collide on 1 decade
        ax.set_xlabel("pre-training FLOPs (log)", fontsize=8)
        ax.set_ylabel("pp" if m.unit == "pp" else (unit or "difference"), fontsize=8)
        ax.tick_params(labelsize=7.5)
    fig.tight_layout()
    return fig
