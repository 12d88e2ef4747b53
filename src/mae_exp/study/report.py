"""The study report: one sentence per comparison (arm, reading, metric), two tables (console and
metrics/study.md), metrics/study.csv, and the figure (figure.py). "Beyond noise" is the paired t-test's
p-value after Holm's correction over every comparison but study.primary (stats.py). Readout settings chosen
at an edge of their grid are counted per readout and encoder (edges.py, metrics/study_edges.csv), and a
readout over edges.EDGE_LIMIT is a warning beside the verdict. Every comparison is the tested recipe − the
baseline, the two recipes of study.compare (`pair`: the baseline, then the tested recipe), named as the design
names them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from rich.table import Table

from ..plumbing.files import atomic_write
from . import StudyError, edges, out
from .arms_figure import save_arms_figure
from .carriers import HEADER as CARRIERS_HEADER
from .carriers import carrier_lines
from .design import design_of
from .figure import save_figure
from .metrics import COSTS, METRICS, label_of, number, with_unit
from .predictions import SAVED_PREDICTIONS, read_predictions, save_table, saved_predictions
from .results import (
    SAVED,
    SAVED_CURVES,
    arm_name,
    arms,
    baseline_arms,
    collect_runs,
    dependency_disagreements,
    finetune_curves,
    load_study,
    merged,
    save_rows,
    saved_curves,
    saved_rows,
    steps_partners,
)
from .stats import paired_differences, primary_differences, primary_terms, summarize

DESCRIPTIONS = {  # how a sentence names an ablation (subject, verb; {baseline}: its name); others: "arm <name>"
    "all": ("all three improvements", "change"),
    "curriculum_only": ("curriculum masking alone", "changes"),
    "laplacian_only": ("the Laplacian loss alone", "changes"),
    "uniformity_only": ("the uniformity loss alone", "changes"),
    "improved_flops_matched": ("all three improvements, given the {baseline}'s FLOPs", "change"),
}
READING_WORDS = {"steps": "steps", "flops": "FLOPs", "both": "FLOPs matched both ways"}
NOISE = (
    "* = beyond noise: paired t-test p < 0.05 after Holm's correction within its family (the primary: "
    "uncorrected); (d) = descriptive: shown, not tested (equal steps, one-way FLOPs beside a both-ways primary)"
)
TRENDS_HEADER = (  # the slopes per doubling are in no Holm family: what the next study tests, not findings
    "How {tested} − {baseline} at equal FLOPs changes with pre-training compute, exploratory: the slopes are in "
    "no multiplicity family (not Holm-corrected), so none is a finding"
)


def difference(pair) -> str:
    """The difference every comparison reads, by the recipes' names: "<tested> − <baseline>"."""
    baseline, tested = pair
    return f"{tested} − {baseline}"


def sentence(row: dict, level: float = 0.95, *, pair) -> str:
    """One plain sentence: does this comparison exceed seed-to-seed noise, after Holm's correction?"""
    metric, n = row["metric"], row["n"]
    m = METRICS[metric]
    label = f"{label_of(metric)}, {row['reading']}" + (" [PRIMARY]" if row.get("primary") else "")
    ablation, _, budget = row["ablation"].partition("-e")
    who, verb = DESCRIPTIONS.get(ablation, (f"arm {ablation}", "changes"))
    who = who.format(baseline=pair[0]) if ablation in DESCRIPTIONS else who
    who += f" at {budget} pre-training epochs" if budget else ""
    seeds = f"{n} seed{'s' if n != 1 else ''}"
    if n == 0:
        return f"{label}: {who}: no finished experiment pair has this metric."
    change = with_unit(number(row["diff_mean"], metric), metric)
    if n < 2:
        return (
            f"{label}: {who} {verb} it by {change} ({seeds}): a confidence interval needs at least "
            f"2 seeds, so this says nothing about noise."
        )
    if row["diff_std"] == 0 and row["diff_mean"] == 0:
        return f"{label}: {who} {verb} it by 0 in every one of the {seeds}: no difference."
    ci = (
        f"{int(level * 100)}% CI {number(row['ci_low'], metric)} to {with_unit(number(row['ci_high'], metric), metric)}"
    )
    if not row.get("family", "x"):  # shown, not tested: no p-value enters a finding
        return f"{label}: {who} {verb} it by {change} ({ci}, {seeds}): descriptive, not tested."
    p = f"p = {row['p_value']:.2g}" + ("" if row.get("primary") else f", Holm-adjusted {row['p_holm']:.2g}")
    if not row["beyond_noise"]:
        return f"{label}: {who} {verb} it by {change} ({ci}, {p}, {seeds}): within seed-to-seed noise."
    better = (row["diff_mean"] > 0) == m.higher_better
    return (
        f"{label}: {who} {verb} it by {change} ({ci}, {p}, {seeds}): beyond seed-to-seed noise, "
        f"{'better' if better else 'worse'}."
    )


def sentences(diffs: pd.DataFrame, *, pair) -> list[str]:
    return [sentence(row, pair=pair) for row in diffs.to_dict("records")]


def _cell(mean: float, sd: float, metric: str) -> str:
    if pd.isna(mean):
        return "–"
    text = number(mean, metric, signed=False)
    return f"{text} ± {number(sd, metric, signed=False)}" if pd.notna(sd) else text


def _diff_cell(row: dict) -> str:
    metric = row["metric"]
    if row["n"] == 0:
        return "–"
    text = number(row["diff_mean"], metric)
    if row["n"] >= 2:
        text += f" [{number(row['ci_low'], metric)}, {number(row['ci_high'], metric)}]"
        if row["beyond_noise"]:
            text += " *"
        if not row.get("family", "x"):
            text += " (d)"
        if row.get("primary"):
            text = f"**{text}** (primary)"
    return text


def header(metric: str) -> str:
    m = {**METRICS, **COSTS}[metric]
    return f"{m.label}{f' ({m.unit})' if m.unit else ''} {'↑' if m.higher_better else '↓'}"


def _flops_cell(mean: float) -> str:
    return "–" if pd.isna(mean) else f"{mean:.3g}"


def tables(summary: pd.DataFrame, diffs: pd.DataFrame) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """(headers, rows of mean ± std per group, rows of paired differences per arm and reading) as text; the
    first table ends with each group's pre-training FLOPs, the second's headers start with the reading."""
    headers = [header(m) for m in METRICS]
    by = {(r["group"], r["metric"]): r for r in summary.to_dict("records")}
    first = []
    for g in dict.fromkeys(summary["group"]):
        n = max((by[(g, m)]["n"] for m in METRICS if (g, m) in by), default=0)
        cells = [_cell(by[(g, m)]["mean"], by[(g, m)]["std"], m) if (g, m) in by else "–" for m in METRICS]
        flops = _flops_cell(by[(g, "flops")]["mean"]) if (g, "flops") in by else "–"
        first.append([g, str(n), *cells, flops])
    dby = {(r["ablation"], r["reading"], r["metric"]): r for r in diffs.to_dict("records")}
    second = []
    for a, reading in dict.fromkeys(zip(diffs["ablation"], diffs["reading"])):
        n = max(dby[(a, reading, m)]["n"] for m in METRICS)
        second.append([a, reading, str(n), *(_diff_cell(dby[(a, reading, m)]) for m in METRICS)])
    return headers, first, second


def split_unpaired(diffs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The comparisons with a finished pair, and the names ("<arm> at <reading>") of those without one: an arm
    and reading with no pair says nothing, so the report names it once instead of a row and a sentence each."""
    paired = diffs.groupby(["ablation", "reading"], sort=False)["n"].transform("max") > 0
    unpaired = dict.fromkeys(f"{a} at {r}" for a, r in zip(diffs["ablation"][~paired], diffs["reading"][~paired]))
    return diffs[paired], list(unpaired)


UNPAIRED = (
    "No finished pair, so not in the table: {unpaired} (in a study of several budgets, equal FLOPs at a budget "
    "without a FLOPs-matched arm is read off the {baseline}'s compute curve, above)."
)


def markdown(summary: pd.DataFrame, diffs: pd.DataFrame, runs: pd.DataFrame, notes: list[str], *, pair) -> str:
    diffs, unpaired = split_unpaired(diffs)
    headers, first, second = tables(summary, diffs)

    def md(head, rows, left=1):
        lines = [
            "| " + " | ".join(head) + " |",
            "| " + " | ".join(["---"] * left + ["---:"] * (len(head) - left)) + " |",
        ]
        return lines + ["| " + " | ".join(r) + " |" for r in rows]

    seeds = ", ".join(str(s) for s in sorted(set(runs["seed"])))
    lines = [
        f"Study: {len(runs)} experiments, seeds {seeds}. Accuracy in percentage points (pp), "
        "mean ± std over seeds (sample std, n − 1); FLOPs: mean per pre-training.",
        "",
    ]
    lines += md(["encoder", "seeds", *headers, "FLOPs"], first)
    lines += [
        "",
        f"Paired difference {difference(pair)} (same seed), mean [95% CI, Student's t, n − 1 df], "
        f"at equal steps and at equal FLOPs; {NOISE}.",
        "",
    ]
    lines += md(["arm", "reading", "seeds", *headers], second, left=2)
    if unpaired:
        lines += ["", UNPAIRED.format(unpaired=", ".join(unpaired), baseline=pair[0])]
    lines += [""] + [f"- {s}" for s in sentences(diffs, pair=pair)]
    if notes:
        lines += [""] + [f"Note: {n}." for n in notes]
    return "\n".join(lines) + "\n"


def csv_frame(summary: pd.DataFrame, diffs: pd.DataFrame, *, pair) -> pd.DataFrame:
    """One row per group and metric (raw units: accuracy as a fraction; costs too), then one per comparison
    (arm, reading, metric: group "<tested>: <arm> − <baseline>") with its paired difference, raw and
    Holm-adjusted p-values and the primary marked."""
    baseline, tested = pair
    groups = summary.assign(reading="", ablation=summary["ablation"].fillna(""))
    compared = diffs.rename(columns={"n": "diff_n"}).assign(
        group=lambda d: f"{tested}: " + d["ablation"] + f" − {baseline}"
    )
    columns = [
        "group",
        "ablation",
        "reading",
        "metric",
        "n",
        "mean",
        "std",
        "diff_n",
        "diff_mean",
        "diff_std",
        "ci_low",
        "ci_high",
        "p_value",
        "p_holm",
        "family",
        "primary",
        "beyond_noise",
    ]
    return pd.concat([groups, compared], ignore_index=True).reindex(columns=columns)


def print_report(summary: pd.DataFrame, diffs: pd.DataFrame, runs: pd.DataFrame, notes: list[str], *, pair) -> None:
    diffs, unpaired = split_unpaired(diffs)
    headers, first, second = tables(summary, diffs)
    seeds = ", ".join(str(s) for s in sorted(set(runs["seed"])))
    for title, keys, rows in (
        (f"Study: mean ± std over seeds ({seeds}); accuracy in pp", ["encoder", "seeds"], first),
        (f"Paired difference {difference(pair)}, mean [95% CI]; {NOISE}", ["arm", "reading", "seeds"], second),
    ):
        t = Table(title=title)
        for i, h in enumerate([*keys, *headers] + (["FLOPs"] if rows is first else [])):
            t.add_column(h, justify="left" if i < len(keys) - 1 else "right")
        for r in rows:
            t.add_row(*r)
        out.print(t)
    if unpaired:
        out.print(UNPAIRED.format(unpaired=", ".join(unpaired), baseline=pair[0]), soft_wrap=True)
    for s in sentences(diffs, pair=pair):
        out.print(f"- {s}", soft_wrap=True)
    for n in notes:
        out.print(f"[dim]note: {n}[/]")


def print_edges(counts: pd.DataFrame, never_searched: list[str], *, pair) -> None:
    """The console's table of settings at an edge of their grid (edges.table), flagged readouts in red."""
    if counts.empty:
        return
    headers, rows = edges.table(counts, pair=pair)
    t = Table(title=f"{edges.EDGES_HEADER}: chosen at the grid's highest or lowest value, per experiment")
    for i, h in enumerate(headers):
        t.add_column(h, justify="right" if 0 < i < len(headers) - 1 else "left")
    for r in rows:
        t.add_row(*(f"[red]{c}[/]" if "⚠" in c else c for c in r))
    out.print(t)
    if never_searched:
        out.print(f"not searched (a one-point grid in every experiment): {', '.join(never_searched)}")
    for w in edges.warning_lines(counts):
        out.print(f"[bold red]warning:[/] {w}", soft_wrap=True)


def headline_lines(
    primary, runs: pd.DataFrame, diffs: pd.DataFrame, partners=None, predictions=None, *, pair
) -> list[str]:
    """The primary's equivalence reading, the second interval (seeds and test images resampled, where the
    per-image `predictions` are there), the rule it was read by (curves.VERDICT_RULE, verbatim), and what
    that makes of every other comparison."""
    from .curves import VERDICT_RULE, equivalence

    reading = equivalence(primary_differences(runs, primary, partners, pair=pair), primary.margin)
    lines = [verdict_line(primary, reading, pair=pair)]
    if predictions is not None and reading["n"] >= 1:
        lines.append(image_interval_line(primary, runs, partners, predictions, pair=pair))
    lines.append(f"Verdict rule: {VERDICT_RULE}")
    if reading["n"] < 2:  # one seed has a value but no interval: it is neither beyond noise nor within it
        lines.append("Every other comparison is exploratory: the primary has no reading yet.")
    elif not any(diffs["primary"] & diffs["beyond_noise"]):
        lines.append("Every other comparison is exploratory: the primary is not beyond noise.")
    return lines


IMAGE_DRAWS = 10_000
HISTORY = Path("metrics/history")  # earlier studies, each folder as it was: params, ledger, report


def history_lines(root: Path) -> list[str]:
    """The earlier studies' primaries as their own reports stated them (each `metrics/history/<study>/study.md`'s
    "Primary (" line, verbatim), so that this report carries both answers; a study without one is named."""
    lines = []
    for md in sorted((root / HISTORY).glob("*/study.md")):
        said = [line for line in md.read_text().splitlines() if line.startswith("Primary (")]
        where = md.parent.relative_to(root).as_posix()
        none = "its report has no verdict line (it predates them): see its README.md"
        lines.append(f"- `{where}/`: {said[0] if said else none}")
    return lines


def image_interval_line(primary, runs: pd.DataFrame, partners, predictions: pd.DataFrame, *, pair) -> str:
    """The primary recomputed on resampled seeds and test images (predictions.two_way_bootstrap over each
    seed's per-image difference, stats.primary_terms): an interval that also counts the test split's own
    sampling error. It is shown beside the verdict and decides nothing."""
    from .predictions import correct, two_way_bootstrap

    terms = primary_terms(runs, primary, partners, pair=pair)
    rows, missing = [], 0
    for seed in sorted(terms):
        parts = [(w, correct(predictions, rev, enc, primary.metric)) for w, rev, enc in terms[seed]]
        if any(c is None for _, c in parts) or len({len(c) for _, c in parts}) != 1:
            missing += 1
            continue
        rows.append(sum(w * c.astype(float) for w, c in parts))
    if not rows:
        return "Second interval (seeds and test images resampled): no per-image predictions of the primary's encoders."
    low, high = two_way_bootstrap(np.stack(rows), level=0.95, draws=IMAGE_DRAWS, seed=0)
    m = primary.metric
    left = f"; {missing} seed(s) without predictions left out" if missing else ""
    return (
        f"Second interval, resampling seeds and the {len(rows[0]):,} test images alike (percentile bootstrap, "
        f"{IMAGE_DRAWS:,} draws, {len(rows)} seeds{left}): 95% CI {number(low, m)} to "
        f"{with_unit(number(high, m), m)}. The verdict uses the Student-t interval over seeds above."
    )


def verdict_line(primary, e: dict, *, pair) -> str:
    """The primary's equivalence reading in one sentence (curves.equivalence)."""
    m = METRICS[primary.metric]
    margin = with_unit(number(primary.margin, primary.metric, signed=False), primary.metric)
    what = f"Primary ({m.label}, {primary.arm}, equal {READING_WORDS[primary.reading]}"
    if e["n"] == 1:  # a value, but no interval: no verdict either way
        return (
            f"{what}): 1 seed, {difference(pair)} {with_unit(number(e['mean'], primary.metric), primary.metric)}; "
            "no interval and no reading yet (a verdict needs at least 2 seeds)."
        )
    if e["n"] < 2:
        return f"{what}): {e['n']} seeds, no reading yet."
    ci95, ci90 = (
        f"{level}% CI {number(e[f'ci{level}_low'], primary.metric)} to "
        f"{with_unit(number(e[f'ci{level}_high'], primary.metric), primary.metric)}"
        for level in (95, 90)
    )
    return (
        f"{what}; margin ±{margin}, fixed before the "
        f"runs): {difference(pair)} {with_unit(number(e['mean'], primary.metric), primary.metric)} "
        f"({ci95}, paired t p = {e['p_t']:.2g}; {ci90}, TOST p = {e['p_tost']:.2g}; {e['n']} seeds): "
        f"{e['verdict'].upper()}."
    )


def compute_curves(runs: pd.DataFrame, current, baselines: set[str], primary, csv_path, png_path) -> list[str]:
    """A study of several budgets: the curves' data (csv_path), figure (png_path), and a line per readout on
    how the tested recipe − the baseline at equal FLOPs changes with compute. `baselines`: the arms that
    change the baseline (results.baseline_arms)."""
    from .curve_figure import save_compute_figure
    from .curves import correlation, curve, gap_table, gaps, points, trend

    design, pair = arms(current), tuple(design_of(current).compare)
    # the curves are the primary's recipe against the baseline: a single-change arm (laplacian_only, ...) is
    # another recipe, and pooling its runs into the tested recipe's curve would average two recipes at a budget
    recipe = design[primary.arm].ablation if primary.arm in design else primary.arm  # "all-e32" -> "all"
    curve_arms = {a for a, arm in design.items() if arm.ablation == recipe} | set(baselines)
    pts = points(runs[runs["ablation"].isin(curve_arms)], baselines, lambda arm: design[arm].ablation, pair=pair)
    g = gaps(pts, pair=pair)
    c, table, tr = curve(pts), gap_table(g), trend(g, pair=pair)
    frame = pd.concat([c.assign(kind="curve"), table.assign(kind="gap"), tr.assign(kind="trend")], ignore_index=True)
    atomic_write(csv_path, lambda tmp: frame.to_csv(tmp, index=False))
    save_compute_figure(c, table, primary, png_path, pair=pair)
    lines = []
    for r in tr.to_dict("records"):
        m = METRICS[r["metric"]]
        if r["n"] == 0:
            continue
        per = with_unit(number(r["slope_per_doubling"], r["metric"]), r["metric"])
        lo, hi = number(r["ci_low"], r["metric"]), number(r["ci_high"], r["metric"])
        ends = table[(table["metric"] == r["metric"]) & (table["reading"] == "equal FLOPs") & (table["n"] > 0)]
        span = ""
        if len(ends) >= 2:
            first, last = ends.sort_values("budget").iloc[[0, -1]].to_dict("records")
            epochs = f"epoch{'s' * (first['budget'] != 1)}"
            span = (
                f" from {number(first['gap'], r['metric'])} at {first['budget']} {epochs} to "
                f"{with_unit(number(last['gap'], r['metric']), r['metric'])} at {last['budget']},"
            )
        n = int(r["n"])
        interval = (
            f"95% CI {lo} to {hi}, {n} seeds" if pd.notna(r["ci_low"]) else f"{n} seed{'s' * (n != 1)}, no interval"
        )
        lines.append(
            f"{m.label}: {difference(pair)} at equal FLOPs{span} {per} per doubling of pre-training "
            f"compute ({interval}): {r['trend']}."
        )
    r = correlation(runs, "mse", "psnr", pair=pair)
    if pd.notna(r):
        lines.append(f"masked MSE and PSNR: r = {r:.2f} over every pre-trained encoder: one finding, read as PSNR.")
    return lines


def report(
    rows: list[dict],
    params_path: str | Path = "params.yaml",
    csv_path="metrics/study.csv",
    md_path="metrics/study.md",
    png_path="plots/study.png",
    curves: bool = True,
    compute_csv="metrics/study_compute.csv",
    compute_png="plots/study_compute.png",
    edges_csv="metrics/study_edges.csv",
    arms_png="plots/study_arms.png",
) -> pd.DataFrame:
    """The report of the study in params.yaml from experiment rows (results.py) and the saved ones (SAVED,
    SAVED_CURVES), which it then updates; returns the runs used. `curves`: read each experiment's
    fine-tuning curve from its commit, else from the saved curves (not for a saved CSV's rows). A study of
    several budgets also gets its compute curves (compute_csv, compute_png). `edges_csv`: per readout and
    encoder, how many chosen settings sit at an edge of their grid. `arms_png`: every arm at its FLOPs
    against the baseline's curve, a panel per readout (arms_figure.py)."""
    root = Path(params_path).parent
    current, study_raw = load_study(params_path)
    design = design_of(current)
    primary, pair = design.primary, (design.baseline, design.tested)
    if primary.metric not in METRICS:
        raise StudyError(f"study.primary.metric {primary.metric!r} is not a study metric; known: {', '.join(METRICS)}")
    primary = primary.model_copy(update={"arm": arm_name(current, primary.arm, primary.budget)})
    rows = merged(rows, saved_rows(root))
    runs, notes = collect_runs(rows, study_raw, current)
    if runs.empty:
        raise StudyError(
            "no finished experiment of this study was found"
            + (f" ({'; '.join(notes)})" if notes else "")
            + ": run `python -m mae_exp.study queue` first"
        )
    baselines = baseline_arms(current)
    summary = summarize(runs, baselines, pair=pair)
    partners = steps_partners(current)
    diffs = paired_differences(runs, baselines, primary, partners=partners, pair=pair)
    if not diffs["primary"].any():
        notes.append(
            f"the primary comparison ({primary.arm}, equal {READING_WORDS[primary.reading]}, {primary.metric}) has no "
            "finished pair yet: no verdict, and every other comparison stays exploratory until it has one"
        )
    predictions = saved_predictions(root)
    if curves:  # the per-image predictions come from each experiment's commit, else from the saved ledger
        predictions, more = read_predictions(runs, baselines, root, predictions, pair=pair)
        notes += more
        save_table(predictions, root / SAVED_PREDICTIONS)
    headline = headline_lines(primary, runs, diffs, partners, predictions, pair=pair)
    differing = dependency_disagreements(rows, runs["rev"])
    if differing:
        headline.append(
            f"**Warning:** the experiments ran on different code or data: {'; '.join(differing)}. A study "
            "compares recipes on one commit: run the rest in a clone pinned to the design's commit."
        )
    else:
        notes.append(f"all {len(runs)} experiments ran on the same code and data (their dependency hashes agree)")
    studied = set(runs["rev"])
    chosen = edges.choices([r for r in rows if r["rev"] in studied], pair=pair)
    edge_counts, never_searched = edges.edge_counts(chosen, pair=pair), edges.unsearched(chosen)
    edge_warning = edges.summary_warning(edge_counts, primary.metric)
    trends = []
    if len(design.budgets) > 1:
        trends = compute_curves(runs, current, baselines, primary, compute_csv, compute_png)
    per_epoch = None
    if curves:
        per_epoch, read, more = finetune_curves(runs, baselines, root, saved_curves(root), pair=pair)
        notes += more
        atomic_write(root / SAVED_CURVES, lambda tmp: read.to_csv(tmp, index=False))
    save_rows(rows, runs["rev"], root / SAVED)
    atomic_write(csv_path, lambda tmp: csv_frame(summary, diffs, pair=pair).to_csv(tmp, index=False))
    atomic_write(edges_csv, lambda tmp: edge_counts.to_csv(tmp, index=False))
    top = "\n\n".join(headline + ([f"**Warning:** {edge_warning}."] if edge_warning else [])) + "\n\n"
    trends_header = TRENDS_HEADER.format(baseline=design.baseline, tested=design.tested)
    if trends:
        top += (
            f"{trends_header} (data: {compute_csv}, figure: {compute_png}):\n\n"
            + "\n".join(f"- {t}" for t in trends)
            + "\n\n"
        )
    names = {arm: who.format(baseline=pair[0]) for arm, (who, _) in DESCRIPTIONS.items()}
    carriers = carrier_lines(diffs, pair=pair, names=names)
    if carriers:
        top += CARRIERS_HEADER.format(baseline=pair[0]) + ":\n\n" + "\n".join(f"- {c}" for c in carriers) + "\n\n"
    edges_md = edges.markdown_lines(edge_counts, never_searched, pair=pair)
    text = (
        top + markdown(summary, diffs, runs, notes, pair=pair) + ("\n" + "\n".join(edges_md) + "\n" if edges_md else "")
    )
    earlier = history_lines(root)
    if earlier:
        text += "\n**Earlier studies** (history, as their reports stated them):\n\n" + "\n".join(earlier) + "\n"
    atomic_write(md_path, lambda tmp: Path(tmp).write_text(text))
    save_figure(summary, diffs, runs, png_path, per_epoch, pair=pair)
    save_arms_figure(runs, baselines, arms_png, pair=pair)
    print_report(summary, diffs, runs, notes, pair=pair)
    print_edges(edge_counts, never_searched, pair=pair)
    for h in [*headline, *([f"{trends_header}:"] if trends else []), *trends]:
        out.print(f"[bold]{h}[/]" if h.startswith("Primary") else h, soft_wrap=True)
    if carriers:
        out.print(CARRIERS_HEADER.format(baseline=pair[0]) + ":", soft_wrap=True)
        for c in carriers:
            out.print(f"- {c}", soft_wrap=True)
    if edge_warning:  # last, beside the verdict: readouts that understate the encoders
        out.print(f"[bold red]warning:[/] {edge_warning}", soft_wrap=True)
    out.print(
        f"[dim]wrote {csv_path}, {md_path}, {png_path}, {arms_png}, {edges_csv}; the experiments read are in {SAVED}, "
        f"{SAVED_CURVES} and {SAVED_PREDICTIONS} (commit them: a clone's report and queue count them)[/]"
    )
    return runs
