"""What every training loop shares: device and precision, threads, schedule, atomic files, metrics."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path

import torch

from . import distributed


def setup(precision: str, threads: int, seed: int) -> tuple[torch.device, torch.dtype | None]:
    """Pick the device, the autocast dtype (None = full fp32) and the CPU thread count; seed torch."""
    device = distributed.device()  # under torchrun on GPUs: this process's own, cuda:LOCAL_RANK
    # One compute thread per core (shared by the processes on this machine); DataLoader workers are not
    # used (batches are indexed in memory).
    torch.set_num_threads(distributed.cpu_threads(threads))
    torch.manual_seed(seed)
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"  # CPU bf16 autocast is rarely faster
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device, {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def warmup_cosine(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warmup to `peak` over `warmup` steps, then half a cosine down to 0 at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def param_groups(model: torch.nn.Module, weight_decay: float, layer_scale=None) -> list[dict]:
    """No weight decay on biases, norms and tokens (1-D parameters), as in MAE; with `layer_scale`
    (parameter name -> learning-rate factor, fine-tuning's layer-wise decay) one group per factor."""
    groups: dict[tuple, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = 0.0 if p.ndim <= 1 or name.endswith("token") else weight_decay
        scale = layer_scale(name) if layer_scale else 1.0
        group = groups.setdefault((decay, scale), {"params": [], "weight_decay": decay, "lr_scale": scale})
        group["params"].append(p)
    return list(groups.values())


def adamw(groups: list[dict], lr: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW with MAE's betas; each group's lr is lr x its `lr_scale`, set every step by train.Trainer."""
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=device.type == "cuda")


def open_live(directory: str | Path):
    """A DVCLive logger writing `directory`/metrics.json and the curves under `directory`/plots/, on rank 0
    (None on the other ranks). No dvc.yaml of its own: the stage's metrics and plots are in dvc.yaml."""
    if not distributed.is_rank0():
        return None
    from dvclive import Live
    return Live(str(directory), dvcyaml=False, save_dvc_exp=False, report=None)


def atomic_write(path: str | Path, write) -> Path:
    """Call write(tmp_path), then rename over `path`: a reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def save_torch(obj, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_json(obj, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2) + "\n"))


def batches(n: int, batch_size: int, generator: torch.Generator | None = None, drop_last: bool = True):
    """Index tensors covering range(n) in a random order (or in order without a generator)."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    return [order[i:i + batch_size] for i in range(0, stop, batch_size)]


def gather(images, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Rows `idx` of a uint8 (N, H, W, 3) array or tensor, as a tensor on `device`."""
    if isinstance(images, torch.Tensor):
        if images.is_pinned() and device.type == "cuda":
            # host-resident set: gather into pinned memory (the caching host allocator reuses it once
            # the copy is done), so the upload overlaps with the GPU's work on the previous step
            rows = torch.empty((len(idx), *images.shape[1:]), dtype=images.dtype, pin_memory=True)
            return torch.index_select(images, 0, idx, out=rows).to(device, non_blocking=True)
        return images[idx.to(images.device)].to(device, non_blocking=True)
    idx_np = idx.numpy()
    order = idx_np.argsort()  # sorted reads are sequential on a memory map
    rows = torch.from_numpy(images[idx_np[order]])
    rows = rows[torch.from_numpy(order.argsort())]
    return rows.to(device, non_blocking=True)


def resident_images(images, device: torch.device):
    """Keep the dataset where batches are indexed: on the GPU when it fits in half its free memory,
    else in pinned host memory when that fits in half the free RAM, else the memory map (CPU runs
    read the memory map: the page cache keeps it in RAM)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info()
        if images.nbytes < 0.5 * free:
            return torch.from_numpy(images[:]).to(device)
        if images.nbytes < 0.5 * os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"):
            return torch.from_numpy(images[:]).pin_memory()
    return images
