"""The readouts of a frozen encoder: weighted kNN against numbers worked out by hand, and the probe stage
writing every readout (linear and kNN, class token and mean-pooled) where `dvc metrics show` finds it."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import copy_built, copy_repo, dvc
from mae_exp.evaluation.measures import MEASURES, READOUTS
from mae_exp.evaluation.probe import knn_votes, train_grid
from mae_exp.plumbing.runtime import batches
from mae_exp.training.optim import best, grid, warmup_cosine

# four training features in 2-D; the query (1, 0) has cosine similarity 1, 0, 0.6, -1 to them
TRAIN_X = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]])
TRAIN_Y = torch.tensor([0, 1, 1, 2])


def test_knn_votes_are_exp_of_similarity_over_temperature_summed_per_class():
    # k = 3 keeps similarities 1 (class 0), 0.6 and 0 (class 1); T = 0.5: class 0 gets e^2 = 7.389,
    # class 1 gets e^1.2 + e^0 = 3.320 + 1 = 4.320, class 2 (similarity -1, not among the 3) nothing
    votes = knn_votes(TRAIN_X, TRAIN_Y, torch.tensor([[1.0, 0.0]]), 3, k=3, temperature=0.5)
    assert votes[0].tolist() == pytest.approx([math.e**2, math.e**1.2 + 1.0, 0.0], rel=1e-5)
    assert votes.argmax(1).item() == 0  # the closest neighbour outweighs the two-to-one majority
    # T = 2 flattens the weights: e^0.5 = 1.649 against e^0.3 + 1 = 2.350, the majority wins
    votes = knn_votes(TRAIN_X, TRAIN_Y, torch.tensor([[1.0, 0.0]]), 3, k=3, temperature=2.0)
    assert votes[0].tolist() == pytest.approx([math.e**0.5, math.e**0.3 + 1.0, 0.0], rel=1e-5)
    assert votes.argmax(1).item() == 1


def test_knn_uses_cosine_similarity_and_at_most_every_training_feature():
    queries = torch.tensor([[5.0, 0.0], [0.8, 0.6]])  # length does not matter, only direction
    votes = knn_votes(TRAIN_X, TRAIN_Y, queries, 3, k=2, temperature=0.07)
    # (0.8, 0.6): similarities 0.8 (class 0), 0.6 and 0.96 (class 1), -0.8; k = 2 keeps 0.96 and 0.8
    assert votes[1].tolist() == pytest.approx([math.exp(0.8 / 0.07), math.exp(0.96 / 0.07), 0.0], rel=1e-4)
    assert votes.argmax(1).tolist() == [0, 1]
    everyone = knn_votes(TRAIN_X, TRAIN_Y, queries[:1], 3, k=20, temperature=1.0)  # k > 4 training features
    assert everyone[0].tolist() == pytest.approx([math.e, 1.0 + math.e**0.6, math.e**-1], rel=1e-5)
    chunked = knn_votes(TRAIN_X, TRAIN_Y, queries, 3, k=2, temperature=0.07, chunk=1)
    assert torch.equal(chunked, votes)


@pytest.fixture(scope="module")
def probed(tiny_downloaded, tmp_path_factory):
    """A tiny-config copy after `dvc repro linear_probe@random`: the data prepared, the random encoder
    written (no pre-training), its probe stage run; and that run's output."""
    repo = copy_built(tiny_downloaded, tmp_path_factory.mktemp("probed") / "repo")
    return repo, dvc("repro", "linear_probe@random", cwd=repo)


@pytest.mark.slow
def test_the_probe_stage_writes_every_readout_where_dvc_metrics_show_finds_it(probed):
    repo, out = probed
    assert (
        "linear probe random: class token and mean-pooled patches, linear heads (4 settings of lr x weight "
        "decay) and kNN (4 of k x T), each chosen on validation"
    ) in out.stdout + out.stderr
    path = "metrics/linear_probe_random/metrics.json"
    written = json.loads((repo / path).read_text())
    keys = [f"{r}_{split}top1" for r in READOUTS for split in ("", "val_")]
    for key in keys:
        assert 0.0 <= written[key] <= 1.0, key
    assert written["test_images"] == 100
    assert set(written["chosen"]) == set(written["search"]) == set(READOUTS)
    for pooling in ("cls", "mean"):  # a curve per head, per epoch (3 in the tiny config)
        tsv = (repo / "metrics/linear_probe_random/plots/metrics" / f"linear_{pooling}_val_top1.tsv").read_text()
        assert len(tsv.splitlines()) == 1 + 3
    shown = json.loads(dvc("metrics", "show", "--json", cwd=repo).stdout)
    data = next(iter(shown.values()))["data"][path]["data"]
    assert {k: data[k] for k in keys} == {k: written[k] for k in keys}
    # the registry reads the same keys (what the report and the study show)
    assert {m.key for m in MEASURES.values() if m.file("x").startswith("metrics/linear_probe_")} == set(keys)


# --------------------------------------------------------------------------- the search (issue 31, part 1)


def test_the_grid_varies_the_last_axis_fastest_and_the_best_point_is_the_first_highest():
    assert grid(lr=[0.1, 1.0], weight_decay=[0.0, 5e-4]) == [
        {"lr": 0.1, "weight_decay": 0.0},
        {"lr": 0.1, "weight_decay": 5e-4},
        {"lr": 1.0, "weight_decay": 0.0},
        {"lr": 1.0, "weight_decay": 5e-4},
    ]
    assert best([0.2, 0.5, 0.1, 0.5]) == 1  # a tie goes to the earlier point, whoever runs it
    assert best([None, 0.0, None]) == 1  # a diverged point (None) never wins, even against 0
    assert best([None, None]) is None


def assert_chosen_is_the_first_best(summary: dict, readout: str) -> None:
    """`chosen` is the grid point with the highest validation top-1 (ties: the earliest), and the
    `<readout>_val_top1` reported is that point's (readout "finetune": the fine-tuning stage's summary)."""
    tuned = readout == "finetune"
    search, chosen = (
        (summary["search"], summary["chosen"]) if tuned else (summary["search"][readout], summary["chosen"][readout])
    )
    axes = [axis for axis in search if axis != "val_top1"]
    scores = [v if v is not None else -1.0 for v in search["val_top1"]]
    at = scores.index(max(scores))
    assert chosen == {axis: search[axis][at] for axis in axes}, readout
    assert summary["val_top1" if tuned else f"{readout}_val_top1"] == search["val_top1"][at]


@pytest.fixture
def random_encoder(probed):
    """The prepared data and the random encoder (in-process runs below write under tmp_path only)."""
    return probed[0]


class Spy:
    """Counts calls to the real functions it wraps, and notes the order of events."""

    def __init__(self, monkeypatch, module, names):
        self.events = []
        for name in names:
            real = getattr(module, name)
            monkeypatch.setattr(module, name, self._wrap(name, real))

    def _wrap(self, name, real):
        def called(*args, **kwargs):
            part = args[1] if name == "labeled" else None
            self.events.append(f"{name}:{part}" if part else name)
            return real(*args, **kwargs)

        return called


def test_the_probe_chooses_every_readout_on_validation_then_reads_test_once(random_encoder, monkeypatch, tmp_path):
    from mae_exp.evaluation import probe
    from mae_exp.plumbing.config import load_params

    monkeypatch.chdir(random_encoder)
    p = load_params("params.yaml")
    spy = Spy(monkeypatch, probe, ["labeled", "train_grid", "knn_votes"])
    summary = probe.linear_probe(p, "models/random/encoder.pt", "data/prepared", "random", tmp_path / "live")
    heads = len(p.linear_probe.lr) * len(p.linear_probe.weight_decay)
    knn = len(p.linear_probe.knn_k) * len(p.linear_probe.knn_temperature)
    # train and validation first; every grid point trained (all points and both poolings in one loop) and
    # every kNN point scored on validation (one call per pooling); then the test split, once, and only the
    # chosen readouts
    assert spy.events.count("labeled:test") == 1
    test_at = spy.events.index("labeled:test")
    assert spy.events[:2] == ["labeled:train", "labeled:val"]
    assert spy.events[:test_at].count("train_grid") == 1 and "train_grid" not in spy.events[test_at:]
    assert [len(summary["search"][f"linear_{pool}"]["val_top1"]) for pool in ("cls", "mean")] == [heads] * 2 == [4] * 2
    assert spy.events[:test_at].count("knn_votes") == 2 * knn == 8
    assert spy.events[test_at + 1 :] == ["knn_votes", "knn_votes"]  # the chosen kNN of each pooling, on test
    for readout in READOUTS:
        assert_chosen_is_the_first_best(summary, readout)
        assert 0.0 <= summary[f"{readout}_top1"] <= 1.0
    assert summary["search"]["linear_cls"]["lr"] == [1e-3, 1e-3, 0.1, 0.1]  # tiny.yaml's grid, lr varying slowest
    assert summary["search"]["linear_cls"]["weight_decay"] == [0.0, 5e-4, 0.0, 5e-4]
    assert summary["search"]["knn_mean"]["k"] == [5, 5, 20, 20]
    written = json.loads((tmp_path / "live" / "metrics.json").read_text())
    assert written["chosen"] == summary["chosen"] and written["search"] == summary["search"]
    # the curves DVCLive keeps are the chosen head's: its last epoch is the validation top-1 reported
    curve = (tmp_path / "live" / "plots" / "metrics" / "linear_mean_val_top1.tsv").read_text().splitlines()
    assert float(curve[-1].split("\t")[-1]) == pytest.approx(summary["linear_mean_val_top1"], abs=1e-4)


def test_the_grid_trains_each_point_as_a_head_trained_alone():
    """All points in one loop (shared BN, one weight per point, SGD written out) = each point on its own,
    through torch.optim.SGD, from the same start."""
    from torch import nn

    gen = torch.Generator().manual_seed(0)
    xs = {"cls": torch.randn(60, 8, generator=gen), "mean": torch.randn(60, 8, generator=gen)}
    y = torch.randint(0, 3, (60,), generator=gen)
    points = [(0.3, 0.0), (0.05, 1e-2)]
    heads, diverged = train_grid(xs, y, 3, 4, 16, points, seed=1)
    assert diverged == {}
    start, _ = train_grid(xs, y, 3, 0, 16, points, seed=1)  # the same initial weights, untrained
    for name, x in xs.items():
        for i, (lr, wd) in enumerate(points):
            alone = start[name].point(i).train()
            alone[0].reset_running_stats()
            optimizer = torch.optim.SGD(alone.parameters(), lr=lr, momentum=0.9, weight_decay=wd)
            order = torch.Generator().manual_seed(1)
            per_epoch, step = len(batches(60, 16, drop_last=False)), 0
            for _ in range(4):
                for idx in batches(60, 16, order, drop_last=False):
                    for group in optimizer.param_groups:
                        group["lr"] = warmup_cosine(step, 4 * per_epoch, per_epoch, lr)
                    optimizer.zero_grad()
                    nn.functional.cross_entropy(alone(x[idx]), y[idx]).backward()
                    optimizer.step()
                    step += 1
            alone.eval()
            assert torch.allclose(heads[name].point(i)(x), alone(x), atol=1e-5), (name, i)


def test_a_diverging_grid_point_loses_the_search_instead_of_stopping_it(random_encoder, monkeypatch, tmp_path):
    from mae_exp.evaluation import probe
    from mae_exp.plumbing.config import load_params

    monkeypatch.chdir(random_encoder)
    p = load_params("params.yaml")
    p = p.model_copy(update={"linear_probe": p.linear_probe.model_copy(update={"lr": (1e30, 0.1)})})
    summary = probe.linear_probe(p, "models/random/encoder.pt", "data/prepared", "random", tmp_path / "live")
    for pool in ("cls", "mean"):
        assert summary["search"][f"linear_{pool}"]["val_top1"][:2] == [None, None]  # 1e30, both weight decays
        assert summary["chosen"][f"linear_{pool}"]["lr"] == 0.1


def test_finetuning_chooses_lr_and_layer_decay_on_validation_then_reads_test_once(
    random_encoder, monkeypatch, tmp_path
):
    from mae_exp.evaluation import finetune
    from mae_exp.plumbing.config import load_params

    monkeypatch.chdir(random_encoder)
    p = load_params("params.yaml")
    p = p.model_copy(
        update={
            "finetune": p.finetune.model_copy(
                update={  # long enough for the points to differ
                    "base_lr": (1e-3, 3e-2),
                    "layer_decay": (0.75, 1.0),
                    "epochs": 3,
                    "warmup_epochs": 0.0,
                }
            )
        }
    )
    spy = Spy(monkeypatch, finetune, ["labeled", "_fit", "evaluate"])
    summary = finetune.finetune(
        p, "models/random/encoder.pt", "data/prepared", "random", tmp_path / "live", tmp_path / "scratch"
    )
    assert spy.events.count("labeled:test") == 1
    test_at = spy.events.index("labeled:test")
    assert spy.events[:test_at].count("_fit") == 4 and "_fit" not in spy.events[test_at:]
    assert spy.events[test_at + 1 :] == ["evaluate"]  # the chosen model, once
    assert summary["search"]["base_lr"] == [1e-3, 1e-3, 3e-2, 3e-2]
    assert summary["search"]["layer_decay"] == [0.75, 1.0, 0.75, 1.0]
    assert len(set(summary["search"]["val_top1"])) > 1  # the points differ: a real search
    assert_chosen_is_the_first_best(summary, "finetune")
    assert json.loads((tmp_path / "live" / "metrics.json").read_text())["chosen"] == summary["chosen"]
    curve = (tmp_path / "live" / "plots" / "metrics" / "val_top1.tsv").read_text().splitlines()
    assert float(curve[-1].split("\t")[-1]) == pytest.approx(summary["val_top1"], abs=1e-4)


@pytest.mark.slow
def test_every_encoder_gets_the_same_search(tmp_path):
    """Two encoders through `dvc repro`: the same grid points evaluated, each its own choice."""
    from conftest import git

    repo = copy_repo(tmp_path / "repo")
    params = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(params.replace("base_lr: [1.0e-3]", "base_lr: [1.0e-3, 3.0e-2]"))
    git("commit", "-qam", "a fine-tuning grid of two points", cwd=repo)
    encoders = ("random", "original")
    dvc("repro", *(f"{stage}@{e}" for stage in ("linear_probe", "finetune") for e in encoders), cwd=repo)
    probe = {e: json.loads((repo / f"metrics/linear_probe_{e}/metrics.json").read_text()) for e in encoders}
    tuned = {e: json.loads((repo / f"metrics/finetune_{e}/metrics.json").read_text()) for e in encoders}

    def points(search: dict) -> list[tuple]:
        axes = [axis for axis in search if axis != "val_top1"]
        return list(zip(*(search[axis] for axis in axes)))

    for readout in READOUTS:
        assert points(probe["random"]["search"][readout]) == points(probe["original"]["search"][readout])
        for e in encoders:
            assert_chosen_is_the_first_best(probe[e], readout)
    assert points(tuned["random"]["search"]) == points(tuned["original"]["search"]) == [(1e-3, 0.75), (3e-2, 0.75)]
    for e in encoders:
        assert_chosen_is_the_first_best(tuned[e], "finetune")
    # the report shows each encoder's choice
    dvc("repro", "report", cwd=repo)
    comparison = json.loads((repo / "metrics/comparison.json").read_text())
    for e in encoders:
        assert comparison["chosen"][e] == {**probe[e]["chosen"], "finetune": tuned[e]["chosen"]}
