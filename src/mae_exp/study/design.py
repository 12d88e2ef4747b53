"""The study's design, params.yaml's `study:` section, read and checked here and only here.

No pipeline stage reads the section (each stage lists the params it reads in dvc.yaml), and its rules live in
the study's own code, so editing either re-runs no stage. `design_of(p)` types the section; `check_design(p)`
adds every rule that spans sections: each arm's params (params.yaml with study.overrides, a budget and the
arm's overrides) validate as a whole, and every recipe of them builds.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, StrictInt, ValidationError, model_validator

from ..plumbing.config import (
    ConfigError,
    Count,
    Params,
    Positive,
    Section,
    describe_error,
    list_of,
    with_overrides,
)
from ..recipes import check_all

# {"<section>.<key>": value, ...}: params.yaml keys, dotted, and the values to give them; checked where they
# land (check_design validates each arm's whole params); a list sets a grid (finetune.base_lr: [4e-3, 8e-3])
_Value = bool | StrictInt | float | str
Overrides = Annotated[dict[str, _Value | list[_Value]], BeforeValidator(lambda v: {} if v is None else v)]


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


class PrimaryConfig(Section):
    """The one comparison the study is judged on (the tested recipe − the baseline); every other one is
    Holm-corrected."""

    arm: str  # a name in study.ablations
    budget: Count  # the point of the compute curve it is read at: one of study.budgets (pretrain.epochs)
    # against the baseline at equal steps, at equal FLOPs, or "both": at equal FLOPs matched both ways, the mean
    # per seed of (the arm's tested recipe - the baseline's curve at its FLOPs) and (the tested recipe's curve
    # at the baseline's FLOPs - the baseline); the curve's other point is an arm that changes only the tested
    # recipe's steps_factor
    reading: Literal["steps", "flops", "both"]
    metric: str  # a metric id of mae_exp.study.metrics.METRICS (checked by the study)
    # equivalence margin, in the metric's stored units (0.015 = 1.5 pp); the verdict it enters is the one rule
    # written in mae_exp.study.curves.VERDICT_RULE
    margin: Positive


class StudyDesign(Section):
    """Seeds x arms for `python -m mae_exp.study`: two recipes compared in every arm."""

    # the baseline, then the recipe tested against it: every experiment trains both (each a section in `recipes`)
    compare: list_of(str)
    seeds: list_of(Annotated[StrictInt, Field(ge=0, le=2**32 - 1)])
    budgets: list_of(Count)  # pretrain.epochs of each point of the compute curves, every arm alike
    # arm name -> the budgets it runs at, for arms needed only at some (default: every one of budgets)
    ablation_budgets: Annotated[dict[str, list_of(Count)], BeforeValidator(lambda v: {} if v is None else v)]
    primary: PrimaryConfig
    overrides: Overrides  # applied to every arm alike (e.g. fine-tuning to a plateau)
    ablations: Annotated[dict[str, Overrides], Field(min_length=1)]  # arm name -> its overrides of recipe settings

    @property
    def baseline(self) -> str:
        return self.compare[0]

    @property
    def tested(self) -> str:
        return self.compare[1]

    @model_validator(mode="after")
    def _valid(self):
        _check(
            len(self.compare) == 2,
            f"compare: must name two recipes, the baseline then the one tested against it; got {list(self.compare)}",
        )
        for name in self.ablations:  # names become experiment names
            _check(
                re.fullmatch(r"[A-Za-z0-9_]+", name) is not None,
                f"ablations: name {name!r} must use only letters, digits and _",
            )
        for key in self.overrides:
            _check(
                key.split(".")[0] not in ("seed", "study") and key != "pretrain.epochs",
                f"overrides: {key!r} may not be overridden study-wide (seeds come from study.seeds, "
                "pre-training epochs from study.budgets)",
            )
        arms = self.ablations
        _check(self.primary.arm in arms, f"primary.arm: {self.primary.arm!r} is not in ablations ({', '.join(arms)})")
        for name, budgets in self.ablation_budgets.items():
            _check(name in arms, f"ablation_budgets: {name!r} is not in ablations ({', '.join(arms)})")
            _check(
                set(budgets) <= set(self.budgets),
                f"ablation_budgets.{name}: {sorted(set(budgets) - set(self.budgets))} not in budgets "
                f"({list(self.budgets)})",
            )
        _check(
            self.primary.budget in self.ablation_budgets.get(self.primary.arm, self.budgets),
            f"primary.budget: {self.primary.arm!r} does not run at {self.primary.budget} epochs "
            "(budgets, ablation_budgets)",
        )
        return self


def design_of(p: Params) -> StudyDesign:
    """params.yaml's study section, typed; a bad key stops here, named (`study.seeds[1] must be ...`)."""
    try:
        return StudyDesign.model_validate(p.study)
    except ValidationError as e:
        raise ConfigError(describe_error(e, StudyDesign, "study")) from None


def check_design(p: Params) -> StudyDesign:
    """design_of(p) and every rule that spans sections: the compared recipes exist and are trained, an arm
    changes recipe settings only, and every arm's params validate and build at every budget it runs at."""
    design = design_of(p)
    sections = p.recipe_sections()
    for name in design.compare:
        if name not in p.recipes:
            raise ConfigError(
                f"study.compare: {name!r} is not in recipes ({', '.join(p.recipes)}): every experiment must train it"
            )
    for name, overrides in design.ablations.items():
        for key in overrides:
            if key.split(".")[0] not in sections or key.count(".") != 1:
                raise ConfigError(
                    f"study.ablations.{name}: override {key!r} must be <recipe>.<key>, a recipe section's key "
                    f"({', '.join(sections)})"
                )
    for budget in design.budgets:
        try:
            with_overrides(p, {"pretrain.epochs": budget})
        except ConfigError as e:
            raise ConfigError(f"study.budgets: {budget} epochs: {e}") from None
    try:
        check_all(with_overrides(p, design.overrides))
    except ConfigError as e:
        raise ConfigError(f"study.overrides: {e}") from None
    for name in design.ablations:
        try:
            check_all(arm_params(p, name))
        except ConfigError as e:
            raise ConfigError(f"study.ablations.{name}: {e}") from None
    return design


def arm_params(p: Params, name: str) -> Params:
    """The params an experiment of study arm `name` runs with (study.overrides, then the arm's), at p's seed."""
    design = design_of(p)
    return with_overrides(p, {**design.overrides, **design.ablations[name]})
