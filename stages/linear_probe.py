"""Stage `linear_probe@<encoder>`: frozen encoder; logistic, BN + linear and kNN readouts of cached features,
each chosen by cross-validation (see probe.py); the test predictions saved."""

from mae_exp.evaluation.probe import linear_probe
from mae_exp.plumbing.cli import run_stage
from mae_exp.plumbing.config import ENCODERS

run_stage(
    lambda p, name, encoder, data, live, predictions: linear_probe(p, encoder, data, name, live, predictions),
    ("encoder",),
    {"encoder": ENCODERS},
    paths=("encoder", "data", "live", "predictions"),
)
