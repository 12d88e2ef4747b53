"""Reconstructions of both pre-trained models under identical masks, and masked-region quality.

The same noise tensor (from visualize.mask_seed) is passed to both models, so both see exactly the
same visible patches. Rows of the grid: original | masked input | original-MAE | improved-MAE.
Reconstructions paste the visible patches back and show the model's prediction where it was masked.
Metrics, over the first visualize.eval_images test images, on masked pixels only, in [0, 1] RGB:
  hf_error: mean |Laplacian(reconstruction) - Laplacian(image)|   (lower is sharper and truer)
  psnr:     10 log10(1 / MSE), per image, averaged                  (higher is better)
"""

from __future__ import annotations

from pathlib import Path

import torch

from .augment import resize, to_float, to_unit
from .config import VARIANTS, ModelConfig, Params
from .data import load_split
from .model import MaskedAutoencoderViT
from .objectives import masked_laplacian_l1, patch_mask_to_pixels
from .progress import console, progress
from .runtime import atomic_write, batches, save_json


def load_mae(path: str | Path, p: Params) -> MaskedAutoencoderViT:
    saved = torch.load(path, map_location="cpu", weights_only=False)
    model = MaskedAutoencoderViT(ModelConfig(**saved["model"]), saved["input_size"])
    model.load_state_dict(saved["model_state"])
    return model.eval()


@torch.no_grad()
def reconstruct(model: MaskedAutoencoderViT, x: torch.Tensor, noise: torch.Tensor, mask_ratio: float):
    """-> (reconstruction with visible patches pasted back, in [0, 1] space; pixel mask; patch mask)."""
    latent, mask, ids_restore = model.forward_encoder(x, mask_ratio, noise=noise)
    pred = model.forward_decoder(latent, ids_restore)
    pixel_mask = patch_mask_to_pixels(mask, model.grid, model.patch_size)
    recon = to_unit(model.reconstruct(x, pred))
    image = to_unit(x)
    return image * (1 - pixel_mask) + recon * pixel_mask, pixel_mask, mask


def masked_psnr(recon: torch.Tensor, image: torch.Tensor, pixel_mask: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR over masked pixels, images in [0, 1]."""
    se = ((recon - image) ** 2 * pixel_mask).sum(dim=(1, 2, 3))
    count = pixel_mask.sum(dim=(1, 2, 3)) * image.shape[1]
    return 10 * torch.log10(1.0 / (se / count).clamp_min(1e-10))


def visualize(p: Params, checkpoints: dict[str, str | Path], data_root: str | Path,
              grid_path: str | Path, metrics_path: str | Path) -> dict:
    cfg = p.visualize
    models = {name: load_mae(checkpoints[name], p) for name in VARIANTS}
    test = load_split(data_root, "test").images
    n_eval = min(cfg.eval_images, test.shape[0])
    grid = models[VARIANTS[0]].grid
    noise = torch.rand(n_eval, grid * grid, generator=torch.Generator().manual_seed(cfg.mask_seed))

    sums = {name: {"hf_error": 0.0, "psnr": 0.0} for name in VARIANTS}
    shown: dict[str, torch.Tensor] = {}
    with progress() as bar:
        for idx in bar.track(batches(n_eval, 128, drop_last=False), description="reconstructing"):
            x = resize(to_float(torch.from_numpy(test[idx.numpy()])), p.data.input_size)
            for name, model in models.items():
                recon, pixel_mask, mask = reconstruct(model, x, noise[idx], cfg.mask_ratio)
                image = to_unit(x)
                sums[name]["hf_error"] += masked_laplacian_l1(recon, image, mask, model.patch_size).item() * len(idx)
                sums[name]["psnr"] += masked_psnr(recon, image, pixel_mask).sum().item()
                if idx[0] == 0:
                    shown[name] = recon[: cfg.images]
                    shown["image"], shown["masked"] = image[: cfg.images], (image * (1 - pixel_mask))[: cfg.images]
    metrics = {name: {k: round(v / n_eval, 5) for k, v in s.items()} for name, s in sums.items()}
    metrics["eval_images"] = n_eval
    metrics["mask_ratio"] = cfg.mask_ratio
    save_grid(shown, grid_path)
    save_json(metrics, metrics_path)
    for name in VARIANTS:
        console.print(f"{name}: masked HF error {metrics[name]['hf_error']:.4f}, masked PSNR {metrics[name]['psnr']:.2f} dB")
    return metrics


def save_grid(shown: dict[str, torch.Tensor], path: str | Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [("image", "original"), ("masked", "masked"), ("original", "original MAE"),
               ("improved", "improved MAE")]
    rows = shown["masked"].shape[0]
    fig, axes = plt.subplots(rows, 4, figsize=(4 * 1.6, rows * 1.6), squeeze=False)
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
