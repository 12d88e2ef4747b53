"""Pre-training throughput and peak memory: this project's MAE against Hugging Face's ViTMAEForPreTraining.

Every measurement runs in its own child process (a clean allocator and a clean peak-memory counter),
and the variants are interleaved over `--repeats` rounds so that drift in machine load hits them
alike; the table shows the median images/s and the ratio to Hugging Face measured in the same run.

Variants, all doing forward + loss + backward + AdamW step on one batch at 75% masking:
  hf        transformers' ViTMAEForPreTraining (SDPA attention, norm_pix_loss), on a ready float batch
  ours      this project's MaskedAutoencoderViT, same sizes, on the same kind of ready float batch
  pipeline  what `pretrain` (original variant) runs per step: gather the batch's uint8 images from where
            pre-training keeps them (runtime.resident_images), draw crops, flips and mask noise on the
            device, crop + flip + normalise (augment.crop_and_flip_uint8), then the model, monitoring the
            weight-0 loss terms on every LOG_EVERY-th step as train.Trainer does
  compiled  `pipeline` with pretrain.compile: true (only with --compile)

Each measurement times whole cycles of LOG_EVERY (10) steps, at least --min-seconds, after 3 warm-up
steps, so that `pipeline` pays its monitored steps in the same proportion as a training run.

Configs: `default` (params.yaml's model and image size) and `seed` (224 px, patch 16, encoder
192/8/6, decoder 128/4/4, from 96 px images). On CUDA, bf16 autocast for all and model FLOPs
utilisation: FLOPs of one step (torch.utils.flop_counter) x steps/s over the device's measured bf16
matmul rate.

    pip install -e '.[bench]'
    python benchmarks/pretrain_vs_hf.py                          # default and seed configs
    python benchmarks/pretrain_vs_hf.py --configs seed --batch-size 256 --compile   # e.g. on a GPU
    python benchmarks/pretrain_vs_hf.py --scaling                # ours: images/s vs batch and image size
    python benchmarks/pretrain_vs_hf.py --json benchmarks/results/<device>-<date>.json   # keep the raw runs

`--scaling` measures `pipeline` at the default model for each batch size x image size. The console and
the JSON (`header`, then every run of every measurement) name the device, date, command and versions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

SEED_MODEL = dict(
    patch_size=16,
    encoder_dim=192,
    encoder_depth=8,
    encoder_heads=6,
    decoder_dim=128,
    decoder_depth=4,
    decoder_heads=4,
    mlp_ratio=4.0,
    norm_pix_loss=True,
)


def config(name: str, image_size: int | None = None):
    """(ModelConfig, stored image size, model input size) of a named config."""
    from mae_exp.plumbing.config import ModelConfig, load_params

    if name == "seed":
        return ModelConfig(**SEED_MODEL), 96, 224
    p = load_params(REPO / "params.yaml")
    if image_size:
        return p.model, image_size, image_size
    return p.model, p.data.image_size, p.data.input_size


# --------------------------------------------------------------------------- child: one measurement


def rss_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(
    variant: str, config_name: str, batch_size: int, image_size: int | None, min_seconds: float, threads: int
) -> dict:
    import numpy as np
    import torch

    from mae_exp.model import MaskedAutoencoderViT
    from mae_exp.plumbing.config import load_params
    from mae_exp.recipes import build
    from mae_exp.training.augment import crop_and_flip_uint8, draw_crops
    from mae_exp.training.losses import pretraining_terms
    from mae_exp.training.optim import adamw, param_groups
    from mae_exp.training.runtime import autocast, batches, resident_images, select_rows
    from mae_exp.training.train import LOG_EVERY

    cfg, stored, size = config(config_name, image_size)
    p = load_params(REPO / "params.yaml")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(threads or os.cpu_count() or 1)
    torch.manual_seed(0)
    amp = torch.bfloat16 if device.type == "cuda" else None
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    if variant == "hf":
        from transformers import ViTMAEConfig, ViTMAEForPreTraining

        hf_cfg = ViTMAEConfig(
            hidden_size=cfg.encoder_dim,
            num_hidden_layers=cfg.encoder_depth,
            num_attention_heads=cfg.encoder_heads,
            intermediate_size=int(cfg.encoder_dim * cfg.mlp_ratio),
            decoder_hidden_size=cfg.decoder_dim,
            decoder_num_hidden_layers=cfg.decoder_depth,
            decoder_num_attention_heads=cfg.decoder_heads,
            decoder_intermediate_size=int(cfg.decoder_dim * cfg.mlp_ratio),
            image_size=size,
            patch_size=cfg.patch_size,
            mask_ratio=0.75,
            norm_pix_loss=cfg.norm_pix_loss,
            layer_norm_eps=1e-6,
        )
        model = ViTMAEForPreTraining._from_config(hf_cfg, attn_implementation="sdpa").to(device)
        assert model.config._attn_implementation == "sdpa"
    else:
        # the original variant: its extra terms have weight 0 (computed only on monitored steps)
        model = MaskedAutoencoderViT(cfg, size).to(device)
        if variant == "compiled":
            model.compile_blocks()
    model.train()
    optimizer = adamw(param_groups(model, 0.05), 1e-4, device)
    scaler = torch.amp.GradScaler(device.type, enabled=False)  # as train.Trainer: active for fp16 only
    params = sum(p.numel() for p in model.parameters())

    ready = torch.randn(batch_size, 3, size, size, device=device)
    n_images = max(1024, batch_size)
    # where pre-training keeps its set: the memory map's pages (CPU) or the device (a GPU it fits on)
    images = resident_images(
        np.random.default_rng(0).integers(0, 256, (n_images, stored, stored, 3), dtype=np.uint8), device
    )
    gen = torch.Generator(device=device).manual_seed(1)
    order_gen = torch.Generator().manual_seed(2)
    order: list[torch.Tensor] = []
    step_no = [0]

    def step():
        step_no[0] += 1
        for group in optimizer.param_groups:
            group["lr"] = 1e-4 * group.get("lr_scale", 1.0)
        with autocast(device, amp):
            if variant == "hf":
                loss = model(pixel_values=ready).loss
            elif variant == "ours":
                loss = model(ready, 0.75).loss
            else:  # pretrain.py's step
                if not order:
                    order.extend(batches(n_images, batch_size, order_gen))
                idx = order.pop()
                log = step_no[0] % LOG_EVERY == 0
                boxes, flip = draw_crops(batch_size, p.pretrain.min_crop_scale, gen, device)
                noise = torch.rand(batch_size, model.num_patches, generator=gen, device=device)
                x = crop_and_flip_uint8(select_rows(images, idx, device), boxes, flip, size)
                terms = pretraining_terms(model, x, model(x, 0.75, noise), build(p, "original"), monitor=log)
                loss = terms.total
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if variant in ("pipeline", "compiled") and log:
            torch.stack(list(terms.logged().values())).tolist()  # the Trainer reads the logged terms on the host
        return loss

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    # peak memory counts from here: model, batch and data exist; gradients, optimizer state and
    # activations come with the first steps
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_mib = torch.cuda.memory_allocated() / 2**20
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM) to the current RSS
        base_mib = rss_mib("VmRSS")
    t0 = time.perf_counter()
    for _ in range(3):  # warm-up (and compilation)
        step()
    sync()
    warmup_s = time.perf_counter() - t0

    step_no[0] = 0  # timed: whole cycles of LOG_EVERY steps, the last of each monitored (pipeline)
    steps, t0 = 0, time.perf_counter()
    while True:
        loss = step()
        steps += 1
        if steps % LOG_EVERY == 0:
            sync()
            if time.perf_counter() - t0 >= min_seconds:
                break
    seconds = time.perf_counter() - t0
    assert torch.isfinite(loss).item()

    out = {
        "variant": variant,
        "config": config_name,
        "batch_size": batch_size,
        "image_size": size,
        "stored_size": stored,
        "params": params,
        "steps": steps,
        "seconds": seconds,
        "images_per_s": steps * batch_size / seconds,
        "warmup_s": warmup_s,
        "device": device_name(),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        out["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20 - base_mib
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            step()
        out["flops_per_step"] = counter.get_total_flops()
    else:
        out["peak_mib"] = rss_mib("VmHWM") - base_mib  # growth of the resident set while training
    return out


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "CPU",
    )
    return f"{cpu} ({os.cpu_count()} cores)"


def header(a) -> dict:
    """Where and how this run was measured: kept with the numbers."""
    import datetime
    import platform

    import torch

    try:
        import transformers

        hf_version = transformers.__version__
    except ImportError:
        hf_version = None
    commit = (
        subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        or None
    )
    return {
        "device": device_name(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "transformers": hf_version,
        "python": platform.python_version(),
        "commit": commit,
        "threads": a.threads or os.cpu_count(),
        "repeats": a.repeats,
        "min_seconds": a.min_seconds,
    }


def bf16_matmul_flops() -> float:
    """The device's achieved bf16 matmul rate (FLOP/s) on large square matrices: the MFU denominator."""
    import torch

    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    reps, t0 = 20, time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t0)


# --------------------------------------------------------------------------- parent: schedule and report


def child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"measurement {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_all(jobs: list[list[str]], repeats: int, console) -> list[list[dict]]:
    """Each job `repeats` times, interleaved (round r runs every job once), with a progress bar."""
    from rich.progress import Progress

    results: list[list[dict]] = [[] for _ in jobs]
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("measuring", total=len(jobs) * repeats)
        for _ in range(repeats):
            for i, job in enumerate(jobs):
                bar.update(task, description=f"measuring {' '.join(job[:3])}")
                results[i].append(child(job))
                bar.advance(task)
    return results


def summarise(runs: list[dict]) -> dict:
    best = dict(runs[0])
    best["images_per_s"] = statistics.median(r["images_per_s"] for r in runs)
    best["images_per_s_all"] = [r["images_per_s"] for r in runs]
    best["peak_mib"] = statistics.median(r["peak_mib"] for r in runs)
    return best


def paired_ratio(r: dict, base: dict) -> float:
    """Median over rounds of r's images/s over base's in the same round: the two ran back to back, so a
    change in machine load between rounds cancels (a ratio of medians would not)."""
    return statistics.median(x / y for x, y in zip(r["images_per_s_all"], base["images_per_s_all"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", nargs="+", default=["default", "seed"], choices=["default", "seed"])
    ap.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="default: params.yaml's pretrain.batch_size for `default`, 32 on CPU / 256 on GPU for `seed`",
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--min-seconds", type=float, default=4.0, help="timed seconds per measurement (after 3 warm-up steps)"
    )
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--compile", action="store_true", help="also measure pretrain.compile: true")
    ap.add_argument("--scaling", action="store_true", help="pipeline images/s against batch size and image size")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64, 128, 256])
    ap.add_argument("--image-sizes", type=int, nargs="+", default=[32, 48, 64])
    ap.add_argument("--json", type=Path, help="also write every measurement here")
    ap.add_argument(
        "--child",
        nargs=6,
        metavar=("VARIANT", "CONFIG", "BATCH", "IMAGE", "SECONDS", "THREADS"),
        help=argparse.SUPPRESS,
    )
    a = ap.parse_args()
    if a.child:
        variant, cfg, batch, image, seconds, threads = a.child
        print(json.dumps(measure(variant, cfg, int(batch), int(image) or None, float(seconds), int(threads))))
        return

    import torch
    from rich.console import Console
    from rich.table import Table

    from mae_exp.plumbing.config import load_params

    console = Console()
    cuda = torch.cuda.is_available()
    common = [str(a.min_seconds), str(a.threads)]

    if a.scaling:
        jobs = [["pipeline", "default", str(b), str(s), *common] for s in a.image_sizes for b in a.batch_sizes]
        title = "pipeline images/s at the default model (rows: image size, columns: batch size)"
    else:
        variants = ["hf", "ours", "pipeline"] + (["compiled"] if a.compile else [])
        jobs = []
        for cfg in a.configs:
            batch = a.batch_size or (
                load_params(REPO / "params.yaml").pretrain.batch_size if cfg == "default" else (256 if cuda else 32)
            )
            jobs += [[v, cfg, str(batch), "0", *common] for v in variants]
        title = "pre-training step: this project vs Hugging Face ViTMAEForPreTraining"
    head = header(a)
    console.print(
        f"{head['date']}  {head['command']}\ndevice: {head['device']}, torch {head['torch']}, "
        f"transformers {head['transformers']}, commit {head['commit']}, threads {head['threads']}, "
        f"{a.repeats} interleaved repeats of >= {a.min_seconds} s each (median shown)",
        highlight=False,
    )
    runs = run_all(jobs, a.repeats, console)
    results = [summarise(r) for r in runs]

    if a.scaling:
        table = Table(title=title)
        table.add_column("image px")
        for b in a.batch_sizes:
            table.add_column(f"batch {b}", justify="right")
        for s in a.image_sizes:
            row = [r for r in results if r["image_size"] == s]
            table.add_row(str(s), *(f"{r['images_per_s']:.0f} ({r['peak_mib']:.0f} MiB)" for r in row))
        console.print(table)
    else:
        peak = bf16_matmul_flops() if cuda else None
        if peak:
            console.print(f"measured bf16 matmul rate: {peak / 1e12:.0f} TFLOP/s (8192^3)")
        table = Table(title=title)
        for col in [
            "config",
            "variant",
            "batch",
            "params (M)",
            "images/s",
            "vs hf",
            "vs ours",
            "peak MiB",
            "vs hf mem",
        ]:
            table.add_column(col, justify="left" if col in ("config", "variant") else "right")
        if peak:
            table.add_column("MFU", justify="right")
        for r in results:
            hf = next(x for x in results if x["config"] == r["config"] and x["variant"] == "hf")
            r["vs_hf"] = paired_ratio(r, hf)
            ours = next(x for x in results if x["config"] == r["config"] and x["variant"] == "ours")
            r["vs_ours"] = paired_ratio(r, ours)
            cells = [
                r["config"],
                r["variant"],
                str(r["batch_size"]),
                f"{r['params'] / 1e6:.2f}",
                f"{r['images_per_s']:.1f}",
                f"{r['vs_hf']:.2f}x",
                f"{r['vs_ours']:.2f}x",
                f"{r['peak_mib']:.0f}",
                f"{r['peak_mib'] / hf['peak_mib']:.2f}x" if hf["peak_mib"] > 0 else "-",
            ]
            if peak:
                mfu = r["flops_per_step"] * r["images_per_s"] / r["batch_size"] / peak
                cells.append(f"{100 * mfu:.1f}%")
            table.add_row(*cells)
        console.print(table)
        console.print(
            "vs hf, vs ours: median over the rounds of the ratio within a round. "
            "peak MiB: training memory above the model, batch and data: "
            + (
                "torch.cuda.max_memory_allocated minus memory_allocated before the first step"
                if cuda
                else "the process's peak resident set (VmHWM) minus its resident set (VmRSS) before the first step"
            )
        )
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"header": head, "summary": results, "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
