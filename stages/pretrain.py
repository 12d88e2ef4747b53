"""Stage `pretrain_<recipe>`: MAE pre-training of one recipe (a params.yaml section, mae_exp.recipes)."""

from mae_exp.plumbing.cli import run_stage
from mae_exp.recipes import check_all
from mae_exp.training import distributed
from mae_exp.training.pretrain import Outputs, pretrain


def main(params, recipe, data, needs, checkpoint, encoder, live, scratch):
    outputs = Outputs(checkpoint=checkpoint, encoder=encoder, live=live, scratch=scratch)
    pretrain(params, recipe, data, outputs, needs=needs)


run_stage(
    distributed.processes("pretrain", main),
    ("recipe",),
    {"recipe": lambda p: tuple(p.recipe_sections())},
    paths=("data", "needs", "checkpoint", "encoder", "live", "scratch"),
    check=check_all,
)
