import math

import pytest
import torch

from mae_exp.objectives import laplacian, masked_laplacian_l1, patch_mask_to_pixels, uniformity
from mae_exp.recipes import Recipe, mae


def test_laplacian_of_constant_and_linear_images_is_zero():
    flat = torch.full((1, 3, 8, 8), 0.7)
    assert laplacian(flat).abs().max() < 1e-6
    ramp = torch.arange(8.0).expand(1, 3, 8, 8)
    assert laplacian(ramp)[..., 1:-1, 1:-1].abs().max() < 1e-6  # second derivative of a ramp


def test_masked_laplacian_loss_zero_on_identical_positive_otherwise():
    torch.manual_seed(0)
    img = torch.rand(2, 3, 16, 16)
    mask = torch.zeros(2, 16)
    mask[:, :8] = 1
    pixels = patch_mask_to_pixels(mask, 4, 4)
    assert pixels.shape == (2, 1, 16, 16) and pixels.sum() == 2 * 8 * 16
    assert masked_laplacian_l1(img, img, mask, 4).item() == 0
    blurred = torch.nn.functional.avg_pool2d(img, 3, 1, 1)
    assert masked_laplacian_l1(blurred, img, mask, 4).item() > 0.05
    # differences confined to visible pixels do not count
    changed = img.clone()
    changed[:, :, 12:, :] = torch.rand(2, 3, 4, 16)  # rows 12-15: the last patch row, visible
    assert masked_laplacian_l1(changed, img, mask, 4).item() == pytest.approx(0, abs=1e-7)


def test_uniformity_is_zero_when_collapsed_and_lower_when_spread():
    collapsed = torch.ones(32, 8)
    assert uniformity(collapsed).item() == pytest.approx(0.0, abs=1e-6)
    torch.manual_seed(0)
    spread = torch.randn(32, 8)
    clustered = torch.ones(32, 8) + 0.05 * torch.randn(32, 8)
    assert uniformity(spread) < uniformity(clustered) < 0
    # +-e_i in 4-D: 4 antipodal pairs (squared distance 4), 24 orthogonal pairs (squared distance 2)
    expected = math.log((4 * math.exp(-8) + 24 * math.exp(-4)) / 28)
    assert uniformity(torch.cat([torch.eye(4), -torch.eye(4)])).item() == pytest.approx(expected, rel=1e-5)


def test_uniformity_gradient_pushes_points_apart():
    z = (torch.ones(8, 4) + 0.1 * torch.randn(8, 4)).requires_grad_()
    uniformity(z).backward()
    stepped = z.detach() - 0.5 * z.grad
    assert uniformity(stepped) < uniformity(z.detach())


def test_mask_ratio_schedule():
    """The recipe function `mae` builds the curriculum from its section's settings."""
    original = mae(mask_ratio=0.75, mask_ratio_start=0.75, curriculum_fraction=0.0, lambda_freq=0.0, lambda_unif=0.0)
    improved = mae(mask_ratio=0.75, mask_ratio_start=0.5, curriculum_fraction=0.5, lambda_freq=0.0, lambda_unif=0.0)
    mask_ratio_at = Recipe.mask_ratio_at
    assert [mask_ratio_at(original, t) for t in (0, 0.3, 1)] == [0.75, 0.75, 0.75]
    assert mask_ratio_at(improved, 0.0) == pytest.approx(0.5)
    assert mask_ratio_at(improved, 0.25) == pytest.approx(0.625)
    assert mask_ratio_at(improved, 0.5) == pytest.approx(0.75)
    assert mask_ratio_at(improved, 0.9) == pytest.approx(0.75)
    ratios = [mask_ratio_at(improved, t / 100) for t in range(101)]
    assert ratios == sorted(ratios)  # never decreases


def test_fast_laplacian_loss_matches_the_two_filter_pixel_mask_definition():
    """Shifted slices on the difference, masked per patch == conv3x3 on each image, pixel-mask mean."""
    torch.manual_seed(1)
    recon, img = torch.randn(3, 3, 24, 24), torch.randn(3, 3, 24, 24)
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).expand(3, 1, 3, 3)

    def conv_laplacian(x):
        return torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)

    torch.testing.assert_close(laplacian(img), conv_laplacian(img), rtol=1e-5, atol=1e-5)
    mask = (torch.rand(3, 36) < 0.6).float()  # 6x6 grid of 4 px patches
    pixels = patch_mask_to_pixels(mask, 6, 4)
    diff = (conv_laplacian(recon) - conv_laplacian(img)).abs().mean(dim=1, keepdim=True)
    reference = (diff * pixels).sum() / pixels.sum()
    torch.testing.assert_close(masked_laplacian_l1(recon, img, mask, 4), reference, rtol=1e-5, atol=1e-6)
