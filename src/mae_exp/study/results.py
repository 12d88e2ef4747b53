"""DVC's experiments -> one row per study experiment (seed, ablation, metrics), recognised by their params.

The experiments come as `dvc.api.exp_show` rows: one flat dict per baseline commit (`typ` "baseline", also
the workspace) and per experiment (`typ` "branch_base"/"branch_commit"), with `Experiment` (the name),
`rev`, `Created`, `State`, and one column per metric and param. A column is named by the key alone
(`seed`, `<recipe>.steps_factor`, nested keys joined by ".") unless two files have that key, then `file:key`
(`metrics/linear_probe/<recipe>/metrics.json:top1`). Values: numbers as floats, anything else as its
str() ("True", "['unlabeled', 'train']"); "None" for a key a file lacks, "!" for a file DVC could not read.
`dvc exp show --csv` prints the same columns, with "" for missing values.
"""

from __future__ import annotations

import ast
import csv
import json
import math
import re
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from ..plumbing.config import RANDOM, ConfigError, as_dict, load_params, parse_params, with_overrides
from ..plumbing.files import atomic_write
from . import StudyError
from .design import check_design, design_of
from .metrics import COSTS, METRICS, encoders

# The study's own record of the experiments it has read, committed beside its report: DVC keeps experiments
# as local refs (`git clone` does not copy them), so a study spread over several machines or sessions carries
# its finished experiments in these two files and a fresh clone's report and queue still count them.
SAVED = Path("metrics/study_experiments.csv")  # their `dvc exp show --csv` rows (params and metrics)
SAVED_CURVES = Path("metrics/study_curves.csv")  # their fine-tuning curves: rev, encoder, epoch, val_top1

DESCRIBING = ("Experiment", "rev", "typ", "Created", "parent", "State", "Executor")  # the other columns: data
MISSING = ("None", "!", "")  # how exp_show / its CSV write a key that is not there or could not be read


def absent(value) -> bool:
    """An exp_show / CSV value that says the experiment has nothing there (None or one of MISSING)."""
    return value is None or value in MISSING


def experiment_rows(rev: str | None = None, root: str | Path = ".") -> list[dict]:
    """`dvc.api.exp_show` rows of the experiments of every commit (as `dvc exp show --all-commits`), or of
    those based on `rev`. `Created` becomes the ISO time of the experiment's commit, as in
    `dvc exp show --csv`: exp_show itself gives only a day or a time of day, too coarse to tell which of
    two runs is the newer."""
    import dvc.api
    from dvc.repo import Repo

    with Repo(root) as repo:
        revs = [rev] if rev else list(repo.scm.list_all_commits())
        rows = dvc.api.exp_show(repo=str(root), revs=revs)
        for row in finished(rows):
            commit_time = repo.scm.resolve_commit(row["rev"]).commit_time
            row["Created"] = datetime.fromtimestamp(commit_time).isoformat()  # noqa: DTZ006 (as DVC does)
    return rows


def csv_rows(path: str | Path) -> list[dict]:
    """The rows of a saved `dvc exp show --csv` output, valued as exp_show values them."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"{path} not found: save one with `dvc exp show --csv --all-commits > {path.name}`")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not set(DESCRIBING[:4]) <= set(rows[0]):
        raise StudyError(f"{path} is not the output of `dvc exp show --csv` (no Experiment, rev, typ, Created columns)")

    def value(column: str, text: str):
        if column in DESCRIBING:
            return text or None
        try:
            return float(text)
        except ValueError:
            return text or None

    return [{k: value(k, v) for k, v in row.items()} for row in rows]


def saved_rows(root: str | Path = ".") -> list[dict]:
    """The rows of the study's saved experiments (SAVED), none if there is no such file yet."""
    path = Path(root) / SAVED
    return csv_rows(path) if path.is_file() else []


def merged(live: list[dict], saved: list[dict]) -> list[dict]:
    """Experiment rows from DVC and from the saved file, one per experiment commit (DVC's copy wins)."""
    by_rev = {r["rev"]: r for r in saved}
    by_rev.update({r["rev"]: r for r in live})
    return list(by_rev.values())


def save_rows(rows: list[dict], revs, path: str | Path) -> None:
    """The rows of the experiments `revs` as `dvc exp show --csv` writes them ("" for a missing value)."""
    keep = [r for r in rows if r["rev"] in set(revs)]
    columns = list(dict.fromkeys(k for r in keep for k in r))

    def write(tmp) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns)
            w.writeheader()
            w.writerows({k: "" if absent(r.get(k)) else r[k] for k in columns} for r in keep)

    atomic_write(path, write)


def legacy_path(path: str) -> str:
    """Where a stage's file was before metrics/<stage>/<encoder>/ (the studies run before recipes were data kept
    metrics/<stage>_<encoder>/): metrics/pretrain/<recipe>/metrics.json -> metrics/pretrain_<recipe>/metrics.json."""
    return re.sub(r"^metrics/(pretrain|linear_probe|finetune)/(\w+)/", r"metrics/\1_\2/", path)


def cell(row: dict, path: str, key: str):
    """The value of `key` in file `path` of one row (or at its legacy_path, in an older experiment), or None."""
    columns = [c for c in (f"{path}:{key}", f"{legacy_path(path)}:{key}") if c in row]
    # exp_show gives every row the columns of every commit it reads: in a repository whose history has both
    # layouts, an older experiment has today's column too, empty. DVC names the column by the key alone when
    # no other file (in any row) has that key.
    for value in [row[c] for c in columns] if columns else [row.get(key)]:
        if not absent(value):
            return value
    return None


def metric_values(row: dict, pair) -> dict[str, float]:
    """`<metric>_<encoder>` -> value (NaN where the experiment has none), from the METRICS table, for the
    random encoder and the two recipes of `pair` (study.compare: the baseline, the tested recipe)."""
    values = {}
    for metric, m in {**METRICS, **COSTS}.items():
        for enc in m.encoders_in(encoders(pair)):
            v = cell(row, m.file(enc), m.key.format(enc=enc))
            number = isinstance(v, (int, float)) and not isinstance(v, bool)
            values[f"{metric}_{enc}"] = float(v) if number else math.nan
    return values


def flatten(d: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}: the dotted keys of a params or metrics file, as dvc exp show names them."""
    out = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def literal(value):
    """An exp_show param value back to what params.yaml had (42.0 -> 42, "True" -> True, "[1, 2]" -> [1, 2])."""
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    try:
        return ast.literal_eval(value) if isinstance(value, str) else value
    except (ValueError, SyntaxError, TypeError):
        return value  # a plain string ("shapes")


# Keys added after some experiments ran, and the value those experiments ran with (the keys of recipes as data:
# before them, `original` and `improved` were the recipes compared, both the one composition, `mae`; and the
# study's pair)
LEGACY = {
    "recipes": ["original", "improved"],
    "original.recipe": "mae",
    "improved.recipe": "mae",
    "study.compare": ["original", "improved"],  # the one pair a study compared then
}


def params_of(row: dict, current) -> dict:
    """The experiment's params.yaml, for every key params.yaml has today or an override of the study sets (a
    finetune.per_encoder entry), the study section aside. A key the experiment lacks takes its LEGACY value;
    a recipe section it lacks altogether (added since, e.g. smae) is taken as today's: it was not compared."""
    raw: dict = {}
    today = flatten(as_dict(current))
    design = design_of(current)
    set_by_study = {k for o in (design.overrides, *design.ablations.values()) for k in o}
    # the sections the experiment has a value in (a row also carries, empty, the columns of commits it is not of)
    sections = {
        k.split(":", 1)[-1].split(".")[0]
        for k, v in row.items()
        if (k.startswith("params.yaml:") or "." in k) and not absent(v)
    }
    for key in dict.fromkeys([*today, *sorted(set_by_study)]):
        value = literal(cell(row, "params.yaml", key))
        if value is None and key in LEGACY:
            value = LEGACY[key]
        elif value is None and key.split(".")[0] in current.recipe_sections() and key.split(".")[0] not in sections:
            value = today[key]
        if key.split(".")[0] == "study" or (value is None and key not in today):
            continue  # an override's key that the experiment lacks: left as params.yaml has it
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return raw


def _comparable(p) -> dict:
    # threads: where an experiment computed, not what (the queue sets it per child: queue.child_threads)
    return dict(as_dict(p), seed=None, study=None, threads=None)


class Arm(NamedTuple):
    """One cell of the study's design besides the seed: an ablation at one pre-training budget."""

    name: str  # the ablation, with "-e<budget>" when the study has several budgets ("all-e32")
    ablation: str  # a name in study.ablations
    budget: int  # pretrain.epochs


def arms(params) -> dict[str, Arm]:
    """Every arm of the study, ablation by ablation, budget by budget (study.ablation_budgets restricts some)."""
    study = design_of(params)
    return {
        a.name: a
        for a in (
            Arm(arm_name(params, ablation, budget), ablation, budget)
            for ablation in study.ablations
            for budget in study.ablation_budgets.get(ablation, study.budgets)
        )
    }


def arm_name(params, ablation: str, budget: int) -> str:
    return f"{ablation}-e{budget}" if len(design_of(params).budgets) > 1 else ablation


def arm_override_values(params, arm: Arm) -> dict:
    """study.overrides, the budget, then the arm's ablation's overrides (the seed is the queue's)."""
    design = design_of(params)
    return {**design.overrides, "pretrain.epochs": arm.budget, **design.ablations[arm.ablation]}


def identify(row: dict, study_raw: dict, current) -> tuple[int, str] | str:
    """(seed, arm) of an experiment of the current study, or why it is not one: the params of one of its arms
    (params.yaml with study.overrides, a budget and an ablation's overrides) at some seed."""
    raw = params_of(row, current)
    raw["study"] = study_raw  # experiments made before the study section existed still parse
    try:
        p = parse_params(raw)
    except ConfigError as e:
        return f"params do not validate ({e})"
    mine = _comparable(p)
    for name, arm in arms(current).items():
        if mine == _comparable(with_overrides(current, arm_override_values(current, arm))):
            return p.seed, name
    return (
        "params match no study arm (params.yaml with study.overrides, one of study.budgets and one of study.ablations)"
    )


def distinct_ablations(params) -> None:
    """The report tells arms apart by their params, so two may not give the same."""
    seen: dict[str, str] = {}
    for name, arm in arms(params).items():
        recipe = json.dumps(_comparable(with_overrides(params, arm_override_values(params, arm))), sort_keys=True)
        if recipe in seen:
            raise StudyError(
                f"study.ablations.{arm.ablation} gives the same params as "
                f"study.ablations.{arms(params)[seen[recipe]].ablation}: the report could not tell "
                "them apart"
            )
        seen[recipe] = name


def arm_overrides(params, name: str) -> tuple[str, ...]:
    """`key=value` pairs for `dvc exp run -S` of arm `name` (the seed is the queue's); `++key=value` (Hydra's
    add-or-set, which DVC's -S takes) for a key params.yaml does not have, such as a finetune.per_encoder entry."""
    present = set(flatten(as_dict(params)))
    values = arm_override_values(params, arms(params)[name])
    return tuple(f"{'' if k in present else '++'}{k}={v!r}" for k, v in values.items())


def steps_partners(params) -> dict[str, str]:
    """arm -> the arm that is its recipe given other steps (its overrides plus the tested recipe's
    steps_factor alone, at the same budget): the tested recipe matched to the baseline's FLOPs, for the
    reading both ways."""
    study = design_of(params)
    ablations, design, stretch = study.ablations, arms(params), f"{study.tested}.steps_factor"
    partners = {}
    for name, arm in design.items():
        mine = ablations[arm.ablation]
        for other, o in design.items():
            theirs = dict(ablations[o.ablation])
            stretched = theirs.pop(stretch, None) is not None
            if stretched and other != name and o.budget == arm.budget and theirs == mine:
                partners.setdefault(name, other)
    return partners


def baseline_arms(params) -> set[str]:
    """Arms that change the baseline recipe (e.g. give it the tested recipe's FLOPs): they supply baselines."""
    study = design_of(params)
    changes = {name for name, o in study.ablations.items() if any(k.startswith(f"{study.baseline}.") for k in o)}
    return {name for name, arm in arms(params).items() if arm.ablation in changes}


def finished(rows: list[dict]) -> list[dict]:
    """The finished experiments: not the baseline commits and the workspace (they duplicate an experiment
    or are none), not queued, running or failed ones, not ones without data."""
    return [r for r in rows if r["typ"] != "baseline" and r.get("State") in (None, "Success") and r.get("Created")]


def collect_runs(rows: list[dict], study_raw: dict, current) -> tuple[pd.DataFrame, list[str]]:
    """One row per (seed, ablation): the newest matching experiment. Also notes on what was left out."""
    found, notes, skipped = [], [], {}
    pair = tuple(design_of(current).compare)
    for row in finished(rows):
        who = identify(row, study_raw, current)
        if isinstance(who, str):
            skipped[who] = skipped.get(who, 0) + 1
            continue
        seed, ablation = who
        found.append(
            {
                "seed": seed,
                "ablation": ablation,
                "name": row.get("Experiment") or row["rev"],
                "rev": row["rev"],
                "timestamp": row["Created"],
                **metric_values(row, pair),
            }
        )
    for why, count in skipped.items():
        notes.append(f"left out {count} experiment{'s' if count > 1 else ''}: {why}")
    design = arms(current)
    for r in found:
        r["budget"] = design[r["ablation"]].budget
    columns = [
        "seed",
        "ablation",
        "budget",
        "name",
        "rev",
        "timestamp",
        *(f"{m}_{e}" for m in {**METRICS, **COSTS} for e in encoders(pair)),
    ]
    runs = pd.DataFrame(found, columns=columns)
    if runs.empty:
        return runs, notes
    runs = runs.sort_values("timestamp", ascending=False, kind="stable")
    dupes = runs.duplicated(["seed", "ablation"])
    if dupes.any():
        notes.append(
            f"left out {int(dupes.sum())} older duplicate(s) of a seed and ablation: "
            f"{', '.join(runs.loc[dupes, 'name'])}"
        )
    runs = runs[~dupes]
    order = {a: i for i, a in enumerate(design)}
    runs = runs.sort_values(["ablation", "seed"], key=lambda c: c.map(order) if c.name == "ablation" else c)
    return runs.reset_index(drop=True), notes


CODE_AND_DATA = ("src/", "stages/", "data/prepared")  # dependency columns every study experiment must share


def dependency_disagreements(rows: list[dict], revs) -> list[str]:
    """The code and data the study's experiments ran on must be one: for every dependency column of the
    source, the stage scripts and the prepared data (`dvc exp show` gives each dependency's hash), the paths
    whose hash differs between experiments, each with how many experiments hold each hash; [] when all agree.
    (A study run on two commits would compare recipes and code changes at once.)"""
    keep = [r for r in rows if r["rev"] in set(revs)]
    columns = {k for r in keep for k in r if ":" not in k and k.startswith(CODE_AND_DATA)}
    found = []
    for path in sorted(columns):
        hashes: dict[str, int] = {}
        for r in keep:
            value = r.get(path)
            if not absent(value):
                hashes[str(value)] = hashes.get(str(value), 0) + 1
        if len(hashes) > 1:
            found.append(f"{path} ({', '.join(f'{h[:8]}: {n}' for h, n in sorted(hashes.items()))})")
    return found


def load_study(params_path: str | Path) -> tuple[object, dict]:
    """params.yaml's params and its raw study section (given to every experiment's params when parsing)."""
    import yaml

    raw = yaml.safe_load(Path(params_path).read_text())
    if any(key.partition(".")[0] not in raw or legacy_missing(raw, key) for key in LEGACY):
        current = parse_params(with_legacy(raw))  # a clone pinned to a design from before recipes were data
    else:
        current = load_params(params_path)
    check_design(current)  # the design, every recipe's and every arm's settings, before anything is queued or read
    distinct_ablations(current)
    return current, dict(current.study)


def legacy_missing(raw: dict, key: str) -> bool:
    section, _, leaf = key.partition(".")
    return bool(leaf) and isinstance(raw.get(section), dict) and leaf not in raw[section]


def with_legacy(raw: dict) -> dict:
    """A params.yaml from before recipes were data, with the LEGACY keys it lacks set to what it ran with."""
    raw = json.loads(json.dumps(raw))
    for key, value in LEGACY.items():
        section, _, leaf = key.partition(".")
        if not leaf:
            raw.setdefault(section, value)
        elif isinstance(raw.get(section), dict):
            raw[section].setdefault(leaf, value)
    return raw


def saved_curves(root: str | Path = ".") -> pd.DataFrame:
    """The saved fine-tuning curves (SAVED_CURVES): rev, encoder, epoch, val_top1; empty if none yet."""
    path = Path(root) / SAVED_CURVES
    columns = ["rev", "encoder", "epoch", "val_top1"]
    return pd.read_csv(path, dtype={"rev": str}) if path.is_file() else pd.DataFrame(columns=columns)


def finetune_curves(
    runs: pd.DataFrame,
    baselines: set[str],
    root: str | Path = ".",
    saved: pd.DataFrame | None = None,
    *,
    pair,
) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Fine-tuning validation top-1 after each epoch (DVCLive's val_top1.tsv, read from each experiment's
    commit through dvc.api, else from the `saved` curves), one row per (group, seed, epoch); groups as in
    stats.summarize. `baselines`: the arms that change the baseline (baseline_arms); `pair`: study.compare
    (the baseline, the tested recipe). Also the curves read, by experiment (rev, encoder, epoch, val_top1),
    and notes."""
    import dvc.api
    from dvc.exceptions import DvcException

    saved = saved if saved is not None else saved_curves(root)
    by_rev = {key: part for key, part in saved.groupby(["rev", "encoder"])}
    baseline, tested = pair
    rows, read, seen, wanted_by_seed = [], [], set(), set()
    for r in runs.to_dict("records"):
        arm = r["ablation"]
        several = runs["budget"].nunique() > 1  # the baseline differs per budget, as summarize names it
        plain = f"{baseline}-e{r['budget']}" if several else baseline
        wanted = (
            [(baseline, f"{baseline}: {arm}")]
            if arm in baselines
            else [(RANDOM, RANDOM), (baseline, plain), (tested, f"{tested}: {arm}")]
        )
        for encoder, group in wanted:
            if (group, r["seed"]) in seen:
                continue  # random and the baseline: the same encoder in every arm of a seed
            wanted_by_seed.add((group, r["seed"]))
            path = f"metrics/finetune/{encoder}/plots/metrics/val_top1.tsv"
            try:
                try:
                    text = dvc.api.read(path, repo=str(root), rev=r["rev"])
                except (DvcException, OSError):  # an experiment run before recipes were data
                    text = dvc.api.read(legacy_path(path), repo=str(root), rev=r["rev"])
                values = [float(line.split("\t")[1]) for line in text.splitlines()[1:]]  # header: step, val_top1
            except (DvcException, OSError, ValueError):
                if (r["rev"], encoder) not in by_rev:
                    continue  # another experiment of the seed may have it
                values = by_rev[r["rev"], encoder].sort_values("epoch")["val_top1"].tolist()
            seen.add((group, r["seed"]))
            for epoch, value in enumerate(values, start=1):
                rows.append({"group": group, "seed": r["seed"], "epoch": epoch, "val_top1": value})
                read.append({"rev": r["rev"], "encoder": encoder, "epoch": epoch, "val_top1": value})
    missing = len(wanted_by_seed - seen)
    notes = [f"{missing} fine-tuning curve(s) could not be read from their experiment"] if missing else []
    return (
        pd.DataFrame(rows, columns=["group", "seed", "epoch", "val_top1"]),
        pd.DataFrame(read, columns=["rev", "encoder", "epoch", "val_top1"]),
        notes,
    )
