"""Recipes as data: a recipe is one function in recipes.py plus one params.yaml section. Checked here: what
`build` makes of a section (and how it names a bad one), SMAE's recipe and its uncertainty weighting, and the
proof, a toy fourth recipe added with exactly those two edits and run through the real pipeline end to end."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml

from conftest import REPO, copy_built, dvc, git, ran_stages
from mae_exp.model import MaskedAutoencoderViT
from mae_exp.plumbing.config import ConfigError, parse_params
from mae_exp.recipes import RECIPES, Need, build, check_all
from mae_exp.training.losses import LogVars, loss_weights, masking_noise, pretraining_terms

RAW = yaml.safe_load((REPO / "params.yaml").read_text())

TOY_FUNCTION = '''

@recipe
def toy(mask_ratio: Ratio, lambda_unif: NonNegative) -> Recipe:
    """Random masking at its own ratio, plus the uniformity of the pooled tokens."""
    return Recipe(mask_ratio=mask_ratio, terms={"unif": lambda_unif})
'''
TOY_SECTION = {"recipe": "toy", "mask_ratio": 0.6, "lambda_unif": 0.05, "steps_factor": 1.0}


def raw_with(changes: dict) -> dict:
    """params.yaml with each `section__key` of `changes` set."""
    raw = copy.deepcopy(RAW)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = raw
        for part in parents:
            node = node[part]
        node[leaf] = value
    return raw


def params(**changes):
    return parse_params(raw_with(changes))


def test_the_default_recipes_are_two_settings_of_one_function():
    p = params()
    assert p.recipes == ("original", "improved") and p.baseline == "original"
    original, improved = build(p, "original"), build(p, "improved")
    assert original.terms == {"freq": 0.0, "unif": 0.0} and original.objectives == ()
    assert improved.terms == {"freq": 0.05, "unif": 0.01} and improved.objectives == ("freq", "unif")
    assert [improved.mask_ratio_at(t) for t in (0.0, 0.25, 0.5, 1.0)] == pytest.approx([0.5, 0.625, 0.75, 0.75])
    assert original.masking == improved.masking == "random" and original.needs is None


def test_smae_builds_blocks_a_perceptual_term_a_cnn_and_learned_weights():
    smae = build(params(), "smae")
    assert smae.masking == "blocks" and smae.masking_settings == {"min_block": 4}
    assert smae.needs == Need("perceptual_cnn", {"width": 32, "depth": 3, "epochs": 10, "lr": 1e-3})
    assert smae.log_vars == {"mse": -1.0, "perceptual": -6.0} and smae.labels
    fixed = build(params(smae__weighting="fixed", smae__lambda_perceptual=0.5), "smae")
    assert fixed.log_vars is None and fixed.terms == {"perceptual": 0.5}


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"improved__recipe": "maee"}, ["improved.recipe", "'maee' is no recipe function", "mae, smae"]),
        ({"improved__lambda_frq": 0.1}, ["unknown key 'improved.lambda_frq'", "lambda_freq"]),
        ({"smae__cnn_lr": 0}, ["smae.cnn_lr", "greater than 0"]),
        ({"smae__weighting": "learned"}, ["smae.weighting", "'uncertainty' or 'fixed'"]),
        ({"smae__perceptual_layers": 4}, ["smae.perceptual_layers (4) must not exceed cnn_depth (3)"]),
        ({"recipes": ["original", "toy"]}, ["recipes: 'toy' has no section"]),
        ({"random": {**RAW["original"]}}, ["random: a recipe's name", "not 'random'"]),
    ],
)
def test_a_bad_recipe_section_is_named(changes, words):
    with pytest.raises(ConfigError) as err:
        check_all(parse_params(raw_with(changes)))
    for word in words:
        assert word in str(err.value)


def test_a_missing_recipe_key_is_named():
    raw = copy.deepcopy(RAW)
    del raw["smae"]["min_block"]
    with pytest.raises(ConfigError, match=r"missing key 'smae.min_block'"):
        check_all(parse_params(raw))


def test_uncertainty_weighting_learns_its_log_variances_and_reports_relative_weights(tiny_model_cfg):
    """total = sum exp(-s_i) L_i + s_i over mse and the perceptual term; the s are trained (they get gradients),
    the CNN is not; loss_weights reports exp(s_mse - s_term), the perceptual term's weight relative to the MSE."""
    from mae_exp.training.needs import untrained

    p = tiny_model_cfg
    recipe = build(p, "smae")
    s = p.data.input_size
    torch.manual_seed(0)
    model = MaskedAutoencoderViT(p.model, s)
    cnn = untrained(recipe.needs, s)
    log_vars = LogVars(recipe.log_vars)
    imgs = torch.randn(4, 3, s, s)
    gen = torch.Generator().manual_seed(0)
    noise = masking_noise(recipe, torch.rand(4, model.num_patches, generator=gen), model.grid, 0.75, gen)
    terms = pretraining_terms(model, imgs, model(imgs, 0.75, noise), recipe, {"perceptual_cnn": cnn}, log_vars)
    mse, perceptual = terms.values["mse"], terms.values["perceptual"]
    expected = torch.exp(torch.tensor(1.0)) * mse - 1.0 + torch.exp(torch.tensor(6.0)) * perceptual - 6.0
    assert torch.allclose(terms.total, expected)
    terms.total.backward()
    assert log_vars.s["perceptual"].grad is not None and model.encoder.cls_token.grad is not None
    assert all(q.grad is None for q in cnn.parameters())
    assert loss_weights(recipe, log_vars) == {"perceptual": pytest.approx(torch.exp(torch.tensor(-1.0 + 6.0)).item())}
    assert set(terms.logged(log_vars)) == {"loss", "mse", "perceptual", "s_mse", "s_perceptual"}


@pytest.fixture
def four_recipes(tiny_reproduced, tmp_path):
    """The whole tiny pipeline, then the two edits of docs/reference.md#adding-a-recipe (a `toy` function in
    recipes.py, a `toy` section in params.yaml) and SMAE, compared: recipes [original, improved, smae, toy]."""
    repo = copy_built(tiny_reproduced[0], tmp_path / "repo")
    recipes_py = repo / "src/mae_exp/recipes.py"
    recipes_py.write_text(recipes_py.read_text() + TOY_FUNCTION)
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["toy"] = TOY_SECTION
    raw["recipes"] = ["original", "improved", "smae", "toy"]
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    git("commit", "-qam", "a fourth recipe: one function, one section", cwd=repo)
    proc = dvc("repro", cwd=repo, extra_env=own_code(repo))
    return repo, proc.stdout + proc.stderr


def own_code(repo):
    """The copy's own src/ first on the path: its edited recipes.py, not the installed package's."""
    return {"PYTHONPATH": str(repo / "src")}


def test_a_toy_fourth_recipe_is_one_function_and_one_section_end_to_end(four_recipes):
    repo, output = four_recipes
    ran = ran_stages(output)
    for name in ("smae", "toy"):
        assert {f"{s}@{name}" for s in ("recipe_needs", "pretrain", "export", "linear_probe", "finetune")} <= ran
    assert {"visualize", "report"} <= ran
    comparison = json.loads((repo / "metrics/comparison.json").read_text())
    for name in ("improved", "smae", "toy"):
        assert "logreg_cls_top1" in comparison[f"{name}_minus_original"], name
    assert comparison["own_objective"]["hf_error"] == "improved's"  # toy weights unif alone, smae perceptual
    visualized = json.loads((repo / "metrics/visualize/metrics.json").read_text())
    assert {"original", "improved", "smae", "toy"} <= set(visualized)
    toy = json.loads((repo / "metrics/pretrain/toy/metrics.json").read_text())
    assert toy["loss_weights"] == {"unif": 0.05} and set(toy["final"]) == {"loss", "mse", "unif"}
    smae = json.loads((repo / "metrics/pretrain/smae/metrics.json").read_text())
    assert set(smae["final"]) == {"loss", "mse", "perceptual", "s_mse", "s_perceptual"}
    # the plots: every curve file holds each encoder that has it, in the colour of its place in `recipes`
    curve = (repo / "metrics/curves/pretrain_mse.tsv").read_text().splitlines()
    colours = {line.split("\t")[2]: line.split("\t")[3] for line in curve[1:]}
    assert colours == {"original": "#1f77b4", "improved": "#ff7f0e", "smae": "#2ca02c", "toy": "#9467bd"}
    probe = (repo / "metrics/curves/linear_probe_linear_cls_val_top1.tsv").read_text()
    assert "\trandom\t#8c8c8c" in probe and "\ttoy\t#9467bd" in probe
    html = dvc("plots", "show", "--json", cwd=repo, extra_env=own_code(repo)).stdout
    assert "metrics/curves/pretrain_mse.tsv" in html and '"toy"' in html
    # the run-cache: back to two recipes, nothing runs again
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["recipes"] = ["original", "improved"]
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    again = dvc("repro", cwd=repo, extra_env=own_code(repo)).stdout
    assert ran_stages(again) == {"visualize", "report"}  # only what compares every recipe


def test_the_registry_holds_the_recipes_params_yaml_names():
    named = {section.recipe for section in params().recipe_sections().values()}
    assert named <= set(RECIPES)
