"""The walls between layers, checked by importing with a module made unimportable: the model is pure maths
(no process-group code), and the report and the study read metrics files (no torch)."""

from __future__ import annotations

import subprocess
import sys

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
