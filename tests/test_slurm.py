"""The study on a real SLURM cluster: `.ci/slurm-up.sh` starts a single-node one (munge, slurmctld, slurmd)
on this machine; `queue --slurm` submits with the real sbatch, each job a clone running the real dvc.
Outside CI the tests skip when there is no cluster; under CI=true they fail instead. A cluster that is up but
runs no job on this machine (`.ci/slurm-up.sh` exit 3) skips the tests that run jobs, quoting what SLURM said."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from test_distributed import assert_weights_close, set_params, weights
from test_study import TOY_PIPELINE, study

from conftest import BIN, REPO, copy_built, copy_repo, dvc, git, run, stage_cmd
from mae_exp.study import slurm as study_slurm
from mae_exp.study.jobs import Job


def _cluster_answers() -> bool:
    if not shutil.which("sbatch"):
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


CLUSTER = _cluster_answers()
needs_slurm = pytest.mark.skipif(
    not CLUSTER and os.environ.get("CI") != "true",
    reason="no SLURM cluster here (sbatch missing or sinfo unanswered): "
    "`sudo .ci/slurm-up.sh` starts a single-node one",
)


def _said(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"$ {' '.join(cmd)}: {e}"
    return f"$ {' '.join(cmd)}\n{(proc.stdout + proc.stderr).strip()}"


def cluster_report(base: Path | None = None) -> str:
    """What the cluster says about itself and its jobs, for a failure message: without it a job that never
    starts reads as a timeout and nothing more."""
    parts = [
        _said(["squeue", "-o", "%i %j %T %M %r"]),
        _said(["sinfo", "-R"]),
        _said(["scontrol", "show", "node"]),
    ]
    for log in ("/var/log/slurm/slurmctld.log", "/var/log/slurm/slurmd.log"):
        if os.access(log, os.R_OK):
            parts.append(f"--- last lines of {log}\n" + "\n".join(Path(log).read_text().splitlines()[-25:]))
    for job_log in sorted(base.glob("*/slurm.log")) if base and base.is_dir() else []:
        parts.append(f"--- last lines of {job_log}\n" + "\n".join(job_log.read_text().splitlines()[-15:]))
    return "\n".join(parts)


def wait_for_jobs(base: Path, timeout: float = 600, start_within: float = 300) -> dict:
    """Poll the jobs' states until none is pending or running. Fails, with what the cluster says, once
    `timeout` has passed or once `start_within` seconds have passed with jobs waiting and none running:
    on this one-node cluster a job that cannot start then (node down, launch failed and held) never will."""
    began = time.monotonic()
    idle_since = began
    while time.monotonic() < began + timeout:
        states = study_slurm.job_states(base)
        if states and all(s["state"] not in ("pending", "running") for s in states.values()):
            return states
        if any(s["state"] == "running" for s in states.values()):
            idle_since = time.monotonic()
        elif "launch failed" in _said(["squeue", "-h", "-o", "%r"]):  # SLURM holds such a job: it never starts
            raise AssertionError(f"a SLURM job's launch failed: {states}\n{cluster_report(base)}")
        elif time.monotonic() - idle_since > start_within:
            raise AssertionError(f"no SLURM job started within {start_within} s: {states}\n{cluster_report(base)}")
        time.sleep(2)
    raise AssertionError(
        f"SLURM jobs still running after {timeout} s: {study_slurm.job_states(base)}\n" + cluster_report(base)
    )


@pytest.fixture(scope="session")
def cluster_runs_jobs():
    """Before the first test that runs a job: the cluster runs one. Under CI, `.ci/slurm-up.sh` again (a no-op
    on a healthy cluster; it restarts a daemon that died and resumes a node marked down by a test before);
    elsewhere a one-second srun. A cluster that does not start fails the tests; one whose node is up but on
    which no job runs (exit 3: a limit of the machine, not of this code) skips them, saying what SLURM said."""
    if os.environ.get("CI") == "true":
        proc = subprocess.run(["bash", str(REPO / ".ci" / "slurm-up.sh")], capture_output=True, text=True, timeout=600)
        rc, said = proc.returncode, proc.stdout + proc.stderr
    else:
        try:
            proc = subprocess.run(
                ["srun", "--immediate=60", "-n", "1", "true"], capture_output=True, text=True, timeout=90, check=False
            )
            rc, said = (0 if proc.returncode == 0 else 3), proc.stderr
        except subprocess.TimeoutExpired:
            rc, said = 3, "srun did not return within 90 s"
    if rc == 3:
        # what SLURM said, on one line: srun's own words, the jobs' and node's reasons, the daemons' last errors
        # (without the MPI plugins' complaints, which every start of slurmd logs here)
        lines = [line.strip() for line in (said + "\n" + cluster_report()).splitlines()]
        words = [x for x in lines if re.match(r"srun:|sbatch:", x) or re.search(r"launch failed|Reason=", x)]
        errors = [x for x in lines if "error" in x and not re.search(r"pmix|mpi/|MPI", x)]
        pytest.skip(f"SLURM answers but runs no one-second job here: {' | '.join(words + errors[-4:])[:1500]}")
    if rc != 0:
        pytest.fail(f"the SLURM cluster did not start (`.ci/slurm-up.sh` exit {rc}):\n{said}\n{cluster_report()}")


@pytest.fixture(autouse=True)
def cancel_leftover_jobs():
    """A test that fails with its jobs still queued cancels them: they would hold the node's CPUs and every
    later test would wait behind them."""
    before = set(study_slurm.squeue_states()) if CLUSTER else set()
    yield
    if CLUSTER:
        left = sorted(set(study_slurm.squeue_states()) - before)
        if left:
            subprocess.run(["scancel", *left], check=False, timeout=30)


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
    for key, value in {
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
        "DVC_NO_ANALYTICS": "1",
    }.items():
        monkeypatch.setenv(key, value)  # sbatch hands the environment on to the jobs
    return repo


@needs_slurm
@pytest.mark.slow
def test_jobs_are_dvc_experiments_and_a_failure_is_one_line_with_its_log(cluster_runs_jobs, toy_repo, capsys):
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


# --------------------------------------------------------------------------- one pre-training, two srun tasks


@needs_slurm
@pytest.mark.slow
def test_two_srun_tasks_pretrain_as_one_process_does(cluster_runs_jobs, tiny_downloaded, tmp_path):
    """`srun -n 2` starts the stage twice; each task takes its rank, the world size and the rendezvous
    from SLURM's variables (no torchrun variable is set) and joins the same gloo group as under torchrun."""
    two = copy_built(tiny_downloaded, tmp_path / "two")
    set_params(two, pretrain__processes=2, threads=1)
    one = copy_repo(tmp_path / "one")
    set_params(one, threads=1)
    shutil.copytree(two / "data" / "prepared", one / "data" / "prepared")
    for repo in (two, one):  # what pre-training reads first (for the mae recipe, a file holding nothing)
        run(stage_cmd("recipe_needs@original"), repo)
    cmd = stage_cmd("pretrain@original")
    proc = run(
        ["srun", "--immediate=120", "-n", "2", "--cpus-per-task", "1", "--kill-on-bad-exit=1", *cmd],
        two,
        timeout=600,
        check=False,
        extra_env={"MAE_DIST_BACKEND": "gloo"},
    )
    assert proc.returncode == 0, f"srun exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}\n{cluster_report()}"
    out = proc.stdout + proc.stderr
    assert "cpu, 1 CPU thread per process, 2 processes" in out, out
    assert "torchrun" not in out  # no launcher: srun's tasks are the workers
    run(cmd, one, timeout=900)
    assert [r["epoch"] for r in torch.load(two / "models/original/checkpoint.pt", weights_only=False)["history"]] == [
        1,
        2,
        3,
    ]
    assert_weights_close(weights(two, "original"), weights(one, "original"))


def test_slurm_variables_become_torchruns(monkeypatch):
    from mae_exp.training import distributed

    env = {
        "SLURM_STEP_NUM_TASKS": "4",
        "SLURM_PROCID": "3",
        "SLURM_LOCALID": "1",
        "SLURM_NODEID": "1",
        "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
        "SLURM_STEP_NODELIST": "gpu[07-08]",
        "SLURM_JOB_ID": "1234",
    }
    monkeypatch.setattr(distributed, "first_host", lambda nodelist: {"gpu[07-08]": "gpu07"}[nodelist])
    distributed.from_slurm(env)
    assert {
        k: env[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    } == {
        "RANK": "3",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "gpu07",
        "MASTER_PORT": "21234",
    }
    assert distributed.slurm_tasks_per_node("3,2(x2),1") == [3, 2, 2, 1]
    batch = {"SLURM_JOB_ID": "1", "SLURM_PROCID": "0", "SLURM_NTASKS": "4"}  # a batch script: no srun step
    distributed.from_slurm(batch)
    assert "WORLD_SIZE" not in batch
    torchrun = {"WORLD_SIZE": "8", "SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "1"}  # torchrun under srun wins
    distributed.from_slurm(torchrun)
    assert torchrun == {"WORLD_SIZE": "8", "SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "1"}


@needs_slurm
def test_first_host_is_scontrols():
    from mae_exp.training import distributed

    assert distributed.first_host("node[03-05,07]") == "node03"


# --------------------------------------------------------------------------- queue -j N on one machine's GPUs


@pytest.mark.parametrize(
    "visible, jobs, want",
    [
        ("0,1,2,3", 2, ["0,1", "2,3"]),
        ("4,5,6", 3, ["4", "5", "6"]),
        ("0,1,2", 2, ["0", "1"]),
        ("0,1", 3, ["0", "1", "0"]),
    ],
)
def test_each_child_gets_its_own_gpus(tmp_path, monkeypatch, visible, jobs, want):
    """The real runner, each child a real process that writes the CUDA_VISIBLE_DEVICES it got."""
    from mae_exp.study import queue as study_queue

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    seen = tmp_path / "seen"
    seen.mkdir()

    def command(job, names_here, mode):
        return ["sh", "-c", f"sleep 1; echo $CUDA_VISIBLE_DEVICES > {seen / job.name}"]

    todo = [Job(f"s{i}-a", i, "a", ()) for i in range(2 * jobs)]
    assert study_queue.run(todo, jobs, 0.1, set(), logs=tmp_path / "logs", command=command) == 0
    got = [(seen / j.name).read_text().strip() for j in todo]
    assert sorted(set(got)) == sorted(set(want))
    for first_round in (got[:jobs],):  # the first `jobs` children run together: on disjoint slots
        assert sorted(first_round) == sorted(want)


# --------------------------------------------------------------------------- a study on the cluster


def encoder_md5s(lock: dict) -> dict:
    """models/<recipe>/encoder.pt -> md5, as dvc.lock records the pre-training outputs."""
    return {
        o["path"]: o["md5"]
        for name, stage in lock["stages"].items()
        if name.startswith("pretrain@")
        for o in stage["outs"]
        if o["path"].endswith("encoder.pt")
    }


def experiment_lock(repo: Path, name: str) -> dict:
    """The dvc.lock of a DVC experiment of this repository, from its git ref."""
    refs = git("for-each-ref", "--format=%(refname)", "refs/exps", cwd=repo).stdout.split()
    [ref] = [r for r in refs if r.rsplit("/", 1)[-1] == name]
    return yaml.safe_load(git("show", f"{ref}:dvc.lock", cwd=repo).stdout)


def with_budget(repo: Path, epochs: int) -> Path:
    """The copy's study at one budget of `epochs` (tiny's is 3), its primary read there, committed."""
    set_params(repo, study__budgets=[epochs], study__primary__budget=epochs)
    git("commit", "-q", "-am", f"study at {epochs} epochs", cwd=repo)
    return repo


@needs_slurm
@pytest.mark.slow
def test_a_study_on_slurm_reports_what_the_same_study_run_here_does(cluster_runs_jobs, tiny_built, tmp_path):
    """Two experiments as SLURM jobs against the same study run here with -j 1 (while the preempted job waits
    to be requeued). The first is submitted alone and preempted mid pre-training by the signal sbatch's
    --signal sends before a time limit; then the whole study is submitted, which adds only the other. Each
    job asks for the node's 2 CPUs, so they run one at a time, and the second takes the original branch
    from the shared run-cache. Two arms are the fewest that check all of it: a preempted job, one added by
    the second submission, a run-cache hit on the cluster. At tiny's 3 epochs an epoch takes 0.4 s on a
    quiet CI machine, so the resumable state lived under a second and the test could miss it (CI failed so
    at stop 37): 12 epochs leave seconds between the first checkpoint and the end. The cluster's copy has
    its own cache, a copy of `tiny_built`'s (3 epochs): download and init_random, which no budget changes,
    are restored; the 12-epoch stages under test run. (Not `tiny_reproduced`'s: test_study's end-to-end study
    builds it at about the same time, and this worker would wait on its lock.)"""
    epochs = 12
    study_args = ["queue", "--seeds", "42", "--ablations", "all", "laplacian_only"]
    cluster = copy_repo(tmp_path / "cluster", cache="own")
    shutil.copytree(tiny_built / ".dvc" / "cache", cluster / ".dvc" / "cache")  # tiny's 3 epochs: see above
    with_budget(cluster, epochs)
    on_slurm = ["--slurm", "--cpus", "2", "--signal-s", "60"]
    proc = study("queue", "--seeds", "42", "--ablations", "all", *on_slurm, cwd=cluster)
    [(name, first_id)] = re.findall(r"^(s42-\w+): submitted as SLURM job (\d+)", proc.stdout, re.MULTILINE)
    base = cluster / "scratch" / "slurm"
    work = base / "s42-all" / "repo"
    deadline = time.monotonic() + 600
    while not list((work / "scratch" / "pretrain" / "original").glob("*/last.pt")):
        assert time.monotonic() < deadline, cluster_report(base)
        time.sleep(0.05)
    run(["scancel", "--signal=USR1", "--batch", first_id], cluster)
    # while SLURM requeues the job (a requeued job waits out its launch credential, 120 s), the same study
    # runs here: the reference every job is compared with
    here = with_budget(copy_repo(tmp_path / "here"), epochs)
    study(*study_args, "-j", "1", cwd=here, timeout=1800)
    study("report", cwd=here)
    states = wait_for_jobs(base)
    assert states["s42-all"]["state"] == "done", states
    assert states["s42-all"]["restarts"] == 1 and states["s42-all"]["job_id"] == first_id  # the same job, requeued
    log = (base / "s42-all" / "slurm.log").read_text()
    assert "stopped by SIGUSR1: requeueing this job" in log
    resumed = re.search(rf"resuming pretrain original from epoch (\d+)/{epochs}", log)
    assert resumed and 2 <= int(resumed[1]) <= epochs, log

    proc = study(*study_args, *on_slurm, cwd=cluster)
    assert "s42-all: already done (s42-all), skipped" in proc.stdout
    ids = dict(re.findall(r"^(s42-\w+): submitted as SLURM job (\d+)", proc.stdout, re.MULTILINE))
    assert set(ids) == {"s42-laplacian_only"}, proc.stdout
    states = wait_for_jobs(base, timeout=900)
    assert {name: s["state"] for name, s in states.items()} == dict.fromkeys([name, *ids], "done"), states
    for later in ids:
        assert "Stage 'pretrain@original' is cached - skipping run" in (base / later / "slurm.log").read_text()

    # the preempted pre-training ends with the weights of the uninterrupted one; so do the others
    for name in ("s42-all", *ids):
        assert encoder_md5s(experiment_lock(cluster, name)) == encoder_md5s(experiment_lock(here, name)), name
    assert encoder_md5s(yaml.safe_load((work / "dvc.lock").read_text())) == encoder_md5s(
        experiment_lock(here, "s42-all")
    )

    proc = study(*study_args, *on_slurm, cwd=cluster)
    assert "nothing new to run" in proc.stdout
    proc = study("status", cwd=cluster)
    assert "s42-all: done (SLURM job" in proc.stdout and "2 done" in proc.stdout
    study("report", cwd=cluster)
    assert (cluster / "metrics/study.md").read_text() == (here / "metrics/study.md").read_text()
    measured = [pd.read_csv(repo / "metrics/study.csv") for repo in (cluster, here)]
    # every number but the seconds each pre-training took, which are measured, not computed
    pd.testing.assert_frame_equal(*(m[m["metric"] != "wall_time_s"].reset_index(drop=True) for m in measured))
    # on the cluster's clone the shared cache holds every output: an experiment applies without a remote
    dvc("exp", "apply", "s42-laplacian_only", cwd=cluster)
    assert "Data and pipelines are up to date" in dvc("status", cwd=cluster).stdout


@needs_slurm
@pytest.mark.slow
def test_jobs_push_to_the_team_remotes_and_a_fresh_clone_pulls_them(cluster_runs_jobs, toy_repo, tmp_path):
    """--push-to origin: the experiment goes to the git remote, its outputs to the default DVC remote; a
    clone elsewhere gets both with `dvc exp pull origin -A`."""
    git_remote, dvc_remote = tmp_path / "team.git", tmp_path / "dvc-remote"
    git("init", "-q", "--bare", "-b", "main", str(git_remote), cwd=tmp_path)
    git("remote", "add", "origin", str(git_remote), cwd=toy_repo)
    dvc("remote", "add", "-d", "team", str(dvc_remote), cwd=toy_repo)
    git("commit", "-qam", "remotes", cwd=toy_repo)
    git("push", "-q", "origin", "main", cwd=toy_repo)
    study_slurm.submit([Job("s1-ok", 1, "ok", ("x=7",))], study_slurm.SlurmOptions(push_to="origin"))
    assert wait_for_jobs(toy_repo / "scratch" / "slurm")["s1-ok"]["state"] == "done"
    assert dvc("exp", "ls", "--name-only", cwd=toy_repo).stdout.split() == []  # not here: on the remote
    laptop = tmp_path / "laptop"
    git("clone", "-q", str(git_remote), str(laptop), cwd=tmp_path)
    dvc("exp", "pull", "origin", "-A", cwd=laptop)
    dvc("exp", "apply", "s1-ok", cwd=laptop)
    assert (laptop / "a.txt").read_text() == "7" and (laptop / "b.txt").read_text() == "2"


@pytest.mark.parametrize(
    "option, words",
    [({"cpus": 0}, "--cpus must be at least 1, got 0"), ({"signal_s": -5}, "--signal-s must be at least 0, got -5")],
)
def test_bad_slurm_options_stop_before_anything_is_submitted(tmp_path, option, words):
    with pytest.raises(study_slurm.StudyError, match=words):
        study_slurm.submit(
            [Job("s1-ok", 1, "ok", ())], study_slurm.SlurmOptions(dir=tmp_path / "jobs", **option), root=tmp_path
        )
    assert not (tmp_path / "jobs").exists()
