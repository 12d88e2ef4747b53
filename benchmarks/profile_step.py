"""Where a pre-training step's time goes: the data path against the model, in one process.

Two measurements of pretrain_vs_hf.py's `ours` and `pipeline` steps (same model, same optimiser):
  1. interleaved step by step (ours, pipeline, ours, ...), so both see the same machine load; pipeline
     monitors its weight-0 loss terms on every LOG_EVERY-th step, as training does. Printed: median ms
     per step and pipeline's step time over ours' (paired by round).
  2. torch.profiler over LOG_EVERY pipeline steps, split into its parts: gather (uint8 rows), draws
     (crops, flips, mask noise), crop_and_flip_uint8, forward (with the loss), backward, AdamW.

    python benchmarks/profile_step.py --config seed --threads 1
    python benchmarks/profile_step.py --config default --rounds 30
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from pretrain_vs_hf import config  # noqa: E402
from torch.profiler import profile, record_function  # noqa: E402

from mae_exp.model import MaskedAutoencoderViT  # noqa: E402
from mae_exp.plumbing.config import load_params  # noqa: E402
from mae_exp.recipes import build  # noqa: E402
from mae_exp.training.augment import crop_and_flip_uint8, draw_crops  # noqa: E402
from mae_exp.training.losses import pretraining_terms  # noqa: E402
from mae_exp.training.optim import adamw, param_groups  # noqa: E402
from mae_exp.training.runtime import select_rows  # noqa: E402
from mae_exp.training.train import LOG_EVERY  # noqa: E402

PARTS = ("gather", "draws", "crop_and_flip_uint8", "forward", "backward", "adamw")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", choices=["default", "seed"], default="seed")
    ap.add_argument("--batch-size", type=int, help="default: 128 for default, 32 for seed")
    ap.add_argument("--threads", type=int, default=0, help="0: all cores")
    ap.add_argument("--rounds", type=int, default=2 * LOG_EVERY, help="steps of each, interleaved")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg, stored, size = config(a.config)
    batch = a.batch_size or (32 if a.config == "seed" else 128)
    device = torch.device("cpu")
    torch.manual_seed(0)
    model = MaskedAutoencoderViT(cfg, size)
    original = build(load_params(Path(__file__).resolve().parents[1] / "params.yaml"), "original")  # weight-0 extras
    optimizer = adamw(param_groups(model, 0.05), 1e-4, device)
    images = np.random.default_rng(0).integers(0, 256, (1024, stored, stored, 3), dtype=np.uint8)
    ready = torch.randn(batch, 3, size, size)
    gen, order = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)

    def part(name):
        return record_function(name)

    def step(pipeline: bool, monitor: bool = False) -> None:
        if pipeline:
            with part("gather"):
                rows = select_rows(images, torch.randperm(len(images), generator=order)[:batch], device)
            with part("draws"):
                boxes, flip = draw_crops(batch, 0.2, gen, device)
                noise = torch.rand(batch, model.num_patches, generator=gen)
            with part("crop_and_flip_uint8"):
                x = crop_and_flip_uint8(rows, boxes, flip, size)
        else:
            x, noise = ready, None
        with part("forward"):
            loss = pretraining_terms(model, x, model(x, 0.75, noise), original, monitor=monitor).total
        with part("backward"):
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        with part("adamw"):
            optimizer.step()

    for _ in range(2):
        step(False), step(True)
    times: dict[str, list[float]] = {"ours": [], "pipeline": []}
    for i in range(a.rounds):
        for name in times:
            t0 = time.perf_counter()
            step(name == "pipeline", monitor=(i + 1) % LOG_EVERY == 0)
            times[name].append((time.perf_counter() - t0) * 1e3)
    ratio = statistics.median(p / o for p, o in zip(times["pipeline"], times["ours"]))
    threads = torch.get_num_threads()
    print(f"{a.config}: batch {batch}, {stored} -> {size} px, {threads} threads, torch {torch.__version__}")
    print(
        f"  interleaved, {a.rounds} steps each: ours {statistics.median(times['ours']):.1f} ms, pipeline "
        f"{statistics.median(times['pipeline']):.1f} ms per step (median); pipeline / ours {ratio:.3f} "
        f"(mean over the rounds {sum(times['pipeline']) / sum(times['ours']):.3f})"
    )

    with profile() as prof:
        for i in range(LOG_EVERY):
            step(True, monitor=i + 1 == LOG_EVERY)
    totals = {e.key: e.cpu_time_total / 1e3 / LOG_EVERY for e in prof.key_averages() if e.key in PARTS}
    whole = sum(totals.values())
    print(f"  profiled, {LOG_EVERY} pipeline steps (the last monitored), ms per step:")
    for name in PARTS:
        print(f"    {name:22s} {totals.get(name, 0):8.1f}  {100 * totals.get(name, 0) / whole:5.1f} %")


if __name__ == "__main__":
    main()
