"""Stage `report`: the comparison table (console), metrics/comparison.json, plots/comparison.png and the curves
of every encoder in one file per plot (metrics/curves/)."""

from mae_exp.evaluation.report import report
from mae_exp.plumbing.cli import run_stage
from mae_exp.recipes import check_all

run_stage(
    lambda p, metrics, json, figure, curves: report(p, metrics, json, figure, curves),
    paths=("metrics", "json", "figure", "curves"),
    check=check_all,
)
