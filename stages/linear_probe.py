"""Stage `linear_probe@<encoder>`: frozen encoder; logistic, BN + linear and kNN readouts of cached features,
each chosen by cross-validation (see probe.py); the test predictions saved."""

from mae_exp.evaluation.probe import linear_probe
from mae_exp.plumbing.cli import run_stage
from mae_exp.plumbing.config import RANDOM
from mae_exp.recipes import check_all

run_stage(
    lambda p, name, encoder, data, live, predictions: linear_probe(p, encoder, data, name, live, predictions),
    ("encoder",),
    {"encoder": lambda p: (RANDOM, *p.recipe_sections())},
    paths=("encoder", "data", "live", "predictions"),
    check=check_all,
)
