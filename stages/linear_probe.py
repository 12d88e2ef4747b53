"""Stage `linear_probe@<encoder>`: frozen encoder, BN + linear head on cached features."""
from mae_exp.cli import run_stage
from mae_exp.config import ENCODERS
from mae_exp.evaluate import linear_probe
run_stage(lambda p, name: linear_probe(p, f"models/{name}/encoder.pt", "data/prepared", name,
                                       f"metrics/linear_probe_{name}.json", f"plots/linear_probe_{name}.csv"),
          ("encoder",), {"encoder": ENCODERS})
