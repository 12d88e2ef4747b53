"""Stage `linear_probe@<encoder>`: frozen encoder, BN + linear head on cached features (see probe.py)."""
from mae_exp.cli import run_stage
from mae_exp.config import ENCODERS
from mae_exp.probe import linear_probe

run_stage(lambda p, name, encoder, data, live: linear_probe(p, encoder, data, name, live),
          ("encoder",), {"encoder": ENCODERS}, paths=("encoder", "data", "live"))
