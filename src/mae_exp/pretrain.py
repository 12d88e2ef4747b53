"""The pre-training loop, one code path for both variants.

Resumable state lives outside DVC's declared outputs, in `scratch/pretrain_<variant>/<key>/last.pt`,
where <key> hashes everything that determines the run (seed, data, model, pretrain, variant). DVC
deletes declared outputs before it runs a stage, and a stage with persistent outputs is not
run-cached; so the declared outputs (final checkpoint, encoder, metrics, curve) are written once, at
the end, and a killed run resumes from scratch/ when `dvc repro` runs it again with the same params.

With `pretrain.processes` > 1 this loop runs in every process (see distributed.py): each computes its
rows of every global batch, DDP averages the gradients, rank 0 alone writes files and prints.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import distributed, objectives
from .augment import crop_and_flip, draw_crops, to_float
from .config import Params, VariantConfig, as_dict, fingerprint
from .data import load_meta, load_split
from .model import MaskedAutoencoderViT
from .progress import console, progress
from .runtime import (adamw, autocast, batches, gather, resident_images, save_csv, save_json, save_torch,
                      setup, warmup_cosine)

LOG_EVERY = 10  # steps between reads of the loss on the host (each read synchronises the device)


class TrainingDiverged(RuntimeError):
    pass


@dataclass
class Outputs:
    checkpoint: Path  # full model (encoder + decoder), for visualisation
    encoder: Path  # encoder weights, for the probe and fine-tuning
    metrics: Path
    curve: Path
    scratch: Path  # root of the resumable state


def run_key(p: Params, variant: str, data_digest: str) -> str:
    t = p.pretrain
    # threads, checkpoint frequency, compilation and the number of processes do not change what is learned
    # (processes: up to float reduction order, tests/test_distributed.py): a resume may alter them
    schedule = {k: v for k, v in as_dict(t).items()
                if k not in ("threads", "checkpoint_every", "compile", "processes")}
    return fingerprint(p.seed, p.data, p.model, schedule, p.variant(variant), data_digest)


def pretrain(p: Params, variant_name: str, data_root: str | Path, out: Outputs) -> dict:
    variant = p.variant(variant_name)
    cfg = p.pretrain
    device, amp_dtype = setup(cfg.precision, p.threads, p.seed)
    meta = load_meta(data_root)
    images = resident_images(load_split(data_root, "unlabeled").images, device)
    n = images.shape[0]
    if n < cfg.batch_size:
        raise ValueError(f"pretrain.batch_size ({cfg.batch_size}) is larger than the unlabeled split ({n} images)")

    model = MaskedAutoencoderViT(p.model, p.data.input_size).to(device)
    if cfg.compile:
        model.compile_blocks()  # in place: parameter names, and so checkpoints, stay as in eager mode
    net = distributed.wrap(MaskedPrediction(model))  # DDP over the processes; the plain module with one
    mine = distributed.shard(cfg.batch_size)  # this process's rows of every global batch
    lr = cfg.base_lr * cfg.batch_size / 256  # batch_size is the global batch, whatever the number of processes
    optimizer = adamw(model, lr, cfg.weight_decay, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    steps_per_epoch = n // cfg.batch_size
    total_steps = steps_per_epoch * cfg.epochs
    warmup_steps = int(cfg.warmup_epochs * steps_per_epoch)

    # Two generators, both saved in checkpoints so a resumed run draws what the uninterrupted one would:
    # one on the CPU for the epoch order, one on the device for crops, flips and masks. Every process
    # draws the same numbers, for the whole global batch.
    order_gen = torch.Generator().manual_seed(p.seed)
    aug_gen = torch.Generator(device=device).manual_seed(p.seed + 1)

    key = run_key(p, variant_name, meta.get("digest", ""))
    scratch = Path(out.scratch) / key
    last = scratch / "last.pt"
    history: list[dict] = []
    start_epoch, elapsed = 0, 0.0
    state = None
    if distributed.is_rank0() and last.exists():  # rank 0 alone reads it and hands it to the others,
        state = torch.load(last, map_location="cpu", weights_only=False)  # so nodes need no shared disk
    state = distributed.from_rank0(state)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        order_gen.set_state(state["order_gen"])
        aug_gen.set_state(state["aug_gen"].to(aug_gen.get_state().device))
        history, start_epoch, elapsed = state["history"], state["epoch"], state["elapsed"]
        console.print(f"[green]resuming {variant_name} from epoch {start_epoch + 1}/{cfg.epochs}[/] ({last})")
    else:
        procs = f", {distributed.world_size()} processes" if distributed.world_size() > 1 else ""
        console.print(f"starting {variant_name} pre-training from scratch "
                      f"({n} images, {cfg.epochs} epochs, lr {lr:.2e}, device {device}{procs})")

    model.train()
    with progress(loss=True) as bar:
        task = bar.add_task(f"pretrain {variant_name}", total=total_steps,
                            completed=start_epoch * steps_per_epoch, loss="-")
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            sums = torch.zeros(4, device=device)  # loss, mse, freq, unif
            for i, idx in enumerate(batches(n, cfg.batch_size, order_gen)):
                step = epoch * steps_per_epoch + i
                ratio = objectives.mask_ratio_at(step / total_steps, variant)
                for group in optimizer.param_groups:
                    group["lr"] = warmup_cosine(step, total_steps, warmup_steps, lr)
                # the random numbers of the whole global batch, then this process's rows of it
                boxes, flip = draw_crops(cfg.batch_size, cfg.min_crop_scale, aug_gen, device)
                noise = torch.rand(cfg.batch_size, model.num_patches, generator=aug_gen, device=device)
                x = crop_and_flip(to_float(gather(images, idx[mine], device)), boxes[mine], flip[mine],
                                  p.data.input_size)
                with autocast(device, amp_dtype):
                    pred, mask, latent = net(x, ratio, noise[mine])
                terms = loss_terms(model, x, pred, mask, latent, variant)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(terms[0]).backward()
                scaler.step(optimizer)
                scaler.update()
                sums += terms.detach()
                if (i + 1) % LOG_EVERY == 0 or i + 1 == steps_per_epoch:
                    shown = distributed.mean(sums)  # the global batch's terms, identical on every rank
                    check_finite(shown, variant_name, epoch, i, last)  # so every rank stops alike
                    bar.update(task, completed=step + 1, loss=f"{shown[0].item() / (i + 1):.4f}")
            seconds = time.perf_counter() - t0
            elapsed += seconds
            means = (shown / steps_per_epoch).tolist()
            history.append({"epoch": epoch + 1, "loss": means[0], "mse": means[1], "freq": means[2],
                            "unif": means[3], "mask_ratio": ratio, "lr": optimizer.param_groups[0]["lr"],
                            "images_per_s": steps_per_epoch * cfg.batch_size / seconds})
            console.print(f"{variant_name} epoch {epoch + 1}/{cfg.epochs}: loss {means[0]:.4f} "
                          f"(mse {means[1]:.4f}, freq {means[2]:.4f}, unif {means[3]:.3f}), "
                          f"mask {ratio:.2f}, {history[-1]['images_per_s']:.0f} img/s")
            if (epoch + 1) % cfg.checkpoint_every == 0 and epoch + 1 < cfg.epochs and distributed.is_rank0():
                save_torch({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                            "scaler": scaler.state_dict(), "order_gen": order_gen.get_state(),
                            "aug_gen": aug_gen.get_state(), "history": history, "epoch": epoch + 1,
                            "elapsed": elapsed}, last)
                _test_hook_kill(epoch + 1)

    _test_hook_dump(model, variant_name)
    final = history[-1]
    config = {"model": as_dict(p.model), "input_size": p.data.input_size, "variant": variant_name,
              "classes": meta["classes"]}
    metrics = {"final_loss": final["loss"], "final_mse": final["mse"], "final_freq": final["freq"],
               "final_unif": final["unif"], "epochs": cfg.epochs, "wall_time_s": round(elapsed, 2),
               "images_per_s": round(total_steps * cfg.batch_size / elapsed, 1),
               "resumed_at_epoch": start_epoch}
    if distributed.is_rank0():
        save_torch({**config, "model_state": model.state_dict(), "history": history}, out.checkpoint)
        save_torch({**config, "encoder_state": model.encoder.state_dict()}, out.encoder)
        save_csv(history, out.curve)
        save_json(metrics, out.metrics)
        shutil.rmtree(scratch, ignore_errors=True)  # the declared outputs now hold the result
    return metrics


class MaskedPrediction(torch.nn.Module):
    """One step's forward as DDP needs it (DDP syncs through `forward`): encode the visible patches,
    predict every patch. The losses come after, outside autocast, in `loss_terms`."""

    def __init__(self, model: MaskedAutoencoderViT):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, mask_ratio: float, noise: torch.Tensor):
        latent, mask, ids_restore = self.model.forward_encoder(x, mask_ratio, noise)
        return self.model.forward_decoder(latent, ids_restore), mask, latent


def loss_terms(model: MaskedAutoencoderViT, x, pred, mask, latent, variant: VariantConfig) -> torch.Tensor:
    """(4,) [weighted total, masked MSE, masked Laplacian L1, uniformity]; the total is the loss.

    Every term is computed for both variants, so their curves are comparable; a term with weight 0
    is only monitored: computed without a graph, it costs a forward and no backward.
    With several processes, `x` ... `latent` are this process's rows: the MSE and the Laplacian L1 are
    means over an equal number of masked patches per image, so their mean over the processes is the
    global batch's value; the uniformity is pairwise, so it is computed on the gathered global batch.
    """
    mse = model.forward_loss(x, pred, mask)
    track = torch.is_grad_enabled()
    with torch.set_grad_enabled(track and variant.lambda_freq > 0):
        freq = objectives.masked_laplacian_l1(model.reconstruct(x, pred), x, mask, model.patch_size)
    with torch.set_grad_enabled(track and variant.lambda_unif > 0):
        # every process's pooled embeddings, in rank order: as one process would see the global batch
        unif = objectives.uniformity(distributed.gather_rows(latent[:, 1:].mean(dim=1)))
    total = mse + variant.lambda_freq * freq + variant.lambda_unif * unif
    return torch.stack([total, mse, freq, unif]).float()


def check_finite(sums: torch.Tensor, variant: str, epoch: int, step: int, last: Path) -> None:
    if not torch.isfinite(sums).all():
        kept = f"the last good checkpoint is kept at {last}" if last.exists() else "no checkpoint was written yet"
        raise TrainingDiverged(
            f"pretrain {variant}: the loss became {sums[0].item()} at epoch {epoch + 1}, step {step + 1}; "
            f"{kept}. Lower pretrain.base_lr, raise pretrain.warmup_epochs or use pretrain.precision: fp32.")


def _test_hook_kill(epoch: int) -> None:
    """Tests simulate a crash (SIGKILL, no clean-up) right after the checkpoint of a given epoch."""
    if os.environ.get("MAE_TEST_KILL_AFTER_EPOCH") == str(epoch):
        os.kill(os.getpid(), signal.SIGKILL)


def _test_hook_dump(model, variant: str) -> None:
    """Tests compare the weights that every process holds at the end of training."""
    where = os.environ.get("MAE_TEST_DUMP_RANK_WEIGHTS")
    if where:
        save_torch(model.state_dict(), Path(where) / f"{variant}_rank{distributed.rank()}.pt")


def init_random(p: Params, encoder_path: str | Path, data_root: str | Path) -> Path:
    """The encoder every pre-training starts from (same seed), saved untrained: the probe's baseline."""
    torch.manual_seed(p.seed)
    model = MaskedAutoencoderViT(p.model, p.data.input_size)
    return save_torch({"model": as_dict(p.model), "input_size": p.data.input_size, "variant": "random",
                       "classes": load_meta(data_root)["classes"], "encoder_state": model.encoder.state_dict()},
                      encoder_path)
