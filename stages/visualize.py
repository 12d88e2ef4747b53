"""Stage `visualize`: reconstruction grid under identical masks; masked-region MSE, HF error and PSNR, for every
recipe of params.yaml's `recipes` (models/<recipe>/checkpoint.pt)."""

from pathlib import Path

from mae_exp.evaluation.visualize import visualize
from mae_exp.plumbing.cli import run_stage
from mae_exp.recipes import check_all

run_stage(
    lambda p, models, data, grid, live: visualize(
        p, {name: Path(models) / name / "checkpoint.pt" for name in p.recipes}, data, grid, live
    ),
    paths=("models", "data", "grid", "live"),
    check=check_all,
)
