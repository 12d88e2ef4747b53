"""Stage `export@<recipe>`: the pre-trained MAE as a transformers ViTMAE folder, models/<recipe>/hf (hf.py)."""

from mae_exp.plumbing.cli import run_stage
from mae_exp.recipes import build, check_all
from mae_exp.training.hf import export

run_stage(
    lambda p, recipe, checkpoint, out: export(checkpoint, out, build(p, recipe).mask_ratio_at(1.0)),
    ("recipe",),
    {"recipe": lambda p: tuple(p.recipe_sections())},
    paths=("checkpoint", "out"),
    check=check_all,
)
