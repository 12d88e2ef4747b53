"""Choose evaluation hyper-parameters on the validation split, never on test.

    python -m mae_exp.evaluation.tune linear_probe --encoder original --lr 0.01 0.03 0.1 0.3
    python -m mae_exp.evaluation.tune finetune --encoder original --base-lr 2e-3 4e-3 \
        --layer-decay 0.65 0.75 --epochs 6 10

Runs on the encoder and the prepared data that the stage being tuned reads (its paths in dvc.yaml, after
`dvc repro`), with params.yaml for everything not in the grid; every run trains on the train part and is
scored on the validation part (data.val_fraction of the labeled train split). The test split is never read.
Prints a table, best first, and appends the results to metrics/tuning.json (committed: the record of what
was tried and what was chosen).
The pipeline's stages already search their grids (params.yaml) for every encoder alike; this explores a
grid by hand, on any one encoder (`--encoder`, default the baseline recipe), to choose what the grids hold.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch

from ..plumbing.cli import stage_paths
from ..plumbing.config import RANDOM, ConfigError, load_params
from ..plumbing.progress import console


def grid(**axes) -> list[dict]:
    names = list(axes)
    return [dict(zip(names, values)) for values in itertools.product(*(axes[n] for n in names))]


def one_point_grids(section, point: dict) -> dict:
    """`point` with a value given where the section holds a grid made a grid of that one value."""
    return {k: (v,) if isinstance(getattr(section, k), tuple) else v for k, v in point.items()}


def grid_of(section, key: str) -> tuple:
    """The section's grid for `key` (a tuple in params), () where the key is a single value or absent."""
    value = getattr(section, key, None)
    return value if isinstance(value, tuple) else ()


def only(value):
    """A grid of one value (as params.yaml gives it) -> that value; a value -> itself."""
    return value[0] if isinstance(value, tuple) else value


def tune_linear_probe(p, encoder: str, points: list[dict], paths: dict[str, str], scratch: Path) -> list[dict]:
    """Both poolings' heads at every point (they train together), one row each."""
    from ..checkpoints import load_encoder
    from ..data.prepared import labeled, load_meta
    from ..training.runtime import setup
    from .probe import accuracy, extract_features, train_heads

    device, amp_dtype = setup("auto", p.threads, p.seed)
    model = load_encoder(paths["encoder"], p).to(device)
    parts = {part: labeled(paths["data"], part, p.data.val_fraction) for part in ("train", "val")}
    classes = len(load_meta(paths["data"])["classes"])
    x = {
        part: extract_features(model, s.images, p.data.input_size, device, amp_dtype, part) for part, s in parts.items()
    }
    y = {part: torch.from_numpy(s.labels).to(device) for part, s in parts.items()}
    rows = []
    for point in points:
        cfg = p.linear_probe.model_copy(update=point)
        heads = train_heads(
            x["train"], y["train"], classes, cfg.epochs, cfg.batch_size, only(cfg.lr), only(cfg.weight_decay), p.seed
        )
        with torch.no_grad():
            rows += [
                {**point, "pooling": pool, "val_top1": accuracy(head(x["val"][pool]), y["val"])}
                for pool, head in heads.items()
            ]
    return rows


def tune_finetune(p, encoder: str, points: list[dict], paths: dict[str, str], scratch: Path) -> list[dict]:
    from .finetune import finetune

    rows = []
    for point in points:
        q = p.model_copy(update={"finetune": p.finetune.model_copy(update=one_point_grids(p.finetune, point))})
        t0 = time.perf_counter()
        result = finetune(q, paths["encoder"], paths["data"], encoder, scratch / "live", scratch, test=False)
        curve = (scratch / "live" / "plots" / "metrics" / "val_top1.tsv").read_text().splitlines()[1:]  # DVCLive's
        rows.append(
            {
                **point,
                "val_top1": result["val_top1"],
                "seconds": round(time.perf_counter() - t0, 1),
                "val_curve": [round(float(line.split("\t")[1]), 4) for line in curve],
            }
        )  # levelled off?
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mae_exp.evaluation.tune", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="stage", required=True)
    lp = sub.add_parser("linear_probe", help="probe lr, epochs, weight decay on cached features (both poolings)")
    lp.add_argument("--lr", type=float, nargs="+")
    lp.add_argument("--epochs", type=int, nargs="+")
    lp.add_argument("--weight-decay", type=float, nargs="+", dest="weight_decay")
    ft = sub.add_parser("finetune", help="fine-tuning lr, layer decay, epochs, drop path, batch size")
    ft.add_argument("--base-lr", type=float, nargs="+", dest="base_lr")
    ft.add_argument("--layer-decay", type=float, nargs="+", dest="layer_decay")
    ft.add_argument("--epochs", type=int, nargs="+")
    ft.add_argument("--drop-path", type=float, nargs="+", dest="drop_path")
    ft.add_argument("--batch-size", type=int, nargs="+", dest="batch_size")
    for s in (lp, ft):
        s.add_argument("--encoder", help="random or a recipe section of params.yaml (default: the baseline)")
        s.add_argument("--out", default="metrics/tuning.json")
        s.add_argument("--scratch", default="scratch/tune", help="the runs' own resumable state and curves")
    a = ap.parse_args(argv)
    try:
        p = load_params("params.yaml")
    except ConfigError as e:
        console.print(f"[bold red]error:[/] {e}")
        return 2
    a.encoder = a.encoder or p.baseline
    if a.encoder not in (RANDOM, *p.recipe_sections()):
        console.print(f"[bold red]error:[/] --encoder must be random or one of {', '.join(p.recipe_sections())}")
        return 2
    skip = {"stage", "encoder", "out", "scratch"}
    current = getattr(p, a.stage)
    # an axis that params.yaml gives as a grid of several values and the command leaves out: one run per value
    axes = {
        k: v if v is not None else list(getattr(current, k))
        for k, v in vars(a).items()
        if k not in skip and (v is not None or len(grid_of(current, k)) > 1)
    }
    points = grid(**axes) if axes else [{}]
    for point in points:  # every point must make a valid params section, checked before any work
        try:
            type(current).model_validate({**current.model_dump(), **one_point_grids(current, point)})
        except ValueError as e:  # pydantic's message names the field
            console.print(f"[bold red]error:[/] {a.stage} {point}: {' '.join(str(e).split())}")
            return 2
    paths = stage_paths(a.stage, a.encoder)  # what the stage reads, as dvc.yaml writes it
    if not Path(paths["encoder"]).exists():
        console.print(f"[bold red]error:[/] {paths['encoder']} is missing: run `dvc repro` first")
        return 1
    run = tune_linear_probe if a.stage == "linear_probe" else tune_finetune
    rows = sorted(run(p, a.encoder, points, paths, Path(a.scratch)), key=lambda r: -r["val_top1"])
    from rich.table import Table

    table = Table(title=f"{a.stage} on the validation split ({a.encoder} encoder), best first")
    shown = [k for k in rows[0] if k != "val_curve"]
    for key in shown:
        table.add_column(key, justify="right")
    if "val_curve" in rows[0]:
        table.add_column("val_top1 after each epoch")
    for r in rows:
        curve = [" ".join(f"{v:.0%}" for v in r["val_curve"])] if "val_curve" in r else []
        table.add_row(*(f"{r[k]:.2%}" if k == "val_top1" else str(r[k]) for k in shown), *curve)
    console.print(table)
    out = Path(a.out)
    record = json.loads(out.read_text()) if out.exists() else []
    command = "python -m mae_exp.evaluation.tune " + " ".join(argv if argv is not None else sys.argv[1:])
    record.append(
        {
            "stage": a.stage,
            "encoder": a.encoder,
            "seed": p.seed,
            "command": command,
            "fixed": current.model_dump(),
            "results": rows,
        }
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    console.print(f"appended to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
