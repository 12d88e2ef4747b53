"""Issue 35: a resumed run writes the bytes an uninterrupted one does, the fixes a message gives work when
followed, a full disk names its file, sizes are checked before the work, and `verify` is checked. Real
`dvc`, real signals, a real tmpfs, in scratch copies of the repository on the tiny config."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from test_pipeline import set_param, start
from test_reliability import error_lines, files_under, stage, stage_with_params

from conftest import BIN, BUILT, copy_built, copy_repo, dvc, run


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- item 1: same bytes after any resume

PRETRAIN_OUTS = ("models/original/checkpoint.pt", "models/original/encoder.pt")


def kill_once_two_states_exist(repo: Path, *flags: str) -> Path:
    """`dvc repro [flags] pretrain@original`, SIGKILLed (dvc and the stage) once prev.pt is written; the state
    folder."""
    proc = start([str(BIN / "dvc"), "repro", *flags, "pretrain@original"], repo)
    deadline = time.monotonic() + 600
    while not list((repo / "scratch/pretrain/original").glob("*/prev.pt")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    [state_dir] = (repo / "scratch/pretrain/original").iterdir()
    return state_dir


def outputs(repo: Path) -> dict:
    """md5 of every .pt the stage wrote, and what dvc.lock records for its outs."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["pretrain@original"]
    recorded = {o["path"]: o["md5"] for o in lock["outs"] if o["path"].endswith(".pt")}
    return {"files": {o: md5(repo / o) for o in PRETRAIN_OUTS}, "dvc.lock": recorded}


@pytest.mark.slow
def test_killed_resumed_and_fallen_back_runs_write_the_bytes_of_an_uninterrupted_run(tiny_downloaded, tmp_path):
    repo = copy_built(tiny_downloaded, tmp_path / "repo")  # its own cache: no pre-training to restore
    set_param(repo, "pretrain.epochs", 4)  # states after epochs 1, 2, 3

    kill_once_two_states_exist(repo)  # first run: nothing in the run-cache yet
    proc = dvc("repro", "pretrain@original", cwd=repo)
    assert "resuming pretrain original" in proc.stdout + proc.stderr
    resumed = outputs(repo)

    state_dir = kill_once_two_states_exist(repo, "--force", "--single-item")
    last = state_dir / "last.pt"
    if last.exists():  # killed after prev.pt, maybe before last.pt: damage it when it is there
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    proc = dvc("repro", "--force", "--single-item", "pretrain@original", cwd=repo)
    out = proc.stdout + proc.stderr
    assert "resuming pretrain original" in out, out
    fallen_back = outputs(repo)

    dvc("repro", "--force", "--single-item", "pretrain@original", cwd=repo)
    straight = outputs(repo)
    assert resumed == straight
    assert fallen_back == straight
    assert f"({(state_dir / 'prev.pt').relative_to(repo)})" in out, out  # item 5: the file it resumed from


# --------------------------------------------------------------------------- shared: a built scratch repo


@pytest.fixture(scope="module")
def built(tiny_built, tmp_path_factory) -> Path:
    """download, init_random and pretrain@original run by `dvc repro`: this module's copy of `tiny_built`."""
    return copy_built(tiny_built, tmp_path_factory.mktemp("built") / "repo")


def backticked(line: str) -> list[str]:
    return re.findall(r"`([^`]+)`", line)


# --------------------------------------------------------------------------- item 2: a corrupt object in DVC's cache


@pytest.mark.slow
def test_a_corrupt_cache_object_from_a_plain_pull_gets_commands_that_repair_it(built, tmp_path):
    rel = "models/original/encoder.pt"
    good = md5(built / rel)
    remote = tmp_path / "nas"
    dvc("remote", "add", "--local", "nas", str(remote), cwd=built)
    dvc("push", "-r", "nas", *BUILT, cwd=built)
    obj = remote / "files" / "md5" / good[:2] / good[2:]
    data, mode = bytearray(obj.read_bytes()), obj.stat().st_mode
    data[len(data) // 2] ^= 0x10  # bit rot on the remote, read-only mode kept
    obj.chmod(0o644)
    obj.write_bytes(data)
    obj.chmod(mode)
    run(["git", "add", "-A"], built)
    run(["git", "commit", "-q", "-m", "built"], built)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(built), str(clone)], tmp_path)
    dvc("remote", "add", "--local", "nas", str(remote), cwd=clone)
    dvc("pull", "-r", "nas", *BUILT, cwd=clone)  # no verify: the corrupt object is now in the clone's cache too
    assert md5(clone / rel) != good

    proc = stage(clone, "linear_probe@original")
    assert proc.returncode == 1
    [line] = error_lines(proc)
    assert f"{rel} is corrupt" in line and "DVC's cached copy is corrupt too" in line
    rm, repro, _ = backticked(line)
    assert rm == f"rm -f .dvc/cache/files/md5/{good[:2]}/{good[2:]}" and repro == "dvc repro --force pretrain@original"
    for command in (rm, repro):  # the message's own commands, as a user types them
        run(["bash", "-c", command], clone)
    assert md5(clone / rel) == good
    assert stage(clone, "linear_probe@original").returncode == 0


# --------------------------------------------------------------------------- item 3: a full disk names its file


@contextlib.contextmanager
def tmpfs(where: Path, size: str):
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"CI must be able to mount a small tmpfs (root): {mounted.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)
        shutil.rmtree(where, ignore_errors=True)


def test_a_full_disk_under_dvclives_directory_names_the_file(built):
    staging = built / "scratch/live"  # open_live: DVCLive writes here, end() moves it to metrics/<name>
    with tmpfs(staging, "4k"):
        proc = stage(built, "linear_probe_random")
    assert proc.returncode == 1
    [line] = error_lines(proc)
    assert re.search(
        r"no space left on device while writing scratch/live/metrics/linear_probe/random/\S+ \(metrics/"
        r"linear_probe/random was left as it was\)",
        line,
    ), line
    assert not (built / "metrics/linear_probe/random").exists()


def test_a_full_disk_under_downloads_output_names_the_array(built):
    full = built / "full"
    with tmpfs(full, "64k"):  # the tiny dataset is ~300 kB
        proc = run([str(BIN / "python"), "stages/download.py", "--out", "full/prepared"], built, check=False)
        left = list(full.iterdir())
    assert proc.returncode == 1
    [line] = error_lines(proc)
    assert re.search(
        r"no space left on device while writing full/prepared\.partial/\w+\.npy "
        r"\(full/prepared was left as it was\)",
        line,
    ), line
    assert left == []  # the partial dataset removed


# --------------------------------------------------------------------------- item 4: sizes checked before the work


@pytest.mark.parametrize("key", ["batch_size", "knn_k"])
def test_the_probes_sizes_are_checked_against_what_a_cross_validation_fit_trains_on(built, key):
    # <= data.shapes.train (100), > the 80 a 5-fold fit trains on: refused with the params, before any work
    for value in (90, 1000):
        proc = stage_with_params(
            built, "init_random", **{f"linear_probe__{key}": value if key == "batch_size" else [5, value]}
        )
        assert proc.returncode == 2
        [line] = error_lines(proc)
        assert (
            f"linear_probe.{key} ({value}) must not exceed the 80 images a cross-validation fold trains on "
            "(data.shapes.train 100, linear_probe.folds 5)"
        ) in line


def test_one_train_image_per_class_is_refused_at_download(built):
    before = files_under(built / "data/prepared")
    small = {
        "data__shapes__train": 10,
        "finetune__batch_size": 2,
        "linear_probe__batch_size": 2,
        "linear_probe__knn_k": [2],
    }  # 10 classes: one image each
    proc = stage_with_params(built, "download", **small)
    assert proc.returncode == 1
    [line] = error_lines(proc)
    assert "every class has a single train image" in line and "add train images" in line
    assert files_under(built / "data/prepared") == before
    assert not (built / "data/prepared.partial").exists()


# --------------------------------------------------------------------------- item 5: duplicate keys


def test_a_duplicate_key_in_params_is_refused_by_a_stage_run_by_hand(built):
    params = (built / "params.yaml").read_text()
    assert "  epochs: 3\n  batch_size: 32\n" in params
    try:
        (built / "params.yaml").write_text(
            params.replace("  epochs: 3\n  batch_size: 32\n", "  epochs: 3\n  epochs: 30\n  batch_size: 32\n", 1)
        )
        proc = stage(built, "init_random")
    finally:
        (built / "params.yaml").write_text(params)
    assert proc.returncode == 2
    [line] = error_lines(proc)
    assert "params.yaml: key 'epochs' appears twice in one section" in line and "keep one" in line


# --------------------------------------------------------------------------- item 6: verify


@pytest.mark.slow
def test_doctor_warns_of_a_remote_without_verify_and_its_fix_silences_it(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    doctor = [str(BIN / "python"), "-m", "mae_exp.study", "doctor"]
    quiet = run(doctor, repo)
    assert quiet.stdout + quiet.stderr == ""  # no remote: nothing to say
    dvc("remote", "add", "--local", "nas", str(tmp_path / "nas"), cwd=repo)
    dvc("remote", "add", "team", str(tmp_path / "team"), cwd=repo)
    dvc("remote", "modify", "team", "verify", "true", cwd=repo)  # docs/team.md's setting: quiet
    proc = run(doctor, repo, check=False)
    assert proc.returncode == 1
    [line] = proc.stdout.splitlines()
    assert line.startswith("warning: DVC remote 'nas'") and "has verify off" in line
    [fix] = [c for c in backticked(line) if c.startswith("dvc remote modify")]
    assert fix == "dvc remote modify --local nas verify true"
    run(["bash", "-c", fix], repo)
    proc = run(doctor, repo)
    assert proc.returncode == 0 and proc.stdout + proc.stderr == ""
