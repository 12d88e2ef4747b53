"""Where a run computes: device, precision and threads; moving batches there; its DVCLive logger.

Optimisation is in optim.py, file writing in files.py."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import torch

from ..plumbing.errors import names_full_disk
from . import distributed
from .augment import resize, to_float


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


def open_live(directory: str | Path):
    """A DVCLive logger for `directory` (metrics.json, the curves under plots/), on rank 0 (None on the
    other ranks). It logs into scratch/live/<directory> (git-ignored), and `end()` moves that over `directory`:
    what DVC tracks changes only when a stage finishes, and a stopped stage leaves the last finished
    run's metrics whole. No dvc.yaml of its own: the stage's metrics and plots are in dvc.yaml."""
    if not distributed.is_rank0():
        return None
    from dvclive import Live

    final = Path(directory)  # metrics/<stage>/<encoder>
    # outside metrics/, which the report depends on: a stopped stage's partial curves never enter a dependency
    where = final.resolve()
    here = Path.cwd().resolve()  # a stage runs from the repository's root
    staging = Path("scratch") / "live" / (where.relative_to(here) if where.is_relative_to(here) else where.name)

    class StagedLive(Live):  # each write names its file when the disk is full (DVCLive's OSError names none)
        def log_metric(self, name, val, *args, **kwargs):
            with names_full_disk(Path(self.plots_dir) / "metrics" / f"{name}.tsv", KEPT):
                super().log_metric(name, val, *args, **kwargs)

        def make_summary(self) -> None:
            with names_full_disk(self.metrics_file, KEPT):
                super().make_summary()

        def end(self) -> None:
            with names_full_disk(self.dir, KEPT):
                super().end()
            if final.exists():
                shutil.rmtree(final)
            final.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(staging, final)  # a rename where both are on one file system

    KEPT = f" ({final} was left as it was)"
    with names_full_disk(staging, KEPT):
        return StagedLive(str(staging), dvcyaml=False, save_dvc_exp=False, report=None)


def batches(n: int, batch_size: int, generator: torch.Generator | None = None, drop_last: bool = True):
    """Index tensors covering range(n) in a random order (or in order without a generator)."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    return [order[i : i + batch_size] for i in range(0, stop, batch_size)]


def select_rows(images, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Rows `idx` of a uint8 (N, H, W, 3) array or tensor, as a tensor on `device`."""
    if isinstance(images, torch.Tensor):
        if images.is_pinned() and device.type == "cuda":
            # host-resident set: copy the rows into pinned memory (the caching host allocator reuses it once
            # the copy is done), so the upload overlaps with the GPU's work on the previous step
            rows = torch.empty((len(idx), *images.shape[1:]), dtype=images.dtype, pin_memory=True)
            return torch.index_select(images, 0, idx, out=rows).to(device, non_blocking=True)
        return images[idx.to(images.device)].to(device, non_blocking=True)
    idx_np = idx.numpy()
    order = idx_np.argsort()  # sorted reads are sequential on a memory map
    rows = torch.from_numpy(images[idx_np[order]])
    rows = rows[torch.from_numpy(order.argsort())]
    return rows.to(device, non_blocking=True)


def eval_batch(images, idx: torch.Tensor, input_size: int, device: torch.device) -> torch.Tensor:
    """Evaluation's input (probe features, fine-tuning accuracy, reconstructions): rows `idx`, normalised
    and resized to `input_size`, no augmentation."""
    return resize(to_float(select_rows(images, idx, device)), input_size)


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
