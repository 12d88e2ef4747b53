"""The pipeline end to end, through the real dvc and git CLIs, on the tiny config in a scratch repo."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from conftest import copy_repo, dvc, git, ran_stages

STAGES = {"download", "init_random", "pretrain_original", "pretrain_improved", "linear_probe@random",
          "linear_probe@original", "linear_probe@improved", "finetune@random", "finetune@original",
          "finetune@improved", "visualize", "report"}


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("e2e") / "repo")
    proc = dvc("repro", cwd=repo)
    return repo, proc.stdout + proc.stderr


def test_repro_runs_every_stage_and_writes_metrics(reproduced):
    repo, output = reproduced
    assert ran_stages(output) == STAGES
    m = repo / "metrics"
    for variant in ("original", "improved"):
        pre = json.loads((m / f"pretrain_{variant}.json").read_text())
        assert {"final_loss", "wall_time_s", "images_per_s", "epochs"} <= set(pre)
        assert pre["epochs"] == 3 and pre["images_per_s"] > 0
        assert (repo / "models" / variant / "checkpoint.pt").exists()
        assert (repo / "models" / variant / "encoder.pt").exists()
    for name in ("random", "original", "improved"):
        for stage in ("linear_probe", "finetune"):
            top1 = json.loads((m / f"{stage}_{name}.json").read_text())["top1"]
            assert 0.0 <= top1 <= 1.0
    vis = json.loads((m / "visualize.json").read_text())
    for variant in ("original", "improved"):
        assert vis[variant]["hf_error"] > 0 and vis[variant]["psnr"] > 0
    comparison = json.loads((m / "comparison.json").read_text())
    assert set(comparison) == {"random", "original", "improved", "improved_minus_original"}
    assert comparison["improved_minus_original"]["lp_top1"] == pytest.approx(
        comparison["improved"]["lp_top1"] - comparison["original"]["lp_top1"], abs=1e-4)
    png = (repo / "plots" / "reconstruction.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    curve = (repo / "plots" / "pretrain_improved.csv").read_text().splitlines()
    assert curve[0].startswith("epoch,loss,mse,freq,unif,mask_ratio") and len(curve) == 4
    assert "MAE pre-training: original vs improved" in output  # the console table


def test_a_second_repro_runs_nothing(reproduced):
    repo, _ = reproduced
    proc = dvc("repro", cwd=repo)
    assert ran_stages(proc.stdout) == set()


def test_dvc_metrics_and_plots_show_both_variants(reproduced):
    repo, _ = reproduced
    shown = json.loads(dvc("metrics", "show", "--json", cwd=repo).stdout)
    files = next(iter(shown.values()))["data"]
    assert {"metrics/pretrain_original.json", "metrics/pretrain_improved.json", "metrics/visualize.json",
            "metrics/comparison.json"} <= set(files)
    dvc("plots", "show", "-o", "plots_html", cwd=repo)
    html = (repo / "plots_html" / "index.html").read_text()
    for title in ("Pre-training loss", "Linear probe test top-1", "reconstruction.png"):
        assert title in html
    # both variants' curves feed the one overlaid plot
    assert "pretrain_original.csv" in html and "pretrain_improved.csv" in html


def test_exp_run_on_an_improved_param_reruns_only_the_improved_branch(reproduced):
    repo, _ = reproduced
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "baseline results", cwd=repo)
    proc = dvc("exp", "run", "-S", "improved.lambda_freq=0.2", cwd=repo)
    assert ran_stages(proc.stdout + proc.stderr) == {"pretrain_improved", "linear_probe@improved",
                                                     "finetune@improved", "visualize", "report"}
    diff = json.loads(dvc("metrics", "diff", "--json", cwd=repo).stdout)
    assert "metrics/pretrain_improved.json" in diff
    assert "metrics/pretrain_original.json" not in diff  # untouched: identical numbers
    shown = dvc("exp", "show", "--csv", cwd=repo).stdout
    assert "improved.lambda_freq" in shown and "0.2" in shown


def set_param(repo, path: str, value) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    *parents, leaf = path.split(".")
    node = params
    for key in parents:
        node = node[key]
    node[leaf] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def scratch_checkpoints(repo):
    return sorted((repo / "scratch" / "pretrain_original").glob("*/last.pt"))


def test_killed_pretrain_resumes_at_the_right_epoch_and_matches_an_uninterrupted_run(tmp_path):
    killed = copy_repo(tmp_path / "killed")
    clean = copy_repo(tmp_path / "clean")
    for repo in (killed, clean):
        set_param(repo, "pretrain.epochs", 4)

    proc = dvc("repro", "pretrain_original", cwd=killed, check=False,
               extra_env={"MAE_TEST_KILL_AFTER_EPOCH": "2"})
    assert proc.returncode != 0
    [ckpt] = scratch_checkpoints(killed)
    assert torch.load(ckpt, weights_only=False)["epoch"] == 2
    assert not (killed / "models" / "original" / "encoder.pt").exists()

    proc = dvc("repro", "pretrain_original", cwd=killed)
    assert "resuming original from epoch 3/4" in proc.stdout + proc.stderr
    assert scratch_checkpoints(killed) == []  # cleaned once the declared outputs exist
    metrics = json.loads((killed / "metrics" / "pretrain_original.json").read_text())
    assert metrics["resumed_at_epoch"] == 2
    epochs = (killed / "plots" / "pretrain_original.csv").read_text().splitlines()[1:]
    assert [row.split(",")[0] for row in epochs] == ["1", "2", "3", "4"]

    dvc("repro", "pretrain_original", cwd=clean)
    resumed = torch.load(killed / "models/original/checkpoint.pt", weights_only=False)
    straight = torch.load(clean / "models/original/checkpoint.pt", weights_only=False)
    for key, value in straight["model_state"].items():
        assert torch.allclose(resumed["model_state"][key], value, atol=1e-6), key
    assert resumed["history"][-1]["loss"] == pytest.approx(straight["history"][-1]["loss"], rel=1e-5)


def test_changed_params_start_over_instead_of_resuming(repo):
    set_param(repo, "pretrain.epochs", 4)
    dvc("repro", "pretrain_original", cwd=repo, check=False, extra_env={"MAE_TEST_KILL_AFTER_EPOCH": "2"})
    assert len(scratch_checkpoints(repo)) == 1
    set_param(repo, "pretrain.base_lr", 3e-3)
    proc = dvc("repro", "pretrain_original", cwd=repo)
    out = proc.stdout + proc.stderr
    assert "from scratch" in out and "resuming" not in out


def test_diverging_loss_stops_with_a_clear_message(repo):
    set_param(repo, "pretrain.base_lr", 1e12)
    set_param(repo, "pretrain.warmup_epochs", 0.0)
    proc = dvc("repro", "pretrain_original", cwd=repo, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "the loss became" in out and "pretrain.base_lr" in out and "Traceback" not in out
    assert not (repo / "models" / "original" / "encoder.pt").exists()
