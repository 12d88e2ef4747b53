"""Every stage depends on exactly the source files it runs: its script and every module of the package that
the script imports, directly or through other modules (at any depth, top-level or inside a function).

A module missing from a stage's deps means `dvc repro` reports the stage up to date after that module
changed, with results from the old code; an extra one re-runs it for nothing. The closure is computed
from the code, so adding an import without updating dvc.yaml fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from conftest import REPO, stage_cmd

PACKAGE = "mae_exp"
SRC = REPO / "src"


def module_file(name: str) -> Path | None:
    """`mae_exp.data.stl10` -> its file under src/ (a package's __init__.py), or None if not ours."""
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        return None
    path = SRC / Path(*name.split("."))
    if path.is_dir():  # a namespace package (no __init__.py) runs no code of its own
        return path / "__init__.py" if (path / "__init__.py").exists() else None
    return path.with_suffix(".py") if path.with_suffix(".py").exists() else None


def imported_modules(path: Path) -> set[str]:
    """Names of the package's modules that `path` imports anywhere in its body."""
    # the package a relative import starts from: a module's parent; for a/b/__init__.py, a.b itself
    package = list(path.relative_to(SRC).with_suffix("").parts[:-1]) if path.is_relative_to(SRC) else []
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package[: len(package) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}  # `from . import distributed`
    # importing a.b.c runs a/__init__.py and a/b/__init__.py too
    parents = {".".join(m.split(".")[:i]) for m in found for i in range(1, m.count(".") + 1)}
    return {m for m in found | parents if module_file(m)}


def closure(script: Path) -> set[str]:
    """The script and every package file it imports, transitively, relative to the repository."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo += [module_file(m) for m in imported_modules(path)]
    return {str(p.relative_to(REPO)) for p in seen}


def stage_sources() -> dict[str, tuple[set[str], set[str]]]:
    """stage -> (the .py files it lists as deps, the closure of the script its cmd runs)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, stage in stages.items():
        stage = stage.get("do", stage)  # foreach: every item runs the same script
        script = next(w for w in stage["cmd"].split() if w.endswith(".py"))
        listed = {d for d in stage.get("deps", []) if isinstance(d, str) and d.endswith(".py")}
        out[name] = (listed, closure(REPO / script))
    return out


def test_every_stage_depends_on_exactly_the_modules_it_imports():
    problems = []
    for name, (listed, needed) in stage_sources().items():
        if missing := needed - listed:
            problems.append(f"{name}: missing {sorted(missing)}")
        if extra := listed - needed:
            problems.append(f"{name}: lists {sorted(extra)}, which it does not import")
    assert not problems, "dvc.yaml deps disagree with the imports:\n" + "\n".join(problems)


def test_the_closure_follows_relative_lazy_and_package_imports(tmp_path):
    """The checker itself: on the real package, a few imports it must see."""
    pretrain = closure(REPO / "stages" / "pretrain.py")
    assert "src/mae_exp/model.py" in pretrain  # from .model import ...
    assert "src/mae_exp/training/distributed.py" in pretrain  # from . import distributed
    assert "src/mae_exp/training/train.py" in pretrain
    assert "stages/pretrain.py" in pretrain
    download = closure(REPO / "stages" / "download.py")
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
