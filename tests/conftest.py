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
from filelock import FileLock

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
    """A stage's command as dvc.yaml writes it, paths and all (`finetune_random`: the item filled in)."""
    name, _, item = stage.partition("@")
    spec = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"][name]
    return shlex.split(spec.get("do", spec)["cmd"].replace("${item}", item))


def ran_stages(output: str) -> set[str]:
    """The stages that a `dvc repro` / `dvc exp run` output says it ran."""
    return set(re.findall(r"Running stage '([^']+)'", output))


def copy_repo(dest: Path, config: str | None = "configs/tiny.yaml", cache: str = "shared") -> Path:
    """The project's files (tracked + untracked-not-ignored, as git sees them) in a fresh git repo,
    with `config` copied over params.yaml. Pipeline outputs of the source checkout are not copied.

    `cache="shared"`: DVC's cache (objects and run-cache) is the session's one (`shared_cache()`), so a stage
    another copy already ran with the same deps and params is restored, not run again. A test that asserts
    that a stage runs, resumes or gives the bytes of another run passes `cache="own"` (`.dvc/cache` inside)."""
    if cache not in ("shared", "own"):
        raise ValueError(f"cache must be 'shared' or 'own', got {cache!r}")
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
    if cache == "shared":  # .dvc/config.local: git-ignored, as a teammate's own cache location would be
        (dest / ".dvc" / "config.local").write_text(f"[cache]\n    dir = {shared_cache()}\n")
    git("init", "-q", "-b", "main", cwd=dest)
    git("add", "-A", cwd=dest)
    git("commit", "-q", "-m", "scratch copy", cwd=dest)
    return dest


# --------------------------------------------------------------------------- what a session builds once

_SESSION: dict[str, Path] = {}  # "root": the folder shared by this run's pytest-xdist workers


def session_root() -> Path:
    if "root" not in _SESSION:
        raise RuntimeError("session_root() is set by the session fixture `_session_root`, before any test")
    return _SESSION["root"]


@pytest.fixture(scope="session", autouse=True)
def _session_root(tmp_path_factory) -> Path:
    """This run's folder for what every test shares: under pytest-xdist each worker has its own base
    temporary folder, and their common parent is this run's."""
    base = tmp_path_factory.getbasetemp()
    _SESSION["root"] = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    return _SESSION["root"]


def shared_cache() -> Path:
    """The session's DVC cache (objects and run-cache), shared by every `copy_repo(cache="shared")`."""
    path = session_root() / "dvc-cache"
    path.mkdir(exist_ok=True)
    return path


def share_cache(repo: Path) -> None:
    """Add a built repository's own cache to the shared one: both are content-addressed (objects by md5,
    run-cache entries by the hash of their stage), so a file already there is the same file."""

    def copy_new(src: str, dst: str) -> None:
        if not os.path.exists(dst):
            shutil.copy2(src, dst)

    own = repo / ".dvc" / "cache"
    if own.is_dir():
        shutil.copytree(own, shared_cache(), dirs_exist_ok=True, copy_function=copy_new)


def built_once(name: str, build) -> tuple[Path, str]:
    """`build(repo)` (returns its output) run once per session, whatever the number of pytest-xdist workers:
    the first to get here builds, under a file lock, the others wait and take the same repository. Its own
    cache is then added to the shared one. Tests take a copy (`copy_built`)."""
    root = session_root() / name
    with FileLock(f"{root}.lock"):
        done = root / "output.txt"
        if not done.exists():
            shutil.rmtree(root, ignore_errors=True)  # a build that failed half-way
            root.mkdir()
            output = build(root / "repo")
            share_cache(root / "repo")
            done.write_text(output)
    return root / "repo", done.read_text()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return copy_repo(tmp_path / "repo")


BUILT = ("download", "init_random", "recipe_needs@original", "pretrain@original")  # the stages `tiny_built` has run


def copy_built(built: Path, dest: Path) -> Path:
    """A copy of a built scratch repository (git, DVC cache, outputs), for a test free to damage it."""
    shutil.copytree(built, dest, symlinks=True)
    return dest


def _repro(repo: Path, *args: str) -> str:
    proc = dvc("repro", *args, cwd=repo)
    return proc.stdout + proc.stderr


@pytest.fixture(scope="session")
def tiny_downloaded() -> Path:
    """A tiny-config scratch repository after `dvc repro download`, built once a session: take a copy."""
    return built_once("downloaded", lambda repo: _repro(copy_repo(repo, cache="own"), "download"))[0]


@pytest.fixture(scope="session")
def tiny_built(tiny_downloaded: Path) -> Path:
    """`tiny_downloaded` then init_random and pretrain@original, built once a session: take a copy."""
    return built_once("built", lambda repo: _repro(copy_built(tiny_downloaded, repo), *BUILT))[0]


@pytest.fixture(scope="session")
def tiny_reproduced() -> tuple[Path, str]:
    """A fresh tiny-config copy after a whole `dvc repro` (every stage run, its own cache), built once a
    session, and that run's output: take a copy. Its cache joins the shared one, so a shared copy's
    stages with the tiny config's params are restored from it."""
    return built_once("reproduced", lambda repo: _repro(copy_repo(repo, cache="own")))


@pytest.fixture(scope="session")
def tiny_model_cfg():
    from mae_exp.plumbing.config import load_params

    return load_params(REPO / "configs" / "tiny.yaml")


# The files that take longest, first (measured, slowest first): with the workers each taking a file at a time
# (`--dist loadfile --no-loadscope-reorder` in pyproject.toml), a long file started last would run alone
# at the end. The rest keep their order.
LONGEST_FIRST = (
    "test_study.py",
    "test_slurm.py",
    "test_pipeline.py",
    "test_distributed.py",
    "test_recovery.py",
    "test_reliability.py",
    "test_stl10_32.py",
    "test_readouts.py",
    "test_sources.py",
    "test_team_remote.py",
    "test_plots_page.py",
    "test_performance.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: within a file, file order


# every stage `dvc repro` of a fresh copy runs, as dvc.yaml expands them
STAGES = {
    "download",
    "init_random",
    "recipe_needs@original",
    "recipe_needs@improved",
    "pretrain@original",
    "pretrain@improved",
    "linear_probe_random",
    "linear_probe@original",
    "linear_probe@improved",
    "finetune_random",
    "finetune@original",
    "finetune@improved",
    "export@original",
    "export@improved",
    "visualize",
    "report",
}
