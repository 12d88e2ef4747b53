"""A recipe's loss and masking, run: the named terms and maskings that recipes.Recipe refers to.

  - freq: the masked Laplacian L1 of the reconstruction with the true visible patches pasted in, so a
    masked pixel beside a visible patch is compared through its true neighbours, never through the
    decoder's unsupervised output there (which gets no gradient);
  - unif: the uniformity of the mean-pooled encoder tokens over the global batch: with several processes
    every process's rows are gathered (distributed.all_gather_rows), so the pairs are the global batch's;
  - perceptual: SMAE's, on the frozen CNN the recipe needs (perceptual.py);
  - masking "blocks": BEiT-style blocks, as the noise the model masks by (masking.py).
The maths is objectives.py's; a recipe says which of these it uses and with what weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..model import MaskedAutoencoderViT, Reconstruction
from ..objectives import masked_laplacian_l1, uncertainty_weighted, uniformity
from ..recipes import Recipe
from . import distributed
from .masking import block_noise
from .perceptual import perceptual_loss


def freq_term(model: MaskedAutoencoderViT, imgs: torch.Tensor, out: Reconstruction, recipe: Recipe, frozen: dict):
    """Masked Laplacian L1 of the reconstruction with the true visible patches pasted in (as visualize scores it)."""
    _, mean, std = model.target(imgs)
    masked = out.mask[..., None].bool()
    pasted = model.unpatchify(torch.where(masked, out.pred.float() * std + mean, model.patchify(imgs)))
    return masked_laplacian_l1(pasted, imgs, out.mask, model.patch_size)


def unif_term(model: MaskedAutoencoderViT, imgs: torch.Tensor, out: Reconstruction, recipe: Recipe, frozen: dict):
    """Uniformity of the mean-pooled encoder tokens over every process's rows (gradients flow back to each)."""
    return uniformity(distributed.all_gather_rows(out.latent[:, 1:].float().mean(dim=1)))


def perceptual_term(model: MaskedAutoencoderViT, imgs: torch.Tensor, out: Reconstruction, recipe: Recipe, frozen):
    """SMAE's: the frozen CNN's early features of the reconstruction against the image's."""
    layers = recipe.term_settings["perceptual_layers"]
    return perceptual_loss(frozen["perceptual_cnn"], model.reconstruct(imgs, out.pred), imgs, layers)


# (bare model, images, its reconstruction, the recipe, the frozen networks it needs) -> a scalar
TERMS: dict[str, Callable[..., torch.Tensor]] = {"freq": freq_term, "unif": unif_term, "perceptual": perceptual_term}


def masking_noise(recipe: Recipe, noise: torch.Tensor, grid: int, ratio: float, generator: torch.Generator):
    """The noise the model masks by (it keeps the lowest): MAE's uniform `noise` as drawn, or blocks on top of it
    (drawn from `generator` too, for the whole global batch)."""
    if recipe.masking == "random":
        return noise
    return block_noise(noise, grid, ratio, generator, **recipe.masking_settings)


class LogVars(nn.Module):
    """The learned log-variances of uncertainty weighting, one scalar per loss, trained with the model."""

    def __init__(self, initial: dict[str, float]):
        super().__init__()
        self.s = nn.ParameterDict({k: nn.Parameter(torch.tensor(float(v))) for k, v in initial.items()})


@dataclass(frozen=True)
class Terms:
    """One step's losses: `total` is what is minimised; `values` MAE's mse and every named term."""

    total: torch.Tensor
    values: dict[str, torch.Tensor]

    def logged(self, log_vars: LogVars | None = None) -> dict[str, torch.Tensor]:
        """The names the curves and metrics carry (`loss`, `mse`, each term; `s_<loss>` when learned), detached."""
        logged = {"loss": self.total.detach(), **{k: v.detach() for k, v in self.values.items()}}
        if log_vars is not None:
            logged.update({f"s_{k}": v.detach() for k, v in log_vars.s.items()})
        return logged


def pretraining_terms(
    model: MaskedAutoencoderViT,
    imgs: torch.Tensor,
    out: Reconstruction,
    recipe: Recipe,
    frozen: dict | None = None,
    log_vars: LogVars | None = None,
    monitor: bool = False,
) -> Terms:
    """total = mse + sum of weight x term (fixed weights), or the uncertainty-weighted sum (`log_vars`), in fp32
    whatever autocast the forward ran under. A term of weight 0 is computed only when `monitor` (for its
    curve), without a graph; otherwise it is 0. `model` is the bare model (not its DDP wrapper): only its pure
    helpers (target, patchify, reconstruct) are called."""
    with torch.autocast(imgs.device.type, enabled=False):
        values = {"mse": out.loss}
        total = out.loss
        for name, weight in recipe.terms.items():
            value = torch.zeros((), device=imgs.device)
            if weight > 0 or monitor:
                with torch.set_grad_enabled(torch.is_grad_enabled() and weight > 0):
                    value = TERMS[name](model, imgs, out, recipe, frozen or {})
            values[name] = value
            total = total + weight * value
        if log_vars is not None:
            total = uncertainty_weighted([values[k] for k in log_vars.s], torch.stack(list(log_vars.s.values())))
        return Terms(total, values)


def loss_weights(recipe: Recipe, log_vars: LogVars | None) -> dict[str, float]:
    """Each term's weight relative to the masked MSE's: the fixed one, or the learned exp(s_mse - s_term)."""
    if log_vars is None:
        return dict(recipe.terms)
    s = {k: v.item() for k, v in log_vars.s.items()}
    return {name: round(float(torch.tensor(s["mse"] - s[name]).exp()), 6) for name in recipe.terms}
