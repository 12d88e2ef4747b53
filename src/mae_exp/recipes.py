"""The pre-training recipes: what is minimised on top of MAE's reconstruction, and the mask-ratio schedule.

A recipe is a params.yaml section (config.VariantConfig): `original` is He et al.'s MAE (fixed masking,
the masked MSE alone), `improved` adds a curriculum and two weighted terms (the maths is objectives.py):
  - freq: the masked Laplacian L1 of the reconstruction with the true visible patches pasted in, so a
    masked pixel beside a visible patch is compared through its true neighbours, never through the
    decoder's unsupervised output there (which gets no gradient);
  - unif: the uniformity of the mean-pooled encoder tokens over the global batch: with several processes
    every process's rows are gathered (distributed.all_gather_rows), so the pairs are the global batch's.
Both sections run the same composition, `pretraining_terms`; a weight of 0 leaves its term out of the
total. Adding a recipe: docs/reference.md#adding-a-recipe.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .model import MaskedAutoencoderViT, Reconstruction
from .objectives import masked_laplacian_l1, uniformity
from .plumbing.config import VariantConfig
from .training import distributed


@dataclass(frozen=True)
class Terms:
    """One step's loss terms; `total` is what is minimised."""

    total: torch.Tensor
    mse: torch.Tensor
    freq: torch.Tensor
    unif: torch.Tensor

    def logged(self) -> dict[str, torch.Tensor]:
        """The names the curves and metrics carry (DVCLive's `loss`, `mse`, `freq`, `unif`), detached."""
        return {
            "loss": self.total.detach(),
            "mse": self.mse.detach(),
            "freq": self.freq.detach(),
            "unif": self.unif.detach(),
        }


def mask_ratio_at(progress: float, variant: VariantConfig) -> float:
    """Curriculum masking: linear from mask_ratio_start to mask_ratio over the first
    `curriculum_fraction` of training (progress in [0, 1]), then constant."""
    if variant.curriculum_fraction <= 0:
        return variant.mask_ratio
    ramp = min(1.0, max(0.0, progress / variant.curriculum_fraction))
    return variant.mask_ratio_start + ramp * (variant.mask_ratio - variant.mask_ratio_start)


def freq_term(model: MaskedAutoencoderViT, imgs: torch.Tensor, out: Reconstruction) -> torch.Tensor:
    """Masked Laplacian L1 of the reconstruction with the true visible patches pasted in (as visualize scores it)."""
    _, mean, std = model.target(imgs)
    masked = out.mask[..., None].bool()
    pasted = model.unpatchify(torch.where(masked, out.pred.float() * std + mean, model.patchify(imgs)))
    return masked_laplacian_l1(pasted, imgs, out.mask, model.patch_size)


def unif_term(out: Reconstruction) -> torch.Tensor:
    """Uniformity of the mean-pooled encoder tokens over every process's rows (gradients flow back to each)."""
    return uniformity(distributed.all_gather_rows(out.latent[:, 1:].float().mean(dim=1)))


def pretraining_terms(
    model: MaskedAutoencoderViT, imgs: torch.Tensor, out: Reconstruction, variant: VariantConfig, monitor: bool = False
) -> Terms:
    """total = mse + lambda_freq x freq + lambda_unif x unif, in fp32 whatever autocast the forward ran under.

    A term with weight 0 is computed only when `monitor` (for its curve), without a graph; otherwise it is 0.
    `model` is the bare model (not its DDP wrapper): only its pure helpers (target, patchify) are called."""
    with torch.autocast(imgs.device.type, enabled=False):
        freq = unif = torch.zeros((), device=imgs.device)
        if variant.lambda_freq > 0 or monitor:
            with torch.set_grad_enabled(torch.is_grad_enabled() and variant.lambda_freq > 0):
                freq = freq_term(model, imgs, out)
        if variant.lambda_unif > 0 or monitor:
            with torch.set_grad_enabled(torch.is_grad_enabled() and variant.lambda_unif > 0):
                unif = unif_term(out)
        total = out.loss + variant.lambda_freq * freq + variant.lambda_unif * unif
        return Terms(total, out.loss, freq, unif)
