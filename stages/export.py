"""Stage `export@<variant>`: the pre-trained MAE as a transformers ViTMAE folder, models/<variant>/hf (hf.py)."""

from mae_exp.plumbing.cli import run_stage
from mae_exp.plumbing.config import VARIANTS
from mae_exp.plumbing.hf import export

run_stage(
    lambda p, variant, checkpoint, out: export(checkpoint, out, p.variant(variant).mask_ratio),
    ("variant",),
    {"variant": VARIANTS},
    paths=("checkpoint", "out"),
)
