"""Shared test helpers: a scratch copy of the repository, driven by the real git and dvc CLIs."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the environment's python, dvc, pytest


def env() -> dict:
    e = dict(os.environ)
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"  # stage commands call `python`
    e.setdefault("GIT_AUTHOR_NAME", "test")
    e.setdefault("GIT_AUTHOR_EMAIL", "test@example.invalid")
    e.setdefault("GIT_COMMITTER_NAME", "test")
    e.setdefault("GIT_COMMITTER_EMAIL", "test@example.invalid")
    e["DVC_NO_ANALYTICS"] = "1"
    return e


def run(
    cmd: list[str], cwd: Path, check: bool = True, extra_env: dict | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        cmd, cwd=cwd, env={**env(), **(extra_env or {})}, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    return proc


def dvc(*args: str, cwd: Path, **kw) -> subprocess.CompletedProcess:
    return run([str(BIN / "dvc"), *args], cwd, **kw)


def git(*args: str, cwd: Path, **kw) -> subprocess.CompletedProcess:
    return run(["git", *args], cwd, **kw)


def stage_cmd(stage: str, repo: Path = REPO) -> list[str]:
    """A stage's command as dvc.yaml writes it, paths and all (`finetune@random`: the item filled in)."""
    name, _, item = stage.partition("@")
    spec = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"][name]
    return shlex.split(spec.get("do", spec)["cmd"].replace("${item}", item))


def ran_stages(output: str) -> set[str]:
    """The stages that a `dvc repro` / `dvc exp run` output says it ran."""
    return set(re.findall(r"Running stage '([^']+)'", output))


def copy_repo(dest: Path, config: str | None = "configs/tiny.yaml") -> Path:
    """The project's files (tracked + untracked-not-ignored, as git sees them) in a fresh git repo,
    with `config` copied over params.yaml. Pipeline outputs of the source checkout are not copied."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    generated = ("metrics/", "plots/", "dvc.lock")  # results of a run of the default, if committed
    for rel in filter(None, listed):
        src = REPO / rel
        if not src.is_file() or rel.startswith(generated):
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel)
    if config:
        shutil.copy2(REPO / config, dest / "params.yaml")
    git("init", "-q", "-b", "main", cwd=dest)
    git("add", "-A", cwd=dest)
    git("commit", "-q", "-m", "scratch copy", cwd=dest)
    return dest


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return copy_repo(tmp_path / "repo")


BUILT = ("download", "init_random", "pretrain_original")  # the stages `tiny_built` has run


def copy_built(built: Path, dest: Path) -> Path:
    """A copy of a built scratch repository (git, DVC cache, outputs), for a test free to damage it."""
    shutil.copytree(built, dest, symlinks=True)
    return dest


@pytest.fixture(scope="session")
def tiny_downloaded(tmp_path_factory) -> Path:
    """A tiny-config scratch repository after `dvc repro download`, built once a session: take a copy."""
    repo = copy_repo(tmp_path_factory.mktemp("downloaded") / "repo")
    dvc("repro", "download", cwd=repo)
    return repo


@pytest.fixture(scope="session")
def tiny_built(tiny_downloaded: Path, tmp_path_factory) -> Path:
    """`tiny_downloaded` then init_random and pretrain_original, built once a session: take a copy."""
    repo = copy_built(tiny_downloaded, tmp_path_factory.mktemp("built") / "repo")
    dvc("repro", *BUILT, cwd=repo)
    return repo


@pytest.fixture(scope="session")
def tiny_model_cfg():
    from mae_exp.plumbing.config import load_params

    return load_params(REPO / "configs" / "tiny.yaml")


# every stage `dvc repro` of a fresh copy runs, as dvc.yaml expands them
STAGES = {
    "download",
    "init_random",
    "pretrain_original",
    "pretrain_improved",
    "linear_probe@random",
    "linear_probe@original",
    "linear_probe@improved",
    "finetune@random",
    "finetune@original",
    "finetune@improved",
    "export@original",
    "export@improved",
    "visualize",
    "report",
}
