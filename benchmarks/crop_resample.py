"""The training steps' data path alone: uint8 batch in, normalised random-resized crops out, by several methods.

Why augment.crop_and_flip_uint8 is what it is. Every method gets the same uint8 (B, H, W, 3) batch, crop
boxes and flips, and must return the normalised (B, 3, S, S) float crops; they run interleaved (round r
runs each once, `--rounds` rounds of `--calls` calls) so that changes in machine load hit them alike.

  grid_sample  the previous implementation: to_float (permute, .float(), /255, -mean, /std), then
               affine_grid + grid_sample over the whole batch
  roi_align    torchvision.ops.roi_align (the tests' reference resampler), then the flips
  matmul       separable, dense: (S x H) row weights @ image @ (W x S) column weights, batched
  float_sep    to_float, then augment.crop_and_flip: the separable passes below on a float batch
  separable    augment.crop_and_flip_uint8: one converting copy, then two fused embedding_bag passes over
               rows, the normalisation folded into the first (what training runs)

Prints min and median ms per batch and the largest difference from `grid_sample`.

    python benchmarks/crop_resample.py                 # seed (32 x 96 -> 224 px) and default (128 x 32 -> 32 px)
    python benchmarks/crop_resample.py --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mae_exp.training.augment import MEAN, STD, crop_and_flip, crop_and_flip_uint8, draw_crops, to_float  # noqa: E402

CONFIGS = {"seed": (32, 96, 224), "default": (128, 32, 32)}  # batch, stored px, model input px


def grid_sample(u8, boxes, flip, size):
    x = u8.permute(0, 3, 1, 2).float().div_(255)
    x = (x - MEAN[:, None, None]) / STD[:, None, None]
    cx, cy, w, h = boxes.unbind(1)
    theta = torch.zeros(x.shape[0], 2, 3)
    theta[:, 0, 0] = w * (1 - 2 * flip.float())
    theta[:, 0, 2] = cx * 2 - 1
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy * 2 - 1
    grid = F.affine_grid(theta, [x.shape[0], 3, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def roi_align(u8, boxes, flip, size):
    from torchvision.ops import roi_align as align

    x = to_float(u8)
    _, _, h, w = x.shape
    cx, cy, bw, bh = boxes.unbind(1)
    rois = torch.stack(
        [
            torch.arange(len(x), dtype=x.dtype),
            (cx - bw / 2) * w,
            (cy - bh / 2) * h,
            (cx + bw / 2) * w,
            (cy + bh / 2) * h,
        ],
        dim=1,
    )
    out = align(x, rois, output_size=size, spatial_scale=1.0, sampling_ratio=1, aligned=True)
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


def matmul(u8, boxes, flip, size):
    x = to_float(u8)
    _, _, h, w = x.shape
    cx, cy, bw, bh = boxes.unbind(1)

    def weights(start, step, n):  # (B, size, n): bilinear weights as a hat function of the distance
        p = (start[:, None] + (torch.arange(size) + 0.5) * step[:, None] - 0.5).clamp(0, n - 1)
        return (1 - (p[:, :, None] - torch.arange(n)).abs()).clamp_min(0)

    rows = weights((cy - bh / 2) * h, bh * h / size, h)
    cols = weights(torch.where(flip, cx + bw / 2, cx - bw / 2) * w, torch.where(flip, -bw, bw) * w / size, w)
    return rows[:, None] @ x @ cols.transpose(1, 2)[:, None]


def float_sep(u8, boxes, flip, size):
    return crop_and_flip(to_float(u8), boxes, flip, size)


METHODS = {
    "grid_sample": grid_sample,
    "roi_align": roi_align,
    "matmul": matmul,
    "float_sep": float_sep,
    "separable": crop_and_flip_uint8,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--threads", type=int, default=0, help="0: all cores")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=3, help="calls per method per round")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {a.rounds} rounds x {a.calls} calls; "
        f"ms per batch (min / median), max |difference| from grid_sample"
    )
    for name in a.configs:
        batch, stored, size = CONFIGS[name]
        gen = torch.Generator().manual_seed(0)
        u8 = torch.randint(0, 256, (batch, stored, stored, 3), dtype=torch.uint8, generator=gen)
        boxes, flip = draw_crops(batch, 0.2, gen)
        reference = grid_sample(u8, boxes, flip, size)
        times: dict[str, list[float]] = {m: [] for m in METHODS}
        for _ in range(a.rounds):
            for method, fn in METHODS.items():
                t0 = time.perf_counter()
                for _ in range(a.calls):
                    fn(u8, boxes, flip, size)
                times[method].append((time.perf_counter() - t0) / a.calls * 1e3)
        print(f"{name}: batch {batch}, {stored} -> {size} px")
        for method, fn in METHODS.items():
            diff = (fn(u8, boxes, flip, size) - reference).abs().max().item()
            t = times[method][1:]  # the first round warms up
            print(f"  {method:12s} {min(t):8.2f} {statistics.median(t):8.2f}   {diff:.1e}")


if __name__ == "__main__":
    main()
