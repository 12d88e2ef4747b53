"""Nothing silently wrong (issue 22): real stages on the tiny config in scratch repos, with real damaged
files, a real full filesystem and real signals; every failure is one line that names the file or key."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from test_pipeline import set_param, start

from conftest import BIN, BUILT, copy_built, dvc, run, stage_cmd
from mae_exp.checkpoints import CorruptCheckpoint, load_encoder, load_mae, read_checkpoint
from mae_exp.plumbing.config import load_params


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def stage(repo: Path, name: str) -> subprocess.CompletedProcess:
    """A stage's command run as dvc runs it (dvc.yaml's cmd, paths and all), without dvc's own checks in
    front (they would rebuild a file whose bytes changed since dvc.lock; the damage tested here is the kind
    dvc does not notice)."""
    return run([str(BIN / "python"), *stage_cmd(name, repo)[1:]], repo, check=False)


def stage_with_params(repo: Path, name: str, **changes) -> subprocess.CompletedProcess:
    """`stage` with params.yaml's `section__key` set to the values given, then params.yaml put back."""
    params = (repo / "params.yaml").read_text()
    try:
        for key, value in changes.items():
            set_param(repo, key.replace("__", "."), value)
        return stage(repo, name)
    finally:
        (repo / "params.yaml").write_text(params)


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out
    return [line for line in out.splitlines() if line.startswith("error:")]


def largest_tensor(obj) -> torch.Tensor:
    found = []

    def walk(x):
        if isinstance(x, torch.Tensor):
            found.append(x)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    walk(obj)
    return max(found, key=torch.Tensor.numel)


def flip_tensor_byte(path: Path) -> None:
    """Flip one bit inside a tensor's stored bytes: the archive stays readable, only the values change."""
    data = bytearray(path.read_bytes())
    t = largest_tensor(torch.load(path, weights_only=False))
    at = data.find(t.contiguous().view(torch.uint8).numpy().tobytes())
    assert at > 0
    data[at + t.numel() * t.element_size() // 2] ^= 0x10
    path.write_bytes(data)


@pytest.fixture(scope="module")
def built(tiny_built, tmp_path_factory) -> Path:
    """download, init_random and pretrain@original run by `dvc repro`: this module's copy of `tiny_built`."""
    return copy_built(tiny_built, tmp_path_factory.mktemp("built") / "repo")


# --------------------------------------------------------------------------- item 4: deterministic bytes


@pytest.mark.slow
def test_running_stages_again_gives_the_same_bytes_and_the_same_dvc_lock(built):
    outs = ["models/random/encoder.pt", "models/original/checkpoint.pt", "models/original/encoder.pt"]
    before, lock = {o: md5(built / o) for o in outs}, locked_outputs(built)
    proc = dvc("repro", "--force", "init_random", "pretrain@original", cwd=built)
    assert "Running stage 'pretrain@original'" in proc.stdout
    assert {o: md5(built / o) for o in outs} == before
    assert locked_outputs(built) == lock  # data/prepared too: the run-cache can match across clones


def locked_outputs(repo: Path) -> dict:
    """Each cached output's md5 in dvc.lock (metrics are not cached: they hold wall times)."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {
        o["path"]: o["md5"]
        for s in lock["stages"].values()
        for o in s.get("outs", [])
        if not o["path"].startswith("metrics/")
    }


# --------------------------------------------------------------------------- item 1: checked on load


def test_a_flipped_byte_in_an_encoder_stops_the_probe_with_one_line_naming_the_fix(built):
    path = built / "models/random/encoder.pt"
    good = md5(path)
    flip_tensor_byte(path)
    proc = stage(built, "linear_probe_random")
    assert proc.returncode == 1
    [line] = error_lines(proc)
    assert "models/random/encoder.pt is corrupt" in line and "digest" in line
    fix = "dvc checkout --force models/random/encoder.pt"
    assert f"`{fix}`" in line and "`dvc repro --force init_random`" in line
    assert not (built / "metrics/linear_probe/random/metrics.json").exists()
    dvc(*fix.split()[1:], cwd=built)  # the command the message gives repairs it
    assert md5(path) == good
    load_encoder(path, load_params(built / "params.yaml"))


def test_visualize_loader_checks_digest_and_model(built):
    path = built / "models/original/checkpoint.pt"
    p = load_params(built / "params.yaml")
    assert not load_mae(path, p).training
    wider = p.model_copy(update={"model": p.model.model_copy(update={"encoder_dim": 64})})
    with pytest.raises(ValueError, match="was trained with model .* but params.yaml asks for"):
        load_mae(path, wider)  # the old load_mae ignored params and built whatever the file described
    damaged = built / "damaged.pt"
    shutil.copy(path, damaged)
    flip_tensor_byte(damaged)
    with pytest.raises(CorruptCheckpoint, match="damaged.pt is corrupt"):
        load_mae(damaged, p)
    damaged.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CorruptCheckpoint, match="damaged.pt cannot be read"):
        load_mae(damaged, p)


# --------------------------------------------------------------------------- item 3: the probe's NaN guard


def test_a_diverging_probe_stops_naming_its_lr_instead_of_reporting_chance(built):
    # finite, so it passes validation; .inf does not
    proc = stage_with_params(built, "linear_probe_random", linear_probe__lr=[1e30])  # every grid point diverges
    assert proc.returncode == 1
    [line] = error_lines(proc)
    assert "linear probe (" in line and "the training loss became" in line
    assert "lower linear_probe.lr (now 1e+30)" in line
    assert not (built / "metrics/linear_probe/random/metrics.json").exists()


def test_an_infinite_float_is_refused_before_any_work(built):
    params = (built / "params.yaml").read_text()
    try:
        (built / "params.yaml").write_text(params.replace("mlp_ratio: 4.0", "mlp_ratio: .inf"))
        proc = stage(built, "init_random")
    finally:
        (built / "params.yaml").write_text(params)
    assert proc.returncode == 2
    [line] = error_lines(proc)
    assert "model.mlp_ratio must be a finite number, got inf" in line


# --------------------------------------------------------------------------- item 2: damaged resumable state


def files_under(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def killed_state(tiny_downloaded, tmp_path_factory):
    """pretrain@original run straight through (its weights and metrics), then run again and SIGKILLed once
    it has saved two resumable states (last.pt and prev.pt): that scratch/, and the metrics after the kill."""
    root = tmp_path_factory.mktemp("state")
    repo = copy_built(tiny_downloaded, root / "repo")
    set_param(repo, "pretrain.epochs", 4)  # states after epochs 1, 2, 3: two epochs to catch last.pt + prev.pt
    assert stage(repo, "recipe_needs@original").returncode == 0  # what pre-training reads first
    assert stage(repo, "pretrain@original").returncode == 0
    straight = torch.load(repo / "models/original/checkpoint.pt", weights_only=False)["model_state"]
    finished = files_under(repo / "metrics/pretrain/original")
    proc = start([str(BIN / "python"), *stage_cmd("pretrain@original", repo)[1:]], repo)
    deadline = time.monotonic() + 300
    while not list((repo / "scratch/pretrain/original").glob("*/prev.pt")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
        time.sleep(0.02)
    while not list((repo / "scratch/pretrain/original").glob("*/last.pt")):  # written just after prev.pt
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    shutil.copytree(repo / "scratch", root / "saved")
    return repo, root / "saved", straight, finished, files_under(repo / "metrics/pretrain/original")


@pytest.mark.slow
def test_a_killed_stage_leaves_the_last_finished_runs_metrics_whole(killed_state):  # item 5
    repo, saved, _, finished, after_kill = killed_state
    assert "metrics.json" in finished and "plots/metrics/mse.tsv" in finished
    assert after_kill == finished
    assert (saved / "live/metrics/pretrain/original/plots/metrics/mse.tsv").is_file()  # the killed run logged there


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    "damage, falls_back_to",
    [
        ({"last.pt": truncate}, "the previous state"),
        # the fast tier keeps one damage (a truncated last.pt); the slow tier adds a flipped byte and a fresh start
        pytest.param({"last.pt": flip_tensor_byte}, "the previous state", marks=pytest.mark.slow),
        pytest.param(
            {"last.pt": lambda p: p.write_bytes(b""), "prev.pt": flip_tensor_byte},
            "a fresh start",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_a_damaged_resumable_state_is_set_aside_in_one_line_and_the_run_ends_as_if_uninterrupted(
    killed_state, damage, falls_back_to
):
    repo, saved, straight, _, _ = killed_state
    shutil.rmtree(repo / "scratch", ignore_errors=True)
    shutil.copytree(saved, repo / "scratch")
    [state_dir] = (repo / "scratch/pretrain/original").iterdir()
    prev_epoch = read_checkpoint(state_dir / "prev.pt", "")["epoch"]
    for name, hurt in damage.items():
        hurt(state_dir / name)
    proc = stage(repo, "pretrain@original")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Traceback" not in out, out
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == len(damage)
    assert "last.pt" in warnings[0] and "set aside as last.pt.corrupt" in warnings[0]
    assert warnings[-1].endswith(f"pretrain original falls back to {falls_back_to}")
    if falls_back_to == "a fresh start":
        assert "resuming" not in out
    else:
        assert f"resuming pretrain original from epoch {prev_epoch + 1}/4" in out
    resumed = torch.load(repo / "models/original/checkpoint.pt", weights_only=False)["model_state"]
    for key, value in straight.items():
        assert torch.equal(resumed[key], value), key
    assert not state_dir.exists()  # the states, and those set aside, are gone once the outputs exist


# --------------------------------------------------------------------------- item 6: a full disk


def test_a_full_disk_while_writing_a_checkpoint_is_one_line_naming_the_file(built):
    models = built / "models/random"
    kept = built / "kept_random"
    shutil.move(models, kept)
    models.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(models)], capture_output=True, text=True
    )
    try:
        if mounted.returncode != 0:
            if os.environ.get("CI"):
                pytest.fail(f"CI must be able to mount a small tmpfs (root): {mounted.stderr.strip()}")
            pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
        proc = stage(built, "init_random")
        assert list(models.iterdir()) == []  # no partial file left behind
    finally:
        if mounted.returncode == 0:
            subprocess.run(["umount", str(models)], check=True)
        models.rmdir()
        shutil.move(kept, models)
    assert proc.returncode == 1
    [line] = error_lines(proc)
    assert "no space left on device while writing models/random/encoder.pt" in line
    assert "`dvc repro` resumes from the last good state" in line


# --------------------------------------------------------------------------- item 1: a corrupted remote


def remote_object(remote: Path, file: Path) -> Path:
    digest = md5(file)
    return remote / "files" / "md5" / digest[:2] / digest[2:]


@pytest.mark.slow
def test_a_remote_with_verify_refuses_a_flipped_byte_that_a_plain_pull_checks_out(built, tmp_path):
    remote = tmp_path / "nas"
    dvc("remote", "add", "--local", "nas", str(remote), cwd=built)
    dvc("push", "-r", "nas", *BUILT, cwd=built)
    damaged = {
        rel: remote_object(remote, built / rel)
        for rel in ("models/original/checkpoint.pt", "data/prepared/train_images.npy")
    }
    for obj in damaged.values():  # bit rot: the bytes change, the read-only mode DVC gave the object stays
        data, mode = bytearray(obj.read_bytes()), obj.stat().st_mode
        data[len(data) // 2] ^= 0x10
        obj.chmod(0o644)
        obj.write_bytes(data)
        obj.chmod(mode)  # a writable object is one DVC re-hashes (and deletes from the remote when corrupt)
    run(["git", "add", "-A"], built)
    run(["git", "commit", "-q", "-m", "built"], built)

    def pull_into(name: str, verify: bool) -> tuple[Path, subprocess.CompletedProcess]:
        clone = tmp_path / name
        run(["git", "clone", "-q", str(built), str(clone)], tmp_path)
        dvc("remote", "add", "--local", "nas", str(remote), cwd=clone)
        if verify:  # what docs/team.md sets on every remote
            dvc("remote", "modify", "--local", "nas", "verify", "true", cwd=clone)
        return clone, dvc("pull", "-r", "nas", *BUILT, cwd=clone, check=False)

    # without verify, DVC trusts what it downloads: exit 0, the corrupt bytes in the workspace, "up to date"
    plain, proc = pull_into("plain", verify=False)
    assert proc.returncode == 0
    assert {rel: md5(plain / rel) != md5(built / rel) for rel in damaged} == {rel: True for rel in damaged}
    assert "up to date" in dvc("status", *BUILT, cwd=plain).stdout
    # the stage that loads the checkpoint still refuses it, in one line
    with pytest.raises(CorruptCheckpoint, match="checkpoint.pt (is corrupt|cannot be read)"):
        load_mae(plain / "models/original/checkpoint.pt", load_params(built / "params.yaml"))

    # with verify, the pull fails and checks out neither corrupt file; the rest arrives intact
    checked, proc = pull_into("checked", verify=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Checkout failed" in out, out
    assert "models/original/checkpoint.pt" in out and "data/prepared" in out
    for rel in damaged:
        assert not (checked / rel).exists(), rel  # a directory output is not checked out at all
    assert md5(checked / "models/original/encoder.pt") == md5(built / "models/original/encoder.pt")

    # the repair: delete the bad object on the remote, push it again from a good copy, pull
    damaged["models/original/checkpoint.pt"].unlink()
    dvc("push", "-r", "nas", "models/original/checkpoint.pt", cwd=built)
    dvc("pull", "-r", "nas", "models/original/checkpoint.pt", cwd=checked)
    assert md5(checked / "models/original/checkpoint.pt") == md5(built / "models/original/checkpoint.pt")


# --------------------------------------------------------------------------- items 7 and 8: one line, no quiet change


def test_a_file_as_data_root_is_one_line_naming_the_key(built):
    (built / "a_file").write_text("not a directory")
    before = files_under(built / "data/prepared")
    proc = stage_with_params(built, "download", data__source="stl10", data__root="a_file")
    assert proc.returncode == 1
    [line] = error_lines(proc)
    assert "data.root (a_file) is a file" in line and "point data.root at a directory" in line
    assert files_under(built / "data/prepared") == before


def test_finetune_refuses_a_batch_larger_than_its_train_images_instead_of_capping_it(built):
    # <= data.shapes.train (100), > the 90 left after validation
    proc = stage_with_params(built, "finetune_random", finetune__batch_size=95)
    assert proc.returncode == 1
    [line] = error_lines(proc)
    assert "finetune.batch_size (95) is larger than the 90 train images" in line


def test_a_run_removes_the_states_other_params_left_in_its_scratch(tmp_path, capsys):  # item 5
    from mae_exp.training.train import Schedule, Trainer

    stage_dir = tmp_path / "scratch/pretrain/original"
    for key in ("old_params", "mine"):
        (stage_dir / key).mkdir(parents=True)
        (stage_dir / key / "prev.pt").write_bytes(b"a state")
    model = torch.nn.Linear(2, 2)
    trainer = Trainer(
        "pretrain original",
        "pretrain",
        model,
        torch.optim.AdamW(model.parameters()),
        Schedule(1, 1, 0, 1e-3, 1),
        torch.device("cpu"),
        None,
        stage_dir / "mine/last.pt",
        {"order": torch.Generator()},
    )
    trainer.begin("1 epoch")
    assert sorted(p.name for p in stage_dir.iterdir()) == ["mine"]
    assert "removed the resumable state of 1 other run(s)" in capsys.readouterr().err  # the console is stderr
    assert (stage_dir / "mine/prev.pt.corrupt").exists()  # its own unreadable state: set aside, not used


@pytest.mark.slow
def test_tune_records_each_runs_validation_curve_and_refuses_a_bad_point_before_any_work(built):
    out = built / "scratch" / "tuning.json"
    tune = [str(BIN / "python"), "-m", "mae_exp.evaluation.tune", "finetune", "--encoder", "random", "--out", str(out)]
    proc = run([*tune, "--epochs", "0", "2"], built, check=False)
    assert proc.returncode == 2 and "finetune {'epochs': 0}" in proc.stdout + proc.stderr
    assert not out.exists()  # refused before the first run
    run([*tune, "--epochs", "1", "2"], built)
    [record] = json.loads(out.read_text())
    assert record["command"].startswith("python -m mae_exp.evaluation.tune finetune --encoder random")
    runs = {r["epochs"]: r for r in record["results"]}
    assert {e: len(r["val_curve"]) for e, r in runs.items()} == {1: 1, 2: 2}  # one point per epoch
    assert all(r["val_curve"][-1] == r["val_top1"] for r in runs.values())  # the curve ends at the result
