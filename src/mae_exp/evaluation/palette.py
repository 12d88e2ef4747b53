"""The project's colours, in one place, so that every figure and the `dvc plots show` page agree.

matplotlib figures (report.py's comparison, study/figure.py, study curves) read them from here; the
Vega-Lite template .dvc/plots/encoders.json repeats the default recipes' colours in its colour scale, and
tests/test_plots_page.py checks that the two agree.
"""

from __future__ import annotations

import re

RANDOM = "#8c8c8c"  # random init is the floor (grey)
# recipes by their order in params.yaml's `recipes`: the baseline blue, the next orange (two colours that stay
# apart for colour-blind readers), then the rest
RECIPES = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf"]


def encoder_colours(encoders) -> dict[str, str]:
    """`random` grey, each recipe the colour of its place among the others (the baseline first)."""
    recipes = [e for e in encoders if e != "random"]
    return {e: RANDOM if e == "random" else RECIPES[recipes.index(e) % len(RECIPES)] for e in encoders}


# the studies' two recipes and the random floor (their designs compare `improved` with `original`)
ENCODERS = encoder_colours(("random", "original", "improved"))

# the study's arms (params.yaml study.ablations): `all` is the full improved recipe; the others change one thing
ARMS = {
    "all": ENCODERS["improved"],
    "original_flops_matched": "#17becf",
    "curriculum_only": "#2ca02c",
    "laplacian_only": "#9467bd",
    "uniformity_only": "#8c564b",
}
SPARE = ["#e377c2", "#bcbd22", "#d62728", "#7f7f7f", "#aec7e8", "#98df8a"]  # arms not named above, in order


def colour(group: str, spare_index: int = 0) -> str:
    """The colour of an encoder (`original`) or a study group (`improved: laplacian_only`,
    `original: original_flops_matched`, or the bare arm name); unknown arms take SPARE[spare_index]."""
    name = re.sub(r"-e\d+$", "", group.split(": ", 1)[-1])  # an arm at one budget: the arm's colour
    return ENCODERS.get(name) or ARMS.get(name) or SPARE[spare_index % len(SPARE)]


def colours(groups: list[str]) -> dict[str, str]:
    """A distinct colour for each of `groups`: the fixed ones first, unknown arms from SPARE in order."""
    known = {g: colour(g) for g in groups if re.sub(r"-e\d+$", "", g.split(": ", 1)[-1]) in ENCODERS | ARMS}
    unknown = [g for g in groups if g not in known]
    return known | {g: colour(g, i) for i, g in enumerate(unknown)}
