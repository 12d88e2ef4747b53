"""Block masking (BEiT, Bao et al. 2022), as SMAE masks: rectangles of patches rather than scattered ones.

The model masks by noise (MaskedAutoencoderViT.random_masking keeps the patches with the smallest noise),
so block masking is handed to it as noise: `block_noise` lifts the patches of the blocks above every other
patch, and the model's own count, `visible_count`, decides how many are kept. Blocks are drawn in Python,
one image at a time, from uniforms pulled from the caller's generator in chunks (one device call per
chunk, not per draw), so a batch costs milliseconds and the same generator state gives the same masks.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..model import visible_count

TRIES_PER_BLOCK = 10  # BEiT's: a block that cannot be placed in this many draws is given up


class _Uniforms:
    """U[0, 1) floats from a torch.Generator, fetched in chunks (a draw per call would cost a kernel launch)."""

    def __init__(self, generator: torch.Generator, chunk: int):
        self.generator = generator
        self.chunk = max(64, chunk)
        self.buffer: list[float] = []

    def __call__(self) -> float:
        if not self.buffer:
            draws = torch.rand(self.chunk, generator=self.generator, device=self.generator.device, dtype=torch.float64)
            self.buffer = draws.tolist()[::-1]  # popped from the end: consumed in drawn order
        return self.buffer.pop()

    def index(self, n: int) -> int:
        """Uniform integer in [0, n)."""
        return min(int(self() * n), n - 1)


def _place_block(mask: np.ndarray, room: int, min_block: int, log_aspect: float, uniform: _Uniforms) -> int:
    """BEiT's step: up to TRIES_PER_BLOCK random rectangles, the first that covers between 1 and `room` new
    patches is masked. Returns how many patches it newly masked (0: given up)."""
    grid = mask.shape[0]
    for _ in range(TRIES_PER_BLOCK):
        area = min_block + (max(min_block, room) - min_block) * uniform()
        aspect = math.exp(log_aspect * (2 * uniform() - 1))
        h = int(round(math.sqrt(area * aspect)))
        w = int(round(math.sqrt(area / aspect)))
        if not (1 <= h <= grid and 1 <= w <= grid):
            continue
        top, left = uniform.index(grid - h + 1), uniform.index(grid - w + 1)
        block = mask[top : top + h, left : left + w]
        new = h * w - int(block.sum())
        if 0 < new <= room:  # never past the target: overlap with earlier blocks counts only once
            block[...] = True
            return new
    return 0


def _grow_by_one(mask: np.ndarray, uniform: _Uniforms) -> None:
    """Mask one random unmasked patch beside the mask (any patch if none is masked yet). Where BEiT would stop
    short of the target, this finishes it without scattering isolated patches."""
    padded = np.pad(mask, 1)
    beside = padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
    candidates = np.flatnonzero(~mask & (beside if mask.any() else True))
    mask.flat[candidates[uniform.index(len(candidates))]] = True


def block_mask(
    batch: int,
    grid: int,
    ratio: float,
    generator: torch.Generator,
    min_block: int = 4,
    max_aspect: float = 3.0,
) -> torch.Tensor:
    """(batch, grid*grid) float mask, 1 = masked, on the generator's device: per image, blocks of patches
    (area ~ U(min_block, patches still to mask), log aspect ratio ~ U(-log max_aspect, log max_aspect),
    position uniform) until exactly `grid^2 - visible_count(grid^2, ratio)` patches are masked.

    A block may overlap earlier ones (only its new patches count) and is kept only if it does not pass the
    target. When no block fits in TRIES_PER_BLOCK draws (the last few patches, tiny grids), the mask grows by
    one patch beside it instead, so it always ends on the target and in at most `target` rounds.
    """
    n = grid * grid
    target = n - visible_count(n, ratio)
    uniform = _Uniforms(generator, chunk=batch * 8 * TRIES_PER_BLOCK)
    log_aspect = math.log(max(max_aspect, 1.0))
    masks = np.zeros((batch, grid, grid), dtype=bool)
    for mask in masks:
        masked = 0
        while masked < target:
            new = _place_block(mask, target - masked, min_block, log_aspect, uniform)
            if new == 0:
                _grow_by_one(mask, uniform)
                new = 1
            masked += new
    return torch.from_numpy(masks.reshape(batch, n)).to(device=generator.device, dtype=torch.float32)


def block_noise(noise: torch.Tensor, grid: int, ratio: float, generator: torch.Generator, **kw) -> torch.Tensor:
    """`noise` (B, grid^2) in [0, 1) + block_mask(...) (kw: min_block, max_aspect): the block patches sort after
    every other, so the model at `ratio` masks exactly them (block_mask hits its target count); were the
    counts to differ, the block patches would still be masked first and ties go by the original noise."""
    return noise + block_mask(noise.shape[0], grid, ratio, generator, **kw).to(noise.device, noise.dtype)
