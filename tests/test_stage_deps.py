"""Every stage depends on exactly the source files it runs: its script and every module of the package that
the script imports, directly or through other modules (at any depth, top-level or inside a function).
`python -m mae_exp.stage_deps` writes those deps into dvc.yaml; the committed file must be its output, so
adding an import without running it fails here.
"""

from __future__ import annotations

import pytest
import yaml

from conftest import REPO, copy_repo, run, stage_cmd
from mae_exp import stage_deps
from mae_exp.stage_deps import closure, render


def stage_sources(text: str) -> dict[str, tuple[set[str], set[str]]]:
    """stage -> (the .py files it lists as deps, the closure of the script its cmd runs)."""
    stages = yaml.safe_load(text)["stages"]
    out = {}
    for name, script in stage_deps.stage_scripts(text).items():
        stage = stages[name].get("do", stages[name])
        listed = {d for d in stage.get("deps", []) if isinstance(d, str) and d.endswith(".py")}
        out[name] = (listed, set(closure(REPO / script)))
    return out


def test_dvc_yaml_is_what_the_deps_command_writes():
    """`python -m mae_exp.stage_deps` writes the committed dvc.yaml: each stage's `.py` deps are exactly its
    script's imports (the closure), and nothing else in the file changes."""
    text = (REPO / "dvc.yaml").read_text()
    problems = []
    for name, (listed, needed) in stage_sources(text).items():
        if missing := needed - listed:
            problems.append(f"{name}: missing {sorted(missing)}")
        if extra := listed - needed:
            problems.append(f"{name}: lists {sorted(extra)}, which it does not import")
    assert not problems, "dvc.yaml deps disagree with the imports (`python -m mae_exp.stage_deps` fixes it):\n" + (
        "\n".join(problems)
    )
    assert render(text) == text  # the order too: the script, then the modules sorted


def test_the_deps_command_fixes_a_missing_or_extra_module_and_changes_nothing_else(tmp_path):
    text = (REPO / "dvc.yaml").read_text()
    broken = text.replace("      - src/mae_exp/data/shapes.py\n", "", 1).replace(
        "      - stages/report.py\n", "      - stages/report.py\n      - src/mae_exp/model.py\n", 1
    )
    assert broken != text and render(broken) == text
    repo = copy_repo(tmp_path / "repo", config=None)  # the command reads the modules beside the dvc.yaml it writes
    dvc_yaml = repo / "dvc.yaml"
    dvc_yaml.write_text(broken)
    command = ["python", "-m", "mae_exp.stage_deps", "--dvc-yaml", str(dvc_yaml)]
    proc = run([*command, "--check"], REPO, check=False)
    assert proc.returncode == 1 and "-      - src/mae_exp/model.py" in proc.stdout and "run `python -m" in proc.stderr
    assert dvc_yaml.read_text() == broken  # --check writes nothing
    run(command, REPO)
    assert dvc_yaml.read_text() == text  # the repository's modules, written in: the committed file back


def test_the_closure_follows_relative_lazy_and_package_imports(tmp_path):
    """The checker itself: on the real package, a few imports it must see."""
    pretrain = set(closure(REPO / "stages" / "pretrain.py"))
    assert "src/mae_exp/model.py" in pretrain  # from .model import ...
    assert "src/mae_exp/training/distributed.py" in pretrain  # from . import distributed
    assert "src/mae_exp/training/train.py" in pretrain
    assert "stages/pretrain.py" in pretrain
    download = set(closure(REPO / "stages" / "download.py"))
    assert "src/mae_exp/data/__init__.py" in download  # importing data.sources runs the package's __init__
    assert {"src/mae_exp/data/shapes.py", "src/mae_exp/data/stl10.py"} <= download
    assert "src/mae_exp/model.py" not in download
    assert "src/mae_exp/data/stl10.py" not in pretrain  # it reads the prepared format only


def test_a_tool_reads_the_paths_of_the_stage_it_tunes_from_dvc_yaml():
    from mae_exp.plumbing.cli import stage_paths

    for stage in ("finetune", "linear_probe"):
        paths, cmd = stage_paths(stage, "improved", REPO / "dvc.yaml"), stage_cmd(f"{stage}@improved")
        assert paths["encoder"] == "models/improved/encoder.pt" == cmd[cmd.index("--encoder") + 1]
        assert paths["data"] == cmd[cmd.index("--data") + 1]
    with pytest.raises(ValueError, match="no stage 'tune'"):
        stage_paths("tune", dvc_yaml=REPO / "dvc.yaml")
