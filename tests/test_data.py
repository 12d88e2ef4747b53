import json

import numpy as np
import torch

from conftest import REPO
from mae_exp.data.prepared import load_meta, load_split
from mae_exp.data.shapes import SHAPE_CLASSES, render_shapes
from mae_exp.data.sources import prepare
from mae_exp.plumbing.config import load_params


def test_shapes_dataset_layout_and_determinism(tmp_path):
    p = load_params(REPO / "configs" / "tiny.yaml")
    a = prepare(p.data, p.seed, tmp_path / "a")
    b = prepare(p.data, p.seed, tmp_path / "b")
    meta = load_meta(a)
    assert meta["classes"] == list(SHAPE_CLASSES) and len(SHAPE_CLASSES) == 10
    assert meta["sizes"] == {"unlabeled": 192, "train": 100, "test": 100}
    assert not (tmp_path / "a.partial").exists()
    for split in ("unlabeled", "train", "test"):
        s = load_split(a, split)
        assert s.images.dtype == np.uint8 and s.images.shape[1:] == (16, 16, 3)
        assert isinstance(s.images, np.memmap)  # later stages never need a second copy in RAM
        assert np.array_equal(s.images, load_split(b, split).images)  # same seed, same bytes
    labels = load_split(a, "train").labels
    assert np.bincount(labels, minlength=10).tolist() == [10] * 10  # balanced
    assert json.loads((a / "meta.json").read_text())["digest"] == load_meta(b)["digest"]
    p2 = load_params(REPO / "configs" / "tiny.yaml")
    c = prepare(p2.data, p2.seed + 1, tmp_path / "c")
    assert not np.array_equal(load_split(a, "test").images, load_split(c, "test").images)


def test_colour_statistics_do_not_reveal_the_class():
    """A nearest-class-mean classifier on mean colour must be near chance: the label is the outline."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(2000) % 10
    images = render_shapes(labels, 32, g).float()
    colour = images.mean(dim=(1, 2))  # (N, 3)
    train, test = slice(0, 1000), slice(1000, 2000)
    centres = torch.stack([colour[train][labels[train] == c].mean(0) for c in range(10)])
    predicted = torch.cdist(colour[test], centres).argmin(1)
    accuracy = (predicted == labels[test]).float().mean().item()
    assert accuracy < 0.2, accuracy


def test_each_class_draws_a_distinct_outline():
    """Same colours, position, scale and rotation (same generator state): only the shape differs."""
    masks = []
    for cls in range(10):
        img = render_shapes(torch.tensor([cls]), 32, torch.Generator().manual_seed(1)).float()
        masks.append(img)
    for i in range(10):
        for j in range(i + 1, 10):
            assert (masks[i] - masks[j]).abs().sum() > 100, (SHAPE_CLASSES[i], SHAPE_CLASSES[j])
