"""The study on a real SLURM cluster: `.ci/slurm-up.sh` starts a single-node one (munge, slurmctld, slurmd)
on this machine; `queue --slurm` submits with the real sbatch, each job a clone running the real dvc.
Outside CI the tests skip when there is no cluster; under CI=true they fail instead."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import BIN, REPO, copy_repo, dvc, git, run, stage_cmd
from test_distributed import assert_weights_close, set_params, weights
from test_study import TOY_PIPELINE, study
from mae_exp.study import slurm as study_slurm
from mae_exp.study.queue import Job


def _cluster_answers() -> bool:
    if not shutil.which("sbatch"):
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


CLUSTER = _cluster_answers()
needs_slurm = pytest.mark.skipif(not CLUSTER and os.environ.get("CI") != "true",
                                 reason="no SLURM cluster here (sbatch missing or sinfo unanswered): "
                                        "`sudo .ci/slurm-up.sh` starts a single-node one")


def wait_for_jobs(base: Path, timeout: float = 1200) -> dict:
    """Poll the jobs' states until none is pending or running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = study_slurm.job_states(base)
        if states and all(s["state"] not in ("pending", "running") for s in states.values()):
            return states
        time.sleep(2)
    raise AssertionError(f"SLURM jobs still running after {timeout} s: {study_slurm.job_states(base)}")


@pytest.fixture
def toy_repo(tmp_path, monkeypatch):
    """test_study's two-stage toy pipeline (stage b fails when y is 13), committed."""
    repo = tmp_path / "toy"
    repo.mkdir()
    (repo / "dvc.yaml").write_text(TOY_PIPELINE)
    (repo / "params.yaml").write_text("x: 1\ny: 2\nsleep: 0\n")
    (repo / ".gitignore").write_text("/scratch/\n")
    git("init", "-q", "-b", "main", cwd=repo)
    dvc("init", "-q", cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "toy", cwd=repo)
    monkeypatch.chdir(repo)
    for key, value in {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "GIT_AUTHOR_NAME": "test",
                       "GIT_AUTHOR_EMAIL": "t@example.invalid", "GIT_COMMITTER_NAME": "test",
                       "GIT_COMMITTER_EMAIL": "t@example.invalid", "DVC_NO_ANALYTICS": "1"}.items():
        monkeypatch.setenv(key, value)  # sbatch hands the environment on to the jobs
    return repo


@needs_slurm
def test_jobs_are_dvc_experiments_and_a_failure_is_one_line_with_its_log(toy_repo, capsys):
    opts = study_slurm.SlurmOptions()
    jobs = [Job("s1-ok", 1, "ok", ("x=3",)), Job("s1-bad", 1, "bad", ("y=13",))]
    assert study_slurm.submit(jobs, opts) == 0
    printed = capsys.readouterr().out
    assert "s1-ok: submitted as SLURM job" in printed and "2 job(s) submitted" in printed
    # submitted again while they wait or run: nothing new
    study_slurm.submit(jobs, opts)
    assert "not submitted again" in capsys.readouterr().out or wait_for_jobs(toy_repo / "scratch" / "slurm")
    states = wait_for_jobs(toy_repo / "scratch" / "slurm")
    assert states["s1-ok"]["state"] == "done" and states["s1-bad"]["state"] == "failed"
    assert study_slurm.status(Path("scratch/slurm")) == 1
    printed = capsys.readouterr().out
    log = toy_repo / "scratch" / "slurm" / "s1-bad" / "slurm.log"
    [line] = [s for s in printed.splitlines() if s.startswith("failed:")]
    assert line == f"failed: s1-bad (SLURM job {states['s1-bad']['job_id']}, `dvc exp run` exit 255): see {log}"
    assert "y is 13" in log.read_text()
    assert "s1-ok: done" in printed and "1 done, 1 failed" in printed
    # the experiment was pushed here: an ordinary DVC experiment of this repository, whose workspace is untouched
    assert dvc("exp", "ls", "--name-only", cwd=toy_repo).stdout.split() == ["s1-ok"]
    assert (toy_repo / "params.yaml").read_text() == "x: 1\ny: 2\nsleep: 0\n"
    work = toy_repo / "scratch" / "slurm" / "s1-ok" / "repo"
    assert dvc("cache", "dir", cwd=work).stdout.strip() == dvc("cache", "dir", cwd=toy_repo).stdout.strip()
    assert (work / "a.txt").read_text() == "3"


@needs_slurm
def test_uncommitted_changes_are_refused(toy_repo):
    (toy_repo / "params.yaml").write_text("x: 5\ny: 2\nsleep: 0\n")
    with pytest.raises(study_slurm.StudyError, match=r"uncommitted changes \(params.yaml\).*commit them first"):
        study_slurm.submit([Job("s1-ok", 1, "ok", ("x=3",))], study_slurm.SlurmOptions())
