"""Stage `download`: prepare the dataset named by data.source into --out (data/prepared)."""

import torch

from mae_exp.data.sources import prepare
from mae_exp.plumbing.cli import run_stage
from mae_exp.plumbing.progress import console
from mae_exp.recipes import check_all


def main(p, out):
    torch.set_num_threads(p.threads or torch.get_num_threads())  # the shapes generator computes with torch
    n = torch.get_num_threads()
    console.print(f"download: data.source {p.data.source}, {n} CPU thread{'s' if n > 1 else ''}", highlight=False)
    prepare(p.data, p.seed, out)


run_stage(main, paths=("out",), check=check_all)
