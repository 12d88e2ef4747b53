"""Stage `report`: the comparison table (console), metrics/comparison.json and plots/comparison.png."""
from mae_exp.cli import run_stage
from mae_exp.report import report

run_stage(lambda p, metrics, json, figure: report(metrics, json, figure), paths=("metrics", "json", "figure"))
