"""The embedded `shapes` dataset: ten kinds of object, each a layout of simple parts, on natural-looking
backgrounds, generated from the seed.

Why it looks like this: a random (untrained) encoder already separates classes that differ in colour or
texture statistics, so here those are drawn independently of the class; and nothing is learned in a few
CPU minutes if the class hides in clutter or arbitrary rotations. The class is the arrangement of parts
that all classes share (disks, bars, boxes, triangles), which is what masked modelling must learn from
context: to fill in a masked wheel or roof, the model has to know what object it is looking at.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from ..plumbing.config import DataConfig
from ..plumbing.progress import progress
from .prepared import LABELED, SPLITS, PreparedWriter

SHAPE_CLASSES = ("house", "tree", "mushroom", "snowman", "car", "dumbbell", "lollipop", "table", "fish", "bottle")

# Each class is an object made of parts; a part is (kind, centre u, centre v, half-width, half-height) in the
# object's own frame, u to the right and v down, both in [-1, 1]. Kinds: E ellipse, R rectangle, H upper half
# of an ellipse, T triangle pointing up, L triangle pointing left. Classes share their parts (disks, bars,
# boxes): what tells them apart is how the parts are laid out.
SHAPE_PARTS = {
    "house": [("R", 0, 0.4, 0.6, 0.5), ("T", 0, -0.5, 0.75, 0.4)],
    "tree": [("R", 0, 0.55, 0.12, 0.4), ("E", 0, -0.25, 0.65, 0.6)],
    "mushroom": [("H", 0, 0.05, 0.9, 0.75), ("R", 0, 0.45, 0.22, 0.42)],
    "snowman": [("E", 0, 0.4, 0.5, 0.5), ("E", 0, -0.45, 0.35, 0.35)],
    "car": [
        ("R", 0, 0.05, 0.9, 0.3),
        ("R", -0.05, -0.4, 0.45, 0.2),
        ("E", -0.55, 0.4, 0.22, 0.22),
        ("E", 0.55, 0.4, 0.22, 0.22),
    ],
    "dumbbell": [("E", -0.65, 0, 0.3, 0.3), ("E", 0.65, 0, 0.3, 0.3), ("R", 0, 0, 0.6, 0.09)],
    "lollipop": [("E", 0, -0.45, 0.45, 0.45), ("R", 0, 0.45, 0.06, 0.5)],
    "table": [("R", 0, -0.4, 0.9, 0.1), ("R", -0.72, 0.25, 0.08, 0.55), ("R", 0.72, 0.25, 0.08, 0.55)],
    "fish": [("E", -0.2, 0, 0.65, 0.38), ("L", 0.7, 0, 0.25, 0.4)],
    "bottle": [("R", 0, 0.35, 0.38, 0.55), ("R", 0, -0.45, 0.13, 0.35), ("T", 0, -0.2, 0.38, 0.1)],
}


def _part(kind: str, u: torch.Tensor, v: torch.Tensor, cx, cy, a, b) -> torch.Tensor:
    x, y = (u - cx) / a, (v - cy) / b
    if kind == "E":
        return x * x + y * y < 1
    if kind == "R":
        return (x.abs() < 1) & (y.abs() < 1)
    if kind == "H":
        return (x * x + y * y < 1) & (y < 0)
    if kind == "T":  # apex at y = -1, base at y = 1
        return (y.abs() < 1) & (x.abs() < (y + 1) / 2)
    if kind == "L":  # apex at x = -1, base at x = 1
        return (x.abs() < 1) & (y.abs() < (x + 1) / 2)
    raise ValueError(kind)


def pink_noise(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """(n, size, size) noise with a 1/f amplitude spectrum, as natural images have; zero mean, unit std.
    On the generator's device."""
    device = generator.device
    fy = torch.fft.fftfreq(size, device=device)[:, None]
    fx = torch.fft.rfftfreq(size, device=device)[None, :]
    f = (fx**2 + fy**2).sqrt().clamp_min(1.0 / size)
    shape = (n, size, size // 2 + 1)
    spectrum = (
        torch.complex(
            torch.randn(*shape, generator=generator, device=device),
            torch.randn(*shape, generator=generator, device=device),
        )
        / f
    )
    x = torch.fft.irfft2(spectrum, s=(size, size))
    return (x - x.mean(dim=(1, 2), keepdim=True)) / x.std(dim=(1, 2), keepdim=True)


def render_shapes(labels: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """(N,) class labels -> (N, size, size, 3) uint8 images of one object each on a textured background.

    The label is carried only by the object's layout of parts: its colours (per part or shared), shading,
    scale, position, small tilt and mirror image, and the background (two random colours mixed by 1/f
    noise, a light gradient) are drawn independently of it, so colour statistics cannot tell the classes
    apart; a model must see how the parts sit relative to each other.

    Rendered on the generator's device (the images come back there): a CUDA generator renders a large
    set in seconds; its random stream differs from the CPU's, so the same seed gives other images.
    """
    n, g, device = labels.shape[0], generator, generator.device
    labels = labels.to(device)
    ss = 2  # supersampling for anti-aliased edges
    s = size * ss

    def rand(*shape):
        return torch.rand(*shape, generator=g, device=device)

    c0, c1 = rand(n, 3, 1, 1), rand(n, 3, 1, 1)
    img = c0 + (c1 - c0) * torch.sigmoid(0.5 * pink_noise(n, s, g))[:, None]
    img = img + torch.linspace(-1, 1, s, device=device)[None, None, :, None] * (rand(n, 1, 1, 1) - 0.5) * 0.4
    background = img.mean(dim=(2, 3), keepdim=True)

    axis = torch.linspace(-1, 1, s, device=device)
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    scale = 0.7 + 0.25 * rand(n)
    cx = (rand(n) * 2 - 1) * (1 - scale) * 0.9
    cy = (rand(n) * 2 - 1) * (1 - scale) * 0.9
    angle = (rand(n) * 2 - 1) * math.radians(10)
    mirror = torch.where(rand(n) < 0.5, -1.0, 1.0)
    dx, dy = xs[None] - cx[:, None, None], ys[None] - cy[:, None, None]
    cos, sin = angle.cos()[:, None, None], angle.sin()[:, None, None]
    u = (cos * dx + sin * dy) / scale[:, None, None] * mirror[:, None, None]  # the object's own frame
    v = (-sin * dx + cos * dy) / scale[:, None, None]
    light = rand(n) * 2 * math.pi
    shading = 0.25 * (u * light.cos()[:, None, None] + v * light.sin()[:, None, None])[:, None]
    one_colour = rand(n) < 0.4
    base = rand(n, 3, 1, 1)
    for cls in labels.unique().tolist():
        idx = (labels == cls).nonzero().flatten()
        k, sub = len(idx), img[idx]
        for kind, pcx, pcy, a, b in SHAPE_PARTS[SHAPE_CLASSES[cls]]:

            def jitter():
                return 1 + 0.12 * (rand(k, 1, 1) * 2 - 1)  # noqa: B023 (called now) every part's size and place vary a little

            inside = _part(
                kind,
                u[idx],
                v[idx],
                pcx + 0.12 * (rand(k, 1, 1) - 0.5),
                pcy + 0.12 * (rand(k, 1, 1) - 0.5),
                a * jitter(),
                b * jitter(),
            ).float()[:, None]
            colour = torch.where(one_colour[idx, None, None, None], base[idx], rand(k, 3, 1, 1))
            # keep the object visible: a colour too close to the background is replaced by its opposite
            colour = torch.where((colour - background[idx]).norm(dim=1, keepdim=True) < 0.3, 1 - colour, colour)
            sub = sub * (1 - inside) + (colour + shading[idx]).clamp(0, 1) * inside
        img[idx] = sub
    img = img + 0.03 * torch.randn(n, 3, s, s, generator=g, device=device)
    img = F.avg_pool2d(img, ss).clamp(0, 1)
    return (img * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def generate_shapes(
    cfg: DataConfig, seed: int, out: str | Path, chunk: int = 1024, val_fraction: float | None = None
) -> Path:
    sizes = {"unlabeled": cfg.shapes.unlabeled, "train": cfg.shapes.train, "test": cfg.shapes.test}
    with PreparedWriter(out, val_fraction) as writer, progress() as bar:
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
        return writer.commit(
            {"source": "shapes", "image_size": cfg.image_size, "classes": list(SHAPE_CLASSES), "seed": seed}
        )
