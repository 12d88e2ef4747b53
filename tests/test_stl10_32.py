"""configs/stl10_32.yaml: STL-10 at 32 px with the default's model and training settings, end to end through
the real stl10 path (benchmarks/make_stl10.py's archive, the download stage, every stage) in a scratch repo."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import REPO, copy_repo, dvc, run
from mae_exp.data.prepared import load_meta


def test_stl10_32_is_the_default_but_for_the_data_and_the_pretraining_epochs():
    default = yaml.safe_load((REPO / "params.yaml").read_text())
    stl = yaml.safe_load((REPO / "configs" / "stl10_32.yaml").read_text())
    assert stl["data"]["source"] == "stl10" and stl["data"]["image_size"] == stl["data"]["input_size"] == 32
    assert stl["data"]["verify_md5"] is True  # the real archive; a generated one needs the switch
    assert stl["pretrain"].pop("epochs") == 2 and default["pretrain"].pop("epochs") == 4
    for section in default:
        if section not in ("data", "study"):  # the study section is each config's own design (docs/study.md)
            assert stl[section] == default[section], section


@pytest.mark.slow
def test_stl10_32_runs_end_to_end_on_a_generated_archive(tmp_path):
    repo = copy_repo(tmp_path / "repo", config="configs/stl10_32.yaml")
    sizes = {"unlabeled": 24, "train": 100, "test": 20}  # train: 10 per class, so validation has every class
    run(["python", "benchmarks/make_stl10.py", "--root", "data/raw", *(f"--{k}={n}" for k, n in sizes.items())], repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["verify_md5"] = False  # a generated archive is not the real one
    # only the budget shrinks, to seconds: the data path, the model and every stage are the config's
    params["pretrain"]["batch_size"] = 31  # 4 steps an epoch over 124 images; the config's 2 epochs
    params["finetune"].update(epochs=1, batch_size=18)
    params["linear_probe"].update(epochs=2, batch_size=18, knn_k=[5, 20])  # <= the 80 images a 5-fold fit sees
    params["visualize"]["eval_images"] = 10
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc("repro", cwd=repo, timeout=3000)  # a minute or two on an idle 2-core CPU
    meta = load_meta(repo / "data" / "prepared")
    assert meta["source"] == "stl10" and meta["image_size"] == 32 and meta["sizes"] == sizes
    pre = json.loads((repo / "metrics" / "pretrain" / "improved" / "metrics.json").read_text())
    assert pre["images"] == 124 and pre["steps"] == 8 and pre["flops"] > 0
    comparison = json.loads((repo / "metrics" / "comparison.json").read_text())
    assert {"random", "original", "improved", "improved_minus_original"} <= set(comparison)
    for encoder in ("random", "original", "improved"):
        top1 = json.loads((repo / "metrics" / "finetune" / encoder / "metrics.json").read_text())["top1"]
        assert 0.0 <= top1 <= 1.0
