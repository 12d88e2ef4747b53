"""End-to-end fine-tuning of an encoder, MAE's recipe at this scale (facebookresearch/mae `main_finetune.py`).

Encoder + mean of the patch tokens + LayerNorm + linear head (init std 2e-5), AdamW with layer-wise
learning-rate decay (`util/lr_decay.py`: the head at the full rate, block i at layer_decay^(depth + 1 - i),
the patch embedding and tokens at layer_decay^(depth + 1)), stochastic depth (`drop_path`), warmup +
cosine, label smoothing, random-resized-crop + flip. Not used at this scale: mixup, cutmix, RandAugment
and random erasing, regularisers that pay off over MAE's 100 epochs but slow convergence over a few.

It runs in the same training loop as pre-training (train.py): mixed precision with a GradScaler for
fp16, the NaN guard, resumable state in scratch/finetune_<encoder>/<key>/last.pt, Ctrl-C. Validation
accuracy (data.val_fraction of the train split) is logged every epoch; the test split is read once, at
the end. With `finetune.processes` > 1 each process takes its rows of every global batch and its share
of every evaluation; rank 0 alone writes.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed, hf
from .augment import crop_and_flip_uint8, draw_crops
from .config import Params, as_dict, fingerprint
from .data.prepared import labeled, load_meta
from .model import ViTEncoder
from .progress import console
from .optim import FINETUNE_NO_DECAY, adamw, layer_decay, param_groups
from .runtime import autocast, batches, eval_batch, open_live, resident_images, select_rows, setup
from .train import Schedule, Trainer


class Classifier(nn.Module):
    """Encoder + mean pooling + LayerNorm + linear head: MAE's `global_pool` head, except that the encoder's
    final norm is kept (docs/reference.md#tuning says why)."""

    def __init__(self, encoder: ViTEncoder, num_classes: int):
        super().__init__()
        self.encoder = encoder
        dim = encoder.norm.normalized_shape[0]
        self.fc_norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=2e-5)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc_norm(self.encoder.features(x, "mean")))


def finetune(p: Params, encoder_path: str | Path, data_root: str | Path, name: str, live_dir: str | Path,
             scratch: str | Path, test: bool = True) -> dict:
    """Fine-tune, log validation accuracy every epoch, then (`test`) read the test split once."""
    cfg = p.finetune
    device, amp_dtype = setup(cfg.precision, p.threads, p.seed)
    num_classes = len(load_meta(data_root)["classes"])
    encoder = hf.load_any_encoder(encoder_path, p, drop_path=cfg.drop_path)  # a transformers / MAE checkpoint too
    model = Classifier(encoder, num_classes).to(device)
    if cfg.compile:
        model.encoder.compile_blocks()
    net = distributed.wrap(model)  # DDP over the processes; `model` itself with one
    train, val = (labeled(data_root, part, p.data.val_fraction) for part in ("train", "val"))
    images = resident_images(train.images, device)
    y_train = torch.from_numpy(train.labels).to(device)
    n = len(y_train)
    batch_size = cfg.batch_size  # the global batch
    if batch_size > n:  # refused, as pre-training does, rather than quietly capped
        raise ValueError(f"finetune.batch_size ({batch_size}) is larger than the {n} train images left after "
                         f"data.val_fraction holds out {len(val.labels)}: lower finetune.batch_size")
    mine = distributed.shard(batch_size)  # this process's rows of every global batch
    lr = cfg.base_lr * batch_size / 256
    groups = param_groups(model, cfg.weight_decay, layer_decay(p.model.encoder_depth, cfg.layer_decay),
                          FINETUNE_NO_DECAY)
    optimizer = adamw(groups, lr, device)
    steps = n // batch_size
    schedule = Schedule(cfg.epochs, steps, int(cfg.warmup_epochs * steps), lr, cfg.checkpoint_every)
    gens = {"order": torch.Generator().manual_seed(p.seed),
            "augment": torch.Generator(device=device).manual_seed(p.seed + 1)}
    settings = {k: v for k, v in as_dict(cfg).items() if k not in ("checkpoint_every", "compile", "processes")}
    key = fingerprint(p.seed, p.data, p.model, settings, load_meta(data_root).get("digest", ""),
                      hf.weights_digest(encoder_path))
    state = Path(scratch) / key / "last.pt"
    trainer = Trainer(f"finetune {name}", "finetune", model, optimizer, schedule, device, amp_dtype, state, gens,
                      open_live(live_dir))
    trainer.begin(f"{n:,} train / {len(val.labels):,} validation images, {cfg.epochs} epochs of {steps} steps, "
                  f"lr {lr:.2e}, {distributed.describe(device, p.threads)}")

    def step(idx: torch.Tensor, i: int, log: bool):
        boxes, flip = draw_crops(batch_size, cfg.min_crop_scale, gens["augment"], device)  # the global batch's
        x = crop_and_flip_uint8(select_rows(images, idx[mine], device), boxes[mine], flip[mine], p.data.input_size)
        logits = net(x)
        loss = F.cross_entropy(logits.float(), y_train[idx[mine].to(device)], label_smoothing=cfg.label_smoothing)
        return loss, ({"loss": loss.detach()} if log else {})

    def validate(epoch: int) -> dict:
        return {"val_top1": evaluate(model, val.images, val.labels, p.data.input_size, device, amp_dtype)}

    history = trainer.fit(n, batch_size, step, validate)
    summary = {"val_top1": round(history[-1]["val_top1"], 4), "epochs": cfg.epochs,
               "wall_time_s": round(trainer.elapsed, 1)}
    if test:
        split = labeled(data_root, "test", p.data.val_fraction)  # read once, now
        summary["top1"] = round(evaluate(model, split.images, split.labels, p.data.input_size, device, amp_dtype), 4)
        summary["test_images"] = len(split.labels)
    if distributed.is_rank0():
        trainer.live.summary.update(summary)
        trainer.live.end()  # the summary, and DVCLive's own clean-up
    console.print(f"finetune {name}: val top-1 {summary['val_top1']:.4f}"
                  + (f", test top-1 {summary['top1']:.4f}" if test else ""), highlight=False)
    trainer.finish()
    return summary


@torch.no_grad()
def evaluate(model: nn.Module, images, labels, input_size: int, device, amp_dtype, batch_size: int = 256) -> float:
    """Top-1; with several processes each classifies its share of every batch, and the counts add up."""
    model.eval()
    labels = torch.as_tensor(labels, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)  # summed on the device: one sync at the end
    for idx in batches(len(labels), batch_size, drop_last=False):
        idx = idx.tensor_split(distributed.world_size())[distributed.rank()]
        if len(idx) == 0:
            continue
        x = eval_batch(images, idx, input_size, device)
        with autocast(device, amp_dtype):
            correct += (model(x).argmax(dim=1) == labels[idx.to(device)]).sum()
    return distributed.total(correct).item() / len(labels)
