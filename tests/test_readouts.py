"""The readouts of a frozen encoder: weighted kNN against numbers worked out by hand, the logistic probe against its
optimality condition and a constructed dataset whose right regularisation is known, cross-validation's folds and
tie rule, and the probe stage writing every readout (logistic, linear and kNN, class token and mean-pooled) where
`dvc metrics show` finds it, with test predictions that give the accuracy it reports."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import copy_built, copy_repo, dvc
from mae_exp.evaluation.measures import MEASURES, READOUTS, grid_edges
from mae_exp.evaluation.probe import (
    Standardise,
    fit_logistic,
    knn_votes,
    logistic_predictions,
    stratified_folds,
    train_grid,
)
from mae_exp.training.optim import best, grid, warmup_cosine
from mae_exp.training.runtime import batches

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
    # T = 0.01 weighs a similarity of 1 by e^100, past float32's largest number: the votes are float64
    votes = knn_votes(TRAIN_X, TRAIN_Y, torch.tensor([[1.0, 0.0]]), 3, k=3, temperature=0.01)
    assert torch.isfinite(votes).all() and votes[0, 0].item() == pytest.approx(math.exp(100), rel=1e-9)


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
    """A tiny-config copy after `dvc repro linear_probe_random`: the data prepared, the random encoder
    written (no pre-training), its probe stage run; and that run's output."""
    repo = copy_built(tiny_downloaded, tmp_path_factory.mktemp("probed") / "repo")
    return repo, dvc("repro", "linear_probe_random", cwd=repo)


@pytest.mark.slow
def test_the_probe_stage_writes_every_readout_where_dvc_metrics_show_finds_it(probed):
    repo, out = probed
    assert (
        "linear probe random: class token and mean-pooled patches, logistic probes (2 L2 strengths), BN + linear "
        "heads (4 settings of lr x weight decay) and kNN (4 of k x T), each chosen by 5-fold cross-validation on "
        "the labeled train split"
    ) in out.stdout + out.stderr
    path = "metrics/linear_probe/random/metrics.json"
    written = json.loads((repo / path).read_text())
    keys = [f"{r}_{split}top1" for r in READOUTS for split in ("", "val_", "cv_")]
    for key in keys:
        assert 0.0 <= written[key] <= 1.0, key
    assert written["test_images"] == 100
    assert set(written["chosen"]) == set(written["search"]) == set(READOUTS)
    for pooling in ("cls", "mean"):  # a curve per head, per epoch (3 in the tiny config)
        tsv = (repo / "metrics/linear_probe/random/plots/metrics" / f"linear_{pooling}_val_top1.tsv").read_text()
        assert len(tsv.splitlines()) == 1 + 3
    shown = json.loads(dvc("metrics", "show", "--json", cwd=repo).stdout)
    data = next(iter(shown.values()))["data"][path]["data"]
    assert {k: data[k] for k in keys} == {k: written[k] for k in keys}
    # the registry reads the test and validation keys (what the report and the study show)
    registered = {m.key for m in MEASURES.values() if m.file("x").startswith("metrics/linear_probe/")}
    assert registered == {k for k in keys if "_cv_" not in k}
    # the test predictions, a DVC output of the stage, give exactly the accuracy reported, for every readout
    assert "path: predictions/linear_probe_random.npz" in (repo / "dvc.lock").read_text()
    saved = np.load(repo / "predictions/linear_probe_random.npz")
    labels = np.load(repo / "data/prepared/test_labels.npy")
    assert np.array_equal(saved["labels"], labels)
    for r in READOUTS:
        assert saved[r].shape == labels.shape
        assert round(float((saved[r] == labels).mean()), 4) == written[f"{r}_top1"], r


# --------------------------------------------------------------------------- the search (issues 31, 42)


def test_the_grid_varies_the_last_axis_fastest_and_a_tie_goes_to_the_middle_of_the_grid():
    assert grid(lr=[0.1, 1.0], weight_decay=[0.0, 5e-4]) == [
        {"lr": 0.1, "weight_decay": 0.0},
        {"lr": 0.1, "weight_decay": 5e-4},
        {"lr": 1.0, "weight_decay": 0.0},
        {"lr": 1.0, "weight_decay": 5e-4},
    ]
    assert best([0.2, 0.5, 0.1, 0.5]) == 1  # without the grid, a tie goes to the earlier point
    assert best([None, 0.0, None]) == 1  # a diverged point (None) never wins, even against 0
    assert best([None, None]) is None
    five = grid(lr=[0.01, 0.03, 0.1, 0.3, 1.0])
    assert best([0.5, 0.5, 0.5, 0.4, 0.5], five) == 2  # the tied point nearest the middle, not the first edge
    assert best([0.5, 0.4, 0.4, 0.5, 0.5], five) == 3
    two_axes = grid(lr=[0.01, 0.1, 1.0], weight_decay=[0.0, 5e-4])
    assert best([0.5] * 6, two_axes) == 2  # lr 0.1 (the middle), then the earlier weight decay


def test_an_edge_is_a_searched_value_at_either_end_of_its_grid():
    search = {"lr": [0.01, 0.01, 0.1, 0.1, 1.0, 1.0], "weight_decay": [0.0, 5e-4] * 3, "cv_top1": [0.1] * 6}
    assert grid_edges(search, {"lr": 1.0, "weight_decay": 5e-4}) == {"lr": "highest", "weight_decay": "highest"}
    assert grid_edges(search, {"lr": 0.01, "weight_decay": 0.0}) == {"lr": "lowest"}  # no decay: a bound, not an edge
    assert grid_edges(search, {"lr": 0.1, "weight_decay": 0.0}) == {}
    assert grid_edges({"k": [20], "temperature": [0.1]}, {"k": 20, "temperature": 0.1}) == {}  # nothing searched


def test_folds_are_stratified_and_drawn_from_the_seed():
    labels = np.repeat(np.arange(4), [50, 23, 7, 3])
    fold = stratified_folds(labels, 5, seed=1)
    for c in range(4):
        counts = np.bincount(fold[labels == c], minlength=5)
        assert counts.max() - counts.min() <= 1, c  # each class's share in every fold, to within one image
    assert np.bincount(fold).max() - np.bincount(fold).min() <= 1  # small classes do not pile into fold 0
    assert np.array_equal(fold, stratified_folds(labels, 5, seed=1))
    assert not np.array_equal(fold, stratified_folds(labels, 5, seed=2))


def test_the_logistic_probe_reaches_the_one_optimum():
    """At the returned weights the objective's gradient, recomputed by autograd (not the hand-written one), is
    ~0, and a fit from a random start lands on the same model: the convex problem's one optimum."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 12, generator=gen)
    y = (x[:, :3] @ torch.randn(3, 4, generator=gen) + 0.5 * torch.randn(300, 4, generator=gen)).argmax(1)
    for l2 in (1e-3, 1e-1):
        w, left = fit_logistic(x, y, 4, l2)
        assert left < 1e-5
        v = w.clone().requires_grad_()
        xb = torch.cat([x.double(), torch.ones(300, 1, dtype=torch.float64)], 1)
        (torch.nn.functional.cross_entropy(xb @ v, y) + 0.5 * l2 * v[:-1].square().sum()).backward()
        assert v.grad.abs().max().item() < 1e-5
        other, _ = fit_logistic(x, y, 4, l2, start=torch.randn(13, 4, generator=gen, dtype=torch.float64))
        # the same weights; the biases up to one constant for every class (softmax does not see it, nor the L2)
        assert torch.allclose(w[:-1], other[:-1], atol=1e-3)
        assert torch.allclose(w[-1] - w[-1].mean(), other[-1] - other[-1].mean(), atol=1e-3)


def constructed(n: int, seed: int, informative: int = 4, noise_dims: int = 200, classes: int = 4):
    """Gaussian classes that differ in `informative` dimensions, among `noise_dims` that carry nothing."""
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(classes, informative, generator=torch.Generator().manual_seed(99))
    y = torch.arange(n) % classes
    x = torch.randn(n, informative + noise_dims, generator=gen)
    x[:, :informative] += means[y]
    return x, y


def test_cross_validation_chooses_the_regularisation_a_large_test_set_would():
    """400 images among 200 useless dimensions want a stronger L2 than 4,000 do: in each regime the 5-fold
    choice is the L2 that scores best on 20,000 fresh images (the oracle), inside the grid."""
    l2s = [1e-3, 1e-2, 1e-1, 1.0, 10.0]
    x_oracle, y_oracle = constructed(20000, seed=7)
    chosen = {}
    for n in (400, 4000):
        x, y = constructed(n, seed=n)
        fold = torch.from_numpy(stratified_folds(y.numpy(), 5, seed=0))
        oof = torch.empty(len(l2s), n, dtype=torch.long)
        for f in range(5):
            held, fit = fold == f, fold != f
            oof[:, held] = logistic_predictions(x[fit], y[fit], x[held], 4, l2s)
        cv = (oof == y).double().mean(1).tolist()
        oracle = (logistic_predictions(x, y, x_oracle, 4, l2s) == y_oracle).double().mean(1).tolist()
        chosen[n] = best(cv, grid(l2=l2s))
        assert chosen[n] == best(oracle), (n, cv, oracle)
        assert 0 < chosen[n] < len(l2s) - 1  # inside the grid: no edge
    assert l2s[chosen[400]] > l2s[chosen[4000]]  # the regularisation follows the data, not the grid
    assert Standardise(x)(x).std(0).sub(1).abs().max() < 1e-4


def assert_chosen_is_the_best(summary: dict, readout: str) -> None:
    """`chosen` is the grid point with the highest score (the probe's: cross-validated, `cv_top1`; fine-tuning's:
    validation; ties to the middle of the grid), and the score reported is that point's (readout "finetune":
    the fine-tuning stage's summary)."""
    tuned = readout == "finetune"
    search, chosen = (
        (summary["search"], summary["chosen"]) if tuned else (summary["search"][readout], summary["chosen"][readout])
    )
    score = "val_top1" if tuned else "cv_top1"
    axes = [axis for axis in search if axis != score]
    points = [dict(zip(axes, values)) for values in zip(*(search[axis] for axis in axes))]
    at = best(search[score], points)
    assert chosen == points[at], readout
    assert summary["val_top1" if tuned else f"{readout}_cv_top1"] == search[score][at]


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


def test_the_probe_chooses_every_readout_by_cross_validation_then_reads_test_once(
    random_encoder, monkeypatch, tmp_path
):
    from mae_exp.evaluation import probe
    from mae_exp.plumbing.config import load_params

    monkeypatch.chdir(random_encoder)
    p = load_params("params.yaml")
    spy = Spy(monkeypatch, probe, ["labeled", "train_grid", "knn_votes", "fit_logistic"])
    summary = probe.linear_probe(p, "models/random/encoder.pt", "data/prepared", "random", tmp_path / "live")
    cfg = p.linear_probe
    heads = len(cfg.lr) * len(cfg.weight_decay)
    knn = len(cfg.knn_k) * len(cfg.knn_temperature)
    # train and validation first (one labeled train split, cut into folds); in each fold every head point
    # trained (all points and both poolings in one loop), every kNN point and every L2 scored on the held-out
    # fold; then each chosen setting refitted on every train image; then the test split, once, and only the
    # chosen readouts on it
    assert spy.events.count("labeled:test") == 1
    test_at = spy.events.index("labeled:test")
    before, after = spy.events[:test_at], spy.events[test_at + 1 :]
    assert spy.events[:2] == ["labeled:train", "labeled:val"]
    assert before.count("train_grid") == cfg.folds + 1 == 6 and "train_grid" not in after
    assert before.count("fit_logistic") == cfg.folds * 2 * len(cfg.logreg_l2) + 2 and "fit_logistic" not in after
    assert before.count("knn_votes") == cfg.folds * 2 * knn == 40
    assert after == ["knn_votes", "knn_votes"]  # the chosen kNN of each pooling, on test
    assert [len(summary["search"][f"linear_{pool}"]["cv_top1"]) for pool in ("cls", "mean")] == [heads] * 2 == [4] * 2
    for readout in READOUTS:
        assert_chosen_is_the_best(summary, readout)
        assert 0.0 <= summary[f"{readout}_top1"] <= 1.0
    assert summary["search"]["linear_cls"]["lr"] == [1e-3, 1e-3, 0.1, 0.1]  # tiny.yaml's grid, lr varying slowest
    assert summary["search"]["linear_cls"]["weight_decay"] == [0.0, 5e-4, 0.0, 5e-4]
    assert summary["search"]["knn_mean"]["k"] == [5, 5, 20, 20]
    assert summary["search"]["logreg_cls"]["l2"] == [1e-3, 1.0]
    written = json.loads((tmp_path / "live" / "metrics.json").read_text())
    assert written["chosen"] == summary["chosen"] and written["search"] == summary["search"]
    # the curve DVCLive keeps is the chosen point's out-of-fold top-1 on the validation images, epoch by epoch:
    # its last epoch is the validation top-1 reported
    curve = (tmp_path / "live" / "plots" / "metrics" / "linear_mean_val_top1.tsv").read_text().splitlines()
    assert float(curve[-1].split("\t")[-1]) == pytest.approx(summary["linear_mean_val_top1"], abs=1e-4)


def test_a_probe_larger_than_a_fold_is_refused_before_any_feature(random_encoder, monkeypatch, tmp_path):
    """A folder or STL-10 dataset's sizes are known only at the stage (shapes' are checked with the params)."""
    from mae_exp.evaluation import probe
    from mae_exp.plumbing.config import load_params

    monkeypatch.chdir(random_encoder)
    p = load_params("params.yaml")
    p = p.model_copy(update={"linear_probe": p.linear_probe.model_copy(update={"knn_k": (5, 85)})})
    spy = Spy(monkeypatch, probe, ["extract_features"])
    with pytest.raises(ValueError, match=r"linear_probe.knn_k \(85\) is larger than the 80 images a cross-validation"):
        probe.linear_probe(p, "models/random/encoder.pt", "data/prepared", "random", tmp_path / "live")
    assert spy.events == []


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
        assert summary["search"][f"linear_{pool}"]["cv_top1"][:2] == [None, None]  # 1e30, both weight decays
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
    spy = Spy(monkeypatch, finetune, ["labeled", "_fit", "predict"])
    summary = finetune.finetune(
        p,
        "models/random/encoder.pt",
        "data/prepared",
        "random",
        tmp_path / "live",
        tmp_path / "scratch",
        predictions_path=tmp_path / "predictions.npz",
    )
    saved = np.load(tmp_path / "predictions.npz")  # the chosen model's test predictions give the accuracy reported
    assert round(float((saved["finetune"] == saved["labels"]).mean()), 4) == summary["top1"]
    assert spy.events.count("labeled:test") == 1
    test_at = spy.events.index("labeled:test")
    assert spy.events[:test_at].count("_fit") == 4 and "_fit" not in spy.events[test_at:]
    assert spy.events[test_at + 1 :] == ["predict"]  # the chosen model, once
    assert summary["search"]["base_lr"] == [1e-3, 1e-3, 3e-2, 3e-2]
    assert summary["search"]["layer_decay"] == [0.75, 1.0, 0.75, 1.0]
    assert len(set(summary["search"]["val_top1"])) > 1  # the points differ: a real search
    assert_chosen_is_the_best(summary, "finetune")
    assert json.loads((tmp_path / "live" / "metrics.json").read_text())["chosen"] == summary["chosen"]
    curve = (tmp_path / "live" / "plots" / "metrics" / "val_top1.tsv").read_text().splitlines()
    assert float(curve[-1].split("\t")[-1]) == pytest.approx(summary["val_top1"], abs=1e-4)


def test_an_encoder_with_its_own_fine_tuning_grid_is_fine_tuned_over_it(random_encoder, monkeypatch, tmp_path):
    from mae_exp.evaluation import finetune
    from mae_exp.plumbing.config import load_params, with_overrides

    monkeypatch.chdir(random_encoder)
    p = with_overrides(
        load_params("params.yaml"),
        {"finetune.per_encoder.random.base_lr": [3e-2], "finetune.per_encoder.random.layer_decay": [1.0]},
    )
    summary = finetune.finetune(
        p, "models/random/encoder.pt", "data/prepared", "random", tmp_path / "live", tmp_path / "scratch", test=False
    )
    assert summary["chosen"] == {"base_lr": 3e-2, "layer_decay": 1.0}  # its own, not finetune's 1e-3 x 0.75
    assert summary["search"]["base_lr"] == [3e-2]


@pytest.mark.slow
def test_every_encoder_gets_the_same_search(tmp_path):
    """Two encoders through `dvc repro`: the same grid points evaluated, each its own choice."""
    from conftest import git

    repo = copy_repo(tmp_path / "repo")
    params = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(params.replace("base_lr: [1.0e-3]", "base_lr: [1.0e-3, 3.0e-2]"))
    git("commit", "-qam", "a fine-tuning grid of two points", cwd=repo)
    encoders = ("random", "original")
    dvc("repro", "linear_probe_random", "finetune_random", "linear_probe@original", "finetune@original", cwd=repo)
    probe = {e: json.loads((repo / f"metrics/linear_probe/{e}/metrics.json").read_text()) for e in encoders}
    tuned = {e: json.loads((repo / f"metrics/finetune/{e}/metrics.json").read_text()) for e in encoders}

    def points(search: dict) -> list[tuple]:
        axes = [axis for axis in search if axis not in ("val_top1", "cv_top1")]
        return list(zip(*(search[axis] for axis in axes)))

    for readout in READOUTS:
        assert points(probe["random"]["search"][readout]) == points(probe["original"]["search"][readout])
        for e in encoders:
            assert_chosen_is_the_best(probe[e], readout)
    assert points(tuned["random"]["search"]) == points(tuned["original"]["search"]) == [(1e-3, 0.75), (3e-2, 0.75)]
    for e in encoders:
        assert_chosen_is_the_best(tuned[e], "finetune")
    # the report shows each encoder's choice
    dvc("repro", "report", cwd=repo)
    comparison = json.loads((repo / "metrics/comparison.json").read_text())
    for e in encoders:
        assert comparison["chosen"][e] == {**probe[e]["chosen"], "finetune": tuned[e]["chosen"]}
