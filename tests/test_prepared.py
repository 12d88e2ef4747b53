"""The prepared format's readers: the train / val / test parts and the pre-training images, read from real
.npy files written by PreparedWriter, and run through the training loops' own select_rows and resident_images."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO
from mae_exp.data.prepared import ImageRows, PreparedWriter, labeled, load_split, pretraining_set
from mae_exp.training.runtime import resident_images, select_rows

SIZE = 4
TRAIN_CLASSES = [0] * 20 + [1] * 7 + [2] * 3 + [3] * 1  # imbalanced; class 3 has a single image


def image_ids(images: np.ndarray) -> list[int]:
    """Every image is filled with a value derived from its id (see write_prepared)."""
    return [int(v) for v in np.asarray(images)[:, 0, 0, 0]]


def write_prepared(out: Path, sizes: dict[str, int], labels: list[int] | None = None) -> Path:
    """unlabeled image i holds 100 + i, train image i holds i, test image i holds 200 + i (every pixel)."""
    first = {"train": 0, "unlabeled": 100, "test": 200}
    with PreparedWriter(out) as writer:
        for split, n in sizes.items():
            with writer.images(split, n, SIZE) as sink:
                ids = first[split] + np.arange(n)
                sink.write(np.broadcast_to(ids[:, None, None, None], (n, SIZE, SIZE, 3)).astype(np.uint8))
            if split != "unlabeled":
                writer.labels(split, labels if split == "train" and labels else np.arange(n) % 2)
        return writer.commit({"source": "test"})


@pytest.fixture
def prepared(tmp_path) -> Path:
    return write_prepared(
        tmp_path / "prepared", {"unlabeled": 8, "train": len(TRAIN_CLASSES), "test": 5}, TRAIN_CLASSES
    )


def test_val_is_a_fixed_stratified_share_of_the_stored_train_split(prepared):
    stored = load_split(prepared, "train")
    train, val = labeled(prepared, "train", 0.2), labeled(prepared, "val", 0.2)
    train_ids, val_ids = image_ids(train.images), image_ids(val.images)
    assert not set(train_ids) & set(val_ids)
    assert sorted(train_ids + val_ids) == list(range(len(TRAIN_CLASSES)))  # union = stored train, no copy twice
    assert train_ids == sorted(train_ids) and val_ids == sorted(val_ids)  # stored order: sequential reads
    np.testing.assert_array_equal(train.labels, stored.labels[train_ids])  # each image keeps its label
    np.testing.assert_array_equal(val.labels, stored.labels[val_ids])
    # per class: 20% rounded (20 -> 4, 7 -> 1, 3 -> 1); a single image stays in train
    assert np.bincount(val.labels, minlength=4).tolist() == [4, 1, 1, 0]
    test = labeled(prepared, "test", 0.2)
    assert image_ids(test.images) == [200, 201, 202, 203, 204] and isinstance(test.images, np.memmap)

    # the same images whatever the run's seed or the global random state
    torch.manual_seed(1)
    np.random.seed(1)
    again = labeled(prepared, "val", 0.2)
    assert image_ids(again.images) == val_ids
    # a larger fraction holds out more of every class, and never a class's last train image
    bigger = labeled(prepared, "val", 0.5)
    assert np.bincount(bigger.labels, minlength=4).tolist() == [10, 4, 2, 0]


def test_val_shares_over_many_classes_and_sizes(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(12), rng.integers(2, 60, 12))
    root = write_prepared(tmp_path / "p", {"unlabeled": 1, "train": len(labels), "test": 1}, labels.tolist())
    for fraction in (0.05, 0.1, 0.25, 0.5):
        val = labeled(root, "val", fraction)
        for c, n in enumerate(np.bincount(labels)):
            k = int((val.labels == c).sum())
            assert abs(k - fraction * n) <= 0.5 and k < n, (fraction, c, n, k)


def test_labeled_refuses_bad_parts_and_a_fraction_that_holds_out_nothing(prepared):
    with pytest.raises(ValueError, match="unknown labeled part 'unlabeled'"):
        labeled(prepared, "unlabeled", 0.1)
    # a fraction outside (0, 0.5] is config.py's to refuse (tests/test_config.py), before any stage reads data
    with pytest.raises(ValueError, match="data.val_fraction .* holds out no image"):
        labeled(prepared, "val", 0.01)


def test_one_image_per_class_asks_for_images_not_a_larger_fraction(tmp_path):
    root = write_prepared(tmp_path / "p", {"unlabeled": 1, "train": 3, "test": 1}, [0, 1, 2])
    with pytest.raises(ValueError, match="every class has a single train image") as err:
        labeled(root, "val", 0.5)  # the largest fraction: raising it cannot help, so the message must not say so
    assert "val_fraction" not in str(err.value) and "add train images" in str(err.value)


def test_the_pretraining_set_concatenates_the_named_splits_without_copying(prepared):
    one, _ = pretraining_set(prepared, ["unlabeled"])
    assert isinstance(one, np.memmap) and Path(one.filename).name == "unlabeled_images.npy"  # the map itself

    images, line = pretraining_set(prepared, ["unlabeled", "train"])
    assert line == "pre-training on 39 images (unlabeled 8 + train 31)"
    assert isinstance(images, ImageRows) and all(isinstance(p, np.memmap) for p in images.parts)
    assert len(images) == 39 and images.shape == (39, SIZE, SIZE, 3) and images.dtype == np.uint8
    assert images.nbytes == 39 * SIZE * SIZE * 3
    everything = list(range(100, 108)) + list(range(31))
    assert image_ids(images[:]) == everything and image_ids(np.asarray(images)) == everything
    idx = np.array([38, 0, 8, 7, 8, -1])  # unsorted, across both parts, repeated, negative
    assert image_ids(images[idx]) == [30, 100, 0, 107, 0, 30]
    assert image_ids(images[3:10:3]) == [103, 106, 1]
    assert image_ids([images[9]]) == [1]
    with pytest.raises(IndexError):
        images[np.array([39])]
    assert image_ids(pretraining_set(prepared, ["train", "unlabeled"])[0][:]) == list(range(31)) + list(range(100, 108))


def test_the_training_loops_select_rows_and_resident_images_work_on_the_views_unchanged(prepared):
    cpu = torch.device("cpu")
    views = [pretraining_set(prepared, ["unlabeled", "train"])[0], labeled(prepared, "train", 0.2).images]
    for images in views:
        assert resident_images(images, cpu) is images  # on CPU the view itself is indexed
        whole = np.asarray(images)
        idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:17]
        rows = select_rows(images, idx, cpu)
        assert rows.dtype == torch.uint8 and torch.equal(rows, torch.from_numpy(whole[idx.numpy()]))
        # what resident_images does on a GPU, here on the CPU: size it, then load it whole
        assert images.nbytes == whole.nbytes and torch.equal(torch.from_numpy(images[:]), torch.from_numpy(whole))


def test_the_data_package_imports_run_one_way():
    """prepared imports no sibling; each source imports only prepared; `sources` picks among them; the
    package root imports nothing (so reading the prepared format does not depend on any source's code)."""
    package = REPO / "src" / "mae_exp" / "data"
    imports = {}
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text())
        imports[path.stem] = {
            node.module
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module
        }
    assert imports["prepared"] == set()
    for source in ("shapes", "stl10", "folder"):
        assert imports[source] == {"prepared"}, (source, imports[source])
    assert imports["cifar10"] == {"prepared", "stl10"}  # STL-10's resumable download, MD5 and resize
    assert imports["sources"] == {"shapes", "stl10", "cifar10", "folder"}
    assert imports["__init__"] == set()
