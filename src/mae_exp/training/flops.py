"""FLOPs one pre-training spends, counted by PyTorch's FlopCounterMode (matmuls, attention, convolutions).

A step's cost depends only on how many patches stay visible, k (the encoder's sequence is k + 1 tokens;
the decoder always sees every token), not on which (so block masking costs what random masking does).
The count runs one forward + backward of the recipe's loss (a frozen network it needs included, untrained:
the same operations) on
the CPU, whatever device trains, inside fork_rng on inputs of its own, so the training run's random
draws are untouched; attention runs as SDPA's math kernel there, the one whose matmuls the counter sees
(the fused CPU kernel is not counted at all).

Cheap by construction (about 0.4 s of CPU for the original, 1.3 s for the improved curriculum, on a
loaded 2-core CPU; tests/test_flops.py checks both shortcuts against direct
counts): every counted op is linear in the batch (attention and linears alike; the uniformity's
pairwise distances are not matmuls), so two tiny batches fix the count at any batch; and linear
(linears) or quadratic (attention) in k, so three visible counts fix it at every k of a curriculum.
"""

from __future__ import annotations

from collections import Counter
from fractions import Fraction

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ..model import MaskedAutoencoderViT, visible_count
from ..plumbing.config import ModelConfig
from ..recipes import Recipe, build
from .losses import LogVars, pretraining_terms
from .needs import untrained


def count_steps(
    model_cfg: ModelConfig,
    input_size: int,
    recipe: Recipe,
    batch_size: int,
    visible: list[int],
    direct: bool = False,
) -> dict[int, int]:
    """visible count -> FLOPs of one training step (forward + backward, the recipe's loss terms) at
    `batch_size`: counted at batches 2 and 4 and extrapolated (or, `direct`, counted at batch_size)."""
    num_patches = (input_size // model_cfg.patch_size) ** 2
    counts: dict[int, dict[int, int]] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread is faster, and spares a shared CPU
    with torch.random.fork_rng(devices=[]), sdpa_kernel(SDPBackend.MATH):
        model = MaskedAutoencoderViT(model_cfg, input_size)
        frozen = {recipe.needs.name: untrained(recipe.needs, input_size)} if recipe.needs else {}
        log_vars = LogVars(recipe.log_vars) if recipe.log_vars is not None else None
        for b in (batch_size,) if direct else (2, 4):
            imgs = torch.zeros(b, 3, input_size, input_size)
            noise = torch.arange(b * num_patches, dtype=torch.float32).reshape(b, num_patches)
            for k in visible:
                with FlopCounterMode(display=False) as counter:
                    out = model(imgs, 1 - (k + 0.5) / num_patches, noise)  # a ratio that keeps k
                    pretraining_terms(model, imgs, out, recipe, frozen, log_vars).total.backward()
                model.zero_grad(set_to_none=True)
                counts.setdefault(k, {})[b] = counter.get_total_flops()
    torch.set_num_threads(threads)
    # f(b) = alpha b + beta b^2 through f(2) and f(4) (beta is 0 unless a counted op pairs the rows)
    return {k: c[batch_size] if direct else _quadratic({0: 0, **c})(batch_size) for k, c in counts.items()}


def _quadratic(points: dict[int, int]):
    """The exact polynomial of degree < len(points) through the points (Lagrange, in fractions)."""
    xs = list(points)

    def at(x: int) -> int:
        total = Fraction(0)
        for i, xi in enumerate(xs):
            term = Fraction(points[xi])
            for j, xj in enumerate(xs):
                if j != i:
                    term *= Fraction(x - xj, xi - xj)
            total += term
        return round(total)

    return at


def schedule_flops(model_cfg: ModelConfig, input_size: int, recipe: Recipe, batch_size: int, total_steps: int) -> float:
    """FLOPs of `total_steps` steps at the recipe's mask-ratio schedule (as pretrain.py steps through it)."""
    num_patches = (input_size // model_cfg.patch_size) ** 2
    steps = Counter(visible_count(num_patches, recipe.mask_ratio_at(i / total_steps)) for i in range(total_steps))
    ks = sorted(steps)
    counted = count_steps(model_cfg, input_size, recipe, batch_size, sorted({ks[0], ks[len(ks) // 2], ks[-1]}))
    per_step = _quadratic(counted)
    return float(sum(n * per_step(k) for k, n in steps.items()))


def pretraining_steps(p, recipe_name: str, images: int) -> int:
    """Steps of one recipe's pre-training on `images` images. steps_factor: more (or fewer) steps at the same
    schedule shape (warmup, cosine and curriculum stretched alike), e.g. to give the baseline the FLOPs
    another recipe spends; the last epoch may be partial."""
    steps_factor, cfg = p.recipe(recipe_name).steps_factor, p.pretrain
    return max(1, round(steps_factor * cfg.epochs * (images // cfg.batch_size)))


def pretraining_flops(p, recipe_name: str, images: int) -> float:
    """FLOPs of one recipe's whole pre-training on `images` images, as pretrain.py schedules it."""
    steps = pretraining_steps(p, recipe_name, images)
    return schedule_flops(p.model, p.data.input_size, build(p, recipe_name), p.pretrain.batch_size, steps)


if __name__ == "__main__":  # python -m mae_exp.training.flops PARAMS IMAGES: each recipe, and its baseline's factor
    import sys

    from ..plumbing.config import load_params

    params, n = load_params(sys.argv[1]), int(sys.argv[2])
    spent = {name: pretraining_flops(params, name, n) for name in params.recipes}
    base = params.baseline
    for name, flops in spent.items():
        factor = params.recipe(base).steps_factor * flops / spent[base]
        print(f"{name} {flops:.4g} FLOPs; {base}.steps_factor {factor:.4f} gives {base} {name}'s FLOPs")
