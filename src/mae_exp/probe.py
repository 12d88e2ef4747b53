"""Linear probe: a frozen encoder's features, BatchNorm without affine + a linear head (MAE's protocol).

As in facebookresearch/mae `main_linprobe.py`: the head is BatchNorm1d(affine=False) then a linear layer
initialised with std 0.01, trained with SGD-style momentum (LARS there; one linear layer here), warmup +
cosine, no weight decay by default. Two deviations, both for this project's scale: features are
extracted once and cached (the encoder is frozen, so an epoch costs nothing; MAE crops and flips every
epoch), and the feature is `linear_probe.pooling` (mean of the patch tokens, or the [cls] token, as MAE
probes; docs/reference.md#linear-probe-pooling says which was chosen on validation and why).

The labeled train split is split into train and validation (data.val_fraction): the head is trained on
train, every epoch's accuracy is logged on train and validation, and the test split is read once, at
the end (no selection on it: tune on `val_top1`).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .augment import resize, to_float
from .checkpoints import load_encoder
from .config import Params
from .data.prepared import labeled, load_meta
from .distributed import describe
from .errors import TrainingDiverged
from .model import ViTEncoder
from .progress import console, progress
from .optim import warmup_cosine
from .runtime import autocast, batches, gather, open_live, setup


@torch.no_grad()
def extract_features(encoder: ViTEncoder, images, input_size: int, pooling: str, device, amp_dtype,
                     label: str, batch_size: int = 256) -> torch.Tensor:
    encoder.eval()
    feats = []
    with progress() as bar:
        for idx in bar.track(batches(len(images), batch_size, drop_last=False), description=f"features {label}"):
            x = resize(to_float(gather(images, idx, device)), input_size)
            with autocast(device, amp_dtype):
                feats.append(encoder.features(x, pooling).float())
    return torch.cat(feats)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(dim=1) == labels).float().mean().item()


def train_head(x: torch.Tensor, y: torch.Tensor, num_classes: int, epochs: int, batch_size: int, lr: float,
               weight_decay: float, seed: int, on_epoch=None) -> nn.Module:
    """BN (no affine) + linear head on cached features; `on_epoch(epoch, head, train_loss)` after each epoch."""
    torch.manual_seed(seed)
    head = nn.Sequential(nn.BatchNorm1d(x.shape[1], affine=False, eps=1e-6), nn.Linear(x.shape[1], num_classes))
    head = head.to(x.device)
    nn.init.trunc_normal_(head[1].weight, std=0.01)
    nn.init.zeros_(head[1].bias)
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    per_epoch = len(batches(len(y), batch_size, drop_last=False))
    total, warmup = epochs * per_epoch, max(1, epochs // 10) * per_epoch  # MAE: 10 of 90 epochs of warmup
    step = 0
    for epoch in range(epochs):
        head.train()
        loss_sum = torch.zeros((), device=x.device)
        for idx in batches(len(y), batch_size, gen, drop_last=False):
            for group in optimizer.param_groups:
                group["lr"] = warmup_cosine(step, total, warmup, lr)
            idx = idx.to(x.device)
            loss = F.cross_entropy(head(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
            step += 1
        head.eval()
        train_loss = loss_sum.item() / per_epoch
        # A diverged head would report chance accuracy as the encoder's. Cross-entropy starts near ln(classes)
        # (logits near 0) and only falls when the head learns: 100 times that is divergence, NaN or not.
        if not train_loss <= 100 * math.log(num_classes):
            raise TrainingDiverged(f"linear probe: the training loss became {train_loss:.3g} in epoch {epoch + 1} "
                                   f"(from about {math.log(num_classes):.2f}); lower linear_probe.lr (now {lr:g})")
        if on_epoch:
            with torch.no_grad():
                on_epoch(epoch, head, train_loss)
    return head


def linear_probe(p: Params, encoder_path: str | Path, data_root: str | Path, name: str, live_dir: str | Path) -> dict:
    cfg = p.linear_probe
    device, amp_dtype = setup("auto", p.threads, p.seed)
    encoder = load_encoder(encoder_path, p).to(device)
    console.print(f"linear probe {name}: {cfg.pooling} features, {describe(device, p.threads)}",
                  highlight=False)
    t0 = time.perf_counter()
    splits = {part: labeled(data_root, part, p.data.val_fraction) for part in ("train", "val")}
    feats = {part: extract_features(encoder, s.images, p.data.input_size, cfg.pooling, device, amp_dtype, part)
             for part, s in splits.items()}
    labels = {part: torch.from_numpy(s.labels).to(device) for part, s in splits.items()}
    live = open_live(live_dir)

    def log(epoch: int, head: nn.Module, train_loss: float) -> None:
        live.step = epoch + 1
        live.log_metric("train_loss", train_loss)
        live.log_metric("train_top1", accuracy(head(feats["train"]), labels["train"]))
        live.log_metric("val_top1", accuracy(head(feats["val"]), labels["val"]))
        live.make_summary()

    head = train_head(feats["train"], labels["train"], len(load_meta(data_root)["classes"]), cfg.epochs,
                      cfg.batch_size, cfg.lr, cfg.weight_decay, p.seed, log)
    test = labeled(data_root, "test", p.data.val_fraction)  # read once, now
    x_test = extract_features(encoder, test.images, p.data.input_size, cfg.pooling, device, amp_dtype, "test")
    with torch.no_grad():
        top1 = accuracy(head(x_test), torch.from_numpy(test.labels).to(device))
    live.summary.update({"top1": round(top1, 4), "epochs": cfg.epochs, "test_images": len(test.labels),
                         "wall_time_s": round(time.perf_counter() - t0, 1)})
    live.end()
    console.print(f"linear probe {name}: val top-1 {live.summary['val_top1']:.4f}, test top-1 {top1:.4f} "
                  f"({len(test.labels):,} test images)", highlight=False)
    return dict(live.summary)
