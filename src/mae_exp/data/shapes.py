"""The embedded `shapes` dataset: ten outlines drawn on random backgrounds, generated from the seed."""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import DataConfig
from ..progress import progress
from .prepared import LABELED, SPLITS, PreparedWriter

SHAPE_CLASSES = ("disk", "ring", "square", "triangle", "star", "plus", "crescent", "ell", "arrow", "half_disk")


def _regular_polygon(u, v, sides: int, radius: float):
    inside = torch.ones_like(u, dtype=torch.bool)
    for k in range(sides):
        theta = 2 * math.pi * k / sides
        inside &= u * math.cos(theta) + v * math.sin(theta) < radius * math.cos(math.pi / sides)
    return inside


def _shape_mask(cls: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Membership of local coordinates (u, v) in [-1, 1]^2 for shape class `cls`."""
    r = torch.sqrt(u * u + v * v)
    name = SHAPE_CLASSES[cls]
    if name == "disk":
        return r < 0.9
    if name == "ring":
        return (r < 0.95) & (r > 0.55)
    if name == "square":
        return torch.maximum(u.abs(), v.abs()) < 0.75
    if name == "triangle":
        return _regular_polygon(u, v + 0.15, 3, 0.95)
    if name == "star":
        theta = torch.atan2(v, u)
        t = torch.frac(theta * 5 / (2 * math.pi) + 10.0)
        spike = 1 - 2 * (t - 0.5).abs()
        return r < 0.38 + 0.62 * spike
    if name == "plus":
        return ((u.abs() < 0.28) & (v.abs() < 0.9)) | ((v.abs() < 0.28) & (u.abs() < 0.9))
    if name == "crescent":
        return (r < 0.9) & ((u - 0.4) ** 2 + v ** 2 > 0.7 ** 2)
    if name == "ell":
        return ((u > -0.8) & (u < -0.3) & (v.abs() < 0.85)) | ((u > -0.8) & (u < 0.7) & (v > 0.35) & (v < 0.85))
    if name == "arrow":
        shaft = (v.abs() < 0.18) & (u > -0.9) & (u < 0.15)
        head = (u >= 0.1) & (u < 0.9) & (v.abs() < (0.9 - u) * 0.85)
        return shaft | head
    if name == "half_disk":
        return (r < 0.9) & (v > -0.2)
    raise ValueError(cls)


def render_shapes(labels: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """(N,) class labels -> (N, size, size, 3) uint8 images.

    The label is carried only by the outline: colour, scale, position, rotation, background texture
    and clutter are drawn independently of it, so colour statistics cannot tell the classes apart.
    """
    n, g = labels.shape[0], generator
    ss = 2  # supersampling for anti-aliased edges
    s = size * ss

    def rand(*shape):
        return torch.rand(*shape, generator=g)

    # background: a random colour with a smooth low-frequency texture of random hue, plus fine grain
    lowres = rand(n, 1, 4, 4)
    texture = F.interpolate(lowres, size=(s, s), mode="bicubic", align_corners=False).clamp(0, 1)
    c0 = rand(n, 3, 1, 1)
    c1 = (c0 + 0.3 * (rand(n, 3, 1, 1) - 0.5)).clamp(0, 1)
    img = c0 + (c1 - c0) * texture
    img = img + 0.06 * (rand(n, 1, s, s) - 0.5)
    background = (c0 + c1) / 2

    ys, xs = torch.meshgrid(torch.linspace(-1, 1, s), torch.linspace(-1, 1, s), indexing="ij")
    xs, ys = xs[None], ys[None]

    def local_coords(scale):
        """Random rotation and position: image coordinates -> the object's own frame."""
        angle = rand(n) * 2 * math.pi
        cx = (rand(n) * 2 - 1) * (1 - scale)
        cy = (rand(n) * 2 - 1) * (1 - scale)
        dx, dy = xs - cx[:, None, None], ys - cy[:, None, None]
        cos, sin = angle.cos()[:, None, None], angle.sin()[:, None, None]
        return (cos * dx + sin * dy) / scale[:, None, None], (-sin * dx + cos * dy) / scale[:, None, None]

    def paint(img, alpha):
        colour = rand(n, 3, 1, 1)
        # keep the object visible: a colour too close to the background is replaced by its opposite
        close = (colour - background).norm(dim=1, keepdim=True) < 0.35
        colour = torch.where(close, 1 - background, colour)
        return img * (1 - alpha) + colour * alpha

    # clutter: up to two small strokes or blobs, behind the shape
    for _ in range(2):
        present = (rand(n) < 0.6).float()[:, None, None, None]
        u, v = local_coords(0.06 + 0.08 * rand(n))
        blob = ((u.abs() < 1) & (v.abs() < 0.25) | (u * u + v * v < 0.3)).float()[:, None]
        img = paint(img, blob * present)

    u, v = local_coords(0.45 + 0.3 * rand(n))
    alpha = torch.zeros(n, 1, s, s)
    for cls in labels.unique().tolist():
        idx = labels == cls
        alpha[idx] = _shape_mask(cls, u[idx], v[idx]).float()[:, None]
    img = paint(img, alpha)

    img = F.avg_pool2d(img, ss).clamp(0, 1)
    return (img * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def generate_shapes(cfg: DataConfig, seed: int, out: str | Path, chunk: int = 1024) -> Path:
    sizes = {"unlabeled": cfg.shapes.unlabeled, "train": cfg.shapes.train, "test": cfg.shapes.test}
    with PreparedWriter(out) as writer, progress() as bar:
        task = bar.add_task("generating shapes", total=sum(sizes.values()))
        for split_index, split in enumerate(SPLITS):
            n = sizes[split]
            g = torch.Generator().manual_seed(seed * 1000 + split_index)
            labels = (torch.arange(n) % len(SHAPE_CLASSES))[torch.randperm(n, generator=g)]
            with writer.images(split, n, cfg.image_size) as sink:
                for start in range(0, n, chunk):
                    stop = min(n, start + chunk)
                    sink.write(render_shapes(labels[start:stop], cfg.image_size, g).numpy())
                    bar.advance(task, stop - start)
            if split in LABELED:
                writer.labels(split, labels.numpy())
        return writer.commit({"source": "shapes", "image_size": cfg.image_size, "classes": list(SHAPE_CLASSES),
                              "seed": seed})
