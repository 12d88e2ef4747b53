"""Is the improvement real? Seeds x ablations through DVC's experiment queue, and an honest report.

    python -m mae_exp.study queue [--seeds 42 43] [--ablations all laplacian_only] [-j N] [--no-start] [--force]
    python -m mae_exp.study report [--rev REV] [--from-json FILE]

`queue` turns `study.seeds` x `study.ablations` (params.yaml) into one DVC experiment each, named
`s<seed>-<ablation>` and queued with `dvc exp run --queue -S seed=... -S improved.<key>=...`, starts the
queue (`dvc queue start -j N`) and waits for it. `report` reads `dvc exp show --json`, recognises each
study experiment by its params, and writes metrics/study.csv, metrics/study.md and plots/study.png.

The statistics (`summarize`, `paired_differences`, `sentences`, `t_quantile`) are pure functions of a
DataFrame with one row per experiment, so they can be tested on constructed results.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from .config import ENCODERS, ConfigError, Params, ablation_variant, load_params, parse_params
from .runtime import atomic_write

# metric -> (label, unit, higher is better, display scale, decimals)
METRICS = {
    "lp_top1": ("LP top-1", "pp", True, 100.0, 1),
    "ft_top1": ("FT top-1", "pp", True, 100.0, 1),
    "hf_error": ("HF error", "", False, 1.0, 4),
    "psnr": ("PSNR", "dB", True, 1.0, 2),
}
# which encoders each metric exists for (no reconstruction from a random encoder)
METRIC_ENCODERS = {"lp_top1": ENCODERS, "ft_top1": ENCODERS, "hf_error": ("original", "improved"),
                   "psnr": ("original", "improved")}
DESCRIPTIONS = {  # how a sentence names an ablation (subject, verb); others: "ablation <name>"
    "all": ("all three improvements", "change"),
    "curriculum_only": ("curriculum masking alone", "changes"),
    "laplacian_only": ("the Laplacian loss alone", "changes"),
    "uniformity_only": ("the uniformity loss alone", "changes"),
}
TERMINAL = {"Success", "Failed", "Removed"}  # "Removed": gone from `dvc queue status` (dvc queue remove)

out = Console(width=None if sys.stdout.isatty() else 130, highlight=False)


class StudyError(RuntimeError):
    """A user-facing failure: printed as one line, exit code 1."""


# --------------------------------------------------------------------------- statistics


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with `df` degrees of freedom (0.5 < p < 1), by bisection on the
    CDF, which is 1/2 plus Simpson's rule on the density from 0 to t."""
    if not 0.5 < p < 1 or df < 1:
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and df >= 1, got p={p}, df={df}")
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def pdf(x: float) -> float:
        return math.exp(log_c - (df + 1) / 2 * math.log1p(x * x / df))

    def cdf(t: float, n: int = 2000) -> float:
        h = t / n
        s = pdf(0.0) + pdf(t) + sum((4 if i % 2 else 2) * pdf(i * h) for i in range(1, n))
        return 0.5 + s * h / 3

    lo, hi = 0.0, 2.0
    while cdf(hi) < p:
        lo, hi = hi, hi * 2
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def mean_ci(values, level: float = 0.95) -> tuple[int, float, float, float, float]:
    """n, mean, sample std, and the Student-t confidence interval of the mean (NaN for n < 2)."""
    v = [float(x) for x in values if pd.notna(x)]
    n = len(v)
    if n == 0:
        return 0, math.nan, math.nan, math.nan, math.nan
    mean = sum(v) / n
    if n < 2:
        return n, mean, math.nan, math.nan, math.nan
    sd = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - 1))
    half = t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return n, mean, sd, mean - half, mean + half


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per group (random init, original, improved per ablation) and metric.

    `runs`: one row per experiment with `seed`, `ablation` and `<metric>_<encoder>` columns. The random
    and original encoders do not depend on the ablation, so they count once per seed."""
    rows = []
    per_seed = runs.sort_values("seed").groupby("seed").first()
    for metric in METRICS:
        for encoder in ("random", "original"):
            if encoder in METRIC_ENCODERS[metric]:
                rows.append(_summary_row(encoder, None, metric, per_seed[f"{metric}_{encoder}"]))
        for ablation, sub in runs.groupby("ablation", sort=False):
            rows.append(_summary_row(f"improved: {ablation}", ablation, metric, sub[f"{metric}_improved"]))
    return pd.DataFrame(rows)


def _summary_row(group: str, ablation, metric: str, values: pd.Series) -> dict:
    n, mean, sd, _, _ = mean_ci(values)
    return {"group": group, "ablation": ablation, "metric": metric, "n": n, "mean": mean, "std": sd}


def paired_differences(runs: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Per ablation and metric: improved - original within each seed (same experiment), its mean, std
    and Student-t CI over seeds, and whether the CI excludes 0."""
    rows = []
    for ablation, sub in runs.groupby("ablation", sort=False):
        for metric in METRICS:
            d = sub[f"{metric}_improved"] - sub[f"{metric}_original"]
            n, mean, sd, lo, hi = mean_ci(d, level)
            beyond = bool(n >= 2 and (lo > 0 or hi < 0))
            rows.append({"ablation": ablation, "metric": metric, "n": n, "diff_mean": mean, "diff_std": sd,
                         "ci_low": lo, "ci_high": hi, "beyond_noise": beyond})
    return pd.DataFrame(rows)


def _num(value: float, metric: str, signed: bool = True) -> str:
    _, unit, _, scale, decimals = METRICS[metric]
    v = round(value * scale, decimals) + 0.0  # + 0.0: no "-0.0"
    return f"{v:{'+' if signed else ''}.{decimals}f}".replace("-", "\u2212")


def _with_unit(text: str, metric: str) -> str:
    unit = METRICS[metric][1]
    return f"{text} {unit}" if unit else text


def sentence(row: dict, level: float = 0.95) -> str:
    """One plain sentence: does this ablation's difference to the original exceed seed-to-seed noise?"""
    metric, n = row["metric"], row["n"]
    label, _, higher_better, _, _ = METRICS[metric]
    if not higher_better:
        label += " (lower is better)"
    who, verb = DESCRIPTIONS.get(row["ablation"], (f"ablation {row['ablation']}", "changes"))
    seeds = f"{n} seed{'s' if n != 1 else ''}"
    if n == 0:
        return f"{label}: {who}: no finished experiment has this metric."
    change = _with_unit(_num(row["diff_mean"], metric), metric)
    if n < 2:
        return (f"{label}: {who} {verb} it by {change} ({seeds}): a confidence interval needs at least "
                f"2 seeds, so this says nothing about noise.")
    if row["diff_std"] == 0 and row["diff_mean"] == 0:
        return f"{label}: {who} {verb} it by 0 in every one of the {seeds}: no difference."
    ci = f"{int(level * 100)}% CI {_num(row['ci_low'], metric)} to {_with_unit(_num(row['ci_high'], metric), metric)}"
    if not row["beyond_noise"]:
        return f"{label}: {who} {verb} it by {change} ({ci}, {seeds}): within seed-to-seed noise."
    better = (row["diff_mean"] > 0) == higher_better
    return (f"{label}: {who} {verb} it by {change} ({ci}, {seeds}): beyond seed-to-seed noise "
            f"(the CI excludes 0), {'better' if better else 'worse'}.")


def sentences(diffs: pd.DataFrame) -> list[str]:
    return [sentence(row) for row in diffs.to_dict("records")]


# --------------------------------------------------------------------------- experiments -> runs


def _flat_metrics(metrics: dict) -> dict:
    """`dvc exp show --json` metrics of one experiment -> `<metric>_<encoder>` values."""
    def data(path):
        return (metrics.get(path) or {}).get("data") or {}
    row = {}
    for enc in ENCODERS:
        row[f"lp_top1_{enc}"] = data(f"metrics/linear_probe_{enc}.json").get("top1")
        row[f"ft_top1_{enc}"] = data(f"metrics/finetune_{enc}.json").get("top1")
    vis = data("metrics/visualize.json")
    for enc in ("original", "improved"):
        row[f"hf_error_{enc}"] = (vis.get(enc) or {}).get("hf_error")
        row[f"psnr_{enc}"] = (vis.get(enc) or {}).get("psnr")
    return row


def experiments(shown: list) -> list[dict]:
    """Finished experiments in `dvc exp show --json` output (a list of baseline commits, each with its
    `experiments`); the workspace and the baseline commits themselves are not experiments."""
    found = []
    for commit in shown:
        for exp in commit.get("experiments") or []:
            executor = exp.get("executor") or {}
            if executor.get("state") not in (None, "success"):
                continue  # queued, running or failed: no results
            rev = (exp.get("revs") or [{}])[0]
            data = rev.get("data") or {}
            if rev.get("error") or not data:
                continue
            found.append({"name": exp.get("name") or rev.get("name") or data.get("rev", "")[:7],
                          "rev": data.get("rev"), "baseline": commit.get("rev"),
                          "timestamp": data.get("timestamp") or "",
                          "params": ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {},
                          "metrics": data.get("metrics") or {}})
    return found


def identify(exp_params: dict, study_raw: dict, current: Params) -> tuple[int, str] | str:
    """(seed, ablation) of an experiment of the current study, or why it is not one."""
    raw = dict(exp_params)
    raw["study"] = study_raw  # experiments made before the study section existed still parse
    try:
        p = parse_params(raw)
    except ConfigError as e:
        return f"params do not validate ({e})"
    if p.model_copy(update={"seed": current.seed, "improved": current.improved}) != current:
        return "other params than params.yaml besides seed and improved.*"
    for name in current.study.ablations:
        if p.improved == ablation_variant(current, name):
            return p.seed, name
    return "improved.* matches no study ablation"


def collect_runs(shown: list, study_raw: dict, current: Params) -> tuple[pd.DataFrame, list[str]]:
    """One row per (seed, ablation): the newest matching experiment. Also notes on what was left out."""
    rows, notes, skipped = [], [], {}
    for exp in experiments(shown):
        who = identify(exp["params"], study_raw, current)
        if isinstance(who, str):
            skipped[who] = skipped.get(who, 0) + 1
            continue
        seed, ablation = who
        rows.append({"seed": seed, "ablation": ablation, "name": exp["name"], "rev": exp["rev"],
                     "timestamp": exp["timestamp"], **_flat_metrics(exp["metrics"])})
    for why, count in skipped.items():
        notes.append(f"left out {count} experiment{'s' if count > 1 else ''}: {why}")
    columns = ["seed", "ablation", "name", "rev", "timestamp",
               *(f"{m}_{e}" for m in METRICS for e in ENCODERS)]
    runs = pd.DataFrame(rows, columns=columns)
    if runs.empty:
        return runs, notes
    runs = runs.sort_values("timestamp", ascending=False)
    dupes = runs.duplicated(["seed", "ablation"])
    if dupes.any():
        notes.append(f"left out {int(dupes.sum())} older duplicate(s) of a seed and ablation: "
                     f"{', '.join(runs.loc[dupes, 'name'])}")
    runs = runs[~dupes]
    order = {a: i for i, a in enumerate(current.study.ablations)}
    runs = runs.sort_values(["ablation", "seed"], key=lambda c: c.map(order) if c.name == "ablation" else c)
    metric_cols = [c for c in runs.columns if c.split("_")[-1] in ENCODERS]
    runs[metric_cols] = runs[metric_cols].astype(float)
    return runs.reset_index(drop=True), notes


# --------------------------------------------------------------------------- report outputs


def _cell(mean: float, sd: float, metric: str) -> str:
    if pd.isna(mean):
        return "–"
    text = _num(mean, metric, signed=False)
    return f"{text} ± {_num(sd, metric, signed=False)}" if pd.notna(sd) else text


def _diff_cell(row: dict) -> str:
    metric = row["metric"]
    if row["n"] == 0:
        return "–"
    text = _num(row["diff_mean"], metric)
    if row["n"] >= 2:
        text += f" [{_num(row['ci_low'], metric)}, {_num(row['ci_high'], metric)}]"
        if row["beyond_noise"]:
            text += " *"
    return text


def _header(metric: str) -> str:
    label, unit, higher_better, _, _ = METRICS[metric]
    return f"{label}{f' ({unit})' if unit else ''} {'↑' if higher_better else '↓'}"


def tables(summary: pd.DataFrame, diffs: pd.DataFrame) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """(headers, rows of mean ± std per group, rows of paired differences per ablation) as text."""
    headers = [_header(m) for m in METRICS]
    groups = list(dict.fromkeys(summary["group"]))
    by = {(r["group"], r["metric"]): r for r in summary.to_dict("records")}
    first = []
    for g in groups:
        n = max((by[(g, m)]["n"] for m in METRICS if (g, m) in by), default=0)
        cells = [_cell(by[(g, m)]["mean"], by[(g, m)]["std"], m) if (g, m) in by else "–" for m in METRICS]
        first.append([g, str(n), *cells])
    dby = {(r["ablation"], r["metric"]): r for r in diffs.to_dict("records")}
    second = []
    for a in dict.fromkeys(diffs["ablation"]):
        n = max(dby[(a, m)]["n"] for m in METRICS)
        second.append([a, str(n), *(_diff_cell(dby[(a, m)]) for m in METRICS)])
    return headers, first, second


def markdown(summary: pd.DataFrame, diffs: pd.DataFrame, runs: pd.DataFrame, notes: list[str]) -> str:
    headers, first, second = tables(summary, diffs)

    def md(head, rows):
        lines = ["| " + " | ".join(head) + " |", "| --- | ---: | " + " | ".join("---:" for _ in METRICS) + " |"]
        return lines + ["| " + " | ".join(r) + " |" for r in rows]

    seeds = ", ".join(str(s) for s in sorted(set(runs["seed"])))
    lines = [f"Study: {len(runs)} experiments, seeds {seeds}. Accuracy in percentage points (pp), "
             "mean ± std over seeds (sample std, n − 1).", ""]
    lines += md(["encoder", "seeds", *headers], first)
    lines += ["", "Paired difference improved − original (same seed), mean [95% CI, Student's t, n − 1 df]; "
                  "* = the CI excludes 0.", ""]
    lines += md(["ablation", "seeds", *headers], second)
    lines += [""] + [f"- {s}" for s in sentences(diffs)]
    if notes:
        lines += [""] + [f"Note: {n}." for n in notes]
    return "\n".join(lines) + "\n"


def csv_frame(summary: pd.DataFrame, diffs: pd.DataFrame) -> pd.DataFrame:
    """One row per group and metric (raw units: accuracy as a fraction); the improved rows also carry the
    paired difference to the original."""
    d = diffs.rename(columns={"n": "diff_n"})
    merged = summary.merge(d, on=["ablation", "metric"], how="left")
    merged["ablation"] = merged["ablation"].fillna("")
    return merged[["group", "ablation", "metric", "n", "mean", "std", "diff_n", "diff_mean", "diff_std",
                   "ci_low", "ci_high", "beyond_noise"]]


def print_report(summary: pd.DataFrame, diffs: pd.DataFrame, runs: pd.DataFrame, notes: list[str]) -> None:
    headers, first, second = tables(summary, diffs)
    seeds = ", ".join(str(s) for s in sorted(set(runs["seed"])))
    t = Table(title=f"Study: mean ± std over seeds ({seeds}); accuracy in pp")
    for i, h in enumerate(["encoder", "seeds", *headers]):
        t.add_column(h, justify="left" if i == 0 else "right")
    for r in first:
        t.add_row(*r)
    out.print(t)
    t = Table(title="Paired difference improved − original, mean [95% CI]; * = CI excludes 0")
    for i, h in enumerate(["ablation", "seeds", *headers]):
        t.add_column(h, justify="left" if i == 0 else "right")
    for r in second:
        t.add_row(*r)
    out.print(t)
    for s in sentences(diffs):
        out.print(f"- {s}", soft_wrap=True)
    for n in notes:
        out.print(f"[dim]note: {n}[/]")


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
    for col, metric in enumerate(METRICS):
        label, unit, higher_better, scale, _ = METRICS[metric]
        title = f"{label}{f' ({unit})' if unit else ''}, {'higher' if higher_better else 'lower'} is better"
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
    n = runs["seed"].nunique()
    fig.suptitle(f"top: mean ± std over {n} seed{'s' if n != 1 else ''}; bottom: paired difference to the "
                 "original with its 95% CI (dots: single seeds)", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def report(shown: list, params_path: str | Path = "params.yaml", csv_path="metrics/study.csv",
           md_path="metrics/study.md", png_path="plots/study.png") -> pd.DataFrame:
    import yaml
    current = load_params(params_path)
    distinct_ablations(current)
    study_raw = yaml.safe_load(Path(params_path).read_text())["study"]
    runs, notes = collect_runs(shown, study_raw, current)
    if runs.empty:
        raise StudyError("no finished experiment of this study was found" +
                         (f" ({'; '.join(notes)})" if notes else "") +
                         ": run `python -m mae_exp.study queue` first")
    summary = summarize(runs)
    diffs = paired_differences(runs)
    atomic_write(csv_path, lambda tmp: csv_frame(summary, diffs).to_csv(tmp, index=False))
    atomic_write(md_path, lambda tmp: Path(tmp).write_text(markdown(summary, diffs, runs, notes)))
    save_figure(summary, diffs, runs, png_path)
    print_report(summary, diffs, runs, notes)
    out.print(f"[dim]wrote {csv_path}, {md_path}, {png_path}[/]")
    return runs


# --------------------------------------------------------------------------- the queue


def _dvc() -> str:
    here = Path(sys.executable).parent / "dvc"  # the dvc of this environment, else the one on PATH
    return str(here) if here.exists() else (shutil.which("dvc") or "dvc")


def dvc(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([_dvc(), *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise StudyError(f"`dvc {' '.join(args)}` failed (exit {proc.returncode}): "
                         f"{(proc.stderr or proc.stdout).strip()}")
    return proc


def queue_status(with_workers: bool = False):
    """task id -> (name, status) from `dvc queue status` (and the number of workers, active or idle)."""
    tasks, workers = {}, 0
    for line in dvc("queue", "status").stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and re.fullmatch(r"[0-9a-f]{7,40}", parts[0]):
            tasks[parts[0]] = (parts[1], parts[-1])
        found = re.match(r"Worker status: (\d+) active, (\d+) idle", line.strip())
        if found:
            workers = int(found[1]) + int(found[2])
    return (tasks, workers) if with_workers else tasks


def experiment_names() -> set[str]:
    """Names of the finished experiments on the current commit (HEAD's baseline): DVC refuses to queue
    one of these names again without -f."""
    return {line.strip() for line in dvc("exp", "ls", "--name-only").stdout.splitlines() if line.strip()}


def show_experiments(rev: str | None = None) -> list:
    """`dvc exp show --json` of every commit's experiments, or of those based on `rev`."""
    scope = ["--rev", rev] if rev else ["--all-commits"]
    return json.loads(dvc("exp", "show", "--json", "--no-fetch", *scope).stdout)


def finished_cells(params: Params, params_path: str | Path = "params.yaml") -> dict[tuple[int, str], str]:
    """(seed, ablation) -> name of a finished experiment that the report would use, on any commit."""
    import yaml
    study_raw = yaml.safe_load(Path(params_path).read_text())["study"]
    runs, _ = collect_runs(show_experiments(), study_raw, params)
    return {(int(r["seed"]), r["ablation"]): r["name"] for r in runs.to_dict("records")}


def distinct_ablations(params: Params) -> None:
    """The report tells ablations apart by their improved.* values, so two may not give the same."""
    seen = {}
    for name in params.study.ablations:
        v = ablation_variant(params, name)
        if v in seen:
            raise StudyError(f"study.ablations.{name} gives the same improved.* values as "
                             f"study.ablations.{seen[v]}: the report could not tell them apart")
        seen[v] = name


@dataclasses.dataclass(frozen=True)
class Job:
    name: str  # s<seed>-<ablation>
    seed: int
    ablation: str
    overrides: tuple[str, ...]  # for `dvc exp run -S`


def plan(params: Params, seeds: list[int] | None, ablations: list[str] | None) -> list[Job]:
    """One experiment per seed and ablation, ablation by ablation. The first ablation
    gives every seed its original branch; the others get it from DVC's run-cache instead of training it
    again (with -j N, as long as N is at most the number of seeds). And a study cut short has every seed
    of the first ablations rather than every ablation of the first seeds."""
    known = params.study.ablations
    distinct_ablations(params)
    for a in ablations or []:
        if a not in known:
            raise StudyError(f"unknown ablation {a!r}; study.ablations in params.yaml has: {', '.join(known)}")
    jobs = []
    for a in ablations or known:
        for seed in seeds or params.study.seeds:
            overrides = (f"seed={seed}", *(f"{k}={v!r}" for k, v in known[a].items()))
            jobs.append(Job(f"s{seed}-{a}", seed, a, overrides))
    return jobs


def queue(seeds=None, ablations=None, jobs: int = 1, start: bool = True, force: bool = False,
          poll_s: float = 10.0) -> int:
    params = load_params("params.yaml")
    todo = plan(params, seeds, ablations)
    done = finished_cells(params)  # by params, on any commit: committing in between does not lose them
    names_here = experiment_names()
    pending = {t: name for t, (name, status) in queue_status().items() if status in ("Queued", "Running")}
    mine: dict[str, str] = {}  # task id -> name
    waiting: list[Job] = []
    for job in todo:
        if job.name in pending.values():
            out.print(f"{job.name}: already queued or running, not queued again (waited for below)")
            mine.update({t: n for t, n in pending.items() if n == job.name})
        elif (job.seed, job.ablation) in done and not force:
            out.print(f"{job.name}: already done ({done[job.seed, job.ablation]}), skipped "
                      "(--force runs it again)")
        else:
            waiting.append(job)
    if not mine and not waiting:
        out.print("nothing new to run; `python -m mae_exp.study report` reads what is there")
        return 0
    if not start:
        for job in waiting:
            enqueue(job, names_here)
        out.print(f"{len(mine) + len(waiting)} experiment(s) in the queue; start it with `dvc queue start -j N`")
        return 0
    out.print(f"{len(waiting)} to run, at most {jobs} at a time in DVC's queue")
    return run(mine, waiting, jobs, poll_s, names_here)


def enqueue(job: Job, names_here: set[str]) -> str | None:
    """`dvc exp run --queue` one experiment; its task id (names can repeat in the queue, ids do not)."""
    before = set(queue_status())
    args = ["exp", "run", "--queue", "-n", job.name, *(a for o in job.overrides for a in ("-S", o))]
    dvc(*args, *(["-f"] if job.name in names_here else []))  # DVC refuses a name done on this commit
    new = [t for t, (n, _) in queue_status().items() if t not in before and n == job.name]
    out.print(f"{job.name}: queued ({' '.join(job.overrides)})")
    return new[0] if new else None


def start_workers(jobs: int) -> None:
    # the worker it starts outlives it: no pipes, or waiting for their end would wait for the queue.
    # Idempotent: DVC starts only the workers (1..N) that are not running.
    proc = subprocess.run([_dvc(), "queue", "start", "-j", str(jobs)], stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise StudyError(f"`dvc queue start -j {jobs}` failed (exit {proc.returncode}): see `dvc queue status`")


def run(mine: dict[str, str], waiting: list[Job], jobs: int, poll_s: float, names_here: set[str]) -> int:
    """Feed DVC's queue at most `jobs` experiments at a time and poll `dvc queue status` until every one
    has finished, with a progress bar and a line per change of state.

    Why not queue everything up front: then stopping this command stops the study (nothing is left
    queued to run unattended), and running it again resumes it. Entries removed by hand
    (`dvc queue remove`) are reported as not run."""
    from .progress import progress
    waiting = list(waiting)
    total = len(mine) + len(waiting)
    started = no_worker_since = time.monotonic()
    status: dict[str, str] = {}
    seen = set(queue_status())  # older tasks of the same names are not ours
    workers_started = False
    try:
        with progress(running="") as bar:
            task = bar.add_task("experiments", total=total, running="")
            while True:
                tasks, workers = queue_status(with_workers=True)
                for t in [t for t in mine if t not in tasks]:
                    # DVC sometimes re-stashes a queued experiment under a new task id: follow it
                    new = [u for u, (n, _) in tasks.items() if n == mine[t] and u not in mine and u not in seen]
                    if new:
                        mine[new[0]] = mine.pop(t)
                        status[new[0]] = status.pop(t, None)
                seen |= set(tasks)
                now = {t: tasks.get(t, ("", "Removed"))[1] for t in mine}
                for t, s in now.items():  # a line per change, so a log file tells the story too
                    if status.get(t) != s:
                        bar.console.print(f"{time.strftime('%H:%M:%S')} {mine[t]}: {s.lower()}")
                status = now
                in_flight = sum(s in ("Queued", "Running") for s in status.values())
                if waiting and in_flight < jobs:
                    while waiting and in_flight < jobs:
                        job = waiting.pop(0)
                        t = enqueue(job, names_here)
                        if t:
                            mine[t] = job.name
                            seen.add(t)
                            in_flight += 1
                    start_workers(jobs)
                    workers_started = True
                    no_worker_since = time.monotonic()
                    continue  # poll again at once: the new tasks' state
                if not workers_started and in_flight:
                    start_workers(jobs)  # only experiments queued before this command
                    workers_started = True
                finished = sum(s in TERMINAL for s in status.values())
                failed = sum(s in ("Failed", "Removed") for s in status.values())
                running = [mine[t] for t, s in status.items() if s == "Running"]
                bar.update(task, completed=finished,
                           running=f"{', '.join(running) or '-'} (failed: {failed})")
                if finished == len(mine) and not waiting:
                    break
                if workers or running:  # `dvc queue status` can show no worker while a task still runs
                    no_worker_since = time.monotonic()
                elif time.monotonic() - no_worker_since > max(60.0, 3 * poll_s):
                    raise StudyError(f"no queue worker is running but {total - finished} experiment(s) "
                                     "have not finished: `dvc queue status`; the same command resumes")
                time.sleep(poll_s)
    except KeyboardInterrupt:
        out.print("stopped; the experiments already in DVC's queue go on in the background "
                  "(`dvc queue status`); the same command queues the rest, "
                  "`python -m mae_exp.study report` reads what is done")
        return 130
    failed = [t for t, s in status.items() if s != "Success"]
    minutes = (time.monotonic() - started) / 60
    out.print(f"{len(mine) - len(failed)} of {len(mine)} experiments succeeded in {minutes:.1f} min")
    for t in failed:
        if status[t] == "Removed":
            out.print(f"[bold red]not run:[/] {mine[t]}: removed from the queue (task {t}); "
                      "the same command queues it again")
        else:
            out.print(f"[bold red]failed:[/] {mine[t]}: see `dvc queue logs {t}`")
    return 1 if failed else 0


# --------------------------------------------------------------------------- CLI


def _interrupted(*_) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mae_exp.study", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    q = sub.add_parser("queue", help="queue seeds x ablations as DVC experiments, run them, wait")
    q.add_argument("--seeds", type=int, nargs="+", help="default: study.seeds in params.yaml")
    q.add_argument("--ablations", nargs="+", help="default: every one in study.ablations")
    q.add_argument("-j", "--jobs", type=int, default=1, help="parallel experiments (dvc queue start -j)")
    q.add_argument("--no-start", action="store_true", help="only queue; start later with dvc queue start")
    q.add_argument("--force", action="store_true", help="run again experiments already done on this commit")
    q.add_argument("--poll", type=float, default=10.0, help="seconds between status checks")
    r = sub.add_parser("report", help="tables, sentences and a figure from the finished experiments")
    r.add_argument("--rev", help="only experiments based on this commit (default: all commits)")
    r.add_argument("--from-json", help="read this saved `dvc exp show --json` output instead of running it")
    a = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupted)  # `kill`: stop waiting as Ctrl-C does
    try:
        if a.command == "queue":
            return queue(a.seeds, a.ablations, a.jobs, not a.no_start, a.force, a.poll)
        shown = json.loads(Path(a.from_json).read_text()) if a.from_json else show_experiments(a.rev)
        report(shown)
        return 0
    except (StudyError, ConfigError) as e:
        out.print(f"[bold red]error:[/] {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
