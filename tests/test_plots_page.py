"""The `dvc plots show` page (docs/plots.md): the encoder template's colours are the palette's, the page
template inlines the pinned vega packages, and, in headless Chromium, the page of a tiny `dvc repro` draws
every plot in story order with no network, each image once; `dvc plots diff` against an experiment draws
both revisions on the same curated plots; and the check fails on a broken plot, a doubled image, a request."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import REPO, copy_built, copy_repo, dvc, git
from mae_exp.evaluation import palette
from mae_exp.evaluation.report import write_curves
from mae_exp.plots_page import CHROMIUM, RAW_PREFIX, SECTIONS, TEMPLATE, VENDOR, look, problems, template_html

ENCODER_TEMPLATE = REPO / ".dvc" / "plots" / "encoders.json"


def dvc_yaml(repo: Path = REPO) -> dict:
    return yaml.safe_load((repo / "dvc.yaml").read_text())


def curated(repo: Path = REPO) -> dict[str, dict]:
    """dvc.yaml's top-level plot definitions that have properties (id -> props)."""
    return {k: v for entry in dvc_yaml(repo).get("plots", []) if isinstance(entry, dict) for k, v in entry.items()}


def stage_plots(repo: Path = REPO) -> set[str]:
    """Every path a stage declares under `plots:` (foreach items filled in)."""
    found = set()
    for spec in dvc_yaml(repo)["stages"].values():
        body, items = spec.get("do", spec), spec.get("foreach", [None])
        for entry in body.get("plots", []):
            path = entry if isinstance(entry, str) else next(iter(entry))
            found |= {path.replace("${item}", str(item)) for item in items}
    return found


def test_the_encoder_template_colours_each_line_as_its_rows_say(tmp_path):
    """The template names no recipe: each line takes the colour its rows carry (`range: {field: colour}`), and
    the report writes each encoder's rows in the palette's colour for its place in `recipes` (random grey)."""
    color = json.loads(ENCODER_TEMPLATE.read_text())["encoding"]["color"]
    assert color["field"] == "encoder" and color["scale"] == {"range": {"field": "colour"}}
    for stage, encoders in (("pretrain", ("a", "b", "c")), ("finetune", ("random", "a", "b", "c"))):
        for name in encoders:
            curve = tmp_path / "metrics" / stage / name / "plots" / "metrics" / "loss.tsv"
            curve.parent.mkdir(parents=True)
            curve.write_text("step\tloss\n1\t2.0\n2\t1.5\n")
    write_curves(tmp_path / "metrics", ("random", "a", "b", "c"), tmp_path / "curves")
    for stage in ("pretrain", "finetune"):
        rows = [line.split("\t") for line in (tmp_path / f"curves/{stage}_loss.tsv").read_text().splitlines()]
        assert rows[0] == ["step", "loss", "encoder", "colour"]
        colours = {row[2]: row[3] for row in rows[1:]}
        assert colours == {e: c for e, c in palette.encoder_colours(("random", "a", "b", "c")).items() if e in colours}
    assert palette.encoder_colours(("random", "a", "b")) == {"random": "#8c8c8c", "a": "#1f77b4", "b": "#ff7f0e"}


def test_every_encoder_and_study_arm_has_its_own_colour():
    groups = [
        "random",
        "original",
        "improved: all",
        "original: original_flops_matched",
        "improved: curriculum_only",
        "improved: laplacian_only",
        "improved: uniformity_only",
        "improved: a_new_arm",
        "improved: another",
    ]
    encoders = ("random", "original", "improved")  # the study's: random, its baseline, its tested recipe
    colours = palette.colours(groups, encoders)
    assert len(set(colours.values())) == len(groups)
    assert colours["improved: all"] == palette.encoder_colours(encoders)["improved"]  # the full tested recipe


def test_every_curated_plot_reads_one_combined_file_of_the_report():
    """Each curated plot draws metrics/curves/<stage>_<curve>.tsv, which the report writes from every encoder's
    DVCLive curve <curve>.tsv of that stage: one file, its y field the curve's name."""
    for plot_id, props in curated().items():
        assert props.get("template") == "encoders", plot_id
        [(path, field)] = props["y"].items()
        match = re.fullmatch(r"metrics/curves/(pretrain|linear_probe|finetune)_(\w+)\.tsv", path)
        assert match and match.group(2) == field, (plot_id, path, field)


def test_no_image_is_declared_twice():
    """A stage's plot is on the page already: a top-level entry for the same file would show it again."""
    top_level = {entry for entry in dvc_yaml().get("plots", []) if isinstance(entry, str)} | set(curated())
    assert not top_level & stage_plots()
    assert {"plots/comparison.png", "plots/reconstruction.png"} <= stage_plots()


def inlined_scripts(page: str) -> dict[str, str]:
    """The vendored scripts inlined in a page template (name -> script), by the line naming each."""
    found = re.findall(r"<!-- ([a-z-]+)@[0-9.]+ \(npm[^>]*-->\n<script>(.*?)</script>", page, re.DOTALL)
    return dict(found)


def test_the_page_template_inlines_the_pinned_packages_and_is_configured():
    page = (REPO / TEMPLATE).read_text(encoding="utf8")
    scripts = inlined_scripts(page)
    assert list(scripts) == [p.name for p in VENDOR]
    for p in VENDOR:
        assert hashlib.sha256(scripts[p.name].encode()).hexdigest() == p.sha256, p.name
        assert (REPO / TEMPLATE.parent / "vendor" / f"LICENSE.{p.name}").read_text().startswith("Copyright")
    assert page == template_html(scripts), "SKELETON changed: run `python -m mae_exp.plots_page template DIR`"
    assert "<script src=" not in page and "{scripts}" not in page  # nothing loaded, DVC's CDN tags not taken
    config = (REPO / ".dvc" / "config").read_text()
    assert re.search(r"^\[plots\]\n\s+html_template = plots/page\.html$", config, re.MULTILINE)


# --- in a real browser -------------------------------------------------------------------------------------


def chromium() -> str:
    if Path(CHROMIUM).exists():
        return CHROMIUM
    reason = f"{CHROMIUM} is missing (Debian: apt-get install chromium; .ci/run installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI is set, so this is a failure, not a skip", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def built(tiny_reproduced, tmp_path_factory):
    """This module's copy of the session's whole tiny `dvc repro`, its results committed."""
    chromium()
    repo = copy_built(tiny_reproduced[0], tmp_path_factory.mktemp("page") / "repo")
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "results", cwd=repo)
    return repo


def show(repo: Path, out: Path, *diff: str) -> Path:
    dvc("plots", *(("diff", *diff) if diff else ("show",)), "-o", str(out), cwd=repo)
    return out


def specs(page_dir: Path) -> dict[str, dict]:
    """The Vega-Lite spec DVC wrote for each plot (div id -> spec)."""
    page = (page_dir / "index.html").read_text(encoding="utf8")
    found = re.findall(
        r'<div id = "([^"]+)">\s*<script type = "text/javascript">\s*var spec = (.*?);\n\s*vegaEmbed', page, re.DOTALL
    )
    return {plot_id: json.loads(spec) for plot_id, spec in found}


@pytest.mark.slow
def test_the_page_draws_every_plot_offline_in_story_order(built, tmp_path):
    page = show(built, tmp_path / "page")
    seen = look(page)
    assert problems(seen, page) == []
    raw_files = sorted((built / "metrics").glob("*/*/plots/metrics/*.tsv")) + sorted(
        (built / "metrics/curves").glob("*")
    )
    assert len(raw_files) > len(list((built / "metrics/curves").glob("*")))
    assert set(seen.plots) == set(curated(built)) | {
        re.sub(r"[^A-Za-z0-9]", "_", str(f.relative_to(built))) for f in raw_files
    }
    assert all(state == "ok" for state in seen.plots.values()) and len(seen.svgs) == len(seen.plots)
    assert seen.images == ["static/workspace_plots_comparison.png", "static/workspace_plots_reconstruction.png"]
    # story order: headings in turn, the comparison before every curve, the raw curves in their closed section
    headings = re.findall(r"<h2>([^<]*)</h2>", seen.dom.split('<div id="plots">', 1)[1])
    assert headings == [title for _, title in SECTIONS]
    story, raw = seen.dom.split('<details id="raw">', 1)
    assert story.index("workspace_plots_comparison.png") < story.index('id="pretrain_mse"')
    assert story.index('id="finetune_loss"') < story.index("workspace_plots_reconstruction.png")
    assert f'id="{RAW_PREFIX}' not in story and raw.count(f'id="{RAW_PREFIX}') == len(raw_files)
    # one line per encoder, named by its rows' `encoder` and drawn in their `colour`
    finetune = specs(page)["finetune_val_top1"]["data"]["values"]
    recipes = yaml.safe_load((built / "params.yaml").read_text())["recipes"]
    assert {(row["encoder"], row["colour"]) for row in finetune} == set(
        palette.encoder_colours(("random", *recipes)).items()
    )


@pytest.mark.slow
def test_the_check_fails_on_a_broken_plot_a_doubled_image_and_a_network_request(built, tmp_path):
    broken = copy_repo(tmp_path / "broken", config=None)
    for results in ("metrics", "plots"):
        shutil.copytree(built / results, broken / results)
    template = json.loads((broken / ENCODER_TEMPLATE.relative_to(REPO)).read_text())
    template["mark"]["type"] = "no-such-mark"
    (broken / ENCODER_TEMPLATE.relative_to(REPO)).write_text(json.dumps(template))
    spec = dvc_yaml(broken)
    spec["plots"].append("plots/comparison.png")  # the stage's plot, declared again at the top level
    (broken / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    html = broken / TEMPLATE
    html.write_text(
        html.read_text().replace("<title>", '<script src="https://cdn.jsdelivr.net/npm/vega@5"></script><title>', 1)
    )
    page = show(broken, tmp_path / "page")
    found = problems(look(page), page)
    for plot_id in curated(broken):
        assert f"plot {plot_id} did not draw (error)" in found
    assert not any(RAW_PREFIX in line for line in found)  # the raw curves use DVC's own template: still drawn
    assert "image static/workspace_plots_comparison.png appears 2 times" in found
    assert "the page asked the network for https://cdn.jsdelivr.net/npm/vega@5" in found


@pytest.mark.slow
def test_plots_diff_against_an_experiment_draws_both_revisions_on_the_curated_plots(built, tmp_path):
    # the stage that makes the new curves and the report that collects them, alone (--single-item): every other
    # file is in the experiment as HEAD had it, so every curated plot has both revisions (the evaluation stages
    # between them would add half a minute, not coverage)
    proc = dvc("exp", "run", "-s", "-S", "improved.lambda_freq=0.1", "pretrain@improved", "report", cwd=built)
    exp = re.search(r"Ran experiment\(s\): (\S+)", proc.stdout + proc.stderr).group(1)
    head = "HEAD"  # DVC names a revision as it was given
    page = show(built, tmp_path / "page", head, exp)
    seen = look(page)
    assert problems(seen, page) == []
    drawn = specs(page)
    for plot_id in curated(built):
        rows = drawn[plot_id]["data"]["values"]
        assert {row["rev"] for row in rows} == {head, exp}, plot_id
    # the experiment changed the improved branch only: its curves differ between the revisions, original's not
    mse = drawn["pretrain_mse"]["data"]["values"]
    by = {
        (rev, enc): [row["mse"] for row in mse if row["rev"] == rev and row["encoder"] == enc]
        for rev in (head, exp)
        for enc in ("original", "improved")
    }
    assert by[head, "original"] == by[exp, "original"] and by[head, "improved"] != by[exp, "improved"]
    assert sorted(seen.images) == sorted(
        f"static/{rev}_plots_{name}.png" for rev in (head, exp) for name in ("comparison", "reconstruction")
    )
