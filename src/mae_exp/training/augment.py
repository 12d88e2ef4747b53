"""Batched augmentation on the training device: a few fused kernels per batch, no per-image Python.

Random-resized-crop (scale and aspect ratio as torchvision's RandomResizedCrop) and horizontal flip,
resampled bilinearly with one sample per output pixel at its centre (grid_sample's and
roi_align(aligned=True)'s semantics, border clamped). Bilinear resampling of an axis-aligned box is
separable: each output column is a weighted sum of two source columns, and each output row a weighted sum
of two rows of those. Each pass is one `embedding_bag` (a fused weighted sum of table rows) over the whole
batch's rows, so a 96 -> 224 px batch costs about two passes over its output, several times less than
affine_grid + grid_sample on a CPU (benchmarks/crop_resample.py measures both). Training steps start from
the stored uint8 images (crop_and_flip_uint8): the conversion to float writes the layout the first pass
reads, and the normalisation rides on the first pass's weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# ImageNet statistics: the usual choice for MAE inputs; the per-patch target normalisation makes
# the loss insensitive to this choice anyway.
MEAN = torch.tensor([0.485, 0.456, 0.406])
STD = torch.tensor([0.229, 0.224, 0.225])
# to_float as one multiply-add: (x / 255 - mean) / std = x * SCALE + SHIFT
SCALE = 1 / (255 * STD)
SHIFT = -MEAN / STD


def to_float(batch_uint8: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float, normalised."""
    b, h, w, c = batch_uint8.shape
    # one strided copy converts and transposes: about 3x faster on a CPU than .float() of the permuted view
    # followed by three elementwise passes
    x = torch.empty(b, c, h, w, device=batch_uint8.device).copy_(batch_uint8.permute(0, 3, 1, 2))
    return x.mul_(SCALE.to(x.device)[:, None, None]).add_(SHIFT.to(x.device)[:, None, None])


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Normalised (B, 3, H, W) -> [0, 1] for display and PSNR."""
    return (x * STD.to(x.device)[:, None, None] + MEAN.to(x.device)[:, None, None]).clamp(0, 1)


def random_crop_boxes(
    n: int,
    min_scale: float,
    generator: torch.Generator | None = None,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    device=None,
) -> torch.Tensor:
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


def _taps(start: torch.Tensor, step: torch.Tensor, size: int, out: int):
    """Bilinear taps along one axis for each sample: output j reads source coordinate
    start + (j + 1/2) step - 1/2 (pixel centres; start and step in pixels), clamped to [0, size - 1] as
    grid_sample's border padding does. -> (first index, second index, weight of the second), each (B, out)."""
    j = torch.arange(out, device=start.device, dtype=start.dtype) + 0.5
    p = (start[:, None] + j * step[:, None] - 0.5).clamp(0, size - 1)
    first = p.floor()
    return first.long(), (first.long() + 1).clamp(max=size - 1), p - first


def _lerp_rows(
    table: torch.Tensor,
    shape: tuple[int, int, int],
    first: torch.Tensor,
    second: torch.Tensor,
    frac: torch.Tensor,
    affine: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Rows of B samples x C channels x N, flat in `table` (B*C*N, L), and (B, M) taps into the N rows of
    each sample -> (B, C, M, L): (1 - frac) first row + frac second row, for every sample and channel, in
    one fused kernel (reads two rows, writes one, per output row). With `affine` (scale, shift), each (C,):
    scale_c x that + shift_c, the shift read as a third tap from the table's extra last row of ones."""
    b, c, n = shape
    m = first.shape[1]
    base = torch.arange(b * c, device=table.device).view(b, c, 1, 1) * n  # first row of each (sample, channel)
    rows = base + torch.stack([first, second], dim=-1)[:, None]  # (B, C, M, 2)
    weights = torch.stack([1 - frac, frac], dim=-1)[:, None].expand(b, c, m, 2)
    if affine is not None:
        scale, shift = (t.to(table.device).view(1, c, 1, 1) for t in affine)
        rows = torch.cat([rows, torch.full_like(rows[..., :1], b * c * n)], dim=-1)
        weights = torch.cat([weights * scale, shift.expand(b, c, m, 1)], dim=-1)
    taps = rows.shape[-1]
    out = F.embedding_bag(
        rows.reshape(-1, taps), table, per_sample_weights=weights.reshape(-1, taps).to(table.dtype), mode="sum"
    )
    return out.view(b, c, m, -1)


def _crop_and_flip_columns(
    columns: torch.Tensor,
    shape: tuple[int, int, int, int],
    boxes: torch.Tensor,
    flip: torch.Tensor,
    out_size: int,
    affine=None,
) -> torch.Tensor:
    """The resampling, from the images' columns as rows: `columns` holds (B, C, W, H) = `shape` flat as
    (B*C*W, H) (plus the row of ones `affine` needs), the layout the first pass reads."""
    b, c, w, h = shape
    cx, cy, bw, bh = boxes.to(torch.float32).unbind(1)
    # a mirrored box is read right to left
    x0, x1, fx = _taps(
        torch.where(flip, cx + bw / 2, cx - bw / 2) * w, torch.where(flip, -bw, bw) * w / out_size, w, out_size
    )
    y0, y1, fy = _taps((cy - bh / 2) * h, bh * h / out_size, h, out_size)
    cols = _lerp_rows(columns, (b, c, w), x0, x1, fx, affine)  # (B, C, out, H): the output's columns
    rows = cols.transpose(2, 3).reshape(b * c * h, out_size)  # (B, C, H, out) as rows for the second pass
    return _lerp_rows(rows, (b, c, h), y0, y1, fy)  # (B, C, out, out)


def crop_and_flip(x: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, out_size: int) -> torch.Tensor:
    """Resample each image of float x (B, C, H, W) from its box (cx, cy, w, h as fractions), mirrored where
    `flip`, to out_size^2."""
    b, c, h, w = x.shape
    return _crop_and_flip_columns(x.transpose(2, 3).reshape(b * c * w, h), (b, c, w, h), boxes, flip, out_size)


def crop_and_flip_uint8(
    batch_uint8: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, out_size: int
) -> torch.Tensor:
    """crop_and_flip(to_float(batch_uint8), ...) for stored (B, H, W, 3) uint8 images, in fewer passes: one
    strided copy converts them to float in the transposed layout the first pass reads, and the normalisation
    (an affine map per channel, which bilinear weights summing to 1 commute with) is folded into the first
    pass's weights."""
    b, h, w, c = batch_uint8.shape
    columns = torch.empty(b * c * w + 1, h, device=batch_uint8.device)
    columns[:-1].view(b, c, w, h).copy_(batch_uint8.permute(0, 3, 2, 1))
    columns[-1] = 1  # the row the shift is read from
    return _crop_and_flip_columns(columns, (b, c, w, h), boxes, flip, out_size, affine=(SCALE, SHIFT))


def draw_crops(
    n: int, min_scale: float, generator: torch.Generator | None = None, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The random part of the random-resized-crop + flip for n images: crop boxes (n, 4) and flips (n,).
    Drawn apart from the resampling so that every process of a distributed run can draw a whole global batch's and
    apply only its own rows."""
    boxes = random_crop_boxes(n, min_scale, generator, device=device)
    flip = torch.rand(n, generator=generator, device=device) < 0.5
    return boxes, flip


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    return x if x.shape[-1] == size else F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
