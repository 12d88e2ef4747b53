"""Readout settings chosen at an edge of their grid: the rule (measures.grid_edges) with concrete grids, and the
comparison report's marks, count and JSON from real metrics files in the stages' layout. The study's counts
over experiments are in tests/test_study.py."""

from __future__ import annotations

import json

from conftest import REPO
from mae_exp.evaluation.measures import grid_edges, searched
from mae_exp.evaluation.report import report
from mae_exp.plumbing.config import load_params

# the probe's `search` of one BN + linear readout as it writes it: lr x weight decay, the value at every point
LINEAR = {
    "lr": [0.03, 0.03, 0.1, 0.1, 0.3, 0.3, 1.0, 1.0],
    "weight_decay": [0.0, 5e-4] * 4,
    "cv_top1": [0.30, 0.29, 0.33, 0.32, 0.35, 0.34, 0.36, 0.35],
}
KNN = {"k": [10] * 3 + [20] * 3 + [50] * 3, "temperature": [0.03, 0.07, 0.2] * 3, "cv_top1": [0.2] * 9}
FINETUNE_GRID = {"base_lr": [1e-3, 8e-3], "layer_decay": [0.75, 0.75], "val_top1": [0.5, 0.4]}
ONE_POINT = {"base_lr": [8e-3], "layer_decay": [0.75], "val_top1": [0.6]}


def test_a_choice_at_either_end_of_its_grid_is_an_edge_and_one_inside_is_not():
    assert grid_edges(LINEAR, {"lr": 1.0, "weight_decay": 0.0}) == {"lr": "highest"}
    assert grid_edges(LINEAR, {"lr": 0.03, "weight_decay": 0.0}) == {"lr": "lowest"}
    assert grid_edges(LINEAR, {"lr": 0.1, "weight_decay": 0.0}) == {}
    assert grid_edges(KNN, {"k": 10, "temperature": 0.2}) == {"k": "lowest", "temperature": "highest"}


def test_no_weight_decay_is_a_natural_bound_not_an_edge():
    assert grid_edges(LINEAR, {"lr": 0.3, "weight_decay": 0.0}) == {}
    assert grid_edges(LINEAR, {"lr": 0.3, "weight_decay": 5e-4}) == {"weight_decay": "highest"}


def test_a_one_point_grid_was_not_searched_and_has_no_edge():
    setting = {"base_lr": 8e-3, "layer_decay": 0.75}
    assert grid_edges(ONE_POINT, setting) == {} and not searched(ONE_POINT, setting)
    assert searched(FINETUNE_GRID, setting) and grid_edges(FINETUNE_GRID, setting) == {"base_lr": "highest"}


def write_metrics(metrics_dir, encoder: str, probe_chosen: dict, finetune_chosen: dict, finetune_grid: dict) -> None:
    """An encoder's probe and fine-tuning metrics.json as the stages write them (`chosen`, `search`)."""
    probe = metrics_dir / "linear_probe" / encoder / "metrics.json"
    probe.parent.mkdir(parents=True)
    probe.write_text(
        json.dumps({"linear_cls_top1": 0.4, "chosen": probe_chosen, "search": {"linear_cls": LINEAR, "knn_cls": KNN}})
    )
    finetune = metrics_dir / "finetune" / encoder / "metrics.json"
    finetune.parent.mkdir(parents=True)
    finetune.write_text(json.dumps({"top1": 0.6, "chosen": finetune_chosen, "search": finetune_grid}))


def test_the_comparison_marks_counts_and_saves_every_setting_at_an_edge(tmp_path, capsys):
    metrics = tmp_path / "metrics"
    inside = {"linear_cls": {"lr": 0.1, "weight_decay": 0.0}, "knn_cls": {"k": 20, "temperature": 0.07}}
    ft = {"base_lr": 8e-3, "layer_decay": 0.75}
    write_metrics(metrics, "random", inside, ft, ONE_POINT)
    at_edge = {"linear_cls": {"lr": 1.0, "weight_decay": 0.0}, "knn_cls": {"k": 20, "temperature": 0.07}}
    write_metrics(metrics, "original", at_edge, {"base_lr": 1e-3, "layer_decay": 0.75}, FINETUNE_GRID)
    write_metrics(metrics, "improved", inside, ft, ONE_POINT)
    report(
        load_params(REPO / "params.yaml"),
        metrics,
        tmp_path / "comparison.json",
        tmp_path / "comparison.png",
        tmp_path / "curves",
    )

    saved = json.loads((tmp_path / "comparison.json").read_text())
    assert saved["edges"] == {"original": {"linear_cls": {"lr": "highest"}, "finetune": {"base_lr": "lowest"}}}
    # 3 encoders x 2 probe readouts + the original's fine-tuning; the others' one-point grids are no search
    assert saved["settings_at_edge"] == {"count": 2, "of": 7}
    assert saved["chosen"]["original"]["linear_cls"] == {"lr": 1.0, "weight_decay": 0.0}
    printed = " ".join(capsys.readouterr().err.split())
    assert "Readout settings chosen by cross-validation (probe) and on validation (fine-tuning)" in printed
    assert "lr 1 ↑edge, weight_decay 0 " in printed and "base_lr 0.001 ↓edge" in printed
    assert printed.count("↑edge") == 2  # the original's lr, and the caption: the interior settings are unmarked
    assert "2 of 7 chosen settings sit at an edge of their grid (2 from a one-point grid, not searched" in printed
