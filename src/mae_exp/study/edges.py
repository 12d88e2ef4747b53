"""Readout settings at an edge of their grid, over the study's experiments.

A setting chosen at its grid's highest or lowest value (measures.grid_edges) may have its best beyond the
grid, so that readout understates the encoder; a readout that does so more often than EDGE_LIMIT is a finding
to fix (widen its grid), not a number to read. Each experiment's choices come from its probe and fine-tuning
metrics (`chosen`), its grids from its params: `dvc exp show` keeps no list from a metrics file, so the
stages' `search` is not in the rows, while params.yaml's grids are ("[0.03, 0.1, 0.3, 1.0]"). The encoders
counted are the random one and the two recipes of `pair` (study.compare: the baseline, the tested recipe).
"""

from __future__ import annotations

import math

import pandas as pd

from ..evaluation.measures import FINETUNE, PROBE, READOUTS, grid_edges, searched
from .metrics import encoders
from .results import cell, literal

EDGE_LIMIT = 0.10  # a readout choosing an edge in more than this share of its choices: widen its grid

# readout -> {axis of its `chosen`: the params.yaml key of that axis's grid}, as probe.py and finetune.py search
PROBE_GRIDS = {
    "logreg": {"l2": "linear_probe.logreg_l2"},
    "linear": {"lr": "linear_probe.lr", "weight_decay": "linear_probe.weight_decay"},
    "knn": {"k": "linear_probe.knn_k", "temperature": "linear_probe.knn_temperature"},
}
GRID_PARAMS = {
    **{readout: PROBE_GRIDS[readout.split("_")[0]] for readout in READOUTS},
    "finetune": {"base_lr": "finetune.base_lr", "layer_decay": "finetune.layer_decay"},
}
EDGES_HEADER = "Settings at the edge of their grid"
EDGES_NOTE = (
    "A setting chosen at its grid's highest or lowest value (0 weight decay is a natural bound, not an edge) may "
    "have its best beyond the grid: that readout understates the encoder. Per readout, the experiments' choices "
    "at an edge, once per experiment and encoder, over grids of 2 values or more; ⚠: over "
    f"{EDGE_LIMIT:.0%}, a readout whose grid must be widened."
)
COLUMNS = ["readout", "encoder", "searched", "at_edge", "share", "sides", "over_limit"]


def chosen_value(row: dict, encoder: str, readout: str, axis: str):
    """The value an experiment chose for one axis of a readout of an encoder: from the stage's own metrics
    file, else from the comparison's `chosen`; None if neither has it (an old experiment, a newer readout)."""
    if readout == "finetune":
        value = cell(row, f"metrics/{FINETUNE.format(enc=encoder)}", f"chosen.{axis}")
    else:
        value = cell(row, f"metrics/{PROBE.format(enc=encoder)}", f"chosen.{readout}.{axis}")
    if value is None:
        value = cell(row, "metrics/comparison.json", f"chosen.{encoder}.{readout}.{axis}")
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def grid_values(row: dict, key: str) -> list[float] | None:
    """An experiment's grid for one axis from its params ("[0.03, 0.1]" -> [0.03, 0.1]; a scalar, as params
    had before grids, -> one point); None if its params lack the key."""
    value = literal(cell(row, "params.yaml", key))
    values = value if isinstance(value, (list, tuple)) else [value]
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return numbers or None


def _on_grid(value: float, grid: list[float]) -> float:
    """The grid's value that `value` is, read back from text (0.0005 from "5.0e-4"); else `value` itself."""
    return next((g for g in grid if math.isclose(g, value, rel_tol=1e-9)), value)


def choices(rows: list[dict], *, pair) -> pd.DataFrame:
    """One row per experiment, encoder and readout with a chosen setting: rev, name, encoder, readout, searched
    (some axis of it had a grid of 2 values or more) and edges ({axis: "lowest" | "highest"}, empty if none)."""
    found = []
    for row in rows:
        for encoder in encoders(pair):
            for readout, axes in GRID_PARAMS.items():
                setting, grids = {}, {}
                for axis, key in axes.items():
                    value, grid = chosen_value(row, encoder, readout, axis), grid_values(row, key)
                    if value is not None and grid is not None:
                        setting[axis], grids[axis] = _on_grid(value, grid), grid
                if not setting:
                    continue  # an old experiment without this readout
                found.append(
                    {
                        "rev": row["rev"],
                        "name": row.get("Experiment") or row["rev"],
                        "encoder": encoder,
                        "readout": readout,
                        "searched": searched(grids, setting),
                        "edges": grid_edges(grids, setting),
                    }
                )
    return pd.DataFrame(found, columns=["rev", "name", "encoder", "readout", "searched", "edges"]).astype(
        {"searched": bool}  # so that an empty frame still filters by it
    )


def _sides(edges: pd.Series) -> str:
    """How often each axis sat at which edge, most often first: "lr highest 8, k lowest 2"."""
    counts = pd.Series([f"{axis} {side}" for marks in edges for axis, side in marks.items()]).value_counts()
    return ", ".join(f"{what} {n}" for what, n in counts.items())


def edge_counts(chosen: pd.DataFrame, *, pair) -> pd.DataFrame:
    """Per readout, each encoder's searched choices and how many sit at an edge (share, and on which axis and
    side), then the readout's over every encoder ("all"); over_limit where the share exceeds EDGE_LIMIT."""
    rows = []
    done = chosen[chosen["searched"]]
    for readout in GRID_PARAMS:
        of_readout = done[done["readout"] == readout]
        for encoder in [*encoders(pair), "all"]:
            part = of_readout if encoder == "all" else of_readout[of_readout["encoder"] == encoder]
            if part.empty:
                continue
            at_edge = int(part["edges"].map(bool).sum())
            share = at_edge / len(part)
            rows.append(
                [readout, encoder, len(part), at_edge, round(share, 4), _sides(part["edges"]), share > EDGE_LIMIT]
            )
    return pd.DataFrame(rows, columns=COLUMNS)


def unsearched(chosen: pd.DataFrame) -> list[str]:
    """The readouts chosen from a one-point grid in every experiment: never at an edge, and not counted."""
    return [
        r for r in GRID_PARAMS if r in set(chosen["readout"]) and not chosen[chosen["readout"] == r]["searched"].any()
    ]


def _count(r: dict) -> str:
    return f"{r['at_edge']} of {r['searched']} ({r['share']:.0%})"


def warning_lines(counts: pd.DataFrame) -> list[str]:
    """One line per readout whose choices sit at an edge more than EDGE_LIMIT of the time (over every encoder,
    or for one of them): its grid must be widened before its numbers are read."""
    lines = []
    for readout, part in counts.groupby("readout", sort=False):
        if not part["over_limit"].any():
            continue
        by = {r["encoder"]: r for r in part.to_dict("records")}
        pooled = by.pop("all")
        shares = ", ".join(f"{e} {r['share']:.0%}" for e, r in by.items())
        over = "" if pooled["over_limit"] else " for " + ", ".join(e for e, r in by.items() if r["over_limit"])
        lines.append(
            f"{readout} chose an edge of its grid in {pooled['share']:.0%} of encoders ({pooled['at_edge']} of "
            f"{pooled['searched']}; {shares}), over {EDGE_LIMIT:.0%}{over}: its grid must be widened before its "
            f"numbers are read ({pooled['sides']})"
        )
    return lines


def summary_warning(counts: pd.DataFrame, primary_metric: str) -> str | None:
    """One line beside the verdict naming every flagged readout (None if none) and how often it chose an edge
    (over every encoder; and for the encoders over EDGE_LIMIT when that share is not), and whether the
    primary's readout is one of them."""
    details = {}  # flagged readout -> how often it chose an edge
    for readout, part in counts.groupby("readout", sort=False):
        by = {r["encoder"]: r for r in part.to_dict("records")}
        pooled = by.pop("all")
        if pooled["over_limit"]:
            details[readout] = f"{readout} {pooled['share']:.0%}"
        elif over := [f"{e}'s {r['share']:.0%}" for e, r in by.items() if r["over_limit"]]:
            details[readout] = f"{readout} {pooled['share']:.0%}, {', '.join(over)}"
    if not details:
        return None
    one = len(details) == 1
    line = (
        f"{len(details)} readout{'' if one else 's'} chose an edge of {'its' if one else 'their'} grid more than "
        f"{EDGE_LIMIT:.0%} of the time ({'; '.join(details.values())}): widen {'its grid' if one else 'those grids'} "
        f"before reading {'its' if one else 'their'} numbers"
    )
    readout = primary_metric.removesuffix("_top1")
    if readout in details:
        line += f"; the primary's readout, {readout}, is {'it' if one else 'one of them'}"
    return line + f' (see "{EDGES_HEADER}")'


def table(counts: pd.DataFrame, *, pair) -> tuple[list[str], list[list[str]]]:
    """(headers, rows): one row per readout, each encoder's "N of M (P%)" and all of them together (flagged ⚠
    where over EDGE_LIMIT), then which axis sat at which edge how often."""
    shown = [e for e in [*encoders(pair), "all"] if e in set(counts["encoder"])]
    rows = []
    for readout, part in counts.groupby("readout", sort=False):
        by = {r["encoder"]: r for r in part.to_dict("records")}
        cells = [(_count(by[e]) + (" ⚠" if by[e]["over_limit"] else "")) if e in by else "–" for e in shown]
        rows.append([readout, *cells, by["all"]["sides"] or "–"])
    return ["readout", *shown, "at the edge: axis, side, times"], rows


def markdown_lines(counts: pd.DataFrame, never_searched: list[str], *, pair) -> list[str]:
    """metrics/study.md's section: a header, what it counts, the table, the readouts never searched, and the
    warnings again, so the table is not read without them."""
    if counts.empty and not never_searched:
        return []
    lines = [f"**{EDGES_HEADER}**", "", EDGES_NOTE]
    if not counts.empty:
        headers, rows = table(counts, pair=pair)
        lines += [
            "",
            "| " + " | ".join(headers) + " |",
            "| " + " | ".join(["---", *["---:"] * (len(headers) - 2), "---"]) + " |",
            *("| " + " | ".join(r) + " |" for r in rows),
        ]
    if never_searched:
        lines += [
            "",
            f"Not searched (a one-point grid in every experiment), so never at an edge: {', '.join(never_searched)}.",
        ]
    if flagged := warning_lines(counts):
        lines += ["", *(f"- **Warning:** {w}." for w in flagged)]
    return lines
