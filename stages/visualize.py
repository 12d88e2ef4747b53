"""Stage `visualize`: reconstruction grid under identical masks; masked-region MSE, HF error and PSNR."""
from mae_exp.cli import run_stage
from mae_exp.config import VARIANTS
from mae_exp.visualize import visualize

run_stage(lambda p: visualize(p, {v: f"models/{v}/checkpoint.pt" for v in VARIANTS}, "data/prepared",
                              "plots/reconstruction.png", "metrics/visualize"))
