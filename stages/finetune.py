"""Stage `finetune@<encoder>`: end-to-end fine-tuning of a pre-trained encoder."""
from mae_exp.cli import run_stage
from mae_exp.config import ENCODERS
from mae_exp.evaluate import finetune
run_stage(lambda p, name: finetune(p, f"models/{name}/encoder.pt", "data/prepared", name,
                                   f"metrics/finetune_{name}.json", f"plots/finetune_{name}.csv"),
          ("encoder",), {"encoder": ENCODERS}, section="finetune")  # finetune.processes: see distributed.py
