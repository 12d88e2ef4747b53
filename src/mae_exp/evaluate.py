"""Downstream evaluation of a pre-trained encoder on the labeled splits.

Linear probe: the encoder is frozen, so its features are extracted once (no augmentation) and a
BatchNorm (no affine) + linear head is trained on the cached features, as in MAE's protocol.
Fine-tuning: encoder + LayerNorm + linear head trained end to end with crop/flip augmentation.
Both report top-1 accuracy on the test split after the last epoch (no selection on the test set).
Fine-tuning runs in `finetune.processes` processes (see distributed.py): each takes its rows of every
global batch, and its share of the test set; rank 0 alone writes the metrics and the curve.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed
from .augment import crop_and_flip, draw_crops, resize, to_float
from .config import FinetuneConfig, LinearProbeConfig, ModelConfig, Params
from .data import load_meta, load_split
from .model import ViTEncoder
from .progress import console, progress
from .runtime import (adamw, autocast, batches, gather, resident_images, save_csv, save_json, setup,
                      warmup_cosine)


def load_encoder(path: str | Path, p: Params) -> ViTEncoder:
    """An encoder saved by pretrain (or init_random), checked against the current model params."""
    saved = torch.load(path, map_location="cpu", weights_only=False)
    cfg = ModelConfig(**saved["model"])
    if cfg != p.model or saved["input_size"] != p.data.input_size:
        raise ValueError(f"{path} was trained with model {cfg} at {saved['input_size']} px, but params.yaml "
                         f"asks for {p.model} at {p.data.input_size} px: run `dvc repro` to retrain it")
    encoder = ViTEncoder(cfg, saved["input_size"])
    encoder.load_state_dict(saved["encoder_state"])
    return encoder


@torch.no_grad()
def extract_features(encoder: ViTEncoder, images, input_size: int, device, amp_dtype, batch_size: int,
                     label: str) -> torch.Tensor:
    encoder.eval()
    feats = []
    order = batches(images.shape[0], batch_size, drop_last=False)
    with progress() as bar:
        for idx in bar.track(order, description=f"features {label}"):
            x = resize(to_float(gather(images, idx, device)), input_size)
            with autocast(device, amp_dtype):
                feats.append(encoder.features(x).float())
    return torch.cat(feats)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(dim=1) == labels).float().mean().item()


def linear_probe(p: Params, encoder_path: str | Path, data_root: str | Path, name: str,
                 metrics_path: str | Path, curve_path: str | Path) -> dict:
    cfg: LinearProbeConfig = p.linear_probe
    device, amp_dtype = setup("auto", p.threads, p.seed)
    encoder = load_encoder(encoder_path, p).to(device)
    train, test = load_split(data_root, "train"), load_split(data_root, "test")
    t0 = time.perf_counter()
    x_train = extract_features(encoder, train.images, p.data.input_size, device, amp_dtype, cfg.batch_size, "train")
    x_test = extract_features(encoder, test.images, p.data.input_size, device, amp_dtype, cfg.batch_size, "test")
    y_train = torch.from_numpy(train.labels).to(device)
    y_test = torch.from_numpy(test.labels).to(device)
    num_classes = len(load_meta(data_root)["classes"])

    head = nn.Sequential(nn.BatchNorm1d(x_train.shape[1], affine=False, eps=1e-6),
                         nn.Linear(x_train.shape[1], num_classes)).to(device)
    nn.init.trunc_normal_(head[1].weight, std=0.01)
    optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(p.seed)
    steps_per_epoch = len(batches(len(y_train), cfg.batch_size, drop_last=False))
    total = cfg.epochs * steps_per_epoch
    history = []
    step = 0
    with progress() as bar:
        for epoch in bar.track(range(cfg.epochs), description=f"linear probe {name}"):
            head.train()
            loss_sum = torch.zeros((), device=device)
            for idx in batches(len(y_train), cfg.batch_size, gen, drop_last=False):
                for group in optimizer.param_groups:
                    group["lr"] = warmup_cosine(step, total, 0, cfg.lr)
                idx = idx.to(device)
                loss = F.cross_entropy(head(x_train[idx]), y_train[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach()
                step += 1
            head.eval()
            with torch.no_grad():
                history.append({"epoch": epoch + 1, "train_loss": loss_sum.item() / steps_per_epoch,
                                "train_top1": accuracy(head(x_train), y_train),
                                "test_top1": accuracy(head(x_test), y_test)})
    final = history[-1]
    metrics = {"top1": round(final["test_top1"], 4), "train_top1": round(final["train_top1"], 4),
               "epochs": cfg.epochs, "wall_time_s": round(time.perf_counter() - t0, 2)}
    console.print(f"linear probe {name}: test top-1 {metrics['top1']:.4f}")
    save_csv(history, curve_path)
    save_json(metrics, metrics_path)
    return metrics


class Classifier(nn.Module):
    """Encoder + mean pooling + LayerNorm + linear head (MAE's fine-tuning head)."""

    def __init__(self, encoder: ViTEncoder, num_classes: int):
        super().__init__()
        self.encoder = encoder
        dim = encoder.norm.normalized_shape[0]
        self.fc_norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=2e-5)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc_norm(self.encoder.features(x)))


def finetune(p: Params, encoder_path: str | Path, data_root: str | Path, name: str,
             metrics_path: str | Path, curve_path: str | Path) -> dict:
    cfg: FinetuneConfig = p.finetune
    device, amp_dtype = setup(cfg.precision, p.threads, p.seed)
    num_classes = len(load_meta(data_root)["classes"])
    model = Classifier(load_encoder(encoder_path, p), num_classes).to(device)
    if cfg.compile:
        model.encoder.compile_blocks()
    net = distributed.wrap(model)  # DDP over the processes; `model` itself with one
    train, test = load_split(data_root, "train"), load_split(data_root, "test")
    train_images = resident_images(train.images, device)
    test_images = resident_images(test.images, device)
    y_train = torch.from_numpy(train.labels).to(device)
    y_test = torch.from_numpy(test.labels).to(device)
    n = len(y_train)
    batch_size = min(cfg.batch_size, n)  # the global batch
    if batch_size % distributed.world_size():
        raise ValueError(f"finetune.batch_size is capped at the {n} train images, which finetune.processes "
                         f"({distributed.world_size()}) does not divide; lower finetune.batch_size")
    mine = distributed.shard(batch_size)  # this process's rows of every global batch
    lr = cfg.base_lr * batch_size / 256
    optimizer = adamw(model, lr, cfg.weight_decay, device)
    steps_per_epoch = n // batch_size
    total = cfg.epochs * steps_per_epoch
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    order_gen = torch.Generator().manual_seed(p.seed)
    aug_gen = torch.Generator(device=device).manual_seed(p.seed + 1)
    t0 = time.perf_counter()
    history = []
    with progress(loss=True) as bar:
        task = bar.add_task(f"finetune {name}", total=total, loss="-")
        for epoch in range(cfg.epochs):
            model.train()
            loss_sum = torch.zeros((), device=device)
            for i, idx in enumerate(batches(n, batch_size, order_gen)):
                step = epoch * steps_per_epoch + i
                for group in optimizer.param_groups:
                    group["lr"] = warmup_cosine(step, total, warmup, lr)
                boxes, flip = draw_crops(batch_size, cfg.min_crop_scale, aug_gen, device)  # global batch's
                x = crop_and_flip(to_float(gather(train_images, idx[mine], device)), boxes[mine], flip[mine],
                                  p.data.input_size)
                with autocast(device, amp_dtype):
                    logits = net(x)
                loss = F.cross_entropy(logits.float(), y_train[idx[mine].to(device)], label_smoothing=0.1)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach()
                bar.update(task, advance=1)
            train_loss = distributed.mean(loss_sum).item() / steps_per_epoch
            bar.update(task, loss=f"{train_loss:.4f}")
            top1 = evaluate_classifier(model, test_images, y_test, p.data.input_size, device, amp_dtype, batch_size)
            history.append({"epoch": epoch + 1, "train_loss": train_loss, "test_top1": top1})
            console.print(f"finetune {name} epoch {epoch + 1}/{cfg.epochs}: loss {train_loss:.4f}, test top-1 {top1:.4f}")
    metrics = {"top1": round(history[-1]["test_top1"], 4), "epochs": cfg.epochs,
               "wall_time_s": round(time.perf_counter() - t0, 2)}
    if distributed.is_rank0():
        save_csv(history, curve_path)
        save_json(metrics, metrics_path)
    return metrics


@torch.no_grad()
def evaluate_classifier(model, images, labels, input_size, device, amp_dtype, batch_size) -> float:
    """Test top-1; with several processes each classifies its share of every batch, and the counts add up."""
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)  # summed on the device: one sync at the end
    for idx in batches(len(labels), batch_size, drop_last=False):
        idx = idx.tensor_split(distributed.world_size())[distributed.rank()]
        if len(idx) == 0:
            continue
        x = resize(to_float(gather(images, idx, device)), input_size)
        with autocast(device, amp_dtype):
            correct += (model(x).argmax(dim=1) == labels[idx.to(device)]).sum()
    return distributed.total(correct).item() / len(labels)
