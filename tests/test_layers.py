"""The walls between layers, checked by importing with a module made unimportable: the model is pure maths
(no process-group code), and the report and the study read metrics files (no torch)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

BLOCKED_IMPORT = """
import sys

class Blocked:  # a meta-path finder that refuses the blocked packages, whoever imports them
    def find_spec(self, name, path=None, target=None):
        if name in BLOCKED or name.split(".")[0] in BLOCKED:
            raise ImportError(f"blocked for this test: {name}")

BLOCKED = set(sys.argv[1].split(","))
sys.meta_path.insert(0, Blocked())
import importlib
for module in sys.argv[2:]:
    importlib.import_module(module)
print(sorted(m for m in sys.modules if m in BLOCKED or m.split(".")[0] in BLOCKED))
"""


def import_without(blocked: list[str], modules: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCKED_IMPORT, ",".join(blocked), *modules],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "blocked, module", [("torch", "mae_exp.model"), ("mae_exp.training.distributed", "mae_exp.training.train")]
)
def test_the_blocker_blocks(blocked, module):
    proc = import_without([blocked], [module])
    assert proc.returncode == 1 and f"ImportError: blocked for this test: {blocked}" in proc.stderr


def test_the_model_imports_no_process_group_code():
    proc = import_without(["mae_exp.training.distributed"], ["mae_exp.model", "mae_exp.objectives"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "modules",
    [
        ["mae_exp.evaluation.report", "mae_exp.plumbing.files"],
        [
            "mae_exp.study.__main__",
            "mae_exp.study.queue",
            "mae_exp.study.results",
            "mae_exp.study.report",
            "mae_exp.study.figure",
            "mae_exp.study.stats",
            "mae_exp.study.metrics",
        ],
    ],
)
def test_the_report_and_the_study_import_no_torch(modules):
    proc = import_without(["torch", "torchvision", "dvclive"], modules)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "blocked, module",
    [
        (["mae_exp.study.queue"], "mae_exp.study.slurm"),  # queue imports slurm, never the reverse
        (["mae_exp.study.queue", "mae_exp.study.slurm"], "mae_exp.study.jobs"),  # what both stand on
    ],
)
def test_the_study_runners_import_downward(blocked, module):
    proc = import_without(blocked, [module])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# ---- the whole house: every module of the package in a layer, each importing only from its own or a lower one

LAYERS = (  # lowest first; a module is in the layer of its longest listed prefix (README: Map of the code)
    ("plumbing",),  # what every stage stands on: config, cli, files, errors, progress; nothing domain-specific
    ("data",),
    ("model", "objectives", "checkpoints"),  # the MAE, its maths, its file format
    ("recipes",),  # recipes as data (torch-free)
    ("training",),
    ("evaluation",),
    ("study",),
    ("stage_deps", "plots_page"),  # dev tools no stage imports
)


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "mae_exp" or len(parts) < 2:
        return None
    return next((i for i, names in enumerate(LAYERS) if parts[1] in names), None)


def package_imports() -> dict[str, set[str]]:
    """module -> the package's modules it imports (anywhere in its body, relative imports resolved)."""
    import ast

    src = REPO / "src"
    graph: dict[str, set[str]] = {}
    for path in sorted((src / "mae_exp").rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        package = parts[:-1]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        name = ".".join(parts)
        found = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = (package[: len(package) - node.level + 1] if node.level else []) + (
                    node.module.split(".") if node.module else []
                )
                for alias in node.names:  # `from . import hf` imports a module; `from .x import y` module x
                    full = ".".join([*base, alias.name])
                    candidate = src / Path(*full.split("."))
                    found.add(full if candidate.with_suffix(".py").exists() or candidate.is_dir() else ".".join(base))
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
        graph[name] = {m for m in found if m.startswith("mae_exp.") and m != name}
    return graph


def test_every_module_has_a_layer_and_imports_only_downward():
    graph = package_imports()
    unplaced = [m for m in graph if layer_of(m) is None and m != "mae_exp"]
    assert not unplaced, f"modules in no layer (add them to LAYERS and the README map): {unplaced}"
    upward = sorted(
        f"{m} ({LAYERS[layer_of(m)][0]}) imports {t} ({LAYERS[layer_of(t)][0]})"
        for m, targets in graph.items()
        for t in targets
        if layer_of(m) is not None and layer_of(t) is not None and layer_of(t) > layer_of(m)
    )
    assert not upward, "imports running up a layer:\n" + "\n".join(upward)


def test_the_import_graph_has_no_circle():
    graph = package_imports()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target] if target in path else [module, target]
            if state.get(target) is None and (circle := visit(target, [*path, target])):
                return circle
        state[module] = 2
        return None

    for module in sorted(graph):
        if state.get(module) is None and (circle := visit(module, [module])):
            pytest.fail("an import circle: " + " -> ".join(circle))


def test_the_layer_check_can_fail():
    """The checks see an upward import: plumbing importing training is one."""
    assert layer_of("mae_exp.plumbing.cli") < layer_of("mae_exp.training.pretrain")
    assert layer_of("mae_exp.recipes") < layer_of("mae_exp.training.losses") < layer_of("mae_exp.study.queue")
    graph = package_imports()
    assert "mae_exp.training.distributed" in graph["mae_exp.training.runtime"]  # relative imports resolved
    assert "mae_exp.training.hf" in graph["mae_exp.training.pretrain"]  # `from . import hf`
