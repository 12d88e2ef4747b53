"""Reconstructions of every compared recipe's model under identical masks, and masked-region quality.

The same noise tensor (from visualize.mask_seed) is passed to every model, so all see exactly the same
visible patches: uniform random masks, whatever masking a recipe trained with (block-masked recipes are
scored on the masks the baseline trained on). Columns of the grid: image | masked input | each recipe's MAE.
Reconstructions paste the visible patches back and show the model's prediction where it was masked.
The grid's images are drawn with visualize.mask_seed from every class in turn (a folder dataset's test
split is sorted by class, so its first images would all be one class).
Metrics, over the first visualize.eval_images test images, on masked patches only:
  mse:      the pre-training objective, MSE against per-patch normalised pixels (the same term in every
            recipe's loss, whatever else a recipe adds to it)
  hf_error: mean |Laplacian(reconstruction) - Laplacian(image)| in [0, 1] RGB (lower is sharper and truer)
  psnr:     10 log10(1 / MSE) in [0, 1] RGB, per image, averaged   (higher is better)
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoints import load_mae
from ..data.prepared import load_split
from ..model import MaskedAutoencoderViT
from ..objectives import masked_laplacian_l1, patch_mask_to_pixels
from ..plumbing.config import Params
from ..plumbing.files import atomic_write
from ..plumbing.progress import console, progress
from ..training.augment import to_unit
from ..training.runtime import batches, eval_batch, open_live, setup


@torch.no_grad()
def reconstruct(model: MaskedAutoencoderViT, x: torch.Tensor, noise: torch.Tensor, mask_ratio: float):
    """-> (reconstruction with visible patches pasted back, in [0, 1] space; pixel mask; patch mask;
    the masked-patch MSE against the normalised target, the pre-training objective)."""
    out = model(x, mask_ratio, noise=noise)
    pixel_mask = patch_mask_to_pixels(out.mask, model.grid, model.patch_size)
    recon = to_unit(model.reconstruct(x, out.pred))
    image = to_unit(x)
    return image * (1 - pixel_mask) + recon * pixel_mask, pixel_mask, out.mask, out.loss


def grid_indices(labels, count: int, seed: int) -> list[int]:
    """`count` test images, one class after another (a random image of each, drawn with `seed`)."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.as_tensor(labels)
    classes = labels.unique()
    pools = {int(c): (labels == c).nonzero().flatten() for c in classes}
    pools = {c: idx[torch.randperm(len(idx), generator=gen)].tolist() for c, idx in pools.items()}
    order = [int(c) for c in classes[torch.randperm(len(classes), generator=gen)]]
    picked = []
    while len(picked) < min(count, len(labels)):
        for c in order:
            if pools[c] and len(picked) < count:
                picked.append(pools[c].pop())
    return picked


def masked_psnr(recon: torch.Tensor, image: torch.Tensor, pixel_mask: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR over masked pixels, images in [0, 1]."""
    se = ((recon - image) ** 2 * pixel_mask).sum(dim=(1, 2, 3))
    count = pixel_mask.sum(dim=(1, 2, 3)) * image.shape[1]
    return 10 * torch.log10(1.0 / (se / count).clamp_min(1e-10))


def visualize(
    p: Params, checkpoints: dict[str, str | Path], data_root: str | Path, grid_path: str | Path, live_dir: str | Path
) -> dict:
    cfg = p.visualize
    device, _ = setup("fp32", p.threads, p.seed)
    models = {name: load_mae(path, p).to(device) for name, path in checkpoints.items()}
    test = load_split(data_root, "test")
    n_eval = cfg.eval_images
    if n_eval > len(test.images):
        raise ValueError(
            f"visualize.eval_images ({n_eval}) asks for more than the {len(test.images)} test "
            f"images: lower it to at most {len(test.images)}"
        )
    grid = next(iter(models.values())).grid
    noise = torch.rand(n_eval, grid * grid, generator=torch.Generator().manual_seed(cfg.mask_seed))

    sums = {name: {"mse": 0.0, "hf_error": 0.0, "psnr": 0.0} for name in models}
    with progress() as bar:
        for idx in bar.track(batches(n_eval, 128, drop_last=False), description="reconstructing"):
            x = eval_batch(test.images, idx, p.data.input_size, device)
            for name, model in models.items():
                recon, pixel_mask, mask, mse = reconstruct(model, x, noise[idx].to(device), cfg.mask_ratio)
                image = to_unit(x)
                sums[name]["mse"] += mse.item() * len(idx)
                sums[name]["hf_error"] += masked_laplacian_l1(recon, image, mask, model.patch_size).item() * len(idx)
                sums[name]["psnr"] += masked_psnr(recon, image, pixel_mask).sum().item()
    # the grid: its own images across classes, its own masks from the same seed (identical for both models)
    rows = grid_indices(test.labels, cfg.images, cfg.mask_seed)
    x = eval_batch(test.images, torch.tensor(sorted(rows)), p.data.input_size, device)
    row_noise = torch.rand(len(rows), grid * grid, generator=torch.Generator().manual_seed(cfg.mask_seed + 1))
    shown = {}
    for name, model in models.items():
        shown[name], pixel_mask, _, _ = reconstruct(model, x, row_noise.to(device), cfg.mask_ratio)
    shown["image"], shown["masked"] = to_unit(x), to_unit(x) * (1 - pixel_mask)
    save_grid({k: v.cpu() for k, v in shown.items()}, list(models), grid_path)

    metrics = {name: {k: round(v / n_eval, 5) for k, v in s.items()} for name, s in sums.items()}
    live = open_live(live_dir)
    for name in models:
        for key, value in metrics[name].items():
            live.log_metric(f"{name}/{key}", value, plot=False)
    live.summary.update({"eval_images": n_eval, "mask_ratio": cfg.mask_ratio})
    live.end()
    for name in models:
        m = metrics[name]
        console.print(
            f"{name}: masked MSE {m['mse']:.4f}, masked HF error {m['hf_error']:.4f}, masked PSNR {m['psnr']:.2f} dB",
            highlight=False,
        )
    return metrics


def save_grid(shown: dict[str, torch.Tensor], recipes: list[str], path: str | Path) -> None:
    """Rows of test images: the image, what stays visible, then each recipe's reconstruction under those masks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [("image", "image"), ("masked", "masked"), *((name, f"{name} MAE") for name in recipes)]
    rows = shown["masked"].shape[0]
    fig, axes = plt.subplots(rows, len(columns), figsize=(len(columns) * 1.6, rows * 1.6), squeeze=False)
    for r in range(rows):
        for c, (key, title) in enumerate(columns):
            ax = axes[r][c]
            ax.imshow(shown[key][r].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
