"""Stage `finetune@<encoder>`: end-to-end fine-tuning of an encoder (MAE's recipe, see finetune.py)."""

from mae_exp.evaluation.finetune import finetune
from mae_exp.plumbing.cli import run_stage
from mae_exp.plumbing.config import RANDOM
from mae_exp.recipes import check_all
from mae_exp.training import distributed


def main(params, name, encoder, data, live, scratch, predictions):
    finetune(params, encoder, data, name, live, scratch, predictions_path=predictions)


run_stage(
    distributed.processes("finetune", main),
    ("encoder",),
    {"encoder": lambda p: (RANDOM, *p.recipe_sections())},
    paths=("encoder", "data", "live", "scratch", "predictions"),
    check=check_all,
)
