"""Stage `report`: the comparison table (console), metrics/comparison.json and plots/comparison.png."""
from mae_exp.cli import run_stage
from mae_exp.report import report

run_stage(lambda p: report("metrics", "metrics/comparison.json", "plots/comparison.png"))
