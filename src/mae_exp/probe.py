"""Readouts of a frozen encoder: linear probes and weighted kNN, on the class token and on mean-pooled patches.

One feature pass per split gives both poolings (the [cls] token, as MAE's linear probe reads it, and the
mean of the patch tokens), then four readouts of them:
- linear probe, as in facebookresearch/mae `main_linprobe.py`: BatchNorm1d(affine=False) then a linear
  layer initialised with std 0.01, SGD with momentum (LARS there; one linear layer here), warmup + cosine,
  no weight decay by default. Both poolings' heads train in one loop on the same batches;
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

from .checkpoints import load_encoder
from .config import Params
from .data.prepared import labeled, load_meta
from .distributed import describe
from .errors import TrainingDiverged
from .model import ViTEncoder
from .progress import console, progress
from .optim import best, grid, warmup_cosine
from .runtime import autocast, batches, eval_batch, open_live, setup


POOLINGS = ("cls", "mean")
READOUT_NAMES = ("linear_cls", "linear_mean", "knn_cls", "knn_mean")  # measures.READOUTS' keys


@torch.no_grad()
def extract_features(encoder: ViTEncoder, images, input_size: int, device, amp_dtype, label: str,
                     batch_size: int = 256) -> dict[str, torch.Tensor]:
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
def knn_votes(train_x: torch.Tensor, train_y: torch.Tensor, x: torch.Tensor, num_classes: int, k: int,
              temperature: float, chunk: int = 1024) -> torch.Tensor:
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


def train_heads(xs: dict[str, torch.Tensor], y: torch.Tensor, num_classes: int, epochs: int, batch_size: int,
                lr: float, weight_decay: float, seed: int, on_epoch=None,
                diverged: dict[str, str] | None = None) -> dict[str, nn.Module]:
    """One BN (no affine) + linear head per feature set, trained in one loop on the same batches; the heads
    share no parameter, so one backward of the summed loss trains each as if alone.
    `on_epoch(epoch, heads, train_losses)` after each epoch. A head whose loss diverges stops the run
    (TrainingDiverged), or, given a `diverged` dict, is dropped (the others train on) and its message
    recorded there under its name: a grid point that diverges then just loses the search."""
    torch.manual_seed(seed)
    heads = {}
    for name, x in xs.items():
        head = nn.Sequential(nn.BatchNorm1d(x.shape[1], affine=False, eps=1e-6), nn.Linear(x.shape[1], num_classes))
        nn.init.trunc_normal_(head[1].weight, std=0.01)
        nn.init.zeros_(head[1].bias)
        heads[name] = head.to(x.device)
    params = [q for head in heads.values() for q in head.parameters()]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    per_epoch = len(batches(len(y), batch_size, drop_last=False))
    total, warmup = epochs * per_epoch, max(1, epochs // 10) * per_epoch  # MAE: 10 of 90 epochs of warmup
    step = 0
    for epoch in range(epochs):
        loss_sums = {name: torch.zeros((), device=y.device) for name in heads}
        for head in heads.values():
            head.train()
        for idx in batches(len(y), batch_size, gen, drop_last=False):
            for group in optimizer.param_groups:
                group["lr"] = warmup_cosine(step, total, warmup, lr)
            idx = idx.to(y.device)
            losses = {name: F.cross_entropy(head(xs[name][idx]), y[idx]) for name, head in heads.items()}
            optimizer.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
            optimizer.step()
            for name, loss in losses.items():
                loss_sums[name] += loss.detach()
            step += 1
        for head in heads.values():
            head.eval()
        train_losses = {name: s.item() / per_epoch for name, s in loss_sums.items()}
        # A diverged head would report chance accuracy as the encoder's. Cross-entropy starts near ln(classes)
        # (logits near 0) and only falls when the head learns: 100 times that is divergence, NaN or not.
        for name, train_loss in train_losses.items():
            if not train_loss <= 100 * math.log(num_classes):
                message = (f"linear probe ({name} head): the training loss became {train_loss:.3g} in epoch "
                           f"{epoch + 1} (from about {math.log(num_classes):.2f}); lower linear_probe.lr (now {lr:g})")
                if diverged is None:
                    raise TrainingDiverged(message)
                diverged[name] = message
                del heads[name]
        if not heads:
            break
        if on_epoch:
            with torch.no_grad():
                on_epoch(epoch, heads, train_losses)
    return heads


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
    console.print(f"linear probe {name}: class token and mean-pooled patches, linear heads ({len(head_points)} "
                  f"settings of lr x weight decay) and kNN ({len(knn_points)} of k x T), each chosen on "
                  f"validation, {describe(device, p.threads)}", highlight=False)
    t0 = time.perf_counter()
    classes = len(load_meta(data_root)["classes"])
    splits = {part: labeled(data_root, part, p.data.val_fraction) for part in ("train", "val")}
    feats = {part: extract_features(encoder, s.images, p.data.input_size, device, amp_dtype, part)
             for part, s in splits.items()}
    labels = {part: torch.from_numpy(s.labels).to(device) for part, s in splits.items()}
    t_features = time.perf_counter() - t0

    def knn_top1(pooling: str, x: torch.Tensor, y: torch.Tensor, k: int, temperature: float) -> float:
        return accuracy(knn_votes(feats["train"][pooling], labels["train"], x, classes, k, temperature), y)

    # every grid point, scored on validation; heads and kNN see train only (MAE: train, validation to choose)
    heads, curves, diverged = [], [], {}
    for point in head_points:
        curve = []  # per epoch: {pooling: (train loss, train top-1, val top-1)}

        def record(epoch: int, trained: dict[str, nn.Module], train_losses: dict[str, float], curve=curve) -> None:
            curve.append({pool: (train_losses[pool], accuracy(head(feats["train"][pool]), labels["train"]),
                                 accuracy(head(feats["val"][pool]), labels["val"])) for pool, head in trained.items()})

        failed = {}
        heads.append(train_heads(feats["train"], labels["train"], classes, cfg.epochs, cfg.batch_size, point["lr"],
                                 point["weight_decay"], p.seed, record, diverged=failed))
        curves.append(curve)
        for pool, message in failed.items():
            diverged.setdefault(pool, message)
    val = {}  # readout -> validation top-1 at each of its grid points (None: diverged)
    for pool in POOLINGS:
        val[f"linear_{pool}"] = [round(curve[-1][pool][2], 4) if pool in trained else None
                                 for trained, curve in zip(heads, curves)]
        val[f"knn_{pool}"] = [round(knn_top1(pool, feats["val"][pool], labels["val"], **pt), 4) for pt in knn_points]
    at = {readout: best(scores) for readout, scores in val.items()}  # the chosen point of each readout
    for pool in POOLINGS:
        if at[f"linear_{pool}"] is None:  # every lr diverged: the stage stops, as with one lr
            raise TrainingDiverged(diverged[pool] + (", and so did every other grid point" if len(head_points) > 1
                                                     else ""))
    points = {readout: head_points if readout.startswith("linear") else knn_points for readout in READOUT_NAMES}
    chosen = {readout: points[readout][at[readout]] for readout in READOUT_NAMES}
    search = {readout: {**{axis: [pt[axis] for pt in points[readout]] for axis in points[readout][0]},
                        "val_top1": val[readout]} for readout in READOUT_NAMES}
    t_search = time.perf_counter() - t0 - t_features

    live = open_live(live_dir)
    for epoch in range(cfg.epochs):  # the chosen heads' curves, as one run would have logged them
        live.step = epoch + 1
        for pool in POOLINGS:
            loss, train_top1, val_top1 = curves[at[f"linear_{pool}"]][epoch][pool]
            live.log_metric(f"linear_{pool}_train_loss", loss)
            live.log_metric(f"linear_{pool}_train_top1", train_top1)
            live.log_metric(f"linear_{pool}_val_top1", val_top1)
    summary = {f"{readout}_val_top1": val[readout][at[readout]] for readout in READOUT_NAMES}

    test = labeled(data_root, "test", p.data.val_fraction)  # read once, now that every choice is made
    x_test = extract_features(encoder, test.images, p.data.input_size, device, amp_dtype, "test")
    y_test = torch.from_numpy(test.labels).to(device)
    with torch.no_grad():
        for pool in POOLINGS:
            summary[f"linear_{pool}_top1"] = round(accuracy(heads[at[f"linear_{pool}"]][pool](x_test[pool]), y_test), 4)
            summary[f"knn_{pool}_top1"] = round(knn_top1(pool, x_test[pool], y_test, **chosen[f"knn_{pool}"]), 4)
    live.summary.update(summary)
    live.summary.update({"chosen": chosen, "search": search, "epochs": cfg.epochs, "test_images": len(test.labels),
                         "search_s": round(t_search, 1), "wall_time_s": round(time.perf_counter() - t0, 1)})
    live.end()
    for readout in READOUT_NAMES:
        setting = ", ".join(f"{k} {v:g}" for k, v in chosen[readout].items())
        console.print(f"{name} {readout} ({setting}): val top-1 {summary[f'{readout}_val_top1']:.4f}, test top-1 "
                      f"{summary[f'{readout}_top1']:.4f}", highlight=False)
    console.print(f"({len(test.labels):,} test images)", highlight=False)
    return dict(live.summary)
