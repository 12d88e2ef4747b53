"""Stages `pretrain_original` / `pretrain_improved`: MAE pre-training of one variant."""
from mae_exp import distributed
from mae_exp.cli import run_stage
from mae_exp.config import VARIANTS
from mae_exp.pretrain import Outputs, pretrain


def main(params, variant):
    outputs = Outputs(checkpoint=f"models/{variant}/checkpoint.pt", encoder=f"models/{variant}/encoder.pt",
                      live=f"metrics/pretrain_{variant}", scratch=f"scratch/pretrain_{variant}")
    pretrain(params, variant, "data/prepared", outputs)


run_stage(distributed.processes("pretrain", main), ("variant",), {"variant": VARIANTS})
