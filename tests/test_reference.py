"""The maths that decides the comparison, against MAE's reference (facebookresearch/mae) and independent
implementations, with concrete numbers: layer-wise lr decay and weight-decay groups (`util/lr_decay.py`),
the warmup + cosine schedule (`util/lr_sched.py`), masked PSNR (scikit-image) and the linear-probe head."""

from __future__ import annotations

import math

import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio

from mae_exp.evaluation.finetune import Classifier
from mae_exp.evaluation.probe import accuracy, train_heads
from mae_exp.evaluation.visualize import masked_psnr
from mae_exp.model import MaskedAutoencoderViT, ViTEncoder
from mae_exp.plumbing.config import ModelConfig
from mae_exp.training.optim import FINETUNE_NO_DECAY, layer_decay, param_groups, warmup_cosine

SMALL_VIT = ModelConfig(
    patch_size=4,
    encoder_dim=16,
    encoder_depth=3,
    encoder_heads=2,
    decoder_dim=8,
    decoder_depth=1,
    decoder_heads=2,
    mlp_ratio=2.0,
    norm_pix_loss=True,
)


# --------------------------------------------------------------------------- MAE's util/lr_decay.py, restated


def mae_layer_id(name: str, num_layers: int) -> int:
    """MAE's get_layer_id_for_vit."""
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks"):
        return int(name.split(".")[1]) + 1
    return num_layers


def mae_param_groups_lrd(model, weight_decay: float, no_weight_decay_list, layer_decay: float) -> dict:
    """MAE's param_groups_lrd, on a model named as MAE's VisionTransformer: group name -> (lr_scale,
    weight_decay, parameter names)."""
    num_layers = len(model.encoder.blocks) + 1
    layer_scales = [layer_decay ** (num_layers - i) for i in range(num_layers + 1)]
    groups: dict[str, tuple] = {}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        mae_name = n.removeprefix("encoder.")  # MAE's ViT has the encoder's parameters at the top level
        no_decay = p.ndim == 1 or mae_name in no_weight_decay_list
        layer_id = mae_layer_id(mae_name, num_layers)
        key = f"layer_{layer_id}_{'no_decay' if no_decay else 'decay'}"
        scale, decay, names = groups.setdefault(key, (layer_scales[layer_id], 0.0 if no_decay else weight_decay, []))
        names.append(n)
    return groups


def test_layer_decay_groups_are_maes():
    model = Classifier(ViTEncoder(SMALL_VIT, 16), num_classes=10)
    ours = param_groups(model, 0.05, layer_decay(SMALL_VIT.encoder_depth, 0.75), FINETUNE_NO_DECAY)
    name_of = {id(p): n for n, p in model.named_parameters()}
    ours = {(g["lr_scale"], g["weight_decay"], frozenset(name_of[id(p)] for p in g["params"])) for g in ours}
    # MAE's VisionTransformer.no_weight_decay(): {'pos_embed', 'cls_token', 'dist_token'}
    reference = mae_param_groups_lrd(model, 0.05, {"pos_embed", "cls_token", "dist_token"}, 0.75)
    assert ours == {(s, d, frozenset(names)) for s, d, names in reference.values()}
    assert len(ours) == 10  # 5 layers (embedding, 3 blocks, head) x decay / no decay

    by_name = {n: (s, d) for s, d, names in ours for n in names}  # the numbers, at depth 3 and decay 0.75
    assert by_name["encoder.patch_embed.weight"] == (0.75**4, 0.05) == (0.31640625, 0.05)
    assert by_name["encoder.cls_token"] == (0.31640625, 0.0)  # a token: no weight decay though not 1-D
    assert by_name["encoder.blocks.0.attn.qkv.weight"] == (0.421875, 0.05)
    assert by_name["encoder.blocks.0.norm1.bias"] == (0.421875, 0.0)
    assert by_name["encoder.blocks.2.mlp.2.weight"] == (0.75, 0.05)
    assert by_name["head.weight"] == (1.0, 0.05) and by_name["fc_norm.weight"] == (1.0, 0.0)
    assert "encoder.pos_embed" not in by_name  # fixed sin-cos, as MAE's (requires_grad=False there)


def mae_add_weight_decay(model, weight_decay: float, skip_list=()) -> list[dict]:
    """timm's add_weight_decay (timm 0.3.2, as MAE's main_pretrain.py calls it, with no skip list)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if len(param.shape) == 1 or name.endswith(".bias") or name in skip_list:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def test_pretraining_groups_are_maes():
    """MAE's pre-training decays every parameter but the 1-D ones and biases: its cls and mask tokens too."""
    model = MaskedAutoencoderViT(SMALL_VIT, 16)
    ours = {g["weight_decay"]: g for g in param_groups(model, 0.05)}
    assert sorted(ours) == [0.0, 0.05] and {g["lr_scale"] for g in ours.values()} == {1.0}
    for theirs in mae_add_weight_decay(model, 0.05):
        assert [id(p) for p in ours[theirs["weight_decay"]]["params"]] == [id(p) for p in theirs["params"]]
    decayed = {id(p) for p in ours[0.05]["params"]}
    assert id(model.encoder.cls_token) in decayed and id(model.mask_token) in decayed
    assert id(model.decoder_pred.weight) in decayed and id(model.decoder_pred.bias) not in decayed


# --------------------------------------------------------------------------- MAE's util/lr_sched.py, restated


def mae_adjust_learning_rate(epoch: float, lr: float, min_lr: float, warmup_epochs: float, epochs: float) -> float:
    """MAE's adjust_learning_rate, called with the fractional epoch `data_iter_step / len(loader) + epoch`."""
    if epoch < warmup_epochs:
        return lr * epoch / warmup_epochs
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / (epochs - warmup_epochs)))


@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 5e-5),
        (9, 5e-4),
        (19, 1e-3),  # warmup: one step ahead of MAE's (MAE's first step has lr 0)
        (20, 1e-3),
        (60, 5e-4),
        (80, 1e-3 * 0.5 * (1 + math.cos(math.pi * 0.75))),
        (99, 1e-3 * 0.5 * (1 + math.cos(math.pi * 79 / 80))),
    ],
)
def test_warmup_cosine_is_maes_schedule_per_step(step, expected):
    """10 epochs of 10 steps, 2 of warmup, peak 1e-3, min_lr 0. MAE sets the lr from the fractional epoch
    step / 10; ours from the step: the same after warmup, and during warmup ours at step s is MAE's at
    s + 1, so that no step is taken at lr 0."""
    steps_per_epoch, total, warmup, peak = 10, 100, 20, 1e-3
    ours = warmup_cosine(step, total, warmup, peak)
    assert ours == pytest.approx(expected, rel=1e-12)
    mae_step = step + 1 if step < warmup else step
    assert ours == pytest.approx(mae_adjust_learning_rate(mae_step / steps_per_epoch, peak, 0.0, 2, 10), rel=1e-12)


def test_warmup_cosine_ends_at_zero_and_never_exceeds_the_peak():
    lrs = [warmup_cosine(s, 100, 20, 1e-3) for s in range(120)]
    assert max(lrs) == 1e-3 and lrs[100:] == [0.0] * 20  # past `total` it stays at 0


# --------------------------------------------------------------------------- PSNR against scikit-image


def test_masked_psnr_matches_scikit_image():
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(3, 3, 16, 16, generator=gen)
    recon = (image + 0.1 * torch.randn(3, 3, 16, 16, generator=gen)).clamp(0, 1)
    pixel_mask = (torch.rand(3, 1, 16, 16, generator=gen) < 0.75).float()
    ours = masked_psnr(recon, image, pixel_mask)
    for i in range(3):
        keep = pixel_mask[i, 0].bool()
        reference = peak_signal_noise_ratio(
            image[i][:, keep].double().numpy(), recon[i][:, keep].double().numpy(), data_range=1.0
        )
        assert ours[i].item() == pytest.approx(reference, abs=1e-4)
    # and one by hand: a uniform error of 0.1 on masked pixels is 20 dB, whatever the visible ones are
    off = image.clone()
    off[:, :, :8] = image[:, :, :8] + 0.1
    off[:, :, 8:] = 0.5
    top_half = torch.zeros(3, 1, 16, 16)
    top_half[:, :, :8] = 1
    assert masked_psnr(off, image, top_half).tolist() == pytest.approx([20.0] * 3, abs=1e-4)


# --------------------------------------------------------------------------- the probe's head


def test_the_probe_head_separates_a_linearly_separable_set():
    """Four classes in 32 dimensions, each a Gaussian blob around its own corner of a simplex, 4 sd apart:
    linearly separable with a wide margin (a nearest-centre rule gets 100%). MAE's head (BN + linear,
    SGD with warmup + cosine) must reach 100% on train and at least 99% on held-out points."""
    gen = torch.Generator().manual_seed(0)
    centres = 4.0 * torch.eye(4, 32)
    y = torch.arange(800) % 4
    x = centres[y] + 0.5 * torch.randn(800, 32, generator=gen) + 3.0  # offset: the BN has something to undo
    train, test = slice(0, 600), slice(600, 800)
    losses = []
    head = train_heads(
        {"x": x[train]},
        y[train],
        4,
        epochs=10,
        batch_size=64,
        lr=0.1,
        weight_decay=0.0,
        seed=0,
        on_epoch=lambda epoch, heads, loss: losses.append(loss["x"]),
    )["x"]
    with torch.no_grad():
        assert accuracy(head(x[train]), y[train]) == 1.0
        assert accuracy(head(x[test]), y[test]) >= 0.99
    assert losses[-1] < 0.5 * losses[0]  # it learned, not started there


def test_the_probe_head_is_at_chance_on_random_labels():
    """The other side: on labels independent of the features the held-out accuracy stays near 1/4."""
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(2000, 32, generator=gen), torch.randint(0, 4, (2000,), generator=gen)
    head = train_heads({"x": x[:1000]}, y[:1000], 4, epochs=10, batch_size=64, lr=0.1, weight_decay=0.0, seed=0)["x"]
    with torch.no_grad():
        assert abs(accuracy(head(x[1000:]), y[1000:]) - 0.25) < 0.06
