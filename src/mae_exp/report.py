"""Original vs improved (and a random-init encoder) side by side: a console table, a JSON, a figure.

Like is compared with like: the pre-training row is the masked MSE against normalised pixels (the one
term both variants minimise; the improved variant's total loss adds its own terms, one of them negative),
both as the last epoch's training mean and on test images under identical masks (visualize).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from rich.table import Table

from .config import ENCODERS
from .progress import console
from .files import atomic_write, save_json

COLUMNS = {  # column -> (label, higher is better, format)
    "lp_top1": ("linear probe top-1 (test)", True, "{:.1%}"),
    "ft_top1": ("fine-tune top-1 (test)", True, "{:.1%}"),
    "lp_val_top1": ("linear probe top-1 (validation)", True, "{:.1%}"),
    "ft_val_top1": ("fine-tune top-1 (validation)", True, "{:.1%}"),
    "mse": ("masked MSE, test images", False, "{:.4f}"),
    "hf_error": ("masked HF error, test images", False, "{:.4f}"),
    "psnr": ("masked PSNR (dB), test images", True, "{:.2f}"),
    "pretrain_mse": ("masked MSE, last pre-training epoch", False, "{:.4f}"),
    "pretrain_wall_s": ("pre-training wall time (s)", False, "{:,.0f}"),
    "pretrain_flops": ("pre-training FLOPs (counted)", False, "{:.3g}"),
    "pretrain_images_per_s": ("pre-training images/s", True, "{:,.0f}"),
}


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def collect(metrics_dir: str | Path) -> pd.DataFrame:
    """One row per encoder; a missing stage leaves NaN rather than failing the report."""
    d = Path(metrics_dir)
    vis = _read(d / "visualize" / "metrics.json")
    rows = []
    for name in ENCODERS:
        pre = _read(d / f"pretrain_{name}" / "metrics.json")
        lp = _read(d / f"linear_probe_{name}" / "metrics.json")
        ft = _read(d / f"finetune_{name}" / "metrics.json")
        rows.append({"encoder": name, "lp_top1": lp.get("top1"), "ft_top1": ft.get("top1"),
                     "lp_val_top1": lp.get("val_top1"), "ft_val_top1": ft.get("val_top1"),
                     **{k: vis.get(name, {}).get(k) for k in ("mse", "hf_error", "psnr")},
                     "pretrain_mse": pre.get("final", {}).get("mse"), "pretrain_wall_s": pre.get("wall_time_s"),
                     "pretrain_flops": pre.get("flops"),
                     "pretrain_images_per_s": pre.get("images_per_s")})
    return pd.DataFrame(rows).set_index("encoder").astype(float)


def report(metrics_dir: str | Path, json_path: str | Path, figure_path: str | Path) -> dict:
    table = collect(metrics_dir)
    delta = (table.loc["improved"] - table.loc["original"]).rename("improved_minus_original")
    out = {name: _clean(table.loc[name].to_dict()) for name in table.index}
    out["improved_minus_original"] = _clean(delta.to_dict())
    save_json(out, json_path)
    print_table(table, delta)
    save_figure(table, figure_path)
    return out


def _clean(d: dict) -> dict:
    return {k: round(v, 5) for k, v in d.items() if pd.notna(v)}


def print_table(table: pd.DataFrame, delta: pd.Series) -> None:
    t = Table(title="MAE pre-training: original vs improved")
    t.add_column("metric")
    for name in table.index:
        t.add_column(name, justify="right")
    t.add_column("improved − original", justify="right")
    for col, (label, higher_better, fmt) in COLUMNS.items():
        cells = [_fmt(table.loc[name, col], fmt) for name in table.index]
        d = delta[col]
        better = pd.notna(d) and d != 0 and (d > 0) == higher_better
        colour = "green" if better else ("red" if pd.notna(d) and d != 0 else "white")
        signed = "{:+.1f} pp" if "%" in fmt else fmt.replace("{:", "{:+")
        cell = _fmt(d * 100 if "%" in fmt else d, signed).replace("-", "−")
        t.add_row(label, *cells, f"[{colour}]{cell}[/]")
    console.print(t)


def _fmt(v, fmt: str) -> str:
    return "–" if pd.isna(v) else fmt.format(v)


def save_figure(table: pd.DataFrame, path: str | Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = ["lp_top1", "ft_top1", "mse", "hf_error", "psnr"]
    colours = {"random": "#9e9e9e", "original": "#1f77b4", "improved": "#ff7f0e"}
    fig, axes = plt.subplots(1, len(panels), figsize=(3.0 * len(panels), 3.2))
    for ax, col in zip(axes, panels):
        values = table[col].dropna()
        label, higher_better, fmt = COLUMNS[col]
        scale = 100 if "%" in fmt else 1
        bars = ax.bar(values.index, values.values * scale, color=[colours[n] for n in values.index])
        ax.bar_label(bars, fmt="%.1f" if scale == 100 else ("%.2f" if col == "psnr" else "%.4f"), fontsize=8)
        unit = " (%)" if scale == 100 else ""
        ax.set_title(f"{label}{unit}\n{'higher' if higher_better else 'lower'} is better", fontsize=8)
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
