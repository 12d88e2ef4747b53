"""Stage `linear_probe@<encoder>`: frozen encoder, BN + linear head on cached features (see probe.py)."""

from mae_exp.evaluation.probe import linear_probe
from mae_exp.plumbing.cli import run_stage
from mae_exp.plumbing.config import ENCODERS

run_stage(
    lambda p, name, encoder, data, live: linear_probe(p, encoder, data, name, live),
    ("encoder",),
    {"encoder": ENCODERS},
    paths=("encoder", "data", "live"),
)
