"""Stage `finetune@<encoder>`: end-to-end fine-tuning of an encoder (MAE's recipe, see finetune.py)."""
from mae_exp import distributed
from mae_exp.cli import run_stage
from mae_exp.config import ENCODERS
from mae_exp.finetune import finetune


def main(params, name, encoder, data, live, scratch):
    finetune(params, encoder, data, name, live, scratch)


run_stage(distributed.processes("finetune", main), ("encoder",), {"encoder": ENCODERS},
          paths=("encoder", "data", "live", "scratch"))
