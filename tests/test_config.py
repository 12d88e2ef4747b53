"""Params validation: in-process for every rule, and through a real stage for exit code and no work."""

import copy

import pytest
import yaml
from pydantic import ValidationError

from conftest import REPO, copy_repo, dvc, run, stage_cmd
from mae_exp.plumbing.config import (
    ConfigError,
    ModelConfig,
    as_dict,
    fingerprint,
    load_params,
    parse_params,
)
from mae_exp.recipes import build, check_all
from mae_exp.study.design import arm_params, check_design

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


@pytest.mark.parametrize(
    "path, value, words",
    [
        ("pretrain.epoch", 3, ["unknown key 'pretrain.epoch'", "valid keys here", "epochs"]),
        ("pretrain.threads", 0, ["unknown key 'pretrain.threads'"]),  # moved to the top level
        ("pretrain.epochs", DELETE, ["missing key 'pretrain.epochs'"]),
        ("threads", DELETE, ["missing key 'threads'"]),
        ("data.shapes", None, ["data.shapes", "mapping", "None"]),
        ("pretrain.epochs", "ten", ["pretrain.epochs", "integer", "'ten' (str)"]),
        ("pretrain.epochs", 2.5, ["pretrain.epochs", "integer", "2.5"]),
        ("pretrain.epochs", True, ["pretrain.epochs", "integer", "True (bool)"]),
        ("pretrain.base_lr", "fast", ["pretrain.base_lr", "number", "'fast'"]),
        ("improved.lambda_freq", False, ["improved.lambda_freq", "number", "False (bool)"]),
        ("model.norm_pix_loss", "yes", ["model.norm_pix_loss", "true or false", "'yes'"]),
        ("model.norm_pix_loss", 1, ["model.norm_pix_loss", "true or false"]),
        ("improved.mask_ratio", 1.0, ["improved.mask_ratio", "less than 1", "1.0"]),
        ("original.mask_ratio", 0, ["original.mask_ratio", "greater than 0", "got 0"]),
        ("improved.mask_ratio_start", -0.1, ["improved.mask_ratio_start", "-0.1"]),
        ("improved.curriculum_fraction", 1.5, ["improved.curriculum_fraction", "less than or equal to 1"]),
        ("model.patch_size", 5, ["model.patch_size (5) must divide data.input_size (32)", "such as 2, 4, 8, 16"]),
        ("data.source", "imagenet", ["data.source", "shapes", "stl10", "folder", "'imagenet'"]),
        ("data.root", " ", ["data.root", "directory"]),
        ("data.image_size", 4, ["data.image_size", "greater than or equal to 8"]),
        ("data.shapes.train", 0, ["data.shapes.train", "greater than or equal to 1"]),
        ("improved.lambda_freq", -1, ["improved.lambda_freq", "greater than or equal to 0", "-1"]),
        ("model.encoder_heads", 5, ["model.encoder_heads (5) must divide encoder_dim (128)"]),
        ("model.decoder_dim", 66, ["model.decoder_dim", "multiple of 4", "66"]),
        ("model.encoder_depth", 0, ["model.encoder_depth", "greater than or equal to 1"]),
        ("model.mlp_ratio", 0, ["model.mlp_ratio", "greater than 0"]),
        ("pretrain.precision", "fp8", ["pretrain.precision", "'auto', 'fp32', 'bf16' or 'fp16'", "'fp8'"]),
        ("pretrain.batch_size", 1, ["pretrain.batch_size", "greater than or equal to 2"]),
        ("pretrain.warmup_epochs", 99.0, ["pretrain.warmup_epochs (99.0) must not exceed epochs"]),
        ("pretrain.processes", 3, ["the global batch) must be divisible by processes (3)", "pretrain.batch_size ("]),
        ("pretrain.min_crop_scale", 0, ["pretrain.min_crop_scale", "greater than 0"]),
        ("pretrain.checkpoint_every", 0, ["pretrain.checkpoint_every", "greater than or equal to 1"]),
        ("pretrain.init_from", " ", ["pretrain.init_from must be null (from scratch) or a path"]),
        ("pretrain.init_from", 3, ["pretrain.init_from", "string", "3"]),
        ("linear_probe.lr", [0.1, 0], ["linear_probe.lr[1]", "greater than 0"]),
        ("visualize.mask_ratio", 1.5, ["visualize.mask_ratio", "less than 1", "1.5"]),
        ("visualize.eval_images", 0, ["visualize.eval_images", "greater than or equal to 1"]),
        # the keys of the new schema
        ("threads", -1, ["threads", "greater than or equal to 0", "-1"]),
        ("threads", 1.5, ["threads", "integer", "1.5"]),
        ("data.verify_md5", "no", ["data.verify_md5", "true or false", "'no'"]),
        ("data.pretrain_splits", [], ["data.pretrain_splits", "must not be empty"]),
        ("data.pretrain_splits", "train", ["data.pretrain_splits", "must be a list", "'train'"]),
        (
            "data.pretrain_splits",
            ["unlabeled", "test"],
            ["data.pretrain_splits[1]", "'unlabeled' or 'train'", "'test'"],
        ),
        ("data.pretrain_splits", ["train", "train"], ["data.pretrain_splits", "must not repeat", "'train', 'train'"]),
        ("data.val_fraction", 0, ["data.val_fraction", "greater than 0"]),
        ("data.val_fraction", 0.6, ["data.val_fraction", "less than or equal to 0.5", "0.6"]),
        ("linear_probe.pooling", "mean", ["unknown key 'linear_probe.pooling'"]),  # both are always read now
        ("linear_probe.knn_k", [0], ["linear_probe.knn_k[0]", "greater than or equal to 1"]),
        ("linear_probe.knn_k", [10, 2.5], ["linear_probe.knn_k[1]", "integer", "2.5"]),
        ("linear_probe.knn_temperature", [0], ["linear_probe.knn_temperature[0]", "greater than 0"]),
        ("linear_probe.knn_temperature", DELETE, ["missing key 'linear_probe.knn_temperature'"]),
        # the readouts' grids (searched on validation for every encoder): non-empty lists, no repeats, in range
        ("linear_probe.lr", 0.1, ["linear_probe.lr", "must be a list", "0.1"]),
        ("linear_probe.lr", [], ["linear_probe.lr", "must not be empty"]),
        ("linear_probe.lr", [0.1, 0.3, 0.1], ["linear_probe.lr", "must not repeat", "0.1, 0.3, 0.1"]),
        ("linear_probe.weight_decay", [0.0, -1e-4], ["linear_probe.weight_decay[1]", "greater than or equal to 0"]),
        ("linear_probe.weight_decay", [], ["linear_probe.weight_decay", "must not be empty"]),
        ("linear_probe.knn_k", [20, 20], ["linear_probe.knn_k", "must not repeat"]),
        ("linear_probe.knn_temperature", 0.07, ["linear_probe.knn_temperature", "must be a list"]),
        ("finetune.base_lr", 8e-3, ["finetune.base_lr", "must be a list"]),
        ("finetune.base_lr", [8e-3, 0], ["finetune.base_lr[1]", "greater than 0"]),
        ("finetune.base_lr", [], ["finetune.base_lr", "must not be empty"]),
        ("finetune.layer_decay", [0.75, 0.75], ["finetune.layer_decay", "must not repeat"]),
        ("finetune.layer_decay", [0], ["finetune.layer_decay[0]", "greater than 0"]),
        ("finetune.layer_decay", [0.75, 1.5], ["finetune.layer_decay[1]", "less than or equal to 1"]),
        (
            "study.overrides",
            {"finetune.base_lr": [4e-3, -1]},
            ["study.overrides", "finetune.base_lr[1]", "greater than 0"],
        ),
        ("finetune.drop_path", 1.0, ["finetune.drop_path", "less than 1"]),
        ("finetune.drop_path", -0.1, ["finetune.drop_path", "greater than or equal to 0"]),
        ("finetune.label_smoothing", 1, ["finetune.label_smoothing", "less than 1"]),
        ("finetune.checkpoint_every", 0, ["finetune.checkpoint_every", "greater than or equal to 1"]),
        ("finetune.checkpoint_every", DELETE, ["missing key 'finetune.checkpoint_every'"]),
        ("finetune.threads", 0, ["unknown key 'finetune.threads'", "layer_decay"]),
        ("finetune.processes", 3, ["the global batch) must be divisible by processes (3)", "finetune.batch_size ("]),
        ("finetune.warmup_epochs", 99.0, ["finetune.warmup_epochs (99.0) must not exceed epochs"]),
        # no infinite or NaN float anywhere (issue 22: `.inf` overflowed, or trained a diverged probe), seeds in range
        ("model.mlp_ratio", float("inf"), ["model.mlp_ratio", "finite number", "inf"]),
        ("linear_probe.lr", [float("inf")], ["linear_probe.lr[0]", "finite number"]),
        ("pretrain.base_lr", float("nan"), ["pretrain.base_lr", "finite number"]),
        ("finetune.warmup_epochs", float("inf"), ["finetune.warmup_epochs", "finite number"]),
        ("data.val_fraction", float("nan"), ["data.val_fraction", "finite number"]),
        (
            "study.ablations",
            {"all": None, "x": {"improved.lambda_freq": float("inf")}},
            ["study.ablations.x", "finite number"],
        ),
        ("seed", 2**63, ["seed", "less than or equal to 4294967295"]),
        ("seed", -1, ["seed", "greater than or equal to 0"]),
        ("visualize.mask_seed", 2**64, ["visualize.mask_seed", "less than or equal to 4294967295"]),
        ("study.seeds", [42, 2**63], ["study.seeds[1]", "less than or equal to 4294967295"]),
        ("finetune.batch_size", 4000, ["finetune.batch_size (4000) must not exceed data.shapes.train (3000)"]),
        ("visualize.eval_images", 6000, ["visualize.eval_images (6000) must not exceed data.shapes.test (5000)"]),
        (
            "pretrain.batch_size",
            12000,
            ["pretrain.batch_size (12000) must not exceed the 11000 images of data.pretrain_splits (unlabeled, train)"],
        ),
        # study
        ("study.seeds", [42, 43, 42], ["study.seeds", "must not repeat", "42, 43, 42"]),
        ("study.seeds", [42, "43"], ["study.seeds[1]", "integer", "'43'"]),
        ("study.seeds", [], ["study.seeds", "must not be empty"]),
        ("study.ablations", {}, ["study.ablations", "must not be empty"]),
        ("study.ablations", {"a b": {}}, ["study.ablations", "'a b'", "letters, digits and _"]),
        (
            "study.ablations",
            {"all": None, "x": {"pretrain.epochs": 5}},
            ["study.ablations.x", "override 'pretrain.epochs'", "<recipe>.<key>", "(original, improved, smae)"],
        ),
        (
            "study.ablations",
            {"all": None, "x": {"original.mask_ratio": 1.5}},  # an arm may change the original too
            ["study.ablations.x: original.mask_ratio", "less than 1", "1.5"],
        ),
        (
            "study.ablations",
            {"all": None, "x": {"improved.mask_ratio": 1.5}},  # each ablation gets the range checks of improved
            ["study.ablations.x: improved.mask_ratio", "less than 1", "1.5"],
        ),
        (
            "study.ablations",
            {"all": None, "x": {"improved.lambda_unif": -1}},
            ["study.ablations.x: improved.lambda_unif", "greater than or equal to 0"],
        ),
        (
            "study.ablations",
            {"all": None, "x": {"improved.lambda_freq": "much"}},
            ["study.ablations.x: improved.lambda_freq", "number", "'much'"],
        ),
    ],
)
def test_bad_values_name_the_key(path, value, words):
    """parse_params checks every section but the recipes' own settings, which their functions type and check
    (recipes.check_all, called by every stage that reads them), and the study checks its section and each of its
    arms' params (study.design.check_design, called by the study alone): together they name the key."""
    with pytest.raises(ConfigError) as err:
        p = parse_params(with_change(path, value))
        (check_design if path.startswith("study.") else check_all)(p)
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_floats_accept_yaml_exponent_without_dot_and_integers():
    p = parse_params(with_change("pretrain.base_lr", "1e-4"))
    assert p.pretrain.base_lr == 1e-4
    weight = build(parse_params(with_change("improved.lambda_freq", 1)), "improved").terms["freq"]
    assert weight == 1.0 and isinstance(weight, float)  # the recipe function's annotation (Number) converts it


def test_the_new_keys_are_read():
    raw = with_change("threads", 3)
    raw["data"].update(verify_md5=False, pretrain_splits=["train"], val_fraction=0.5)
    raw["linear_probe"].update(knn_k=[5], knn_temperature=[0.5, 1])
    raw["finetune"].update(layer_decay=[1], drop_path=0.0, label_smoothing=0.2, checkpoint_every=2)
    p = parse_params(raw)
    assert p.threads == 3
    assert (p.data.verify_md5, p.data.pretrain_splits, p.data.val_fraction) == (False, ("train",), 0.5)
    assert (p.linear_probe.knn_k, p.linear_probe.knn_temperature) == ((5,), (0.5, 1.0))
    assert (p.finetune.layer_decay, p.finetune.drop_path, p.finetune.label_smoothing, p.finetune.checkpoint_every) == (
        (1.0,),
        0.0,
        0.2,
        2,
    )


def test_a_study_may_widen_a_readout_grid_for_every_arm():
    from mae_exp.study.results import arm_name, arm_overrides

    p = parse_params(with_change("study.overrides", {"finetune.base_lr": [4e-3, 8e-3]}))
    assert arm_params(p, "all").finetune.base_lr == (4e-3, 8e-3)
    assert "finetune.base_lr=[0.004, 0.008]" in arm_overrides(
        p, arm_name(p, "all", 32)
    )  # `dvc exp run -S` reads it as YAML


def test_a_design_may_fix_each_recipes_fine_tuning_setting():
    """finetune.per_encoder gives an encoder its own grid; `dvc exp run -S` adds a key params.yaml lacks only
    with Hydra's `++` (a plain `key=value` there stops with "Key 'original' is not in struct")."""
    from mae_exp.study.results import arm_name, arm_overrides

    own = {"finetune.per_encoder.original.base_lr": [8e-3], "finetune.per_encoder.original.layer_decay": [0.85]}
    p = parse_params(with_change("study.overrides", {"finetune.epochs": 20, **own}))
    arm = arm_params(p, "all")
    assert arm.finetune.grid_for("original").model_dump() == {"base_lr": (8e-3,), "layer_decay": (0.85,)}
    assert arm.finetune.grid_for("improved").base_lr == arm.finetune.base_lr  # the shared grid, as before
    assert arm.finetune.epochs == 20
    overrides = arm_overrides(p, arm_name(p, "all", 32))
    assert "finetune.epochs=20" in overrides
    assert "++finetune.per_encoder.original.base_lr=[0.008]" in overrides
    assert "++finetune.per_encoder.original.layer_decay=[0.85]" in overrides
    with pytest.raises(ConfigError, match="finetune.per_encoder"):
        parse_params(with_change("finetune.per_encoder", {"orignal": {"base_lr": [1e-3], "layer_decay": [1.0]}}))
    with pytest.raises(ConfigError, match="layer_decay"):
        parse_params(with_change("finetune.per_encoder", {"original": {"base_lr": [1e-3]}}))


def test_an_ablation_with_no_overrides_may_be_written_bare():
    raw = with_change("study.ablations", {"all": None, "no_unif": {"improved.lambda_unif": 0}})
    raw["study"]["ablation_budgets"] = {}
    p = parse_params(raw)
    assert arm_params(p, "all").improved == p.improved
    assert arm_params(p, "no_unif").improved == p.improved.model_copy(update={"lambda_unif": 0.0})


def test_configs_are_frozen_hashable_and_round_trip():
    p = parse_params(RAW)
    with pytest.raises(ValidationError):
        p.pretrain.epochs = 1
    assert {p.original: "o", p.improved: "i"}[p.improved] == "i"
    assert ModelConfig(**as_dict(p.model)) == p.model  # what checkpoints store and rebuild
    assert list(as_dict(p)["finetune"]["layer_decay"]) == RAW["finetune"]["layer_decay"]
    assert fingerprint(p.model, 1) == fingerprint(parse_params(copy.deepcopy(RAW)).model, 1)
    assert fingerprint(p.model, 1) != fingerprint(parse_params(with_change("model.encoder_depth", 5)).model, 1)


def test_yaml_and_file_errors_are_one_line(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("seed: [1,\n  threads: 0\n")
    with pytest.raises(ConfigError) as err:
        load_params(bad)
    assert "not valid YAML" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "missing.yaml")
    bad.write_text(yaml.safe_dump(with_change("improved.pretrain", 1.2)))  # a section's key no recipe takes
    with pytest.raises(ConfigError, match=r"^unknown key 'improved.pretrain'; valid keys here: .*mask_ratio"):
        check_all(load_params(bad))


def test_a_bad_param_stops_the_stage_before_any_work(tmp_path):
    repo = copy_repo(tmp_path / "repo", cache="own")  # download must run (and stop), not be restored
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["improved"]["mask_ratio"] = 1.2
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    proc = dvc("repro", cwd=repo, check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "improved.mask_ratio must be less than 1, got 1.2" in out
    assert "Traceback" not in out
    assert not (repo / "data" / "prepared").exists()  # the first stage did nothing


def test_stage_script_exit_code_and_message(repo):
    good = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(good.replace("patch_size: 4", "patch_size: 3"))
    proc = run(stage_cmd("pretrain@original"), repo, check=False)
    assert proc.returncode == 2
    assert "model.patch_size" in proc.stderr and "input_size" in proc.stderr
    (repo / "params.yaml").write_text(good)
    cmd = stage_cmd("pretrain@original")
    proc = run([*cmd[:2], "better", *cmd[3:]], repo, check=False)  # a recipe params.yaml has no section for
    assert proc.returncode == 2 and "recipe must be one of original, improved, smae, got 'better'" in proc.stderr
    proc = run(cmd[:3], repo, check=False)  # no paths: dvc.yaml's cmd gives them
    assert proc.returncode == 2 and "--data PATH" in proc.stderr and "Traceback" not in proc.stderr
