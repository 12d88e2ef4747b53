"""The fast paths give the same numbers as the plain ones: batched augmentation vs a per-image
reference, compiled vs eager blocks."""

from __future__ import annotations

import copy

import pytest
import torch
from torch._dynamo.utils import counters
from torchvision.ops import roi_align

from mae_exp.model import MaskedAutoencoderViT
from mae_exp.recipes import build
from mae_exp.training.augment import crop_and_flip, crop_and_flip_uint8, draw_crops, random_crop_boxes, to_float
from mae_exp.training.losses import pretraining_terms

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])  # training runs the same code on a GPU


def per_image_reference(x: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, out_size: int) -> torch.Tensor:
    """One image at a time, with an independent resampler: torchvision's roi_align (bilinear, one
    sample per output pixel at its centre, aligned=True), then torch.flip."""
    h, w = x.shape[-2:]
    x = x.cpu()
    out = []
    for img, (cx, cy, bw, bh), f in zip(x, boxes.tolist(), flip.tolist()):
        box = torch.tensor([[0.0, (cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]])
        crop = roi_align(img[None], box, output_size=out_size, spatial_scale=1.0, sampling_ratio=1, aligned=True)[0]
        out.append(crop.flip(-1) if f else crop)
    return torch.stack(out)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size, out_size", [(32, 32), (32, 48), (32, 17), (24, 56)])
def test_batched_crop_and_flip_matches_per_image_reference(size, out_size, device):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, size, size, generator=gen)
    boxes = random_crop_boxes(16, 0.2, gen)
    flip = torch.rand(16, generator=gen) < 0.5
    assert flip.any() and not flip.all()
    batched = crop_and_flip(x.to(device), boxes.to(device), flip.to(device), out_size).cpu()
    reference = per_image_reference(x, boxes, flip, out_size)
    # float32 coordinate rounding only: a half-pixel misalignment would differ by ~0.5
    torch.testing.assert_close(batched, reference, atol=1e-4, rtol=1e-4)


def test_whole_pixel_crop_is_exact():
    """A box on pixel boundaries resampled to its own size is a plain slice of the image."""
    x = torch.arange(2 * 3 * 12 * 12, dtype=torch.float32).reshape(2, 3, 12, 12)
    box = torch.tensor([[(5 + 3) / 12, (2 + 3) / 12, 6 / 12, 6 / 12]]).expand(2, 4)  # rows 2..7, cols 5..10
    out = crop_and_flip(x, box, torch.tensor([False, True]), out_size=6)
    ref = x[:, :, 2:8, 5:11].clone()
    ref[1] = ref[1].flip(-1)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_uint8_path_is_to_float_then_crop_and_flip(device):
    """What pre-training runs (stored uint8 in, normalised crops out) against its definition, upsampling
    as the seed config does (96 -> 224 px there), and against the per-image reference."""
    gen = torch.Generator().manual_seed(4)
    images = torch.randint(0, 256, (8, 24, 24, 3), dtype=torch.uint8, generator=gen)
    boxes = random_crop_boxes(8, 0.2, gen)
    flip = torch.arange(8) % 2 == 0
    fast = crop_and_flip_uint8(images.to(device), boxes.to(device), flip.to(device), 56).cpu()
    assert fast.shape == (8, 3, 56, 56) and fast.dtype == torch.float32 and fast.is_contiguous()
    torch.testing.assert_close(fast, crop_and_flip(to_float(images), boxes, flip, 56), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast, per_image_reference(to_float(images), boxes, flip, 56), atol=1e-4, rtol=1e-4)


def test_augment_draws_are_reproducible_and_per_sample():
    x = torch.randint(0, 256, (8, 16, 16, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))

    def augment(x, min_scale, generator):  # what the training loops do: draw_crops, then resample the rows
        boxes, flip = draw_crops(x.shape[0], min_scale, generator, device=x.device)
        return crop_and_flip_uint8(x, boxes, flip, x.shape[1])

    a = augment(x, 0.2, torch.Generator().manual_seed(1))
    b = augment(x, 0.2, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    same_input = augment(x[:1].expand(8, -1, -1, -1), 0.2, torch.Generator().manual_seed(2))
    assert not torch.allclose(same_input[0], same_input[1])  # each sample gets its own crop


@pytest.mark.slow  # torch.compile: minutes of C++ compilation on a CPU
def test_compiled_blocks_give_the_eager_loss_and_gradients(tiny_model_cfg):
    torch.manual_seed(0)
    improved = build(tiny_model_cfg, "improved")  # every loss term with a gradient
    eager = MaskedAutoencoderViT(tiny_model_cfg.model, tiny_model_cfg.data.input_size)
    compiled = copy.deepcopy(eager)
    compiled.compile_blocks()
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # checkpoints stay interchangeable
    x = torch.randn(8, 3, 16, 16)
    graphs_before = counters["stats"]["unique_graphs"]
    # two mask ratios: a different visible-token count must not break or change the compiled blocks
    for ratio in (0.75, 0.5):
        noise = torch.rand(8, eager.num_patches, generator=torch.Generator().manual_seed(3))
        terms_of, grads = [], []
        for model in (eager, compiled):
            model.zero_grad()
            terms = pretraining_terms(model, x, model(x, ratio, noise), improved)
            terms.total.backward()
            terms_of.append(torch.stack(list(terms.logged().values())))
            grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        torch.testing.assert_close(terms_of[1], terms_of[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(grads[1], grads[0], rtol=1e-3, atol=1e-5)
    assert counters["stats"]["unique_graphs"] > graphs_before  # dynamo really compiled (no silent eager)
