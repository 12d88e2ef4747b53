"""Stage `finetune@<encoder>`: end-to-end fine-tuning of an encoder (MAE's recipe, see finetune.py)."""

from mae_exp.evaluation.finetune import finetune
from mae_exp.plumbing.cli import run_stage
from mae_exp.plumbing.config import ENCODERS
from mae_exp.training import distributed


def main(params, name, encoder, data, live, scratch, predictions):
    finetune(params, encoder, data, name, live, scratch, predictions_path=predictions)


run_stage(
    distributed.processes("finetune", main),
    ("encoder",),
    {"encoder": ENCODERS},
    paths=("encoder", "data", "live", "scratch", "predictions"),
)
