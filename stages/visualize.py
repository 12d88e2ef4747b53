"""Stage `visualize`: reconstruction grid under identical masks; masked-region MSE, HF error and PSNR."""

from mae_exp.evaluation.visualize import visualize
from mae_exp.plumbing.cli import run_stage

run_stage(
    lambda p, original, improved, data, grid, live: visualize(
        p, {"original": original, "improved": improved}, data, grid, live
    ),
    paths=("original", "improved", "data", "grid", "live"),
)
