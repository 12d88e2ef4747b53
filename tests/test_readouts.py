"""The readouts of a frozen encoder: weighted kNN against numbers worked out by hand, and the probe stage
writing every readout (linear and kNN, class token and mean-pooled) where `dvc metrics show` finds it."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import copy_repo, dvc
from mae_exp.measures import MEASURES, READOUTS
from mae_exp.probe import knn_votes

# four training features in 2-D; the query (1, 0) has cosine similarity 1, 0, 0.6, -1 to them
TRAIN_X = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]])
TRAIN_Y = torch.tensor([0, 1, 1, 2])


def test_knn_votes_are_exp_of_similarity_over_temperature_summed_per_class():
    # k = 3 keeps similarities 1 (class 0), 0.6 and 0 (class 1); T = 0.5: class 0 gets e^2 = 7.389,
    # class 1 gets e^1.2 + e^0 = 3.320 + 1 = 4.320, class 2 (similarity -1, not among the 3) nothing
    votes = knn_votes(TRAIN_X, TRAIN_Y, torch.tensor([[1.0, 0.0]]), 3, k=3, temperature=0.5)
    assert votes[0].tolist() == pytest.approx([math.e ** 2, math.e ** 1.2 + 1.0, 0.0], rel=1e-5)
    assert votes.argmax(1).item() == 0  # the closest neighbour outweighs the two-to-one majority
    # T = 2 flattens the weights: e^0.5 = 1.649 against e^0.3 + 1 = 2.350, the majority wins
    votes = knn_votes(TRAIN_X, TRAIN_Y, torch.tensor([[1.0, 0.0]]), 3, k=3, temperature=2.0)
    assert votes[0].tolist() == pytest.approx([math.e ** 0.5, math.e ** 0.3 + 1.0, 0.0], rel=1e-5)
    assert votes.argmax(1).item() == 1


def test_knn_uses_cosine_similarity_and_at_most_every_training_feature():
    queries = torch.tensor([[5.0, 0.0], [0.8, 0.6]])  # length does not matter, only direction
    votes = knn_votes(TRAIN_X, TRAIN_Y, queries, 3, k=2, temperature=0.07)
    # (0.8, 0.6): similarities 0.8 (class 0), 0.6 and 0.96 (class 1), -0.8; k = 2 keeps 0.96 and 0.8
    assert votes[1].tolist() == pytest.approx([math.exp(0.8 / 0.07), math.exp(0.96 / 0.07), 0.0], rel=1e-4)
    assert votes.argmax(1).tolist() == [0, 1]
    everyone = knn_votes(TRAIN_X, TRAIN_Y, queries[:1], 3, k=20, temperature=1.0)  # k > 4 training features
    assert everyone[0].tolist() == pytest.approx([math.e, 1.0 + math.e ** 0.6, math.e ** -1], rel=1e-5)
    chunked = knn_votes(TRAIN_X, TRAIN_Y, queries, 3, k=2, temperature=0.07, chunk=1)
    assert torch.equal(chunked, votes)


def test_the_probe_stage_writes_every_readout_where_dvc_metrics_show_finds_it(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    out = dvc("repro", "linear_probe@random", cwd=repo)
    assert "linear probe random: class token and mean-pooled patches, linear heads and kNN (k 20, T 0.07)" in (
        out.stdout + out.stderr)
    path = "metrics/linear_probe_random/metrics.json"
    written = json.loads((repo / path).read_text())
    keys = [f"{r}_{split}top1" for r in READOUTS for split in ("", "val_")]
    for key in keys:
        assert 0.0 <= written[key] <= 1.0, key
    assert (written["knn_k"], written["knn_temperature"], written["test_images"]) == (20, 0.07, 100)
    for pooling in ("cls", "mean"):  # a curve per head, per epoch (3 in the tiny config)
        tsv = (repo / "metrics/linear_probe_random/plots/metrics" / f"linear_{pooling}_val_top1.tsv").read_text()
        assert len(tsv.splitlines()) == 1 + 3
    shown = json.loads(dvc("metrics", "show", "--json", cwd=repo).stdout)
    data = next(iter(shown.values()))["data"][path]["data"]
    assert {k: data[k] for k in keys} == {k: written[k] for k in keys}
    # the registry reads the same keys (what the report and the study show)
    assert {m.key for m in MEASURES.values() if m.file("x").startswith("metrics/linear_probe_")} == set(keys)
