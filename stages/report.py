"""Stage `report`: the comparison table (console), metrics/comparison.json and plots/comparison.png."""

from mae_exp.evaluation.report import report
from mae_exp.plumbing.cli import run_stage

run_stage(lambda p, metrics, json, figure: report(metrics, json, figure), paths=("metrics", "json", "figure"))
