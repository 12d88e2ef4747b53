"""Pre-training recipes, as data: how a recipe masks, which named loss terms it adds and with what weights, what
it needs built first.

A recipe is one function here, registered with @recipe, plus one params.yaml section that names it
(`recipe: <function>`) and gives its arguments; `recipes:` lists the sections compared, the first the baseline.
The function's annotations are its section's schema: `build` checks the section against them (a typo or a value
out of range stops the stage, naming `<section>.<key>`) and returns a Recipe, the one thing the training loop
(training/losses.py runs the named terms and maskings), the FLOPs count and the stages read. Torch-free, so
every stage checks every recipe at start-up (check_all) at the cost of this file alone. Adding one:
docs/reference.md#adding-a-recipe.

  - mae: He et al.'s MAE (uniform random masking, the masked MSE), and this project's three changes, each
    off at 0: a curriculum of the mask ratio, the masked Laplacian L1 (`freq`), the uniformity of the
    pooled tokens (`unif`). `original` and `improved` in params.yaml are two settings of it.
  - smae: the semantic MAE of Charisoudis et al.'s reproduction (ReScience 2023): BEiT-style block masking
    and a perceptual term on a small frozen CNN trained, with labels, on the labeled train split (its
    `needs`), weighted against the pixels by learned uncertainty (Kendall et al. 2018) or fixed.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, ValidationError, create_model

from .plumbing.config import (
    ConfigError,
    Count,
    NonNegative,
    Number,
    Params,
    Positive,
    Ratio,
    describe_error,
)

Share = Annotated[Number, Field(ge=0, le=1)]


@dataclass(frozen=True)
class Need:
    """A frozen network built before pre-training by stage `recipe_needs` (a DVC dependency of the recipe's
    pre-training): `name` is a kind training/needs.py builds, `settings` its training arguments."""

    name: str
    settings: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Recipe:
    """What pre-training reads. The loss: MAE's masked MSE plus `terms` (a name training/losses.py implements ->
    its weight, in the order they add up; weight 0: computed only for its curve), or, with `log_vars`, the
    uncertainty-weighted sum of "mse" and the terms (each name's initial log-variance s, learned).
    `term_settings`: the terms' arguments. The mask ratio ramps from mask_ratio_start to mask_ratio over the
    first curriculum_fraction of training; `masking` says which patches: "random" (MAE's) or "blocks"
    (`masking_settings` for it). `labels`: the recipe saw labels before the readouts (through `needs`)."""

    mask_ratio: float
    terms: dict[str, float]
    mask_ratio_start: float | None = None  # None: no curriculum
    curriculum_fraction: float = 0.0
    masking: Literal["random", "blocks"] = "random"
    masking_settings: dict = field(default_factory=dict)
    term_settings: dict = field(default_factory=dict)
    needs: Need | None = None
    log_vars: dict[str, float] | None = None
    labels: bool = False

    def mask_ratio_at(self, progress: float) -> float:
        """The mask ratio at `progress` (in [0, 1]) through training: linear from mask_ratio_start to mask_ratio
        over the first curriculum_fraction, then constant."""
        if self.curriculum_fraction <= 0 or self.mask_ratio_start is None:
            return self.mask_ratio
        ramp = min(1.0, max(0.0, progress / self.curriculum_fraction))
        return self.mask_ratio_start + ramp * (self.mask_ratio - self.mask_ratio_start)

    @property
    def objectives(self) -> tuple[str, ...]:
        """The terms its loss weights beyond the masked MSE (what it is ahead on by construction)."""
        return tuple(k for k, w in self.terms.items() if w > 0 or self.log_vars is not None)


RECIPES: dict[str, Callable[..., Recipe]] = {}


def recipe(fn: Callable[..., Recipe]) -> Callable[..., Recipe]:
    """Register `fn` as a recipe a params.yaml section can name (`recipe: <fn's name>`)."""
    RECIPES[fn.__name__] = fn
    return fn


def _schema(fn):
    """A strict pydantic model of `fn`'s keyword arguments (no defaults: params.yaml gives every knob)."""
    fields = {name: (par.annotation, ...) for name, par in inspect.signature(fn).parameters.items()}
    return create_model(f"{fn.__name__}_settings", __config__=ConfigDict(strict=True, extra="forbid"), **fields)


def build(p: Params, name: str) -> Recipe:
    """The Recipe of params section `name`, its settings checked against its function's annotations."""
    section = p.recipe(name)
    fn = RECIPES.get(section.recipe)
    if fn is None:
        raise ConfigError(
            f"{name}.recipe: {section.recipe!r} is no recipe function; known: {', '.join(RECIPES)} (mae_exp.recipes)"
        )
    schema = _schema(fn)
    try:
        settings = schema.model_validate(section.settings())
    except ValidationError as e:
        raise ConfigError(describe_error(e, schema, name)) from None
    try:
        return fn(**dict(settings))
    except ConfigError as e:  # a rule across its settings, which names the key it blames
        raise ConfigError(f"{name}.{e}") from None


def check_all(p: Params) -> None:
    """Build every recipe section: a bad setting of any stops here, naming it. Every stage calls it at start-up
    (plumbing.cli.run_stage); the study calls it for each arm's params (study.design.check_design)."""
    for name in p.recipe_sections():
        build(p, name)


# --------------------------------------------------------------------------- the recipes


@recipe
def mae(
    mask_ratio: Ratio,
    mask_ratio_start: Ratio,
    curriculum_fraction: Share,
    lambda_freq: NonNegative,
    lambda_unif: NonNegative,
) -> Recipe:
    """He et al.'s MAE with the three changes of the improved recipe, each off at 0: the ratio ramps
    mask_ratio_start -> mask_ratio over the first curriculum_fraction of training; lambda_freq weighs the masked
    Laplacian L1 (`freq`), lambda_unif the uniformity of the pooled tokens (`unif`)."""
    return Recipe(
        mask_ratio=mask_ratio,
        mask_ratio_start=mask_ratio_start,
        curriculum_fraction=curriculum_fraction,
        terms={"freq": lambda_freq, "unif": lambda_unif},
    )


@recipe
def smae(
    mask_ratio: Ratio,
    min_block: Count,
    perceptual_layers: Count,
    weighting: Literal["uncertainty", "fixed"],
    lambda_perceptual: NonNegative,
    log_var_mse: Number,
    log_var_perceptual: Number,
    cnn_width: Count,
    cnn_depth: Count,
    cnn_epochs: Count,
    cnn_lr: Positive,
) -> Recipe:
    """Block masking (blocks of at least min_block patches) + a perceptual term: the MSE of sigmoid-activated
    features of the first perceptual_layers stages of a frozen CNN (cnn_depth stages of cnn_width.. channels,
    trained cnn_epochs at cnn_lr with the train split's labels), reconstruction against image. weighting
    "uncertainty": exp(-s_mse) mse + s_mse + exp(-s_p) perceptual + s_p, the s learned from log_var_mse and
    log_var_perceptual (SMAE's -1 and -6); "fixed": mse + lambda_perceptual x perceptual."""
    if perceptual_layers > cnn_depth:
        raise ConfigError(f"perceptual_layers ({perceptual_layers}) must not exceed cnn_depth ({cnn_depth})")
    uncertainty = weighting == "uncertainty"
    return Recipe(
        mask_ratio=mask_ratio,
        terms={"perceptual": 1.0 if uncertainty else lambda_perceptual},
        masking="blocks",
        masking_settings={"min_block": min_block},
        term_settings={"perceptual_layers": perceptual_layers},
        needs=Need("perceptual_cnn", {"width": cnn_width, "depth": cnn_depth, "epochs": cnn_epochs, "lr": cnn_lr}),
        log_vars={"mse": log_var_mse, "perceptual": log_var_perceptual} if uncertainty else None,
        labels=True,
    )
