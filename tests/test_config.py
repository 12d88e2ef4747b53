"""Params validation: in-process for every rule, and through a real stage for exit code and no work."""

import copy

import pytest
import yaml

from mae_exp.config import ConfigError, load_params, parse_params
from conftest import REPO, dvc, run

RAW = yaml.safe_load((REPO / "params.yaml").read_text())


def with_change(path: str, value):
    raw = copy.deepcopy(RAW)
    *parents, leaf = path.split(".")
    node = raw
    for key in parents:
        node = node[key]
    if value is DELETE:
        del node[leaf]
    else:
        node[leaf] = value
    return raw


DELETE = object()


def test_the_shipped_params_and_configs_are_valid():
    for path in [REPO / "params.yaml", *sorted((REPO / "configs").glob("*.yaml"))]:
        load_params(path)


@pytest.mark.parametrize("path, value, words", [
    ("pretrain.epoch", 3, ["unknown key", "pretrain.epoch"]),
    ("pretrain.epochs", DELETE, ["missing key", "pretrain.epochs"]),
    ("pretrain.epochs", "ten", ["pretrain.epochs", "integer", "'ten'"]),
    ("pretrain.epochs", 2.5, ["pretrain.epochs", "integer"]),
    ("model.norm_pix_loss", "yes", ["model.norm_pix_loss", "true or false"]),
    ("improved.mask_ratio", 1.0, ["improved.mask_ratio", "between 0 and 1"]),
    ("original.mask_ratio", 0, ["original.mask_ratio", "between 0 and 1"]),
    ("improved.mask_ratio_start", -0.1, ["improved.mask_ratio_start"]),
    ("model.patch_size", 5, ["model.patch_size", "must divide data.input_size"]),
    ("data.source", "imagenet", ["data.source", "shapes", "stl10", "folder"]),
    ("improved.lambda_freq", -1, ["improved.lambda_freq", ">= 0"]),
    ("model.encoder_heads", 5, ["model.encoder_heads", "divide model.encoder_dim"]),
    ("pretrain.precision", "fp8", ["pretrain.precision"]),
    ("visualize.mask_ratio", 1.5, ["visualize.mask_ratio"]),
    ("data.pretrain_splits", ["unlabeled", "test"], ["data.pretrain_splits", "never test"]),
    ("data.pretrain_splits", ["train", "train"], ["data.pretrain_splits", "at most once"]),
    ("data.pretrain_splits", [], ["data.pretrain_splits", "non-empty list"]),
    ("data.pretrain_splits", "train", ["data.pretrain_splits", "list"]),
    ("data.val_fraction", 0, ["data.val_fraction", "(0, 0.5]"]),
    ("data.val_fraction", 0.6, ["data.val_fraction", "(0, 0.5]"]),
    ("data.verify_md5", "no", ["data.verify_md5", "true or false"]),
    ("data.verify_md5", DELETE, ["missing key", "data.verify_md5"]),
])
def test_bad_values_name_the_key(path, value, words):
    with pytest.raises(ConfigError) as err:
        parse_params(with_change(path, value))
    for word in words:
        assert word in str(err.value)


def test_floats_accept_yaml_exponent_without_dot_and_integers():
    p = parse_params(with_change("pretrain.base_lr", "1e-4"))
    assert p.pretrain.base_lr == 1e-4
    assert parse_params(with_change("improved.lambda_freq", 1)).improved.lambda_freq == 1.0


def test_a_bad_param_stops_the_stage_before_any_work(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["improved"]["mask_ratio"] = 1.2
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    proc = dvc("repro", cwd=repo, check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "improved.mask_ratio" in out and "between 0 and 1" in out
    assert "Traceback" not in out
    assert not (repo / "data" / "prepared").exists()  # the first stage did nothing


def test_stage_script_exit_code_and_message(repo):
    (repo / "params.yaml").write_text((repo / "params.yaml").read_text().replace("patch_size: 4", "patch_size: 3"))
    proc = run(["python", "stages/pretrain.py", "original"], repo, check=False)
    assert proc.returncode == 2
    assert "model.patch_size" in proc.stderr and "input_size" in proc.stderr
    proc = run(["python", "stages/pretrain.py", "better"], repo, check=False)
    assert proc.returncode == 2 and "original, improved" in proc.stderr
