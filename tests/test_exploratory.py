"""The exploratory row (study/exploratory.py): a recipe's runs read against the study's curves, on constructed
runs with known answers, and `collect` then `report` on real files."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO
from mae_exp.plumbing.config import parse_params
from mae_exp.study import StudyError
from mae_exp.study.exploratory import (
    at_flops,
    collect,
    comparison,
    curve_points,
    recipe_values,
    rests_on,
    save_figure,
)
from mae_exp.study.metrics import METRICS

TINY = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())


def study_runs() -> pd.DataFrame:
    """configs/tiny.yaml's design at 2 seeds: the original 1e13 FLOPs (x1.1036 the steps: 1.1036e13), the
    improved 1.2e13; every readout of the original = 0.40 + 0.1 x log10(FLOPs / 1e13), the improved 0.50."""
    rows = []
    for seed in (1, 2):
        for ablation in ("all", "original_flops_matched", "curriculum_only"):
            flops = 1.1036e13 if ablation == "original_flops_matched" else 1e13
            row = {"seed": seed, "ablation": ablation, "flops_original": flops, "flops_improved": 1.2e13}
            for metric in METRICS:
                row[f"{metric}_original"] = 0.40 + 0.1 * math.log10(flops / 1e13) + 0.01 * seed
                row[f"{metric}_improved"] = 0.50 + (0.2 if ablation == "curriculum_only" else 0.0)
            rows.append(row)
    return pd.DataFrame(rows)


def test_curve_points_take_the_plain_run_and_the_arm_that_only_stretches_it():
    p = parse_params(TINY)
    points = curve_points(study_runs(), p, "original", 3)
    assert sorted(points[points["seed"] == 1]["flops"]) == [1e13, 1.1036e13]  # curriculum_only's is the plain one
    assert points[points["plain"]]["flops"].tolist() == [1e13, 1e13]
    improved = curve_points(study_runs(), p, "improved", 3)
    # curriculum_only changes the improved recipe: not a point of its curve
    assert improved["logreg_cls_top1"].tolist() == [0.5, 0.5]


def test_equal_flops_interpolates_in_log_flops_and_never_extrapolates():
    points = curve_points(study_runs(), parse_params(TINY), "original", 3)
    mid = math.sqrt(1e13 * 1.1036e13)  # halfway in log FLOPs
    expected = 0.40 + 0.1 * math.log10(mid / 1e13) + 0.01
    assert at_flops(points, 1, "logreg_cls_top1", mid) == pytest.approx(expected)
    assert math.isnan(at_flops(points, 1, "logreg_cls_top1", 1.2e13))  # beyond the longer original
    assert math.isnan(at_flops(points, 3, "logreg_cls_top1", mid))  # a seed the study lacks


def test_comparison_pairs_seeds_and_reads_both_recipes():
    values = pd.DataFrame(
        {"seed": [1, 2, 3], "flops": [1.05e13] * 3, **{m: [0.45, 0.47, 0.49] for m in METRICS}}
    ).set_index("seed")
    p = parse_params(TINY)
    curves = {name: curve_points(study_runs(), p, name, 3) for name in ("original", "improved")}
    table = comparison(values, curves).set_index("metric")
    row = table.loc["logreg_cls_top1"]
    assert row["n"] == 3 and row["mean"] == pytest.approx(0.47)
    assert row["original_n"] == 2  # seed 3 has no study run
    assert row["minus_original_steps"] == pytest.approx(np.mean([0.45 - 0.41, 0.47 - 0.42]))
    on_curve = [0.40 + 0.1 * math.log10(1.05) + 0.01 * s for s in (1, 2)]
    assert row["minus_original_flops"] == pytest.approx(np.mean([0.45 - on_curve[0], 0.47 - on_curve[1]]))
    assert row["minus_improved_steps"] == pytest.approx(np.mean([0.45 - 0.5, 0.47 - 0.5]))
    # 1.05e13 is below the improved recipe's only point: no equal-FLOPs reading, said as such
    assert math.isnan(row["minus_improved_flops"]) and row["minus_improved_flops_n"] == 0


def test_collect_copies_finished_runs_and_refuses_unfinished_ones(tmp_path):
    ws = tmp_path / "ws"
    params = dict(TINY, seed=7, recipes=["smae"])
    ws.mkdir()
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(StudyError, match="no metrics of pretrain, linear_probe, finetune for smae"):
        collect("smae", [ws], tmp_path / "out")
    for stage, value in (("pretrain", {"flops": 2e13}), ("linear_probe", {"logreg_cls_top1": 0.3}), ("finetune", {})):
        (ws / "metrics" / stage / "smae").mkdir(parents=True)
        (ws / "metrics" / stage / "smae" / "metrics.json").write_text(json.dumps(value))
    with pytest.raises(StudyError, match="do not hold 'original'"):
        collect("original", [ws], tmp_path / "out")
    (written,) = collect("smae", [ws], tmp_path / "out")
    assert written == tmp_path / "out" / "s7"
    values = recipe_values("smae", tmp_path / "out")
    assert values.loc[7, "logreg_cls_top1"] == 0.3 and values.loc[7, "flops"] == 2e13
    assert math.isnan(values.loc[7, "ft_top1"])  # a key the run's file lacks
    said = "\n".join(rests_on("smae", tmp_path / "out", parse_params(TINY)))
    assert "smae's loss saw labels" in said and '"min_block": ' in said


def test_the_figure_draws_every_readout_the_recipe_has(tmp_path):
    from PIL import Image

    values = pd.DataFrame({"seed": [1, 2], "flops": [1.05e13] * 2, **{m: [0.45, 0.47] for m in METRICS}}).set_index(
        "seed"
    )
    values["ft_top1"] = math.nan  # a readout the recipe's runs lack: no panel
    p = parse_params(TINY)
    curves = {name: curve_points(study_runs(), p, name, 3) for name in ("original", "improved")}
    path = save_figure("smae", values, curves, tmp_path)
    width, height = Image.open(path).size
    panels = len(METRICS) - 1
    assert (width, height) == pytest.approx((110 * 3.2 * min(4, panels), 110 * 2.8 * -(-panels // 4)), abs=2)
