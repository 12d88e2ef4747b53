"""What a user meets first: the progress bar's estimate, the reconstruction grid's choice of images, the
report's units, and every stage's start-up line saying how many CPU threads it uses."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml
from rich.progress import Progress

from conftest import copy_repo, dvc, run, stage_cmd
from mae_exp.evaluation.measures import MEASURES, READOUTS
from mae_exp.evaluation.report import ahead, print_table, summary
from mae_exp.evaluation.visualize import grid_indices
from mae_exp.plumbing.progress import EtaColumn


def test_the_eta_comes_from_the_first_steps_not_a_sliding_window():
    bar = Progress(EtaColumn())
    task_id = bar.add_task("pretrain", total=100, completed=40, offset=40)  # a run resumed at step 40
    task = bar.tasks[0]
    assert str(EtaColumn().render(task)) == "eta -:--:--"  # nothing done since the start yet
    bar.update(task_id, completed=50)
    task._get_time = lambda: task.start_time + 20.0  # 10 steps in 20 s -> 50 steps left take 100 s
    assert str(EtaColumn().render(task)) == "eta 0:01:40"


def test_the_reconstruction_grid_takes_every_class_in_turn():
    labels = np.repeat(np.arange(10), 50)  # a folder dataset's test split: sorted by class
    picked = grid_indices(labels, 8, seed=0)
    assert len(set(labels[picked])) == 8  # eight images, eight classes (the first 8 would all be class 0)
    assert picked == grid_indices(labels, 8, seed=0)  # fixed by the seed
    assert picked != grid_indices(labels, 8, seed=1)
    many = grid_indices(labels, 25, seed=0)
    assert len(set(many)) == 25 and np.bincount(labels[many]).max() == 3  # round robin over classes


HELD = {"original": (), "improved": ("freq", "unif")}  # each recipe's weighted terms, as the report reads them


def report_table(**values) -> pd.DataFrame:
    """A report table (random, original, improved) with every registry column; `values` override columns."""
    table = pd.DataFrame(
        {col: [np.nan if m.pretrained_only else 0.1, 0.4, 0.41] for col, m in MEASURES.items()},
        index=["random", "original", "improved"],
    )
    for col, v in values.items():
        table[col] = v
    return table


def test_the_report_compares_like_with_like_in_readable_units(capsys):
    table = report_table(
        linear_mean_top1=[0.15, 0.42, 0.45],
        pretrain_wall_s=[np.nan, 750.2, 761.87],
        pretrain_images_per_s=[np.nan, 381.24, 377.9],
        pretrain_flops=[np.nan, 1.25e13, 1.4e13],
    )
    delta = table.loc["improved"] - table.loc["original"]
    print_table(table, {"improved": delta}, "original", HELD)
    out = capsys.readouterr().err
    assert "42.0%" in out and "+3.0 pp" in out  # accuracy in percent, differences in percentage points
    assert "750" in out and "750.2000" not in out and "381" in out and "381.2400" not in out
    assert "1.25e+13" in out and "1.4e+13" in out  # FLOPs beside wall time, readable
    assert "masked MSE" in out and "loss" not in out  # the term every recipe minimises, not their totals
    for readout in READOUTS.values():
        assert f"{readout} top-1 (test)" in out and f"{readout} top-1 (validation)" in out


def test_a_win_on_its_own_objective_is_labelled_and_not_counted(capsys):
    # improved ahead on masked MSE and on HF error (lower is better) only, behind on everything else
    table = report_table(
        mse=[np.nan, 0.31, 0.30],
        hf_error=[np.nan, 0.09, 0.08],
        psnr=[np.nan, 20.5, 20.4],
        **{col: [0.1, 0.5, 0.45] for col, m in MEASURES.items() if m.study and m.unit == "pp"},
    )
    delta = table.loc["improved"] - table.loc["original"]
    wins, compared = ahead(delta)
    assert wins == [] and "mse" not in compared and "hf_error" not in compared
    assert compared == [f"{r}_top1" for r in READOUTS] + ["ft_top1", "psnr"]
    print_table(table, {"improved": delta}, "original", HELD)
    lines = capsys.readouterr().err.splitlines()
    rows = {line.split("│")[1].strip(): line for line in lines if line.count("│") > 2}  # label -> its row
    assert "own objective: improved's" in rows["masked HF error (test)"]
    assert "own objective: every recipe's (original: all of it)" in rows["masked MSE (test)"]
    assert "none" in rows["masked PSNR (test)"] and "own objective" not in rows["masked PSNR (test)"]
    text = summary("improved", "original", wins, compared)
    assert text.startswith("improved is ahead of original on 0 of 8 test-set measures that no recipe trains on")
    assert text.endswith("own-objective rows left out: masked MSE (test), masked HF error (test)")
    wins, compared = ahead(report_table().loc["improved"] - report_table().loc["original"])
    assert len(wins) == len(compared) == 8  # 0.41 against 0.4 everywhere: ahead on every counted measure


@pytest.mark.slow
def test_every_stage_says_how_many_threads_it_uses(tmp_path):
    repo = copy_repo(tmp_path / "repo", cache="own")  # each stage must run, not be restored, to say it
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["threads"] = 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = dvc("repro", "linear_probe_random", cwd=repo)
    text = out.stdout + out.stderr
    assert "download: data.source shapes, 1 CPU thread" in text
    assert (
        "linear probe random: class token and mean-pooled patches, logistic probes (2 L2 strengths), BN + linear "
        "heads (4 settings of lr x weight decay) and kNN (4 of k x T), each chosen by 5-fold cross-validation on "
        "the labeled train split, cpu, 1 CPU thread"
    ) in text
    run(stage_cmd("recipe_needs@original"), repo)  # what pretrain@original reads (nothing, for the mae recipe)
    proc = run(stage_cmd("pretrain@original"), repo)
    assert "lr 1.88e-04, cpu, 1 CPU thread\n" in proc.stdout + proc.stderr
    proc = run(stage_cmd("finetune_random"), repo)
    assert "1 epochs of 4 steps, lr 7.81e-05, cpu, 1 CPU thread\n" in proc.stdout + proc.stderr
