"""A recipe outside the study's design, read against the study's curves: an exploratory row, not a test.

    python -m mae_exp.study.exploratory collect smae DIR... --out metrics/exploratory/smae_photos10
    python -m mae_exp.study.exploratory report smae --runs metrics/exploratory/smae_photos10

`collect` copies each finished run's metrics (a workspace where `dvc exp run -S seed=S -S 'recipes=[smae]' ...` ran
with the study's overrides: `metrics/{pretrain,linear_probe,finetune}/<recipe>/metrics.json`, and the params.yaml
it ran with) into `<out>/s<seed>/`, in the same layout, so that they can be committed. `report` reads them beside
the study's committed ledger (params.yaml's study, read through results.py) and writes `<runs>/summary.md` and
`<runs>/figure.png` (each readout against pre-training FLOPs: every seed's points); per readout, the recipe's mean
± std over its seeds, the study's two recipes at their plain budget, and per seed the recipe minus each of them, at
equal steps (the study's plain runs) and at equal FLOPs (each study recipe's curve through its points of that seed,
the plain run and an arm that only changes its steps_factor, read at the recipe's FLOPs by linear interpolation in
log FLOPs; never extrapolated: "–" outside). No interval and no p-value: a few seeds, a recipe chosen after the
design, a row to look at.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ..evaluation.palette import encoder_colours
from ..evaluation.report import collect as measures_of
from ..plumbing.config import RANDOM, parse_params
from ..plumbing.files import atomic_write
from ..recipes import build
from . import StudyError, out
from .design import design_of
from .metrics import METRICS
from .results import arms, collect_runs, load_study, merged, saved_rows

STAGES = ("pretrain", "linear_probe", "finetune")
FLOPS = "pretrain_flops"  # the measure of a pre-training's FLOPs (measures.MEASURES, study COSTS["flops"])


def collect(recipe: str, workspaces: list[Path], dest: Path) -> list[Path]:
    """Copy each workspace's metrics of `recipe` and its params.yaml to dest/s<seed>/; returns the folders."""
    written = []
    for ws in workspaces:
        params = yaml.safe_load((ws / "params.yaml").read_text())
        if recipe not in params.get("recipes", []):
            raise StudyError(f"{ws}: params.yaml's recipes {params.get('recipes')} do not hold {recipe!r}")
        missing = [s for s in STAGES if not (ws / "metrics" / s / recipe / "metrics.json").exists()]
        if missing:
            raise StudyError(f"{ws}: no metrics of {', '.join(missing)} for {recipe}: the run has not finished")
        seed_dir = dest / f"s{params['seed']}"
        for stage in STAGES:
            source = ws / "metrics" / stage / recipe / "metrics.json"
            atomic_write(seed_dir / stage / recipe / "metrics.json", lambda tmp, s=source: shutil.copyfile(s, tmp))
        atomic_write(seed_dir / "params.yaml", lambda tmp, s=ws / "params.yaml": shutil.copyfile(s, tmp))
        written.append(seed_dir)
    return written


def recipe_values(recipe: str, runs_dir: Path) -> pd.DataFrame:
    """One row per seed: that seed's value of every study metric the recipe has (NaN where its files lack
    one), and its FLOPs. Each seed folder is laid out as metrics/ is, so the pipeline's report reads it."""
    rows = {
        yaml.safe_load((seed_dir / "params.yaml").read_text())["seed"]: measures_of(seed_dir, (recipe,)).loc[recipe]
        for seed_dir in sorted(runs_dir.glob("s*/"))
    }
    if not rows:
        raise StudyError(f"no runs under {runs_dir}: `collect` them first")
    frame = pd.DataFrame(rows).T.rename_axis("seed")
    return frame[list(METRICS)].assign(flops=frame[FLOPS])


def curve_points(runs: pd.DataFrame, current, recipe: str, budget: int) -> pd.DataFrame:
    """seed, flops, plain, <metric>...: a study recipe's points per seed at `budget`, from every arm that leaves
    it as params.yaml has it (plain) or changes only its steps_factor (its other arms are other recipes)."""
    design, own = design_of(current), {}  # arm -> whether it leaves the recipe alone (its plain run)
    for name, arm in arms(current).items():
        touched = {k for k in design.ablations[arm.ablation] if k.startswith(f"{recipe}.")}
        if arm.budget == budget and touched <= {f"{recipe}.steps_factor"}:
            own[name] = not touched
    chosen = runs[runs["ablation"].isin(own)]
    frame = pd.DataFrame(
        {"seed": chosen["seed"], "flops": chosen[f"flops_{recipe}"], "plain": chosen["ablation"].map(own)}
    )
    for metric in METRICS:
        frame[metric] = chosen[f"{metric}_{recipe}"] if f"{metric}_{recipe}" in chosen else np.nan
    # the plain run is one encoder in every arm that leaves the recipe alone (the run-cache shares it)
    return frame.dropna(subset=["flops"]).drop_duplicates(subset=["seed", "flops"]).sort_values(["seed", "flops"])


def at_flops(points: pd.DataFrame, seed: int, metric: str, flops: float) -> float:
    """A seed's curve of `metric` read at `flops`, linear in log FLOPs between its points; NaN outside."""
    own = points[points["seed"] == seed].dropna(subset=[metric])
    if own.empty or not own["flops"].min() <= flops <= own["flops"].max():
        return math.nan
    return float(np.interp(math.log(flops), np.log(own["flops"].to_numpy()), own[metric].to_numpy()))


def comparison(values: pd.DataFrame, curves: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per metric: the recipe's mean and std over its seeds, each study recipe's plain mean over the seeds the
    study has of them, and per study recipe (`curves`: its name -> curve_points) the mean over shared seeds of
    (recipe − it) at equal steps and at equal FLOPs, with how many seeds each mean holds."""
    rows = []
    for metric in METRICS:
        if values[metric].isna().all():
            continue  # a measure this recipe's runs did not produce (the reconstruction grid's)
        row = {"metric": metric, "n": int(values[metric].notna().sum())}
        row["mean"], row["std"] = values[metric].mean(), values[metric].std()
        for other, points in curves.items():
            plain = points[points["plain"]].set_index("seed")[metric]
            shared = [s for s in values.index if s in plain.index and not math.isnan(values.at[s, metric])]
            steps = [values.at[s, metric] - plain[s] for s in shared]
            flops = [values.at[s, metric] - at_flops(points, s, metric, values.at[s, "flops"]) for s in shared]
            flops = [d for d in flops if not math.isnan(d)]
            row[f"{other}_mean"] = float(plain[shared].mean()) if shared else math.nan
            row[f"{other}_n"] = len(shared)
            row[f"minus_{other}_steps"] = float(np.mean(steps)) if steps else math.nan
            row[f"minus_{other}_flops"] = float(np.mean(flops)) if flops else math.nan
            row[f"minus_{other}_flops_n"] = len(flops)
        rows.append(row)
    return pd.DataFrame(rows)


def report(recipe: str, runs_dir: Path, params_path: str) -> str:
    """<runs_dir>/summary.md: the comparison as a table, with what it rests on; returns its text."""
    current, study_raw = load_study(params_path)
    design = design_of(current)
    runs, _ = collect_runs(merged([], saved_rows(Path(params_path).parent)), study_raw, current)
    values = recipe_values(recipe, runs_dir)
    budget = design.primary.budget
    curves = {name: curve_points(runs, current, name, budget) for name in design.compare}
    table = comparison(values, curves)
    plain_flops = {name: points[points["plain"]]["flops"].mean() for name, points in curves.items()}
    base, tested = design.compare
    seeds = ", ".join(map(str, values.index))
    flops = values["flops"].mean()
    lines = [
        f"# {recipe} against the study's {base} and {tested} (exploratory)",
        "",
        f"Written by `python -m mae_exp.study.exploratory report {recipe} --runs {runs_dir}` from the runs under "
        f"`{runs_dir}` (seeds {seeds}) and the study's committed ledger (metrics/study_experiments.csv). "
        f"{recipe}: {flops:.3g} pre-training FLOPs a run; the study's plain {base} and {tested} at {budget} epochs "
        f"{plain_flops[base]:.3g} and {plain_flops[tested]:.3g}. "
        "Top-1 on the test images, in %; differences in pp, per seed then averaged over the seeds both have "
        "(n); equal FLOPs reads each study recipe's curve (its plain run and the arm that only stretches its "
        "steps) at this recipe's FLOPs, never extrapolated. No interval, no p-value: a few seeds, a recipe "
        "added after the study's design.",
        "",
        *rests_on(recipe, runs_dir, current),
        "",
        f"| readout | {recipe} (n) | {base} | {tested} | {recipe} − {base}, equal steps | equal FLOPs (n) "
        f"| {recipe} − {tested}, equal steps | equal FLOPs (n) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in table.to_dict("records"):
        m = METRICS[r["metric"]]
        v, d = (lambda x, m=m, s=s: _shown(x, m, s) for s in ("", "+"))
        lines.append(
            f"| {m.label} | {v(r['mean'])} ± {v(r['std'])} ({r['n']}) | {v(r[f'{base}_mean'])} "
            f"| {v(r[f'{tested}_mean'])} | {d(r[f'minus_{base}_steps'])} | {d(r[f'minus_{base}_flops'])} "
            f"({r[f'minus_{base}_flops_n']}) | {d(r[f'minus_{tested}_steps'])} | {d(r[f'minus_{tested}_flops'])} "
            f"({r[f'minus_{tested}_flops_n']}) |"
        )
    lines += ["", "Figure: `figure.png` beside this file, drawn by the command above (not committed: git ignores it)."]
    text = "\n".join(lines) + "\n"
    save_figure(recipe, values, curves, runs_dir)
    atomic_write(runs_dir / "summary.md", lambda tmp: Path(tmp).write_text(text))
    return text


def save_figure(recipe: str, values: pd.DataFrame, curves: dict[str, pd.DataFrame], runs_dir: Path) -> Path:
    """<runs_dir>/figure.png: a panel per readout, top-1 against pre-training FLOPs; each study recipe's curve
    per seed (thin lines through its points), the recipe's runs as points, a seed's marker its own."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in METRICS if not values[m].isna().all()]
    colours = encoder_colours((RANDOM, *curves, recipe))
    markers = dict(zip(sorted({*values.index, *(s for c in curves.values() for s in c["seed"])}), "osD^vP*X"))
    cols = min(4, len(metrics))
    fig, axes = plt.subplots(-(-len(metrics) // cols), cols, figsize=(3.2 * cols, 2.8 * -(-len(metrics) // cols)))
    for ax, metric in zip(np.ravel(axes), metrics):
        m = METRICS[metric]
        for name, points in curves.items():
            for seed, own in points.groupby("seed"):
                ax.plot(
                    own["flops"] / 1e13,
                    own[metric] * m.scale,
                    "-",
                    marker=markers[seed],
                    ms=4,
                    lw=0.8,
                    color=colours[name],
                )
        for seed, r in values.iterrows():
            ax.plot(
                r["flops"] / 1e13,
                r[metric] * m.scale,
                marker=markers.get(seed, "o"),
                ms=6,
                ls="",
                color=colours[recipe],
            )
        ax.set_title(m.label.replace(" (test)", ""), fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in np.ravel(axes)[len(metrics) :]:
        ax.axis("off")
    handles = [
        plt.Line2D([], [], color=colours[n], marker="o", lw=0.8 if n in curves else 0) for n in (*curves, recipe)
    ]
    labels = [f"{n} (the study's runs)" for n in curves] + [f"{recipe} (seeds {', '.join(map(str, values.index))})"]
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False, bbox_to_anchor=(0.5, 0.0))
    fig.supxlabel("pre-training FLOPs (x 1e13); top-1 on the test images, %; a marker per seed", fontsize=8, y=0.07)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    path = runs_dir / "figure.png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def rests_on(recipe: str, runs_dir: Path, current) -> list[str]:
    """What the recipe's numbers rest on beside the study's: labels its loss saw, the fine-tuning point it ran
    at against the study's per-recipe points (study.overrides' finetune.per_encoder), its settings."""
    seed_dir = sorted(runs_dir.glob("s*/"))[0]
    ran = parse_params(yaml.safe_load((seed_dir / "params.yaml").read_text()))
    built = build(ran, recipe)
    chosen = json.loads((seed_dir / "finetune" / recipe / "metrics.json").read_text()).get("chosen", {})
    study_points = {
        k.split(".")[2]: v
        for k, v in design_of(current).overrides.items()
        if k.startswith("finetune.per_encoder.") and k.count(".") == 3
    }
    lines = [
        f"- {recipe}'s settings: {json.dumps(ran.recipe(recipe).settings(), sort_keys=True)}, "
        f"{ran.pretrain.epochs} epochs, steps_factor {ran.recipe(recipe).steps_factor}."
    ]
    if built.labels:
        lines.append(
            f"- {recipe}'s loss saw labels (its frozen network was trained on the labeled train split, validation "
            "held out): its readouts are not label-free the way the study's recipes' are."
        )
    lines.append(
        f"- Fine-tuning: {recipe} at base lr {chosen.get('base_lr')} x layer decay {chosen.get('layer_decay')} "
        f"(finetune's grid: {list(ran.finetune.base_lr)} x {list(ran.finetune.layer_decay)}); the study's recipes "
        f"at the points chosen for each on a development seed ({', '.join(sorted(study_points)) or 'none'})."
    )
    return lines


def _shown(x: float, m, sign: str) -> str:
    return "–" if math.isnan(x) else f"{x * m.scale:{sign}.{m.decimals}f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mae_exp.study.exploratory", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect", help="copy finished runs' metrics and params into a folder to commit")
    c.add_argument("recipe")
    c.add_argument("workspaces", nargs="+", type=Path)
    c.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("report", help="the recipe against the study's curves: <runs>/summary.md")
    r.add_argument("recipe")
    r.add_argument("--runs", type=Path, required=True)
    r.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    try:
        if args.command == "collect":
            for d in collect(args.recipe, args.workspaces, args.out):
                out.print(f"wrote {d}")
            return 0
        text = report(args.recipe, args.runs, args.params)
        out.print(text, markup=False)  # the table holds [ ] that are not markup
        return 0
    except StudyError as e:
        out.print(f"error: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
