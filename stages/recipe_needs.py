"""Stage `recipe_needs@<recipe>`: what a recipe needs built before it pre-trains (a frozen network), or nothing."""

from mae_exp.plumbing.cli import run_stage
from mae_exp.recipes import check_all
from mae_exp.training.needs import build_needs

run_stage(
    lambda p, recipe, data, out: build_needs(p, recipe, data, out),
    ("recipe",),
    {"recipe": lambda p: tuple(p.recipe_sections())},
    paths=("data", "out"),
    check=check_all,
)
