"""Several processes (pretrain.processes / finetune.processes: 2) on this machine's CPUs, gloo backend,
through the real stage scripts, torchrun's launcher and dvc, on the tiny config.

Two processes against one with the same global batch and seed differ only by the order of float
reductions. Measured on a 2-core CPU (torch 2.15): per-epoch loss terms within 3e-7 relative, weights
within 6e-8 absolute (attention key biases aside, see below). The tests allow LOSS_RTOL and WEIGHT_ATOL.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from test_pipeline import start, wait_for_state

from conftest import BIN, STAGES, copy_built, copy_repo, dvc, ran_stages, run, stage_cmd
from mae_exp.plumbing.config import ConfigError, parse_params

LOSS_RTOL = 1e-5  # per-epoch loss, mse, freq, unif: float reduction order only
WEIGHT_ATOL = 1e-6  # every weight, except:
KEY_BIAS_ATOL = 1e-3  # attention key biases: their true gradient is 0 (softmax ignores a constant added to
# every logit of a query), so AdamW moves them by normalised rounding noise, up to lr per step; they have
# no effect on any output. Measured: 3e-5 after the tiny run's 18 steps (lr 1.9e-4).


def set_params(repo: Path, **changes) -> None:
    """set_params(repo, pretrain__processes=2): `__` separates the levels of a key."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node = params
        for key in parents:
            node = node[key]
        node[leaf] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """The tiny pipeline with 2 processes for pre-training and fine-tuning: pretrain@original SIGKILLed
    (torchrun's launcher and both workers) as soon as its first checkpoint exists, then a whole
    `dvc repro`, which resumes it. Every training stage checks at its end that both ranks hold the same
    weights (distributed.check_same_weights), so a completed run is that check passed."""
    root = tmp_path_factory.mktemp("two")
    repo = copy_repo(root / "repo", cache="own")  # every stage after download must run with 2 processes
    set_params(repo, pretrain__processes=2, finetune__processes=2, data__shapes__unlabeled=2000)
    dvc("repro", "download", cwd=repo)
    proc = start([str(BIN / "dvc"), "repro", "pretrain@original"], repo)
    killed_at = wait_for_state(repo, "pretrain/original", proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    full = dvc("repro", cwd=repo)
    return SimpleNamespace(repo=repo, killed_at=killed_at, output=full.stdout + full.stderr)


@pytest.fixture(scope="module")
def one(two, tmp_path_factory):
    """Both variants pre-trained in one process on the same prepared data; one CPU thread, as each of
    the two processes has on this machine."""
    repo = copy_repo(tmp_path_factory.mktemp("one") / "repo")
    set_params(repo, threads=1, data__shapes__unlabeled=2000)
    shutil.copytree(two.repo / "data" / "prepared", repo / "data" / "prepared")
    for variant in ("original", "improved"):
        run(stage_cmd(f"recipe_needs@{variant}"), repo)
        run(stage_cmd(f"pretrain@{variant}"), repo)
    return repo


def curve(repo: Path, variant: str) -> list[dict]:
    """The per-epoch history that pretraining stores in its checkpoint."""
    return torch.load(repo / "models" / variant / "checkpoint.pt", weights_only=False)["history"]


def weights(repo: Path, variant: str) -> dict:
    return torch.load(repo / "models" / variant / "checkpoint.pt", weights_only=False)["model_state"]


def assert_weights_close(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name, w in want.items():
        g = got[name]
        if name.endswith("attn.qkv.bias"):  # [query | key | value]
            (gq, gk, gv), (wq, wk, wv) = g.chunk(3), w.chunk(3)
            torch.testing.assert_close(gk, wk, rtol=0, atol=KEY_BIAS_ATOL, msg=f"{name} (key part)")
            g, w = torch.cat([gq, gv]), torch.cat([wq, wv])
        torch.testing.assert_close(g, w, rtol=0, atol=WEIGHT_ATOL, msg=name)


@pytest.mark.slow
def test_dvc_repro_with_two_processes_completes(two):
    assert ran_stages(two.output) == STAGES - {"download", "recipe_needs@original"}  # ran before the killed one
    assert "pretrain.processes: 2 -> torchrun --standalone --nproc-per-node 2 stages/pretrain.py improved" in two.output
    assert "finetune.processes: 2 -> torchrun --standalone --nproc-per-node 2 stages/finetune.py original" in two.output
    assert (
        "lr 1.88e-04, cpu, 1 CPU thread per process, 2 processes" in two.output
    )  # the global batch's lr, threads per process
    assert two.output.count("pretrain improved epoch 3/3") == 1  # rank 0 alone prints
    for name in ("random", "original", "improved"):
        assert 0 <= json.loads((two.repo / "metrics" / "finetune" / name / "metrics.json").read_text())["top1"] <= 1
    assert dvc("status", cwd=two.repo).stdout.strip() == "Data and pipelines are up to date."


@pytest.mark.slow
def test_two_processes_follow_one_process_with_the_same_global_batch(two, one):
    rows2, rows1 = curve(two.repo, "improved"), curve(one, "improved")
    assert [r["epoch"] for r in rows2] == [1, 2, 3]
    for r2, r1 in zip(rows2, rows1):
        for term in ("loss", "mse", "freq", "unif"):  # unif: pairwise over the gathered global batch
            assert r2[term] == pytest.approx(r1[term], rel=LOSS_RTOL), (r2["epoch"], term)
        assert (r2["mask_ratio"], r2["lr"]) == (r1["mask_ratio"], r1["lr"])  # same steps, same schedule
    assert_weights_close(weights(two.repo, "improved"), weights(one, "improved"))


@pytest.mark.slow
def test_killed_two_process_pretrain_resumes_at_the_next_epoch(two, one):
    assert 1 <= two.killed_at < 3
    assert f"resuming pretrain original from epoch {two.killed_at + 1}/3" in two.output
    metrics = json.loads((two.repo / "metrics" / "pretrain" / "original" / "metrics.json").read_text())
    assert metrics["resumed_at_epoch"] == two.killed_at
    assert [r["epoch"] for r in curve(two.repo, "original")] == [1, 2, 3]
    assert not list((two.repo / "scratch" / "pretrain" / "original").glob("*/last.pt"))
    # an uninterrupted run (one process: the key leaves processes out, so either count resumes either's)
    for r2, r1 in zip(curve(two.repo, "original"), curve(one, "original")):
        assert r2["loss"] == pytest.approx(r1["loss"], rel=LOSS_RTOL)
    assert_weights_close(weights(two.repo, "original"), weights(one, "original"))


S_ATOL = 1e-5  # learned log-variances s_i (they move ~3e-3 in the tiny run); measured on 2 cores: equal


@pytest.mark.slow
def test_learned_loss_weights_are_averaged_over_two_processes(tiny_downloaded, tmp_path):
    """SMAE's uncertainty weights (s_i, LogVars) are not part of the DDP-wrapped model: their gradients are
    averaged by a hook instead. Two processes then learn the s_i of one process with the same global batch,
    and both ranks end with the same s_i: the run's final check_same_weights covers them (a rank that drifted
    fails the stage)."""
    one = copy_built(tiny_downloaded, tmp_path / "one" / "repo")
    run(stage_cmd("recipe_needs@smae"), one)  # its frozen CNN, once: both runs read the same one
    two = copy_built(one, tmp_path / "two" / "repo")
    set_params(two, pretrain__processes=2)
    run(stage_cmd("pretrain@smae"), one)
    proc = run(stage_cmd("pretrain@smae"), two)
    assert (
        "pretrain.processes: 2 -> torchrun --standalone --nproc-per-node 2 stages/pretrain.py smae"
        in proc.stderr + proc.stdout
    )

    def learned(repo: Path) -> tuple[dict, dict, list[dict]]:
        checkpoint = torch.load(repo / "models" / "smae" / "checkpoint.pt", weights_only=False)
        metrics = json.loads((repo / "metrics" / "pretrain" / "smae" / "metrics.json").read_text())
        return checkpoint["log_vars"], metrics, checkpoint["history"]

    (s2, metrics2, rows2), (s1, metrics1, rows1) = learned(two), learned(one)
    assert s2.keys() == s1.keys() == {"s.mse", "s.perceptual"}
    for name, initial in (("s.mse", -1.0), ("s.perceptual", -6.0)):
        assert abs(s1[name].item() - initial) > 100 * S_ATOL, name  # they moved: the comparison means something
        torch.testing.assert_close(s2[name], s1[name], rtol=0, atol=S_ATOL, msg=name)
    for key in ("s_mse", "s_perceptual"):
        assert metrics2["final"][key] == pytest.approx(metrics1["final"][key], abs=S_ATOL), key
    assert metrics2["loss_weights"]["perceptual"] == pytest.approx(metrics1["loss_weights"]["perceptual"], rel=1e-4)
    assert [r["epoch"] for r in rows2] == [r["epoch"] for r in rows1] == [1, 2, 3]
    for r2, r1 in zip(rows2, rows1):
        for term in ("loss", "mse", "perceptual"):
            assert r2[term] == pytest.approx(r1[term], rel=LOSS_RTOL), (r2["epoch"], term)
        for term in ("s_mse", "s_perceptual"):
            assert r2[term] == pytest.approx(r1[term], abs=S_ATOL), (r2["epoch"], term)


@pytest.mark.slow
def test_ranks_that_drift_apart_are_caught(tmp_path):
    """check_same_weights itself, on two real gloo processes whose weights differ by one bit."""
    script = tmp_path / "drift.py"
    script.write_text(
        "import sys, torch, torch.distributed as dist\n"
        "from mae_exp.training import distributed\n"
        "from mae_exp.plumbing.errors import DistributedError\n"
        "dist.init_process_group('gloo')\n"
        "torch.manual_seed(0)\n"
        "model = torch.nn.Linear(4, 4)\n"
        "torch.nn.init.ones_(model.weight)\n"
        "distributed.check_same_weights(model, 'same')\n"
        "if dist.get_rank() == 1:\n"
        "    with torch.no_grad(): model.weight[0, 0] = torch.nextafter(torch.tensor(1.0), torch.tensor(2.0))\n"
        "try:\n"
        "    distributed.check_same_weights(model, 'drifted')\n"
        # one write per line: the two ranks share one pipe, and print() writes its pieces separately
        "    sys.stdout.write(f'rank {dist.get_rank()} agrees\\n')\n"
        "except DistributedError as e:\n"
        "    sys.stdout.write(f'rank {dist.get_rank()} caught: {e}\\n')\n"
        # both ranks leave together: a rank exiting while gloo still talks to it aborts the other
        "dist.barrier()\n"
        "dist.destroy_process_group()\n"
    )
    proc = run([str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", str(script)], tmp_path)
    assert "rank 0 agrees" in proc.stdout
    assert "rank 1 caught: drifted: the weights of rank 1 differ from rank 0's after training" in proc.stdout


# --------------------------------------------------------------------------- what cannot run says so


def assert_one_clear_line(proc, *words) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Traceback" not in out
    [line] = [line for line in out.splitlines() if line.startswith("error:")]
    for word in words:
        assert word in line, (word, line)


@pytest.mark.skipif(torch.cuda.device_count() >= 2, reason="nccl would start on this machine's GPUs")
def test_nccl_without_enough_gpus_names_the_param(repo):
    set_params(repo, pretrain__processes=2)
    proc = run(stage_cmd("pretrain@original"), repo, check=False, extra_env={"MAE_DIST_BACKEND": "nccl"})
    assert_one_clear_line(proc, "pretrain.processes", "nccl", "one GPU each")


def test_a_backend_that_cannot_start_names_the_param_and_does_not_hang(repo):
    """A worker as torchrun starts it, whose rendezvous port is taken: the gloo backend cannot start."""
    set_params(repo, pretrain__processes=2)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run(
            stage_cmd("pretrain@original"),
            repo,
            check=False,
            timeout=120,
            extra_env={
                "MAE_DIST_BACKEND": "gloo",
                "WORLD_SIZE": "2",
                "RANK": "0",
                "LOCAL_RANK": "0",
                "LOCAL_WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
            },
        )
    assert_one_clear_line(proc, "pretrain.processes", "gloo backend could not start", str(port))


def test_torchrun_world_size_must_match_the_param(repo):
    proc = run(
        stage_cmd("finetune_random"),
        repo,
        check=False,
        extra_env={"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"},
    )
    assert_one_clear_line(proc, "finetune.processes is 1", "torchrun started 2 processes", "finetune.processes: 2")


@pytest.mark.parametrize("section", ["pretrain", "finetune"])
def test_processes_validation_names_the_keys(section):
    raw = yaml.safe_load((Path(__file__).parents[1] / "configs" / "tiny.yaml").read_text())
    raw[section]["processes"] = 0
    with pytest.raises(ConfigError, match=f"{section}.processes must be greater than or equal to 1"):
        parse_params(raw)
    raw[section].update(processes=3, batch_size=32)
    with pytest.raises(
        ConfigError,
        match=rf"{section}.batch_size \(32, the global batch\) must be divisible "
        rf"by processes \(3\)",
    ):
        parse_params(raw)
