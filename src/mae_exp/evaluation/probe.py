"""Readouts of a frozen encoder: linear probes and weighted kNN, on the class token and on mean-pooled patches.

One feature pass per split gives both poolings (the [cls] token, as MAE's linear probe reads it, and the
mean of the patch tokens), then four readouts of them:
- linear probe, as in facebookresearch/mae `main_linprobe.py`: BatchNorm1d(affine=False) then a linear
  layer initialised with std 0.01, SGD with momentum (LARS there; one linear layer here), warmup + cosine,
  weight decay as the grid gives it. Both poolings' heads, at every (lr, weight decay) of the grid, train
  in one loop on the same batches (train_grid);
- weighted kNN, as DINO (`eval_knn.py`) and solo-learn compute it: cosine similarity, the k nearest
  training features vote for their class with weight exp(similarity / temperature).
Features are extracted once and cached (the encoder is frozen; MAE crops and flips every epoch).

The labeled train split is split into train and validation (data.val_fraction): heads and kNN see only
train. Each readout's settings are searched on validation, the same grids (params.yaml linear_probe: lr x
weight_decay for each pooling's head, knn_k x knn_temperature for each pooling's kNN) for every encoder, so
no encoder reads out at another's best setting. The head kept is the one trained at the chosen point, on
train only (MAE's protocol: validation chooses, it does not train), and the test split is read once, after
every choice is made. The features are cached, so the search costs head training only (`search_s`).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data.prepared import labeled, load_meta
from ..model import ViTEncoder
from ..plumbing.checkpoints import load_encoder
from ..plumbing.config import Params
from ..plumbing.errors import TrainingDiverged, diverged
from ..plumbing.progress import console, progress
from ..plumbing.runtime import autocast, batches, eval_batch, open_live, setup
from ..training.distributed import describe
from ..training.optim import best, grid, warmup_cosine

POOLINGS = ("cls", "mean")
READOUT_NAMES = ("linear_cls", "linear_mean", "knn_cls", "knn_mean")  # measures.READOUTS' keys


@torch.no_grad()
def extract_features(
    encoder: ViTEncoder, images, input_size: int, device, amp_dtype, label: str, batch_size: int = 256
) -> dict[str, torch.Tensor]:
    """All patches, no masking: {"cls": the class token, "mean": the mean of the patch tokens}, one pass."""
    encoder.eval()
    feats = {pooling: [] for pooling in POOLINGS}
    with progress() as bar:
        for idx in bar.track(batches(len(images), batch_size, drop_last=False), description=f"features {label}"):
            x = eval_batch(images, idx, input_size, device)
            with autocast(device, amp_dtype):
                tokens = encoder(encoder.embed(x)).float()
            feats["cls"].append(tokens[:, 0])
            feats["mean"].append(tokens[:, 1:].mean(dim=1))
    return {pooling: torch.cat(f) for pooling, f in feats.items()}


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(dim=1) == labels).float().mean().item()


@torch.no_grad()
def knn_votes(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    x: torch.Tensor,
    num_classes: int,
    k: int,
    temperature: float,
    chunk: int = 1024,
) -> torch.Tensor:
    """Weighted kNN (DINO, solo-learn): cosine similarity to every training feature; the k most similar
    vote for their class with weight exp(similarity / temperature). Returns the votes, (len(x), classes):
    the prediction is the class with the largest sum."""
    train_x = F.normalize(train_x, dim=1)
    k = min(k, len(train_y))
    votes = []
    for part in F.normalize(x, dim=1).split(chunk):
        sim, idx = (part @ train_x.T).topk(k, dim=1)
        v = torch.zeros(len(part), num_classes, device=x.device, dtype=sim.dtype)
        votes.append(v.scatter_add_(1, train_y[idx], (sim / temperature).exp()))
    return torch.cat(votes)


class GridHeads(nn.Module):
    """The linear heads of every grid point on one feature set: MAE's BatchNorm1d(affine=False), shared (it
    has no parameter, so its output does not depend on lr or weight decay), then one linear layer per point,
    held as a (points, dim, classes) weight. forward -> logits (points, batch, classes)."""

    def __init__(self, dim: int, num_classes: int, points: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.weight = nn.Parameter(torch.empty(points, dim, num_classes))
        self.bias = nn.Parameter(torch.zeros(points, num_classes))
        nn.init.trunc_normal_(self.weight, std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bd,pdc->pbc", self.norm(x), self.weight) + self.bias[:, None]

    def point(self, i: int) -> nn.Sequential:
        """Point i's head as one BN + linear module (eval mode)."""
        dim, classes = self.weight.shape[1:]
        head = nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), nn.Linear(dim, classes))
        head = head.to(self.weight.device)
        head[0].load_state_dict(self.norm.state_dict())
        with torch.no_grad():
            head[1].weight.copy_(self.weight[i].T)
            head[1].bias.copy_(self.bias[i])
        return head.eval()


def train_grid(
    xs: dict[str, torch.Tensor],
    y: torch.Tensor,
    num_classes: int,
    epochs: int,
    batch_size: int,
    points: list[tuple[float, float]],
    seed: int,
    on_epoch=None,
) -> tuple[dict[str, GridHeads], dict[tuple[int, str], str]]:
    """A BN + linear head for every feature set and every (lr, weight decay) point, all trained in one loop on
    the same batches: SGD with momentum 0.9 (torch.optim.SGD's update, written out so that each point has its
    own lr and weight decay), warmup + cosine. No two heads share a parameter, so one backward of the summed
    loss trains each as if alone, and a grid costs about what one point does.
    `on_epoch(epoch, heads, train_losses)` after each epoch, train_losses[name]: (points,) tensor.
    Returns the heads and {(point, name): message} for each head whose loss diverged (it trains on, unused)."""
    torch.manual_seed(seed)
    device = y.device
    heads = {name: GridHeads(x.shape[1], num_classes, len(points)).to(device) for name, x in xs.items()}
    lrs = torch.tensor([lr for lr, _ in points], device=device)
    decays = torch.tensor([wd for _, wd in points], device=device)
    momentum = {param: torch.zeros_like(param) for head in heads.values() for param in (head.weight, head.bias)}
    gen = torch.Generator().manual_seed(seed)
    per_epoch = len(batches(len(y), batch_size, drop_last=False))
    total, warmup = epochs * per_epoch, max(1, epochs // 10) * per_epoch  # MAE: 10 of 90 epochs of warmup
    failed: dict[tuple[int, str], str] = {}
    step = 0
    for epoch in range(epochs):
        loss_sums = {name: torch.zeros(len(points), device=device) for name in heads}
        for head in heads.values():
            head.train()
        for idx in batches(len(y), batch_size, gen, drop_last=False):
            idx = idx.to(device)
            losses = {}
            for name, head in heads.items():
                logits = head(xs[name][idx])  # (points, batch, classes)
                losses[name] = (
                    F.cross_entropy(logits.flatten(0, 1), y[idx].repeat(len(points)), reduction="none")
                    .view(len(points), -1)
                    .mean(dim=1)
                )
            for head in heads.values():
                head.zero_grad(set_to_none=True)
            sum(loss.sum() for loss in losses.values()).backward()
            with torch.no_grad():
                factor = warmup_cosine(step, total, warmup, 1.0)  # the schedule; each point's lr scales it
                for param, buf in momentum.items():
                    shape = (-1,) + (1,) * (param.dim() - 1)
                    buf.mul_(0.9).add_(param.grad + decays.view(shape) * param)  # SGD: d = g + wd p; buf = m buf + d
                    param.sub_(factor * lrs.view(shape) * buf)
            for name, loss in losses.items():
                loss_sums[name] += loss.detach()
            step += 1
        for head in heads.values():
            head.eval()
        train_losses = {name: s / per_epoch for name, s in loss_sums.items()}
        # A diverged head would report chance accuracy as the encoder's. Cross-entropy starts near ln(classes)
        # (logits near 0) and only falls when the head learns: 100 times that is divergence, NaN or not.
        for name, per_point in train_losses.items():
            for i, train_loss in enumerate(per_point.tolist()):
                if diverged(train_loss, 100 * math.log(num_classes)) and (i, name) not in failed:
                    failed[(i, name)] = (
                        f"linear probe ({name} head): the training loss became {train_loss:.3g} in "
                        f"epoch {epoch + 1} (from about {math.log(num_classes):.2f}); lower "
                        f"linear_probe.lr (now {points[i][0]:g})"
                    )
        if len(failed) == len(points) * len(heads):
            break
        if on_epoch:
            with torch.no_grad():
                on_epoch(epoch, heads, train_losses)
    return heads, failed


def train_heads(
    xs: dict[str, torch.Tensor],
    y: torch.Tensor,
    num_classes: int,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    on_epoch=None,
) -> dict[str, nn.Module]:
    """One BN (no affine) + linear head per feature set at one (lr, weight decay), trained in one loop on the
    same batches (train_grid with one point). `on_epoch(epoch, heads, train_losses)` after each epoch. A
    head whose loss diverges stops the run (TrainingDiverged)."""

    def each_epoch(epoch: int, heads: dict[str, GridHeads], train_losses: dict[str, torch.Tensor]) -> None:
        on_epoch(
            epoch,
            {name: head.point(0) for name, head in heads.items()},
            {name: loss[0].item() for name, loss in train_losses.items()},
        )

    heads, failed = train_grid(
        xs, y, num_classes, epochs, batch_size, [(lr, weight_decay)], seed, each_epoch if on_epoch else None
    )
    if failed:
        raise TrainingDiverged(next(iter(failed.values())))
    return {name: head.point(0) for name, head in heads.items()}


def accuracies(logits: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """Top-1 of each grid point's logits (points, n, classes)."""
    return (logits.argmax(dim=-1) == labels).float().mean(dim=1).tolist()


def linear_probe(p: Params, encoder_path: str | Path, data_root: str | Path, name: str, live_dir: str | Path) -> dict:
    """Every readout of one encoder, each at the setting of its grid that scores best on validation; DVCLive
    logs the chosen heads' curves and a flat summary: `{linear,knn}_{cls,mean}_{val_,}top1` (validation,
    test; see measures.READOUTS), `chosen` (each readout's setting) and `search` (every grid point's
    validation top-1). The same grids for every encoder; the test split is read once, after choosing."""
    cfg = p.linear_probe
    device, amp_dtype = setup("auto", p.threads, p.seed)
    encoder = load_encoder(encoder_path, p).to(device)
    head_points = grid(lr=cfg.lr, weight_decay=cfg.weight_decay)
    knn_points = grid(k=cfg.knn_k, temperature=cfg.knn_temperature)
    console.print(
        f"linear probe {name}: class token and mean-pooled patches, linear heads ({len(head_points)} "
        f"settings of lr x weight decay) and kNN ({len(knn_points)} of k x T), each chosen on "
        f"validation, {describe(device, p.threads)}",
        highlight=False,
        soft_wrap=True,  # one line in a log, whatever the console's width
    )
    t0 = time.perf_counter()
    classes = len(load_meta(data_root)["classes"])
    splits = {part: labeled(data_root, part, p.data.val_fraction) for part in ("train", "val")}
    n = len(splits["train"].labels)
    for key, value in (("batch_size", cfg.batch_size), ("knn_k", max(cfg.knn_k))):  # refused, as finetune's batch is
        if value > n:
            raise ValueError(
                f"linear_probe.{key} ({value}) is larger than the {n} train images left after "
                f"data.val_fraction holds out {len(splits['val'].labels)}: lower linear_probe.{key}"
            )
    feats = {
        part: extract_features(encoder, s.images, p.data.input_size, device, amp_dtype, part)
        for part, s in splits.items()
    }
    labels = {part: torch.from_numpy(s.labels).to(device) for part, s in splits.items()}
    t_features = time.perf_counter() - t0

    def knn_top1(pooling: str, x: torch.Tensor, y: torch.Tensor, k: int, temperature: float) -> float:
        return accuracy(knn_votes(feats["train"][pooling], labels["train"], x, classes, k, temperature), y)

    # every grid point, scored on validation; heads and kNN see train only (MAE: train, validation to choose)
    curves = []  # per epoch: {pooling: (train losses, train top-1s, val top-1s), one value per grid point}

    def record(epoch: int, trained: dict[str, GridHeads], train_losses: dict[str, torch.Tensor]) -> None:
        curves.append(
            {
                pool: (
                    train_losses[pool].tolist(),
                    accuracies(head(feats["train"][pool]), labels["train"]),
                    accuracies(head(feats["val"][pool]), labels["val"]),
                )
                for pool, head in trained.items()
            }
        )

    heads, failed = train_grid(
        feats["train"],
        labels["train"],
        classes,
        cfg.epochs,
        cfg.batch_size,
        [(pt["lr"], pt["weight_decay"]) for pt in head_points],
        p.seed,
        record,
    )
    val = {}  # readout -> validation top-1 at each of its grid points (None: diverged)
    for pool in POOLINGS:
        val[f"linear_{pool}"] = [
            None if (i, pool) in failed else round(curves[-1][pool][2][i], 4) for i in range(len(head_points))
        ]
        val[f"knn_{pool}"] = [round(knn_top1(pool, feats["val"][pool], labels["val"], **pt), 4) for pt in knn_points]
    at = {readout: best(scores) for readout, scores in val.items()}  # the chosen point of each readout
    for pool in POOLINGS:
        if at[f"linear_{pool}"] is None:  # every lr diverged: the stage stops, as with one lr
            raise TrainingDiverged(
                failed[(0, pool)] + (", and so did every other grid point" if len(head_points) > 1 else "")
            )
    points = {readout: head_points if readout.startswith("linear") else knn_points for readout in READOUT_NAMES}
    chosen = {readout: points[readout][at[readout]] for readout in READOUT_NAMES}
    search = {
        readout: {
            **{axis: [pt[axis] for pt in points[readout]] for axis in points[readout][0]},
            "val_top1": val[readout],
        }
        for readout in READOUT_NAMES
    }
    t_search = time.perf_counter() - t0 - t_features

    live = open_live(live_dir)
    for epoch in range(cfg.epochs):  # the chosen heads' curves, as one run would have logged them
        live.step = epoch + 1
        for pool in POOLINGS:
            loss, train_top1, val_top1 = (values[at[f"linear_{pool}"]] for values in curves[epoch][pool])
            live.log_metric(f"linear_{pool}_train_loss", loss)
            live.log_metric(f"linear_{pool}_train_top1", train_top1)
            live.log_metric(f"linear_{pool}_val_top1", val_top1)
    summary = {f"{readout}_val_top1": val[readout][at[readout]] for readout in READOUT_NAMES}

    test = labeled(data_root, "test", p.data.val_fraction)  # read once, now that every choice is made
    x_test = extract_features(encoder, test.images, p.data.input_size, device, amp_dtype, "test")
    y_test = torch.from_numpy(test.labels).to(device)
    with torch.no_grad():
        for pool in POOLINGS:
            summary[f"linear_{pool}_top1"] = round(
                accuracy(heads[pool].point(at[f"linear_{pool}"])(x_test[pool]), y_test), 4
            )
            summary[f"knn_{pool}_top1"] = round(knn_top1(pool, x_test[pool], y_test, **chosen[f"knn_{pool}"]), 4)
    live.summary.update(summary)
    live.summary.update(
        {
            "chosen": chosen,
            "search": search,
            "epochs": cfg.epochs,
            "test_images": len(test.labels),
            "search_s": round(t_search, 1),
            "wall_time_s": round(time.perf_counter() - t0, 1),
        }
    )
    live.end()
    for readout in READOUT_NAMES:
        setting = ", ".join(f"{k} {v:g}" for k, v in chosen[readout].items())
        console.print(
            f"{name} {readout} ({setting}): val top-1 {summary[f'{readout}_val_top1']:.4f}, test top-1 "
            f"{summary[f'{readout}_top1']:.4f}",
            highlight=False,
        )
    console.print(f"({len(test.labels):,} test images)", highlight=False)
    return dict(live.summary)
