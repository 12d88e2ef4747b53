"""The SMAE recipe's pure parts: block masking, the perceptual CNN and its loss, uncertainty weighting."""

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from mae_exp.model import MaskedAutoencoderViT, visible_count
from mae_exp.objectives import uncertainty_weighted
from mae_exp.training.augment import to_float
from mae_exp.training.masking import block_mask, block_noise
from mae_exp.training.perceptual import PerceptualCNN, perceptual_loss, train_perceptual_cnn


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def components(masks: torch.Tensor, grid: int) -> np.ndarray:
    """Number of 4-connected components of each (grid*grid) 0/1 mask."""
    return np.array([ndimage.label(m)[1] for m in masks.reshape(-1, grid, grid).bool().numpy()])


def isolated(masks: torch.Tensor, grid: int) -> int:
    """How many masked patches have no masked 4-neighbour."""
    m = masks.reshape(-1, grid, grid).bool().numpy()
    p = np.pad(m, ((0, 0), (1, 1), (1, 1)))
    beside = p[:, :-2, 1:-1] | p[:, 2:, 1:-1] | p[:, 1:-1, :-2] | p[:, 1:-1, 2:]
    return int((m & ~beside).sum())


# --------------------------------------------------------------------------- block masking


@pytest.mark.parametrize("grid", [8, 14])
@pytest.mark.parametrize("ratio", [0.4, 0.75])
def test_block_noise_makes_the_model_mask_exactly_the_blocks(tiny_model_cfg, grid, ratio):
    cfg = tiny_model_cfg.model
    model = MaskedAutoencoderViT(cfg, image_size=grid * cfg.patch_size)
    n = grid * grid
    noise = torch.rand(16, n, generator=generator(1))
    blocks = block_mask(16, grid, ratio, generator(2))
    _, mask, _ = model.random_masking(torch.zeros(16, n, 4), ratio, block_noise(noise, grid, ratio, generator(2)))
    target = n - visible_count(n, ratio)
    assert (mask.sum(dim=1) == target).all()
    assert torch.equal(mask, blocks)  # the same generator seed: the same blocks, and exactly them


@pytest.mark.parametrize("grid", [8, 14])
def test_block_masks_are_blocks_not_scattered_patches(grid):
    n = grid * grid
    for ratio in (0.4, 0.5, 0.75):
        blocks = block_mask(64, grid, ratio, generator(0))
        assert isolated(blocks, grid) == 0
    # at 40%, random masking scatters: many components and isolated patches; blocks give a few components
    ratio = 0.4
    target = n - visible_count(n, ratio)
    random = (torch.rand(64, n, generator=generator(1)).argsort(dim=1).argsort(dim=1) >= n - target).float()
    blocks = block_mask(64, grid, ratio, generator(0))
    assert isolated(random, grid) > 64
    assert components(blocks, grid).mean() < components(random, grid).mean() / 4


def test_block_mask_is_reproducible_and_seed_dependent():
    a = block_mask(8, 14, 0.75, generator(5))
    assert torch.equal(a, block_mask(8, 14, 0.75, generator(5)))
    assert not torch.equal(a, block_mask(8, 14, 0.75, generator(6)))
    assert not torch.equal(a[0], a[1])  # each image its own blocks


@pytest.mark.parametrize("grid", [1, 2, 3])
@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.75, 0.99])
def test_block_mask_ends_on_the_target_on_tiny_grids(grid, ratio):
    n = grid * grid
    masks = block_mask(32, grid, ratio, generator(0), min_block=4, max_aspect=3.0)
    assert masks.shape == (32, n) and masks.dtype == torch.float32
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert (masks.sum(dim=1) == n - visible_count(n, ratio)).all()


# --------------------------------------------------------------------------- uncertainty weighting


def test_uncertainty_weighted_matches_the_formula_and_its_gradient():
    losses = [torch.tensor(0.8), torch.tensor(0.03)]
    s = torch.tensor([-1.0, -6.0], requires_grad=True)
    total = uncertainty_weighted(losses, s)
    by_hand = math.exp(1) * 0.8 - 1 + math.exp(6) * 0.03 - 6
    assert total.item() == pytest.approx(by_hand, rel=1e-6)
    total.backward()
    expected = [1 - math.exp(1) * 0.8, 1 - math.exp(6) * 0.03]
    assert s.grad.tolist() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError):
        uncertainty_weighted(losses, torch.zeros(3))


# --------------------------------------------------------------------------- perceptual CNN and loss


def coloured_set(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n 32 px uint8 images, two classes: reddish or bluish, with noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    base = np.where(labels[:, None] == 0, [170, 60, 60], [60, 60, 170])
    images = base[:, None, None, :] + rng.normal(0, 40, (n, 32, 32, 3))
    return images.clip(0, 255).astype(np.uint8), labels


def test_perceptual_loss_is_zero_on_identical_images_and_reaches_only_the_reconstruction():
    torch.manual_seed(0)
    cnn = PerceptualCNN(num_classes=2, width=8).freeze()
    imgs = to_float(torch.as_tensor(coloured_set(4, 0)[0]))
    assert perceptual_loss(cnn, imgs, imgs, layers=2).item() == 0
    recon = (imgs + 0.3 * torch.randn_like(imgs)).requires_grad_()
    loss = perceptual_loss(cnn, recon, imgs, layers=3)
    assert loss.item() > 0
    loss.backward()
    assert recon.grad is not None and recon.grad.abs().sum() > 0
    assert all(p.grad is None for p in cnn.parameters())


def test_perceptual_loss_refuses_a_cnn_that_is_not_frozen():
    cnn = PerceptualCNN(num_classes=2, width=8)
    imgs = torch.zeros(2, 3, 16, 16)
    with pytest.raises(ValueError, match="frozen"):
        perceptual_loss(cnn, imgs, imgs, layers=1)
    with pytest.raises(ValueError, match="frozen"):
        perceptual_loss(cnn.eval(), imgs, imgs, layers=1)  # eval, but its parameters would get gradients


def test_features_returns_the_first_stages():
    cnn = PerceptualCNN(num_classes=3, width=4, depth=3).eval()
    feats = cnn.features(torch.zeros(2, 3, 32, 32), layers=2)
    assert [f.shape for f in feats] == [(2, 4, 16, 16), (2, 8, 8, 8)]
    assert cnn(torch.zeros(2, 3, 32, 32)).shape == (2, 3)


def test_train_perceptual_cnn_learns_and_is_deterministic():
    images, labels = coloured_set(200, 0)
    kw = dict(epochs=3, batch_size=32, lr=3e-3, seed=7, device="cpu", width=8)
    cnn = train_perceptual_cnn(images, labels, **kw)
    assert not cnn.training and not any(p.requires_grad for p in cnn.parameters())
    test_images, test_labels = coloured_set(100, 1)
    with torch.no_grad():
        predicted = cnn(to_float(torch.as_tensor(test_images))).argmax(dim=1).numpy()
    assert (predicted == test_labels).mean() > 0.8
    again = train_perceptual_cnn(images, labels, **kw)
    assert all(torch.equal(a, b) for a, b in zip(cnn.state_dict().values(), again.state_dict().values()))
    other = train_perceptual_cnn(images, labels, **{**kw, "seed": 8})
    assert not torch.equal(cnn.head.weight, other.head.weight)
