"""SMAE's perceptual loss: a small CNN trained with labels, frozen, whose activations compare a reconstruction
with its image.

SMAE used a SqueezeNet trained on the MAE's own pre-training set; here a few conv-BN-ReLU stages trained on
the labeled train split (its own stage), which is enough to give low-level features that know what the
classes look like. Images are in the model's pixel scale throughout: ImageNet-normalised floats
(training/augment.py's to_float), the space MaskedAutoencoderViT.reconstruct returns.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .augment import to_float


class PerceptualCNN(nn.Module):
    """`depth` stages of conv 3x3 stride 2 - BN - ReLU (width, 2 width, 4 width, ... channels), global average
    pool, linear head."""

    def __init__(self, num_classes: int, width: int = 32, depth: int = 3, in_chans: int = 3):
        super().__init__()
        channels = [in_chans] + [width * 2**i for i in range(depth)]
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())
            for c_in, c_out in zip(channels[:-1], channels[1:])
        )
        self.head = nn.Linear(channels[-1], num_classes)

    def features(self, x: torch.Tensor, layers: int) -> list[torch.Tensor]:
        """The activations of the first `layers` stages (only those are computed)."""
        if not 1 <= layers <= len(self.stages):
            raise ValueError(f"layers must be in 1..{len(self.stages)}, got {layers}")
        out = []
        for stage in self.stages[:layers]:
            x = stage(x)
            out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) normalised images -> (B, num_classes) logits."""
        return self.head(self.features(x, len(self.stages))[-1].mean(dim=(2, 3)))

    def freeze(self) -> PerceptualCNN:
        """Eval mode (BN's running statistics) and no parameter gradients: what perceptual_loss needs."""
        return self.eval().requires_grad_(False)


def perceptual_loss(cnn: PerceptualCNN, recon: torch.Tensor, imgs: torch.Tensor, layers: int) -> torch.Tensor:
    """Mean over the first `layers` stages of MSE(sigmoid(f(recon)), sigmoid(f(imgs))), in fp32.

    Both (B, 3, H, W) in the model's pixel scale. Gradients reach `recon` only: `cnn` must be frozen
    (PerceptualCNN.freeze; a ValueError otherwise, rather than silently training it or its BN statistics),
    and the images' side runs without a graph. The sigmoid bounds every activation, so no stage's scale
    dominates the mean.
    """
    if cnn.training or any(p.requires_grad for p in cnn.parameters()):
        raise ValueError("perceptual_loss needs a frozen CNN: cnn.freeze() (train_perceptual_cnn returns one)")
    with torch.autocast(recon.device.type, enabled=False):
        with torch.no_grad():
            targets = [f.sigmoid() for f in cnn.features(imgs.float(), layers)]
        preds = [f.sigmoid() for f in cnn.features(recon.float(), layers)]
        return torch.stack([F.mse_loss(p, t) for p, t in zip(preds, targets)]).mean()


def _as_tensor(array) -> torch.Tensor:
    return array if isinstance(array, torch.Tensor) else torch.as_tensor(np.asarray(array))


def train_perceptual_cnn(
    images_uint8,
    labels,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    device: torch.device | str,
    width: int = 32,
    depth: int = 3,
) -> PerceptualCNN:
    """Fit a PerceptualCNN to (N, H, W, 3) uint8 images (array, ImageRows or tensor) and their (N,) labels: AdamW,
    cosine learning rate, random horizontal flips, full batches only. Returns it frozen (eval, no gradients).

    Deterministic given `seed` on a CPU (initialisation, order and flips all come from it; the global RNG is
    left as it was); on a GPU up to cuDNN's choice of kernels.
    """
    device = torch.device(device)
    images = _as_tensor(images_uint8).to(device)
    targets = _as_tensor(labels).to(device, torch.long)
    n = len(images)
    with torch.random.fork_rng(devices=[]):  # the same initial weights whatever the caller drew before
        torch.manual_seed(seed)
        cnn = PerceptualCNN(int(targets.max()) + 1, width, depth).to(device)
    generator = torch.Generator(device="cpu").manual_seed(seed)

    batch_size = min(batch_size, n)
    steps_per_epoch = n // batch_size  # full batches only: BN statistics from a tail of one or two images are noise
    total = max(1, epochs * steps_per_epoch)
    optimizer = torch.optim.AdamW(cnn.parameters(), lr=lr, weight_decay=0.05)
    cosine = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total)))
    cnn.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        flips = (torch.rand(n, generator=generator) < 0.5).to(device)
        for step in range(steps_per_epoch):
            rows = order[step * batch_size : (step + 1) * batch_size].to(device)
            x = to_float(images[rows])
            x = torch.where(flips[rows][:, None, None, None], x.flip(-1), x)
            loss = F.cross_entropy(cnn(x), targets[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            cosine.step()
    return cnn.freeze()
