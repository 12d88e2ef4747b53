"""The project's colours, in one place, so that every figure and the `dvc plots show` page agree.

matplotlib figures (report.py's comparison, study/figure.py, study curves) read them from here; the
Vega-Lite template .dvc/plots/encoders.json repeats the default recipes' colours in its colour scale, and
tests/test_plots_page.py checks that the two agree. No recipe is named here: a recipe's colour is its place
among the encoders a caller passes (the pipeline's `recipes`, a study's compared pair).
"""

from __future__ import annotations

import re

from ..plumbing.config import RANDOM as RANDOM_ENCODER

RANDOM = "#8c8c8c"  # random init is the floor (grey)
# recipes by their order in params.yaml's `recipes`: the baseline blue, the next orange (two colours that stay
# apart for colour-blind readers), then the rest
RECIPES = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf"]


def encoder_colours(encoders) -> dict[str, str]:
    """`random` grey, each recipe the colour of its place among the others (the baseline first)."""
    recipes = [e for e in encoders if e != RANDOM_ENCODER]
    return {e: RANDOM if e == RANDOM_ENCODER else RECIPES[recipes.index(e) % len(RECIPES)] for e in encoders}


# the study's arms (params.yaml study.ablations), by arm name: `all` is the full tested recipe, in the tested
# recipe's colour (the second recipe's place: encoder_colours of random, the baseline, the tested recipe);
# the others change one thing
ARMS = {
    "all": RECIPES[1],
    "original_flops_matched": "#17becf",
    "curriculum_only": "#2ca02c",
    "laplacian_only": "#9467bd",
    "uniformity_only": "#8c564b",
}
SPARE = ["#e377c2", "#bcbd22", "#d62728", "#7f7f7f", "#aec7e8", "#98df8a"]  # arms not named above, in order


def _name(group: str) -> str:
    """The encoder or arm a group is of: `<recipe>: <arm>` -> the arm, an arm or encoder at one budget
    (`<name>-e<budget>`) -> the name."""
    return re.sub(r"-e\d+$", "", group.split(": ", 1)[-1])


def colour(group: str, encoders, spare_index: int = 0) -> str:
    """The colour of an encoder of `encoders` (random, then recipes: encoder_colours) or a study group
    (`<recipe>: <arm>`, an encoder at one budget `<recipe>-e<budget>`, or the bare arm name); unknown arms
    take SPARE[spare_index]."""
    name = _name(group)  # an arm at one budget: the arm's colour
    return encoder_colours(encoders).get(name) or ARMS.get(name) or SPARE[spare_index % len(SPARE)]


def colours(groups: list[str], encoders) -> dict[str, str]:
    """A distinct colour for each of `groups` (colour): the fixed ones first, unknown arms from SPARE in order."""
    fixed = set(encoders) | set(ARMS)
    known = {g: colour(g, encoders) for g in groups if _name(g) in fixed}
    unknown = [g for g in groups if g not in known]
    return known | {g: colour(g, encoders, i) for i, g in enumerate(unknown)}
