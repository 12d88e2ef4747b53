"""Stage `visualize`: reconstruction grid under identical masks; masked-region MSE, HF error and PSNR."""
from mae_exp.cli import run_stage
from mae_exp.visualize import visualize

run_stage(lambda p, original, improved, data, grid, live:
          visualize(p, {"original": original, "improved": improved}, data, grid, live),
          paths=("original", "improved", "data", "grid", "live"))
