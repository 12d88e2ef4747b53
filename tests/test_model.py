import math

import pytest
import torch

from mae_exp.model import MaskedAutoencoderViT, Reconstruction, sincos_1d, sincos_2d
from mae_exp.recipes import Recipe
from mae_exp.training.losses import pretraining_terms


def make(cfg):
    torch.manual_seed(0)
    return MaskedAutoencoderViT(cfg.model, cfg.data.input_size)


def test_random_masking_keeps_the_right_count_and_restores_order(tiny_model_cfg):
    model = make(tiny_model_cfg)
    b, n, d = 5, 16, 8
    x = torch.arange(b * n * d, dtype=torch.float32).reshape(b, n, d)
    for ratio in (0.25, 0.5, 0.75):
        kept, mask, ids_restore = model.random_masking(x, ratio)
        keep = int(n * (1 - ratio))
        assert kept.shape == (b, keep, d)
        assert mask.shape == (b, n)
        assert (mask.sum(dim=1) == n - keep).all()
        # the kept tokens are exactly the unmasked ones, and unshuffling restores every position
        for i in range(b):
            visible = x[i][mask[i] == 0]
            assert torch.equal(kept[i].sort(dim=0).values, visible.sort(dim=0).values)
        filler = torch.full((b, n - keep, d), -1.0)
        restored = torch.gather(torch.cat([kept, filler], 1), 1, ids_restore[..., None].expand(-1, -1, d))
        assert torch.equal(restored[mask == 0], x[mask == 0])
        assert (restored[mask == 1] == -1).all()


def test_same_noise_gives_same_mask(tiny_model_cfg):
    model = make(tiny_model_cfg)
    x = torch.randn(3, 16, 4)
    noise = torch.rand(3, 16)
    _, m1, _ = model.random_masking(x, 0.75, noise=noise)
    _, m2, _ = model.random_masking(x * 2, 0.75, noise=noise)
    assert torch.equal(m1, m2)
    _, m3, _ = model.random_masking(x, 0.75, noise=torch.rand(3, 16))
    assert not torch.equal(m1, m3)


def test_sincos_embedding():
    emb = sincos_1d(8, torch.arange(5))
    assert emb.shape == (5, 8)
    assert torch.allclose(emb[0], torch.cat([torch.zeros(4), torch.ones(4)]).double())  # sin 0, cos 0
    assert torch.allclose(emb[:, :4] ** 2 + emb[:, 4:] ** 2, torch.ones(5, 4).double())  # unit circles
    grid = sincos_2d(16, 3)
    assert grid.shape == (10, 16)
    assert torch.equal(grid[0], torch.zeros(16))  # the cls slot
    patches = grid[1:]
    # MAE's layout: the first half encodes the column, the second half the row (patches are row-major)
    assert torch.equal(patches[0, 8:], patches[1, 8:]) and not torch.equal(patches[0, :8], patches[1, :8])
    assert torch.equal(patches[0, :8], patches[3, :8]) and not torch.equal(patches[0, 8:], patches[3, 8:])
    assert len({tuple(r.tolist()) for r in patches}) == 9  # every position distinct


def reference_2d_sincos(dim: int, grid_size: int):
    """facebookresearch/mae util/pos_embed.py's get_2d_sincos_pos_embed (cls_token=True), restated in numpy:
    np.meshgrid(w, h) with "w goes first", the first half from grid[0] (the column), the second from grid[1]."""
    import numpy as np

    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid = np.stack(np.meshgrid(np.arange(grid_size, dtype=np.float32), np.arange(grid_size, dtype=np.float32)))
    emb = np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)
    return np.concatenate([np.zeros([1, dim]), emb], axis=0)


def test_position_table_is_maes_to_the_digit():
    """The same numbers as MAE's (and so Hugging Face's ViTMAE) table: weights mean the same in both."""
    ours = sincos_2d(16, 4).double()
    assert torch.allclose(ours, torch.from_numpy(reference_2d_sincos(16, 4)), atol=1e-7)
    # and a few concrete values: patch (row 0, col 1) is token 2; channel 0 is sin(col * 1), channel 8 sin(row)
    assert ours[2, 0].item() == pytest.approx(math.sin(1.0), abs=1e-7)
    assert ours[2, 8].item() == pytest.approx(0.0, abs=1e-7)
    assert ours[5, 8].item() == pytest.approx(math.sin(1.0), abs=1e-7)  # row 1, col 0
    assert ours[5, 0].item() == pytest.approx(0.0, abs=1e-7)


def test_patchify_roundtrip_and_loss_only_on_masked(tiny_model_cfg):
    model = make(tiny_model_cfg)
    s = tiny_model_cfg.data.input_size
    imgs = torch.randn(2, 3, s, s)
    patches = model.patchify(imgs)
    assert patches.shape == (2, model.num_patches, model.patch_size**2 * 3)
    assert torch.equal(model.unpatchify(patches), imgs)
    # a prediction equal to the target on masked patches gives zero loss, whatever the visible ones hold
    target, _, _ = model.target(imgs)
    mask = torch.zeros(2, model.num_patches)
    mask[:, ::2] = 1
    pred = torch.where(mask[..., None] == 1, target, torch.randn_like(target))
    assert model.forward_loss(imgs, pred, mask).item() < 1e-10
    assert model.forward_loss(imgs, torch.randn_like(target), mask).item() > 0.1


def test_forward_shapes_and_encoder_sees_only_visible(tiny_model_cfg):
    model = make(tiny_model_cfg)
    s = tiny_model_cfg.data.input_size
    latent, _, _ = model.forward_encoder(torch.randn(4, 3, s, s), mask_ratio=0.75)
    assert latent.shape[1] == 1 + int(model.num_patches * 0.25)  # cls + visible tokens
    out = model(torch.randn(4, 3, s, s), mask_ratio=0.75)
    assert out.pred.shape == (4, model.num_patches, model.patch_size**2 * 3)
    assert out.loss.shape == () and torch.isfinite(out.loss)
    assert out.latent.shape == latent.shape
    assert (out.mask.sum(dim=1) == model.num_patches - int(model.num_patches * 0.25)).all()


def test_the_loss_is_the_recipe_weights_applied_to_its_terms(tiny_model_cfg):
    """original (both weights 0): the total is the MSE and the extra terms are 0 unless monitored;
    improved: the total is MSE + lambda_freq x Laplacian + lambda_unif x uniformity, and the extra terms
    carry gradients only when weighted."""
    s = tiny_model_cfg.data.input_size
    imgs, noise = torch.randn(8, 3, s, s), torch.rand(8, (s // tiny_model_cfg.model.patch_size) ** 2)
    original = Recipe(mask_ratio=0.75, terms={"freq": 0.0, "unif": 0.0})
    improved = Recipe(mask_ratio=0.75, terms={"freq": 0.5, "unif": 0.1}, mask_ratio_start=0.5, curriculum_fraction=0.5)
    torch.manual_seed(0)
    model = MaskedAutoencoderViT(tiny_model_cfg.model, s)
    terms = pretraining_terms(model, imgs, model(imgs, 0.75, noise), original)
    v = terms.values
    assert terms.total == v["mse"] and v["freq"] == 0 and v["unif"] == 0
    assert not v["freq"].requires_grad and not v["unif"].requires_grad
    monitored = pretraining_terms(model, imgs, model(imgs, 0.75, noise), original, monitor=True)
    m = monitored.values
    assert monitored.total == terms.total and m["freq"] > 0 and m["unif"] < 0  # computed, not added
    assert not m["freq"].requires_grad and not m["unif"].requires_grad  # for the curve, no graph
    t = pretraining_terms(model, imgs, model(imgs, 0.75, noise), improved)
    w = t.values
    assert torch.allclose(t.total, w["mse"] + 0.5 * w["freq"] + 0.1 * w["unif"])
    for name in ("mse", "freq", "unif"):  # same weights and masks: the same terms
        assert torch.equal(w[name], m[name]), name
    assert w["freq"].requires_grad and w["unif"].requires_grad
    t.total.backward()
    assert model.encoder.cls_token.grad is not None
    assert set(t.logged()) == {"loss", "mse", "freq", "unif"}  # the names the curves and metrics.json carry


def test_laplacian_term_ignores_the_decoder_output_on_visible_patches(tiny_model_cfg):
    """The high-frequency term scores masked pixels against the image with the true visible patches pasted
    in: whatever the decoder predicts for a visible patch changes neither the term nor its gradient."""
    s = tiny_model_cfg.data.input_size
    torch.manual_seed(0)
    model = MaskedAutoencoderViT(tiny_model_cfg.model, s)
    recipe = Recipe(mask_ratio=0.75, terms={"freq": 1.0})
    imgs = torch.rand(2, 3, s, s)
    mask = torch.zeros(2, model.num_patches)
    mask[:, 1::3] = 1  # masked patches with visible neighbours on every side
    latent = torch.randn(2, 5, tiny_model_cfg.model.encoder_dim)
    base = torch.randn(2, model.num_patches, model.patch_size**2 * 3)
    other = torch.where(mask[..., None] == 1, base, 10 * torch.randn_like(base))  # only visible ones differ

    def freq_and_grad(pred):
        pred = pred.clone().requires_grad_(True)
        freq = pretraining_terms(model, imgs, Reconstruction(torch.zeros(()), pred, mask, latent), recipe).values[
            "freq"
        ]
        freq.backward()
        return freq.detach(), pred.grad

    f1, g1 = freq_and_grad(base)
    f2, g2 = freq_and_grad(other)
    assert f1 > 0
    assert torch.equal(f1, f2) and torch.equal(g1, g2)
    assert (g1[mask == 0] == 0).all() and (g1[mask == 1] != 0).any()
