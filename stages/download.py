"""Stage `download`: prepare the dataset named by data.source into data/prepared."""
from mae_exp.cli import run_stage
from mae_exp.data import prepare

run_stage(lambda p: prepare(p.data, p.seed, "data/prepared"))
