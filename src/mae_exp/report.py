"""Original vs improved (and a random-init encoder) side by side: a console table, a JSON, a figure."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from rich.table import Table

from .config import ENCODERS
from .progress import console
from .runtime import atomic_write, save_json

COLUMNS = {  # column -> (label, higher is better)
    "lp_top1": ("linear probe top-1", True),
    "ft_top1": ("fine-tune top-1", True),
    "hf_error": ("masked HF error", False),
    "psnr": ("masked PSNR (dB)", True),
    "pretrain_loss": ("final pretrain loss", False),
    "pretrain_wall_s": ("pretrain wall (s)", False),
    "pretrain_images_per_s": ("pretrain img/s", True),
}


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def collect(metrics_dir: str | Path) -> pd.DataFrame:
    """One row per encoder; a missing stage leaves NaN rather than failing the report."""
    d = Path(metrics_dir)
    vis = _read(d / "visualize.json")
    rows = []
    for name in ENCODERS:
        pre = _read(d / f"pretrain_{name}.json")
        rows.append({
            "encoder": name,
            "lp_top1": _read(d / f"linear_probe_{name}.json").get("top1"),
            "ft_top1": _read(d / f"finetune_{name}.json").get("top1"),
            "hf_error": vis.get(name, {}).get("hf_error"),
            "psnr": vis.get(name, {}).get("psnr"),
            "pretrain_loss": pre.get("final_loss"),
            "pretrain_wall_s": pre.get("wall_time_s"),
            "pretrain_images_per_s": pre.get("images_per_s"),
        })
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
    t.add_column("improved - original", justify="right")
    for col, (label, higher_better) in COLUMNS.items():
        cells = [_fmt(table.loc[name, col]) for name in table.index]
        d = delta[col]
        better = pd.notna(d) and d != 0 and (d > 0) == higher_better
        colour = "green" if better else ("red" if pd.notna(d) and d != 0 else "white")
        t.add_row(label, *cells, f"[{colour}]{_fmt(d, signed=True)}[/]")
    console.print(t)


def _fmt(v, signed: bool = False) -> str:
    if pd.isna(v):
        return "-"
    return f"{v:+.4f}" if signed else f"{v:.4f}"


def save_figure(table: pd.DataFrame, path: str | Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = ["lp_top1", "ft_top1", "hf_error", "psnr"]
    colours = {"random": "#9e9e9e", "original": "#1f77b4", "improved": "#ff7f0e"}
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2))
    for ax, col in zip(axes, panels):
        values = table[col].dropna()
        bars = ax.bar(values.index, values.values, color=[colours[n] for n in values.index])
        ax.bar_label(bars, fmt="%.3f", fontsize=8)
        label, higher_better = COLUMNS[col]
        ax.set_title(f"{label} ({'higher' if higher_better else 'lower'} is better)", fontsize=9)
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
