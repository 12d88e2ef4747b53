"""Stages `pretrain_original` / `pretrain_improved`: MAE pre-training of one variant."""

from mae_exp.plumbing.cli import run_stage
from mae_exp.plumbing.config import VARIANTS
from mae_exp.training import distributed
from mae_exp.training.pretrain import Outputs, pretrain


def main(params, variant, data, checkpoint, encoder, live, scratch):
    pretrain(params, variant, data, Outputs(checkpoint=checkpoint, encoder=encoder, live=live, scratch=scratch))


run_stage(
    distributed.processes("pretrain", main),
    ("variant",),
    {"variant": VARIANTS},
    paths=("data", "checkpoint", "encoder", "live", "scratch"),
)
