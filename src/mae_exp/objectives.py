"""The training objectives and the mask-ratio schedule.

Original MAE: masked-patch MSE (in the model). The improved variant adds, with weights from params:
  - a masked high-frequency loss: L1 between the Laplacian of the reconstruction and of the image,
    on masked pixels only, so the decoder is pushed towards sharp edges rather than blurry means;
  - the uniformity loss of Wang & Isola (2020) on L2-normalised pooled encoder tokens, which spreads
    the batch over the hypersphere and discourages collapse of the representation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import VariantConfig

_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def laplacian(imgs: torch.Tensor) -> torch.Tensor:
    """Per-channel 3x3 Laplacian, replicate-padded so borders do not light up."""
    c = imgs.shape[1]
    kernel = _LAPLACIAN.to(imgs.device, imgs.dtype).expand(c, 1, 3, 3)
    return F.conv2d(F.pad(imgs, (1, 1, 1, 1), mode="replicate"), kernel, groups=c)


def patch_mask_to_pixels(mask: torch.Tensor, grid: int, patch_size: int) -> torch.Tensor:
    """(B, L) patch mask (1 = masked) -> (B, 1, H, W) pixel mask."""
    m = mask.reshape(-1, 1, grid, grid)
    return m.repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3)


def masked_laplacian_l1(recon: torch.Tensor, imgs: torch.Tensor, pixel_mask: torch.Tensor) -> torch.Tensor:
    """Mean |lap(recon) - lap(imgs)| over masked pixels (and channels). Zero iff equal edges there."""
    diff = (laplacian(recon.float()) - laplacian(imgs.float())).abs().mean(dim=1, keepdim=True)
    return (diff * pixel_mask).sum() / pixel_mask.sum().clamp_min(1)


def uniformity(embeddings: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """log E[exp(-t ||x - y||^2)] over distinct pairs of L2-normalised embeddings (Wang & Isola).

    0 when every embedding is the same point (collapse); more negative as they spread out.
    """
    z = F.normalize(embeddings.float(), dim=-1)
    return torch.pdist(z, p=2).pow(2).mul(-t).exp().mean().log()


def mask_ratio_at(progress: float, variant: VariantConfig) -> float:
    """Curriculum masking: linear from mask_ratio_start to mask_ratio over the first
    `curriculum_fraction` of training (progress in [0, 1]), then constant."""
    if variant.curriculum_fraction <= 0:
        return variant.mask_ratio
    ramp = min(1.0, max(0.0, progress / variant.curriculum_fraction))
    return variant.mask_ratio_start + ramp * (variant.mask_ratio - variant.mask_ratio_start)
