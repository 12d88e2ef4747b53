"""The improved recipe's extra objectives, as pure maths (recipes.py weights them; visualize.py scores with them).

Original MAE: masked-patch MSE (in the model). The improved recipe adds (recipes.py):
  - a masked high-frequency loss: L1 between the Laplacian of the reconstruction and of the image,
    on masked pixels only, so the decoder is pushed towards sharp edges rather than blurry means;
  - the uniformity loss of Wang & Isola (2020) on L2-normalised pooled encoder tokens, which spreads
    the batch over the hypersphere and discourages collapse of the representation.
The SMAE recipe weighs its terms by learned uncertainty (uncertainty_weighted).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def laplacian(imgs: torch.Tensor) -> torch.Tensor:
    """Per-channel 4-neighbour Laplacian, replicate-padded so borders do not light up.

    Written as shifted slices rather than a grouped 3x3 convolution: the same numbers, about 3x
    faster on a CPU, where a depthwise convolution is a slow path.
    """
    p = F.pad(imgs, (1, 1, 1, 1), mode="replicate")
    return p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:] - 4 * imgs


def patch_mask_to_pixels(mask: torch.Tensor, grid: int, patch_size: int) -> torch.Tensor:
    """(B, L) patch mask (1 = masked) -> (B, 1, H, W) pixel mask."""
    m = mask.reshape(-1, 1, grid, grid)
    return m.repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3)


def masked_laplacian_l1(recon: torch.Tensor, imgs: torch.Tensor, mask: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Mean |lap(recon) - lap(imgs)| over the pixels (and channels) of masked patches; 0 iff equal edges there.

    `mask` is the (B, L) patch mask (1 = masked). The Laplacian is linear, so one filter runs over the
    difference; the masked mean is taken per patch, without building a pixel mask.
    """
    err = laplacian(recon.float() - imgs.float()).abs().mean(dim=1)  # (B, H, W)
    b, h, w = err.shape
    rows, cols = h // patch_size, w // patch_size
    per_patch = err.reshape(b, rows, patch_size, cols, patch_size).sum(dim=(2, 4)).reshape(b, rows * cols)
    return (per_patch * mask).sum() / (mask.sum() * patch_size**2).clamp_min(1)


def uniformity(embeddings: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """log E[exp(-t ||x - y||^2)] over distinct pairs of L2-normalised embeddings (Wang & Isola).

    0 when every embedding is the same point (collapse); more negative as they spread out.
    """
    z = F.normalize(embeddings.float(), dim=-1)
    return torch.pdist(z, p=2).pow(2).mul(-t).exp().mean().log()


def uncertainty_weighted(losses: list[torch.Tensor], log_vars: torch.Tensor) -> torch.Tensor:
    """sum_i exp(-s_i) L_i + s_i: losses weighted by learned homoscedastic uncertainty (Kendall et al., 2018),
    as SMAE combines its pixel and perceptual terms (s starting at -1 and -6).

    `log_vars` (one s_i per loss) is trained with the model: a term's weight exp(-s_i) falls as its loss
    grows, and the + s_i keeps s_i from running off to infinity (d/ds_i = 1 - exp(-s_i) L_i, zero at s_i = log L_i).
    """
    if len(losses) != log_vars.numel():
        raise ValueError(f"{len(losses)} losses but {log_vars.numel()} log-variances")
    s = log_vars.reshape(-1).float()
    return (torch.exp(-s) * torch.stack([loss.float() for loss in losses]) + s).sum()
