"""End-to-end fine-tuning of an encoder, MAE's recipe at this scale (facebookresearch/mae `main_finetune.py`).

Encoder + mean of the patch tokens + LayerNorm + linear head (init std 2e-5), AdamW with layer-wise
learning-rate decay (`util/lr_decay.py`: the head at the full rate, block i at layer_decay^(depth + 1 - i),
the patch embedding and tokens at layer_decay^(depth + 1)), stochastic depth (`drop_path`), warmup +
cosine, label smoothing, random-resized-crop + flip. Not used at this scale: mixup, cutmix, RandAugment
and random erasing, regularisers that pay off over MAE's 100 epochs but slow convergence over a few.

It runs in the same training loop as pre-training (train.py): mixed precision with a GradScaler for
fp16, the NaN guard, resumable state in scratch/finetune_<encoder>/<key>/last.pt, Ctrl-C. Validation
accuracy (data.val_fraction of the train split) is logged every epoch. The lr and layer decay are
searched, the same grid (finetune.base_lr x finetune.layer_decay) for every encoder: one run per point,
on train; the run with the best validation top-1 is kept (its curves go to DVCLive), and the test split is
read once, at the end, with it (its predicted class of every test image saved, `predictions_path`). A stopped
grid resumes its current point; finished points run again.
With `finetune.processes` > 1 each process takes its rows of every global batch and its share of every
evaluation; rank 0 alone writes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.prepared import labeled, load_meta
from ..model import ViTEncoder
from ..plumbing.config import Params, as_dict, fingerprint
from ..plumbing.files import save_predictions
from ..plumbing.progress import console
from ..training import distributed, hf
from ..training.augment import crop_and_flip_uint8, draw_crops
from ..training.optim import FINETUNE_NO_DECAY, adamw, best, grid, layer_decay, param_groups
from ..training.runtime import autocast, batches, eval_batch, open_live, resident_images, select_rows, setup
from ..training.train import Schedule, Trainer


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


def finetune(
    p: Params,
    encoder_path: str | Path,
    data_root: str | Path,
    name: str,
    live_dir: str | Path,
    scratch: str | Path,
    test: bool = True,
    predictions_path: str | Path | None = None,
) -> dict:
    """Fine-tune at every point of the grid (finetune.base_lr x finetune.layer_decay, the same for every
    encoder unless finetune.per_encoder gives this one its own), keep the run with the best validation top-1
    (ties: the point nearest the grid's middle), log its curves, then (`test`) read the test split once, with
    that model. Each run trains on train only: validation chooses."""
    cfg = p.finetune
    device, amp_dtype = setup(cfg.precision, p.threads, p.seed)
    train, val = (labeled(data_root, part, p.data.val_fraction) for part in ("train", "val"))
    n = len(train.labels)
    if cfg.batch_size > n:  # refused, as pre-training does, rather than quietly capped
        raise ValueError(
            f"finetune.batch_size ({cfg.batch_size}) is larger than the {n} train images left after "
            f"data.val_fraction holds out {len(val.labels)}: lower finetune.batch_size"
        )
    own = cfg.grid_for(name)  # finetune.base_lr x layer_decay, or this encoder's per_encoder grid
    points = grid(base_lr=own.base_lr, layer_decay=own.layer_decay)
    val_top1, seconds, logged, best_model = [], [], [], None  # per point; only the best model is kept
    for point in points:
        model, trainer, top1 = _fit(
            p,
            point["base_lr"],
            point["layer_decay"],
            encoder_path,
            data_root,
            name,
            scratch,
            train,
            val,
            device,
            amp_dtype,
            len(points) > 1,
        )
        trainer.finish()  # its state is not needed again: the model, if best, stays in memory
        val_top1.append(top1)
        seconds.append(trainer.elapsed)
        logged.append(trainer.logged)
        if best(val_top1 + [None] * (len(points) - len(val_top1)), points) == len(val_top1) - 1:
            best_model = model
        del model, trainer
    at = best(val_top1, points)
    chosen = points[at]
    summary = {
        "val_top1": round(val_top1[at], 4),
        "epochs": cfg.epochs,
        "chosen": chosen,
        "search": {
            "base_lr": [pt["base_lr"] for pt in points],
            "layer_decay": [pt["layer_decay"] for pt in points],
            "val_top1": [round(v, 4) for v in val_top1],
        },
        "wall_time_s": round(seconds[at], 1),
        "search_s": round(sum(seconds), 1),
    }
    if test:
        split = labeled(data_root, "test", p.data.val_fraction)  # read once, now that the choice is made
        predicted = predict(best_model, split.images, p.data.input_size, device, amp_dtype)
        summary["top1"] = round(float((predicted == split.labels).mean()), 4)
        summary["test_images"] = len(split.labels)
        if predictions_path is not None and distributed.rank() == 0:
            save_predictions(predictions_path, {"finetune": predicted}, split.labels)
    live = open_live(live_dir)
    if live is not None:  # rank 0: the chosen run's curves, as it logged them, and the summary
        for row in logged[at]:
            live.step = row["step"]
            for key, value in row.items():
                if key != "step":
                    live.log_metric(key, value)
        live.summary.update(summary)
        live.end()  # the summary, and DVCLive's own clean-up
    console.print(
        f"finetune {name} (base_lr {chosen['base_lr']:g}, layer_decay {chosen['layer_decay']:g}): val "
        f"top-1 {summary['val_top1']:.4f}" + (f", test top-1 {summary['top1']:.4f}" if test else ""),
        highlight=False,
    )
    return summary


def _fit(
    p: Params,
    base_lr: float,
    decay: float,
    encoder_path,
    data_root,
    name: str,
    scratch,
    train,
    val,
    device,
    amp_dtype,
    label_point: bool,
) -> tuple[Classifier, Trainer, float]:
    """One fine-tuning run at (base_lr, layer decay): the model, its trainer (the logged rows) and its last
    validation top-1. Resumable, from scratch/<key>/last.pt (the key includes the point)."""
    cfg = p.finetune
    torch.manual_seed(p.seed)  # every point starts from the same head and drop-path draws
    num_classes = len(load_meta(data_root)["classes"])
    encoder = hf.load_any_encoder(encoder_path, p, drop_path=cfg.drop_path)  # a transformers / MAE checkpoint too
    model = Classifier(encoder, num_classes).to(device)
    if cfg.compile:
        model.encoder.compile_blocks()
    net = distributed.wrap(model)  # DDP over the processes; `model` itself with one
    images = resident_images(train.images, device)
    y_train = torch.from_numpy(train.labels).to(device)
    n = len(y_train)
    batch_size = cfg.batch_size  # the global batch
    mine = distributed.shard(batch_size)  # this process's rows of every global batch
    lr = base_lr * batch_size / 256
    groups = param_groups(model, cfg.weight_decay, layer_decay(p.model.encoder_depth, decay), FINETUNE_NO_DECAY)
    optimizer = adamw(groups, lr, device)
    steps = n // batch_size
    schedule = Schedule(cfg.epochs, steps, int(cfg.warmup_epochs * steps), lr, cfg.checkpoint_every)
    gens = {
        "order": torch.Generator().manual_seed(p.seed),
        "augment": torch.Generator(device=device).manual_seed(p.seed + 1),
    }
    settings = {k: v for k, v in as_dict(cfg).items() if k not in ("checkpoint_every", "compile", "processes")}
    settings.update(base_lr=base_lr, layer_decay=decay)  # this run's point, not the whole grid
    key = fingerprint(
        p.seed, p.data, p.model, settings, load_meta(data_root).get("digest", ""), hf.weights_digest(encoder_path)
    )
    state = Path(scratch) / key / "last.pt"
    point = f" (base_lr {base_lr:g}, layer_decay {decay:g})" if label_point else ""
    trainer = Trainer(
        f"finetune {name}{point}", "finetune", model, optimizer, schedule, device, amp_dtype, state, gens, None
    )  # logged rows are kept (trainer.logged): the chosen run's go to DVCLive
    trainer.begin(
        f"{n:,} train / {len(val.labels):,} validation images, {cfg.epochs} epochs of {steps} steps, "
        f"lr {lr:.2e}, {distributed.describe(device, p.threads)}"
    )

    def step(idx: torch.Tensor, i: int, log: bool):
        boxes, flip = draw_crops(batch_size, cfg.min_crop_scale, gens["augment"], device)  # the global batch's
        x = crop_and_flip_uint8(select_rows(images, idx[mine], device), boxes[mine], flip[mine], p.data.input_size)
        logits = net(x)
        loss = F.cross_entropy(logits.float(), y_train[idx[mine].to(device)], label_smoothing=cfg.label_smoothing)
        return loss, ({"loss": loss.detach()} if log else {})

    def validate(epoch: int) -> dict:
        return {"val_top1": evaluate(model, val.images, val.labels, p.data.input_size, device, amp_dtype)}

    history = trainer.fit(n, batch_size, step, validate)
    return model, trainer, history[-1]["val_top1"]


@torch.no_grad()
def predict(model: nn.Module, images, input_size: int, device, amp_dtype, batch_size: int = 256) -> np.ndarray:
    """The predicted class of every image (each process classifies them all: the test split is read once)."""
    model.eval()
    out = []
    for idx in batches(len(images), batch_size, drop_last=False):
        with autocast(device, amp_dtype):
            out.append(model(eval_batch(images, idx, input_size, device)).argmax(dim=1).cpu())
    return torch.cat(out).numpy()


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
