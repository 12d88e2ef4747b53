"""MAE pre-training of one recipe; one code path for every one (a recipe is its params section, recipes.py).

Resumable state lives outside DVC's declared outputs, in `scratch/pretrain_<recipe>/<key>/last.pt`,
where <key> hashes everything that determines the run (seed, data, model, pretrain, the recipe's section). DVC
deletes declared outputs before it runs a stage, and a stage with persistent outputs is not run-cached;
so the declared outputs (final checkpoint, encoder) are written once, at the end, and a killed run
resumes from scratch/ when `dvc repro` runs it again with the same params (train.py).

With `pretrain.processes` > 1 this runs in every process (distributed.py): each computes its rows of
every global batch, DDP averages the gradients (a hook those of learned loss weights, which DDP does not
wrap), rank 0 alone writes files and logs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoints import save_checkpoint
from ..data.prepared import load_meta, pretraining_set
from ..model import MaskedAutoencoderViT
from ..plumbing.config import Params, as_dict, fingerprint
from ..plumbing.progress import console
from ..recipes import build
from . import distributed, hf
from .augment import crop_and_flip_uint8, draw_crops
from .flops import pretraining_steps, schedule_flops
from .losses import LogVars, loss_weights, masking_noise, pretraining_terms
from .needs import load as load_needs
from .optim import adamw, param_groups
from .runtime import open_live, resident_images, select_rows, setup
from .train import Schedule, Trainer


@dataclass
class Outputs:
    checkpoint: Path  # full model (encoder + decoder), for visualisation
    encoder: Path  # encoder weights, for the probe and fine-tuning
    live: Path  # DVCLive directory: metrics.json and the per-step curves
    scratch: Path  # root of the resumable state


def run_key(p: Params, variant: str, data_digest: str) -> str:
    # checkpoint frequency, compilation and the number of processes do not change what is learned
    # (processes: up to float reduction order, tests/test_distributed.py): a resume may alter them
    schedule = {k: v for k, v in as_dict(p.pretrain).items() if k not in ("checkpoint_every", "compile", "processes")}
    start = hf.weights_digest(p.pretrain.init_from) if p.pretrain.init_from else None  # the weights, not the path
    return fingerprint(p.seed, p.data, p.model, schedule, p.recipe(variant), data_digest, *([start] if start else []))


def pretrain(
    p: Params, variant_name: str, data_root: str | Path, out: Outputs, needs: str | Path | None = None
) -> dict:
    section, cfg = p.recipe(variant_name), p.pretrain
    recipe = build(p, variant_name)  # its settings checked before any work
    device, amp_dtype = setup(cfg.precision, p.threads, p.seed)
    meta = load_meta(data_root)
    images, described = pretraining_set(data_root, p.data.pretrain_splits)
    n = len(images)
    if n < cfg.batch_size:
        raise ValueError(f"pretrain.batch_size ({cfg.batch_size}) is larger than the pre-training set ({described})")
    images = resident_images(images, device)

    model = MaskedAutoencoderViT(p.model, p.data.input_size).to(device)
    if cfg.init_from:  # instead of the seed's initialisation
        console.print(f"pretrain {variant_name}: {hf.init_from(model, cfg.init_from, p.model)}", highlight=False)
    if cfg.compile:
        model.compile_blocks()  # in place: parameter names, and so checkpoints, stay as in eager mode
    net = distributed.wrap(model)  # DDP over the processes; the model itself with one
    mine = distributed.shard(cfg.batch_size)  # this process's rows of every global batch
    lr = cfg.base_lr * cfg.batch_size / 256  # batch_size is the global batch, whatever the number of processes
    frozen = {k: v.to(device) for k, v in (load_needs(needs) if needs else {}).items()}  # stage recipe_needs's
    log_vars = LogVars(recipe.log_vars).to(device) if recipe.log_vars is not None else None
    if log_vars is not None and distributed.world_size() > 1:
        # The learned s_i sit outside DDP (wrapping them would need a forward of their own and rename their
        # checkpoint keys): a hook averages their gradients over the processes in backward, as DDP averages the
        # model's, so every process applies the same step and keeps the same s_i.
        for s in log_vars.parameters():
            s.register_hook(distributed.mean)
    # what the optimiser trains and the resumable state holds: the model, and the learned loss weights if any
    trained = model if log_vars is None else torch.nn.ModuleDict({"mae": model, "log_vars": log_vars})
    optimizer = adamw(param_groups(trained, cfg.weight_decay), lr, device)
    steps = n // cfg.batch_size
    total = pretraining_steps(p, variant_name, n)  # steps_factor stretches the schedule; the last epoch may be partial
    schedule = Schedule(
        math.ceil(total / steps),
        steps,
        int(cfg.warmup_epochs * steps * section.steps_factor),
        lr,
        cfg.checkpoint_every,
        total_steps=total,
    )
    flops = schedule_flops(p.model, p.data.input_size, recipe, cfg.batch_size, total)  # own inputs and rng
    # Both generators are saved in checkpoints, so a resumed run draws what the uninterrupted one would:
    # the epoch order on the CPU; crops, flips and masks on the device. Every process draws the same
    # numbers, for the whole global batch, and takes its rows.
    gens = {
        "order": torch.Generator().manual_seed(p.seed),
        "augment": torch.Generator(device=device).manual_seed(p.seed + 1),
    }
    state = Path(out.scratch) / run_key(p, variant_name, meta.get("digest", "")) / "last.pt"
    trainer = Trainer(
        f"pretrain {variant_name}",
        "pretrain",
        trained,
        optimizer,
        schedule,
        device,
        amp_dtype,
        state,
        gens,
        open_live(out.live),
    )
    trainer.begin(
        f"{described}, {total} steps ({steps} an epoch), {flops:.3g} FLOPs, lr {lr:.2e}, "
        f"{distributed.describe(device, p.threads)}"
    )

    def step(idx: torch.Tensor, i: int, log: bool):
        ratio = recipe.mask_ratio_at(i / schedule.total)
        boxes, flip = draw_crops(cfg.batch_size, cfg.min_crop_scale, gens["augment"], device)
        noise = torch.rand(cfg.batch_size, model.num_patches, generator=gens["augment"], device=device)
        noise = masking_noise(recipe, noise, model.grid, ratio, gens["augment"])  # MAE's as drawn, or blocks
        x = crop_and_flip_uint8(select_rows(images, idx[mine], device), boxes[mine], flip[mine], p.data.input_size)
        terms = pretraining_terms(model, x, net(x, ratio, noise[mine]), recipe, frozen, log_vars, monitor=log)
        return terms.total, ({**terms.logged(log_vars), "mask_ratio": ratio} if log else {})

    history = trainer.fit(n, cfg.batch_size, step)
    final = history[-1]
    summary = {
        "final": {k: final[k] for k in ("loss", *terms_logged(recipe, log_vars))},
        "epochs": cfg.epochs,
        "steps": total,
        "images": n,
        "flops": flops,
        "wall_time_s": round(trainer.elapsed, 1),
        "images_per_s": round(total * cfg.batch_size / trainer.elapsed, 1),
        "resumed_at_epoch": trainer.start_epoch,
        "loss_weights": loss_weights(recipe, log_vars),  # which terms are this recipe's objective (the report)
    }
    if distributed.is_rank0():
        config = {
            "model": as_dict(p.model),
            "input_size": p.data.input_size,
            "variant": variant_name,
            "classes": meta["classes"],
        }
        learned = [{k: v for k, v in row.items() if k != "images_per_s"} for row in history]  # no timing: same
        learned_weights = {"log_vars": log_vars.state_dict()} if log_vars is not None else {}
        save_checkpoint(  # the same bytes for the same run: no timing in it
            {**config, "model_state": model.state_dict(), "history": learned, **learned_weights}, out.checkpoint
        )
        save_checkpoint({**config, "encoder_state": model.encoder.state_dict()}, out.encoder)
        trainer.live.summary.update(summary)
        trainer.live.end()  # the summary, and DVCLive's own clean-up
    distributed.check_same_weights(trained, f"pretrain {variant_name}")  # the learned s_i too
    trainer.finish()
    return summary


def terms_logged(recipe, log_vars) -> list[str]:
    """The losses a recipe's curves carry besides `loss`: mse, each term, each learned log-variance."""
    return ["mse", *recipe.terms, *(f"s_{k}" for k in (log_vars.s if log_vars is not None else ()))]


def init_random(p: Params, encoder_path: str | Path, data_root: str | Path) -> Path:
    """The encoder every pre-training starts from (same seed), saved untrained: the probe's baseline."""
    torch.manual_seed(p.seed)
    model = MaskedAutoencoderViT(p.model, p.data.input_size)
    return save_checkpoint(
        {
            "model": as_dict(p.model),
            "input_size": p.data.input_size,
            "variant": "random",
            "classes": load_meta(data_root)["classes"],
            "encoder_state": model.encoder.state_dict(),
        },
        encoder_path,
    )
