"""Optimisation, as MAE does it: AdamW weight-decay groups (pre-training: timm's `add_weight_decay`, as
`main_pretrain.py` calls it; fine-tuning: `util/lr_decay.py`'s `param_groups_lrd`, with layer-wise lr decay),
and the per-step linear warmup + half-cosine (`util/lr_sched.py`).
And the readouts' search over their settings (`grid`, `best`): the same for every encoder."""

from __future__ import annotations

import itertools
import math

import torch


def warmup_cosine(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warmup to `peak` over `warmup` steps, then half a cosine down to 0 at `total`. MAE's
    `adjust_learning_rate` at the fractional epoch step / steps_per_epoch, with min_lr 0, except that
    during warmup this is MAE's value one step later: no step is taken at lr 0."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def layer_decay(depth: int, decay: float):
    """Parameter name -> learning-rate factor, as MAE's `param_groups_lrd` assigns layers: the patch
    embedding and tokens are layer 0, block i is layer i + 1, everything after the blocks is depth + 1."""

    def scale(name: str) -> float:
        if name.startswith(("encoder.cls_token", "encoder.patch_embed")):  # pos_embed: a fixed buffer, not here
            layer = 0
        elif name.startswith("encoder.blocks."):
            layer = int(name.split(".")[2]) + 1
        else:  # the encoder's final norm, fc_norm, the head
            layer = depth + 1
        return decay ** (depth + 1 - layer)

    return scale


FINETUNE_NO_DECAY = ("encoder.cls_token",)  # MAE's VisionTransformer.no_weight_decay(), less pos_embed (a buffer)


def param_groups(
    model: torch.nn.Module, weight_decay: float, layer_scale=None, no_decay: tuple[str, ...] = ()
) -> list[dict]:
    """AdamW groups. No weight decay on 1-D parameters (norms, biases), biases, and the names in `no_decay`.
    Pre-training passes none, as MAE's `main_pretrain.py` (timm's `add_weight_decay`): its cls and mask
    tokens ARE decayed. Fine-tuning passes FINETUNE_NO_DECAY and `layer_scale` (parameter name -> learning-
    rate factor, the layer-wise decay), as MAE's `param_groups_lrd`: one group per (decay, factor)."""
    groups: dict[tuple, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = 0.0 if p.ndim <= 1 or name.endswith(".bias") or name in no_decay else weight_decay
        scale = layer_scale(name) if layer_scale else 1.0
        group = groups.setdefault((decay, scale), {"params": [], "weight_decay": decay, "lr_scale": scale})
        group["params"].append(p)
    return list(groups.values())


def adamw(groups: list[dict], lr: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW with MAE's betas; each group's lr is lr x its `lr_scale`, set every step by train.Trainer."""
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=device.type == "cuda")


# ---- the readouts' search (issue 31): a grid of settings, each scored on the validation split (data.val_fraction
# of train), the best chosen before the test split is read; the probe, kNN and fine-tuning share it


def grid(**axes) -> list[dict]:
    """Every combination of the axes' values, in a fixed order (the last axis varies fastest)."""
    names = list(axes)
    return [dict(zip(names, values)) for values in itertools.product(*(axes[n] for n in names))]


def best(scores: list[float | None], points: list[dict] | None = None) -> int | None:
    """Index of the highest score; None scores (a diverged run) never win; None when every score is None. A tie
    goes to the tied point nearest the middle of its grid (`points`: each axis's values ranked, the distances
    from their middle summed), then to the earliest: a first-point rule would push every tie to an edge."""
    valid = [i for i, score in enumerate(scores) if score is not None]
    if not valid:
        return None
    top = max(scores[i] for i in valid)
    tied = [i for i in valid if scores[i] == top]
    if points is None or len(tied) == 1:
        return tied[0]

    def off_middle(i: int) -> float:
        distance = 0.0
        for axis, value in points[i].items():
            values = sorted({pt[axis] for pt in points})
            if len(values) > 1:
                distance += abs(values.index(value) - (len(values) - 1) / 2) / (len(values) - 1)
        return distance

    return min(tied, key=lambda i: (off_middle(i), i))
