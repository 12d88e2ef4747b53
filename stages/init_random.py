"""Stage `init_random`: the untrained encoder (same seed as pre-training), the probe's baseline."""

from mae_exp.plumbing.cli import run_stage
from mae_exp.recipes import check_all
from mae_exp.training.pretrain import init_random

run_stage(lambda p, data, out: init_random(p, out, data), paths=("data", "out"), check=check_all)
