"""Stage `export@<variant>`: the pre-trained MAE as a transformers ViTMAE folder, models/<variant>/hf (hf.py)."""
from mae_exp.cli import run_stage
from mae_exp.config import VARIANTS
from mae_exp.hf import export


def main(params, variant):
    export(f"models/{variant}/checkpoint.pt", f"models/{variant}/hf", params.variant(variant).mask_ratio)


run_stage(main, ("variant",), {"variant": VARIANTS})
