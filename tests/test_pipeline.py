"""The pipeline end to end, through the real dvc and git CLIs, on the tiny config in a scratch repo.

Interruptions are real signals sent to real processes: SIGKILL (no clean-up at all) to the whole process
group of `dvc repro`, SIGINT / SIGTERM to the stage process, each as soon as the stage has written the
resumable state under test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import BIN, STAGES, copy_built, copy_repo, dvc, env, git, ran_stages, run, stage_cmd
from mae_exp.evaluation.measures import READOUTS

pytestmark = pytest.mark.slow  # every test here drives a whole `dvc repro`


def metrics(repo: Path, stage: str) -> dict:
    return json.loads((repo / "metrics" / stage / "metrics.json").read_text())


@pytest.fixture(scope="module")
def reproduced(tiny_reproduced, tmp_path_factory):
    """This module's copy of the session's whole tiny `dvc repro` (a fresh copy, its own cache), and its output."""
    built, output = tiny_reproduced
    return copy_built(built, tmp_path_factory.mktemp("e2e") / "repo"), output


def test_repro_runs_every_stage_and_writes_metrics(reproduced):
    repo, output = reproduced
    assert ran_stages(output) == STAGES
    for variant in ("original", "improved"):
        pre = metrics(repo, f"pretrain/{variant}")
        assert {"final", "wall_time_s", "images_per_s", "epochs", "images", "steps", "flops"} <= set(pre)
        assert pre["steps"] == 27 and pre["flops"] > 0
        assert pre["epochs"] == 3 and pre["images_per_s"] > 0 and pre["images"] == 192 + 100  # unlabeled + train
        assert {"loss", "mse", "freq", "unif"} == set(pre["final"])
        assert (repo / "models" / variant / "checkpoint.pt").exists()
        assert (repo / "models" / variant / "encoder.pt").exists()
    for name in ("random", "original", "improved"):
        ft, lp = metrics(repo, f"finetune/{name}"), metrics(repo, f"linear_probe/{name}")
        assert 0.0 <= ft["top1"] <= 1.0 and 0.0 <= ft["val_top1"] <= 1.0
        for readout in ("linear_cls", "linear_mean", "knn_cls", "knn_mean"):
            assert 0.0 <= lp[f"{readout}_top1"] <= 1.0 and 0.0 <= lp[f"{readout}_val_top1"] <= 1.0
        assert ft["test_images"] == lp["test_images"] == 100
    vis = metrics(repo, "visualize")
    for variant in ("original", "improved"):
        assert vis[variant]["hf_error"] > 0 and vis[variant]["psnr"] > 0 and vis[variant]["mse"] > 0
    comparison = json.loads((repo / "metrics" / "comparison.json").read_text())
    assert set(comparison) == {
        "random",
        "original",
        "improved",
        "improved_minus_original",
        "own_objective",
        "improved_ahead_on",
        "measures_counted",
        "chosen",
        "edges",
        "settings_at_edge",
        "saw_labels",
    }
    for name in ("random", "original", "improved"):  # each encoder's readout settings, chosen on validation
        assert comparison["chosen"][name] == {
            **metrics(repo, f"linear_probe/{name}")["chosen"],
            "finetune": metrics(repo, f"finetune/{name}")["chosen"],
        }
    for readout in [f"{r}_top1" for r in READOUTS]:
        assert comparison["improved_minus_original"][readout] == pytest.approx(
            comparison["improved"][readout] - comparison["original"][readout], abs=1e-4
        )
    assert set(comparison["own_objective"]) == {"mse", "hf_error", "pretrain_mse"}
    assert comparison["measures_counted"] == 8  # 6 readouts, fine-tuning, PSNR: what neither variant trains on
    png = (repo / "plots" / "reconstruction.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # DVCLive's per-step curves: a row every LOG_EVERY steps and at each epoch's end (9 steps an epoch here)
    mse = (repo / "metrics" / "pretrain" / "improved" / "plots" / "metrics" / "mse.tsv").read_text().splitlines()
    assert mse[0] == "step\tmse" and [r.split("\t")[0] for r in mse[1:]] == ["9", "18", "27"]
    val = (repo / "metrics" / "finetune" / "original" / "plots" / "metrics" / "val_top1.tsv").read_text().splitlines()
    assert len(val) == 1 + 1  # one fine-tuning epoch
    assert "MAE pre-training: original vs improved" in output  # the console table
    assert "masked MSE" in output


def test_a_second_repro_runs_nothing(reproduced):
    repo, _ = reproduced
    proc = dvc("repro", cwd=repo)
    assert ran_stages(proc.stdout) == set()


def test_dvc_metrics_and_plots_show_both_variants(reproduced):
    repo, _ = reproduced
    shown = json.loads(dvc("metrics", "show", "--json", cwd=repo).stdout)
    files = next(iter(shown.values()))["data"]
    assert {
        "metrics/pretrain/original/metrics.json",
        "metrics/pretrain/improved/metrics.json",
        "metrics/visualize/metrics.json",
        "metrics/comparison.json",
    } <= set(files)
    dvc("plots", "show", "-o", "plots_html", cwd=repo)
    html = (repo / "plots_html" / "index.html").read_text()
    for title in (
        "Masked-patch MSE",
        "Linear probe on the class token, validation top-1",
        "Linear probe on the mean of the patch tokens, validation top-1",
        "reconstruction.png",
    ):
        assert title in html
    # every recipe's curve feeds the one overlaid plot, through the report's combined file
    curve = (repo / "metrics/curves/pretrain_mse.tsv").read_text()
    assert "metrics/curves/pretrain_mse.tsv" in html and "\toriginal\t" in curve and "\timproved\t" in curve


def test_exp_run_on_an_improved_param_reruns_only_the_improved_branch(reproduced):
    repo, _ = reproduced
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "baseline results", cwd=repo)
    proc = dvc("exp", "run", "-S", "improved.lambda_freq=0.2", cwd=repo)
    assert ran_stages(proc.stdout + proc.stderr) == {
        "recipe_needs@improved",  # it reads the whole section (here it builds nothing, at once)
        "pretrain@improved",
        "linear_probe@improved",
        "finetune@improved",
        "export@improved",
        "visualize",
        "report",
    }
    diff = json.loads(dvc("metrics", "diff", "--json", cwd=repo).stdout)
    assert "metrics/pretrain/improved/metrics.json" in diff
    assert "metrics/pretrain/original/metrics.json" not in diff  # untouched: identical numbers
    shown = dvc("exp", "show", "--csv", cwd=repo).stdout
    assert "improved.lambda_freq" in shown and "0.2" in shown


def test_editing_a_module_makes_exactly_its_importers_stale(reproduced):
    """The bug dvc.yaml's hand-written deps had: fine-tuning did not depend on augment.py, which it runs."""
    repo, _ = reproduced
    augment = repo / "src" / "mae_exp" / "training" / "augment.py"
    original = augment.read_text()
    try:
        augment.write_text(original + "\n# edited\n")
        status = json.loads(dvc("status", "--json", cwd=repo).stdout)
    finally:
        augment.write_text(original)
    stale = set(status)
    assert {
        "pretrain@original",
        "pretrain@improved",
        "finetune_random",
        "finetune@original",
        "finetune@improved",
    } <= stale
    assert "download" not in stale and "report" not in stale  # they do not import it


# --------------------------------------------------------------------------- interruptions


def set_param(repo, path: str, value) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    *parents, leaf = path.split(".")
    node = params
    for key in parents:
        node = node[key]
    node[leaf] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def slow_enough(repo: Path) -> None:
    """Enough steps per epoch (about a second each) that a signal sent when a checkpoint appears lands in
    the next epoch, never after the run's end."""
    set_param(repo, "data.shapes.unlabeled", 1500)
    set_param(repo, "pretrain.epochs", 4)
    set_param(repo, "data.shapes.train", 500)
    set_param(repo, "finetune.epochs", 4)


def start(cmd: list[str], repo: Path) -> subprocess.Popen:
    """In its own process group, so a signal can reach dvc and the stage it runs alike; with SIGINT's
    default action, as under a terminal: a test suite started in the background (`cmd &` from a script)
    inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler."""
    return subprocess.Popen(
        cmd,
        cwd=repo,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for_state(repo: Path, stage: str, proc: subprocess.Popen, timeout: float = 300) -> int:
    """Poll until the stage's resumable state exists; its epoch."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list((repo / "scratch" / stage).glob("*/last.pt"))
        if found:
            return torch.load(found[0], weights_only=False)["epoch"]
        assert proc.poll() is None, f"{stage} ended before writing its state:\n{proc.stdout.read()}"
        time.sleep(0.02)
    raise AssertionError(f"no resumable state for {stage} after {timeout} s")


def kill_after_first_checkpoint(repo: Path, stage: str, target: str) -> int:
    proc = start([str(BIN / "dvc"), "repro", target], repo)
    epoch = wait_for_state(repo, stage, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # dvc and the stage: nothing gets to clean up
    proc.wait()
    return epoch


def scratch_states(repo: Path, stage: str) -> list[Path]:
    return sorted((repo / "scratch" / stage).glob("*/last.pt"))


@pytest.fixture(scope="module")
def slow_downloaded(tmp_path_factory) -> Path:
    """A copy with `slow_enough`'s sizes, committed, after `dvc repro download`, with its own cache: the
    interruption tests take a copy, each then running and resuming its stages with nothing to restore."""
    repo = copy_repo(tmp_path_factory.mktemp("slow") / "repo", cache="own")
    slow_enough(repo)
    git("commit", "-qam", "slow enough", cwd=repo)
    dvc("repro", "download", cwd=repo)
    return repo


@pytest.fixture(scope="module")
def interrupted_and_clean(slow_downloaded, tmp_path_factory):
    """Two copies on the same data: one SIGKILLed during pre-training and during fine-tuning and resumed,
    one run straight through."""
    root = tmp_path_factory.mktemp("resume")
    killed, clean = copy_built(slow_downloaded, root / "killed"), copy_built(slow_downloaded, root / "clean")
    pretrain_killed_at = kill_after_first_checkpoint(killed, "pretrain/original", "pretrain@original")
    assert not (killed / "models" / "original" / "encoder.pt").exists()
    resumed = dvc("repro", "pretrain@original", cwd=killed)
    finetune_killed_at = kill_after_first_checkpoint(killed, "finetune/original", "finetune@original")
    resumed_ft = dvc("repro", "finetune@original", cwd=killed)
    dvc("repro", "finetune@original", cwd=clean)
    return (
        killed,
        clean,
        pretrain_killed_at,
        resumed.stdout + resumed.stderr,
        finetune_killed_at,
        resumed_ft.stdout + resumed_ft.stderr,
    )


def test_killed_pretrain_resumes_at_the_right_epoch_and_matches_an_uninterrupted_run(interrupted_and_clean):
    killed, clean, at, output, _, _ = interrupted_and_clean
    assert 1 <= at < 4
    assert f"resuming pretrain original from epoch {at + 1}/4" in output
    assert scratch_states(killed, "pretrain/original") == []  # cleaned once the declared outputs exist
    assert metrics(killed, "pretrain/original")["resumed_at_epoch"] == at
    resumed = torch.load(killed / "models/original/checkpoint.pt", weights_only=False)
    straight = torch.load(clean / "models/original/checkpoint.pt", weights_only=False)
    for key, value in straight["model_state"].items():
        assert torch.equal(resumed["model_state"][key], value), key
    # the DVCLive curve is whole again: the logged rows before the kill are replayed into the new run's files
    curve = (killed / "metrics/pretrain/original/plots/metrics/mse.tsv").read_text()
    assert curve == (clean / "metrics/pretrain/original/plots/metrics/mse.tsv").read_text()


def test_killed_finetune_resumes_and_matches_an_uninterrupted_run(interrupted_and_clean):
    killed, clean, _, _, at, output = interrupted_and_clean
    assert 1 <= at < 4
    assert f"resuming finetune original from epoch {at + 1}/4" in output
    assert scratch_states(killed, "finetune/original") == []
    for name in ("val_top1.tsv", "loss.tsv"):
        path = f"metrics/finetune/original/plots/metrics/{name}"
        assert (killed / path).read_text() == (clean / path).read_text(), name
    assert metrics(killed, "finetune/original")["top1"] == metrics(clean, "finetune/original")["top1"]


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_stage_says_where_it_stopped_in_one_line(slow_downloaded, tmp_path, sig, code):
    repo = copy_built(slow_downloaded, tmp_path / "repo")
    run([str(BIN / "python"), *stage_cmd("recipe_needs@improved")[1:]], repo)  # what it reads first
    proc = start([str(BIN / "python"), *stage_cmd("pretrain@improved")[1:]], repo)
    epoch = wait_for_state(repo, "pretrain/improved", proc)
    proc.send_signal(sig)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == code, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
    [line] = [line for line in out.splitlines() if "interrupted at epoch" in line]
    assert f"`dvc repro` resumes it from epoch {epoch + 1}" in line and sig.name in line


def test_changed_params_start_over_instead_of_resuming(slow_downloaded, tmp_path):
    repo = copy_built(slow_downloaded, tmp_path / "repo")
    kill_after_first_checkpoint(repo, "pretrain/original", "pretrain@original")
    assert len(scratch_states(repo, "pretrain/original")) == 1
    set_param(repo, "pretrain.base_lr", 3e-3)
    set_param(repo, "pretrain.epochs", 1)
    proc = dvc("repro", "pretrain@original", cwd=repo)
    out = proc.stdout + proc.stderr
    assert "resuming" not in out and "pretrain original epoch 1/1:" in out  # the new schedule, from the start
    assert "removed the resumable state of 1 other run(s)" in out  # the old params' state: nothing resumes it


def test_diverging_loss_stops_with_a_clear_message(repo):
    set_param(repo, "pretrain.base_lr", 1e12)
    set_param(repo, "pretrain.warmup_epochs", 0.0)
    proc = dvc("repro", "pretrain@original", cwd=repo, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "the loss became" in out and "pretrain.base_lr" in out and "Traceback" not in out
    assert not (repo / "models" / "original" / "encoder.pt").exists()
