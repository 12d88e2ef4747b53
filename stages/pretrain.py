"""Stages `pretrain_original` / `pretrain_improved`: MAE pre-training of one variant."""
from mae_exp import distributed
from mae_exp.cli import run_stage
from mae_exp.config import VARIANTS
from mae_exp.pretrain import Outputs, pretrain


def main(params, variant, data, checkpoint, encoder, live, scratch):
    pretrain(params, variant, data, Outputs(checkpoint=checkpoint, encoder=encoder, live=live, scratch=scratch))


run_stage(distributed.processes("pretrain", main), ("variant",), {"variant": VARIANTS},
          paths=("data", "checkpoint", "encoder", "live", "scratch"))
