"""Stage `linear_probe@<encoder>`: frozen encoder, BN + linear head on cached features (see probe.py)."""
from mae_exp.cli import run_stage
from mae_exp.config import ENCODERS
from mae_exp.probe import linear_probe

run_stage(lambda p, name: linear_probe(p, f"models/{name}/encoder.pt", "data/prepared", name,
                                       f"metrics/linear_probe_{name}"),
          ("encoder",), {"encoder": ENCODERS})
