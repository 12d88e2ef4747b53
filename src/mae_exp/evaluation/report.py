"""Every recipe of params.yaml's `recipes` (and a random-init encoder) side by side, each compared with the first,
the baseline: a console table, a JSON, a figure.

Every row comes from the one registry of measures (measures.py): each readout of the frozen encoders,
fine-tuning, the three reconstruction measures under identical masks (visualize), and each pre-training's
cost. A reconstruction measure that a recipe trains on (its pre-training's `loss_weights`) is marked with whose
objective it is, and the summary line counts only measures that no recipe trains on: winning on your own loss
is expected.
Beside them, each encoder's readout settings as its own search chose them (`chosen`: cross-validation for the
probe's readouts, validation for fine-tuning), each one at an edge of its grid marked (`edges`) and counted
(`settings_at_edge`): there the best setting may lie beyond the grid, and the readout understates that encoder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from rich.table import Table

from ..plumbing.config import Params
from ..plumbing.files import atomic_write, save_json
from ..plumbing.progress import console
from ..recipes import build
from .measures import FINETUNE, MEASURES, PRETRAIN, PROBE, Measure, counted, grid_edges, searched, whose
from .palette import encoder_colours


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _get(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d.get(part, {}) if isinstance(d, dict) else {}
    return d if isinstance(d, (int, float)) and not isinstance(d, bool) else None


def collect(metrics_dir: str | Path, encoders: tuple[str, ...]) -> pd.DataFrame:
    """One row per encoder, one column per measure; a missing stage or key leaves NaN rather than failing."""
    rows = {
        name: {
            col: (
                _get(_read(Path(m.file(name, str(metrics_dir)))), m.key.format(enc=name))
                if name in m.encoders_in(encoders)
                else None
            )
            for col, m in MEASURES.items()
        }
        for name in encoders
    }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("encoder").astype(float)


def _stage_file(metrics_dir: str | Path, path: str, name: str) -> Path:
    return Path(metrics_dir) / path.format(enc=name)  # measures' paths are relative to metrics/


def objectives(metrics_dir: str | Path, recipes: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """recipe -> the terms its loss weights above 0, as its pre-training recorded them (`loss_weights`)."""
    return {
        r: tuple(k for k, w in _read(_stage_file(metrics_dir, PRETRAIN, r)).get("loss_weights", {}).items() if w > 0)
        for r in recipes
    }


def _per_encoder(metrics_dir: str | Path, key: str, encoders: tuple[str, ...]) -> dict[str, dict]:
    """{encoder: {readout: file[key][readout], ..., "finetune": file[key]}} from its probe and fine-tuning files."""
    out = {}
    for name in encoders:
        values = dict(_read(_stage_file(metrics_dir, PROBE, name)).get(key, {}))
        if key in (ft := _read(_stage_file(metrics_dir, FINETUNE, name))):
            values["finetune"] = ft[key]
        if values:
            out[name] = values
    return out


def chosen_settings(metrics_dir: str | Path, encoders: tuple[str, ...]) -> dict[str, dict]:
    """Each encoder's readout settings, as its probe (cross-validation) and fine-tuning (validation) stages chose
    them (the same grids for every encoder): {encoder: {"linear_cls": {"lr": .., "weight_decay": ..}, ...,
    "finetune": {..}}}."""
    return _per_encoder(metrics_dir, "chosen", encoders)


def searched_grids(metrics_dir: str | Path, encoders: tuple[str, ...]) -> dict[str, dict]:
    """Each encoder's grids, as its stages wrote them (`search`), shaped as chosen_settings: {encoder: {readout:
    {axis: [the value at every grid point], ...}}}."""
    return _per_encoder(metrics_dir, "search", encoders)


def settings_at_edge(chosen: dict[str, dict], grids: dict[str, dict]) -> tuple[dict[str, dict], int]:
    """({encoder: {readout: {axis: "lowest" | "highest"}}} for every chosen setting at an edge of its grid
    (measures.grid_edges), and how many chosen settings were searched for (measures.searched): the count's
    denominator."""
    edges: dict[str, dict] = {}
    of = 0
    for name, settings in chosen.items():
        for readout, setting in settings.items():
            search = grids.get(name, {}).get(readout, {})
            of += searched(search, setting)
            if marks := grid_edges(search, setting):
                edges.setdefault(name, {})[readout] = marks
    return edges, of


def edge_count(edges: dict[str, dict]) -> int:
    """How many chosen settings have an axis at an edge of their grid."""
    return sum(len(readouts) for readouts in edges.values())


def edge_line(count: int, of: int, unsearched: int = 0) -> str:
    """The count of chosen settings at an edge, in words; with what it means when there are any."""
    line = f"{count} of {of} chosen settings sit at an edge of their grid"
    if unsearched:
        line += f" ({unsearched} from a one-point grid, not searched, left out)"
    if count:
        line += ": the best setting may lie beyond it, so that readout understates its encoder (widen the grid)"
    return line


def ahead(delta: pd.Series) -> tuple[list[str], list[str]]:
    """(measures a recipe is ahead of the baseline on, measures compared), over the test-set measures no recipe
    trains on (`delta`: the recipe's values minus the baseline's)."""
    compared = [col for col, m in MEASURES.items() if counted(m) and pd.notna(delta[col])]
    wins = [col for col in compared if delta[col] != 0 and (delta[col] > 0) == MEASURES[col].higher_better]
    return wins, compared


CURVE_STAGES = ("pretrain", "linear_probe", "finetune")  # the stages whose DVCLive curves the plots compare


def write_curves(metrics_dir: str | Path, encoders: tuple[str, ...], out_dir: str | Path) -> list[Path]:
    """Every encoder's DVCLive curve of each stage, in one file per stage and curve for `dvc plots`:
    <out_dir>/<stage>_<curve>.tsv with columns step, <curve>, encoder, colour (the palette's, by the encoder's
    place among `encoders`), so one template draws any number of recipes. Only `encoders`' own directories are
    read: a recipe left out of `recipes` draws nothing, whatever its old files."""
    colours = encoder_colours(encoders)
    tables: dict[str, list[pd.DataFrame]] = {}
    for stage in CURVE_STAGES:
        for name in encoders:
            for tsv in sorted((Path(metrics_dir) / stage / name / "plots" / "metrics").glob("*.tsv")):
                curve = pd.read_csv(tsv, sep="\t")[["step", tsv.stem]]
                tables.setdefault(f"{stage}_{tsv.stem}", []).append(curve.assign(encoder=name, colour=colours[name]))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, parts in tables.items():
        path = out / f"{name}.tsv"
        text = pd.concat(parts).to_csv(sep="\t", index=False, lineterminator="\n")
        atomic_write(path, lambda tmp, text=text: Path(tmp).write_text(text))
        written.append(path)
    return written


def report(
    p: Params, metrics_dir: str | Path, json_path: str | Path, figure_path: str | Path, curves_dir: str | Path
) -> dict:
    base, others = p.baseline, p.recipes[1:]
    table = collect(metrics_dir, p.encoders)
    held = objectives(metrics_dir, p.recipes)
    out = {name: _clean(table.loc[name].to_dict()) for name in table.index}
    deltas, lines = {}, []
    for name in others:
        delta = deltas[name] = (table.loc[name] - table.loc[base]).rename(f"{name}_minus_{base}")
        wins, compared = ahead(delta)
        out[f"{name}_minus_{base}"] = _clean(delta.to_dict())
        out[f"{name}_ahead_on"] = len(wins)  # of `measures_counted`: test-set measures no recipe trains on
        out["measures_counted"] = len(compared)
        lines.append(summary(name, base, wins, compared))
    out["own_objective"] = {col: whose(m, held) for col, m in MEASURES.items() if m.objective}
    # a recipe that saw labels before the readouts (SMAE's perceptual CNN) is no label-free pre-training
    out["saw_labels"] = [name for name in p.recipes if build(p, name).labels]
    if out["saw_labels"]:
        lines.append(
            f"{', '.join(out['saw_labels'])}: its loss saw the train split's labels (a network trained with them, "
            "its own objective besides the masked MSE): its readouts are not those of a label-free pre-training"
        )
    out["chosen"] = chosen_settings(metrics_dir, p.encoders)  # by cross-validation (probe), on validation (fine-tuning)
    out["edges"], of = settings_at_edge(out["chosen"], searched_grids(metrics_dir, p.encoders))
    out["settings_at_edge"] = {"count": edge_count(out["edges"]), "of": of}
    save_json(out, json_path)
    print_table(table, deltas, base, held)
    print_settings(out["chosen"], out["edges"])
    unsearched = sum(len(settings) for settings in out["chosen"].values()) - of
    line = edge_line(out["settings_at_edge"]["count"], of, unsearched)
    console.print(f"[bold yellow]warning:[/] {line}" if out["edges"] else line, highlight=False)
    for line in lines:
        console.print(line, highlight=False)
    save_figure(table, figure_path, held)
    write_curves(metrics_dir, p.encoders, curves_dir)
    return out


def summary(name: str, base: str, wins: list[str], compared: list[str]) -> str:
    own = ", ".join(MEASURES[c].label for c, m in MEASURES.items() if m.study and m.objective)
    return (
        f"{name} is ahead of {base} on {len(wins)} of {len(compared)} test-set measures that no recipe "
        f"trains on (one seed; the study says what is beyond noise); own-objective rows left out: {own}"
    )


def _clean(d: dict) -> dict:
    return {k: round(v, 5) for k, v in d.items() if pd.notna(v)}


def fmt(v, m: Measure, signed: bool = False) -> str:
    if pd.isna(v):
        return "–"
    sign, v = "+" if signed else "", v * m.scale  # accuracy: fraction -> percent (pp for a difference)
    if m.unit == "pp":
        text = f"{v:{sign}.{m.decimals}f}" + (" pp" if signed else "%")
    elif abs(v) >= 1e6:
        text = f"{v:{sign}.3g}"
    else:
        text = f"{v:{sign},.{m.decimals}f}"
    return (text + (f" {m.unit}" if m.unit not in ("", "pp") else "")).replace("-", "−")


def print_table(table: pd.DataFrame, deltas: dict[str, pd.Series], base: str, held: dict) -> None:
    t = Table(title=f"MAE pre-training: {' vs '.join(n for n in table.index if n != 'random')}")
    t.add_column("measure")
    for name in table.index:
        t.add_column(name, justify="right")
    for name in deltas:
        t.add_column(f"{name} − {base}", justify="right")
    t.add_column("whose objective")
    for col, m in MEASURES.items():
        cells = []
        for delta in deltas.values():
            d = delta[col]
            better = pd.notna(d) and d != 0 and (d > 0) == m.higher_better
            colour = "green" if better else ("red" if pd.notna(d) and d != 0 else "white")
            if m.objective:  # a win on one's own objective is no evidence: not coloured as one
                colour = "dim"
            cells.append(f"[{colour}]{fmt(d, m, signed=True)}[/]")
        objective = f"own objective: {whose(m, held)}" if m.objective else ("none" if m.study or m.unit == "pp" else "")
        t.add_row(m.label, *(fmt(table.loc[name, col], m) for name in table.index), *cells, objective)
    console.print(t)


EDGE_MARKS = {"highest": "↑edge", "lowest": "↓edge"}


def setting_text(setting: dict, marks: dict[str, str]) -> str:
    """A chosen setting as the table shows it, each value at an edge of its grid marked in red: "lr 3 ↑edge"."""
    return ", ".join(
        f"[red]{k} {v:g} {EDGE_MARKS[marks[k]]}[/]" if k in marks else f"{k} {v:g}" for k, v in setting.items()
    )


def print_settings(chosen: dict[str, dict], edges: dict[str, dict]) -> None:
    """One row per encoder, one column per readout: the setting its search chose, marked where at an edge."""
    readouts = list(dict.fromkeys(r for settings in chosen.values() for r in settings))
    if not readouts:
        return
    t = Table(
        title="Readout settings chosen by cross-validation (probe) and on validation (fine-tuning), the same grid "
        "for every encoder",
        caption="↑edge / ↓edge: the grid's highest / lowest value, the best setting may lie beyond it",
    )
    t.add_column("encoder")
    for readout in readouts:
        t.add_column(readout)
    for name, settings in chosen.items():
        marks = edges.get(name, {})
        t.add_row(name, *(setting_text(settings[r], marks.get(r, {})) if r in settings else "–" for r in readouts))
    console.print(t)


def save_figure(table: pd.DataFrame, path: str | Path, held: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [col for col, m in MEASURES.items() if m.study] + ["pretrain_wall_s", "pretrain_flops"]
    ncols = (len(panels) + 1) // 2
    fig, axes = plt.subplots(2, ncols, figsize=(3.0 * ncols, 6.6), squeeze=False)
    for ax, col in zip(axes.flat, panels):
        m = MEASURES[col]
        values = table[col].dropna()
        if values.empty:  # e.g. FLOPs from a pre-training that did not count them
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes, fontsize=8)
        colours = encoder_colours(list(table.index))
        bars = ax.bar(values.index, values.values * m.scale, color=[colours[n] for n in values.index])
        ax.bar_label(bars, labels=[fmt(v, m) for v in values.values], fontsize=7)
        whose_line = f"own objective: {whose(m, held)}" if m.objective else ""
        ax.set_title(
            f"{m.label}\n{'higher' if m.higher_better else 'lower'} is better"
            f"{chr(10) + whose_line if whose_line else ''}",
            fontsize=7,
        )
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
