"""Batched augmentation on the training device: one grid_sample call per batch, no per-image Python.

Random-resized-crop (scale and aspect ratio as torchvision's RandomResizedCrop) and horizontal flip
are expressed as one affine map per sample; `affine_grid` + `grid_sample` then resample the whole batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# ImageNet statistics: the usual choice for MAE inputs; the per-patch target normalisation makes
# the loss insensitive to this choice anyway.
MEAN = torch.tensor([0.485, 0.456, 0.406])
STD = torch.tensor([0.229, 0.224, 0.225])


def to_float(batch_uint8: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float, normalised."""
    x = batch_uint8.permute(0, 3, 1, 2).float().div_(255)
    return (x - MEAN.to(x.device)[:, None, None]) / STD.to(x.device)[:, None, None]


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Normalised (B, 3, H, W) -> [0, 1] for display and PSNR."""
    return (x * STD.to(x.device)[:, None, None] + MEAN.to(x.device)[:, None, None]).clamp(0, 1)


def random_crop_boxes(n: int, min_scale: float, generator: torch.Generator | None = None,
                      ratio: tuple[float, float] = (3 / 4, 4 / 3), device=None) -> torch.Tensor:
    """(n, 4) boxes (cx, cy, w, h) as fractions of the image, like RandomResizedCrop, vectorised.

    Area fraction ~ U(min_scale, 1), log aspect ratio ~ U(log 3/4, log 4/3); a box that would not
    fit is shrunk to fit (torchvision retries instead; the difference is in the rare tail).
    """
    u = torch.rand(n, 4, generator=generator, device=device)
    area = min_scale + (1 - min_scale) * u[:, 0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    aspect = log_r.exp()
    w = (area * aspect).sqrt().clamp(max=1.0)
    h = (area / aspect).sqrt().clamp(max=1.0)
    cx = w / 2 + (1 - w) * u[:, 2]
    cy = h / 2 + (1 - h) * u[:, 3]
    return torch.stack([cx, cy, w, h], dim=1)


def crop_and_flip(x: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, out_size: int) -> torch.Tensor:
    """Resample each image of x (B, C, H, W) from its box, mirrored where `flip`, to out_size^2."""
    cx, cy, w, h = boxes.unbind(1)
    sign = 1 - 2 * flip.to(x.dtype)
    theta = torch.zeros(x.shape[0], 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = w * sign  # affine_grid works in [-1, 1]: scale by the box size, shift to its centre
    theta[:, 0, 2] = cx * 2 - 1
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy * 2 - 1
    grid = F.affine_grid(theta, [x.shape[0], x.shape[1], out_size, out_size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def draw_crops(n: int, min_scale: float, generator: torch.Generator | None = None,
               device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The random part of `augment` for n images: crop boxes (n, 4) and flips (n,). Drawn apart from
    the resampling so that every process of a distributed run can draw a whole global batch's and
    apply only its own rows."""
    boxes = random_crop_boxes(n, min_scale, generator, device=device)
    flip = torch.rand(n, generator=generator, device=device) < 0.5
    return boxes, flip


def augment(x: torch.Tensor, min_scale: float, generator: torch.Generator | None = None,
            out_size: int | None = None) -> torch.Tensor:
    """Random-resized-crop + horizontal flip of a whole batch, resampled to out_size (default: same)."""
    boxes, flip = draw_crops(x.shape[0], min_scale, generator, device=x.device)
    return crop_and_flip(x, boxes, flip, out_size or x.shape[-1])


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    return x if x.shape[-1] == size else F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
