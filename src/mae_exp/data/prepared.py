"""The prepared dataset on disk: what the download stage writes and every later stage reads.

A directory (one DVC output):
    unlabeled_images.npy  (N, H, W, 3) uint8     images without labels (N may be 0)
    train_images.npy      (N, H, W, 3) uint8     labeled
    train_labels.npy      (N,) int64
    test_images.npy, test_labels.npy
    meta.json             source, image size, class names, split sizes, content digest

Writing: a source fills each split chunk by chunk through an ImageSink into `<out>.partial/`, which is
renamed to `<out>` only when complete, so a half-written dataset never replaces a good one.
Reading: `load_split` memory-maps a stored split; `labeled` gives the train / val / test parts of the
probe and fine-tuning; `pretraining_set` the splits MAE pre-trains on, as one array without a copy.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..plumbing.errors import names_full_disk

SPLITS = ("unlabeled", "train", "test")
LABELED = ("train", "test")
LABELED_PARTS = ("train", "val", "test")  # what `labeled` serves: val is held out of the stored train split
VAL_SEED = 0  # fixed, not the run's seed: every run validates on the same images


class SourceError(ValueError):
    """The data source cannot be prepared: unreachable, damaged or malformed. The message says what to do.

    A ValueError, so that a stage reports it as one line (cli.run_stage) rather than a traceback."""


# --------------------------------------------------------------------------- reading


class ImageRows:
    """Rows of one or more stored image arrays, read as one (N, H, W, 3) uint8 array without loading them.

    `rows[k]`, if given, picks (sorted) rows of `parts[k]`. Supports what the training loops use: len,
    .shape, .dtype, .nbytes, indexing by an integer index array (an in-memory copy, in that order; each
    part is read in sorted order, sequential on a memory map) and by a slice (`[:]` loads everything).
    """

    def __init__(self, parts: list[np.ndarray], rows: list[np.ndarray | None] | None = None):
        self.parts = list(parts)
        self.rows = list(rows) if rows is not None else [None] * len(self.parts)
        if len({p.shape[1:] for p in self.parts}) != 1:
            raise ValueError(f"image arrays of different shapes: {[p.shape for p in self.parts]}")
        lengths = [len(p) if r is None else len(r) for p, r in zip(self.parts, self.rows)]
        self.starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.shape = (int(self.starts[-1]), *self.parts[0].shape[1:])
        self.dtype = np.dtype(np.uint8)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self[:] if dtype is None else self[:].astype(dtype)

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, slice):
            if key == slice(None):
                return np.concatenate([p[:] if r is None else p[r] for p, r in zip(self.parts, self.rows)])
            key = np.arange(len(self))[key]
        elif isinstance(key, (int, np.integer)):
            return self[np.array([key])][0]
        idx = np.asarray(key)
        if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
            raise TypeError(f"index with an integer array or a slice, not {key!r}")
        idx = np.where(idx < 0, idx + len(self), idx).astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"index out of range for {len(self)} images")
        out = np.empty((len(idx), *self.shape[1:]), self.dtype)
        part_of = np.searchsorted(self.starts, idx, side="right") - 1
        for k, (part, rows) in enumerate(zip(self.parts, self.rows)):
            where = np.flatnonzero(part_of == k)
            if where.size:
                local = idx[where] - self.starts[k]
                order = np.argsort(local, kind="stable")
                out[where[order]] = part[local[order] if rows is None else rows[local[order]]]
        return out


@dataclass
class Split:
    images: np.ndarray | ImageRows  # (N, H, W, 3) uint8: a read-only memory map, or rows of one
    labels: np.ndarray | None  # (N,) int64, None for the unlabeled split


def load_split(root: str | Path, split: str) -> Split:
    root = Path(root)
    images_path = root / f"{split}_images.npy"
    if not images_path.exists():
        raise FileNotFoundError(f"{images_path} is missing: run `dvc repro download` first")
    images = np.load(images_path, mmap_mode="r")
    labels_path = root / f"{split}_labels.npy"
    labels = np.load(labels_path) if labels_path.exists() else None
    return Split(images, labels)


def load_meta(root: str | Path) -> dict:
    return json.loads((Path(root) / "meta.json").read_text())


def validation_mask(labels: np.ndarray, val_fraction: float) -> np.ndarray:
    """Which rows of the stored train split are held out: `val_fraction` of each class (rounded; a class
    keeps at least one train image), picked by a generator fixed per class, so the choice depends on
    neither the run's seed nor the other classes."""
    val = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        k = min(int(np.floor(val_fraction * len(rows) + 0.5)), len(rows) - 1)
        val[np.random.default_rng([VAL_SEED, int(c)]).permutation(rows)[:k]] = True
    return val


def holdout(labels: np.ndarray, val_fraction: float) -> np.ndarray:
    """validation_mask, refused when it holds out nothing (download checks it too, before any training)."""
    val = validation_mask(labels, val_fraction)
    if not val.any() and np.bincount(labels).max() < 2:  # each class keeps one image for training
        raise ValueError(
            "every class has a single train image, which training keeps, so no validation image "
            "can be held out: add train images"
        )
    if not val.any():
        raise ValueError(
            f"data.val_fraction ({val_fraction}) of the {len(val)} train images holds out no "
            f"image in any class: raise data.val_fraction or add train images"
        )
    return val


def labeled(root: str | Path, part: str, val_fraction: float) -> Split:
    """`train`, `val` (a stratified `val_fraction` of the stored train split) or `test` (the stored one)."""
    if part not in LABELED_PARTS:  # val_fraction's range is config.py's (DataConfig)
        raise ValueError(f"unknown labeled part {part!r}: expected one of {', '.join(LABELED_PARTS)}")
    if part == "test":
        return load_split(root, "test")
    stored = load_split(root, "train")
    val = holdout(stored.labels, val_fraction)
    rows = np.flatnonzero(val if part == "val" else ~val)
    return Split(ImageRows([stored.images], [rows]), stored.labels[rows])


def pretraining_set(root: str | Path, splits) -> tuple[np.ndarray | ImageRows, str]:
    """The stored `splits` (data.pretrain_splits, checked by config.py) as one array: the memory map itself
    when only one split holds images, else a view over their memory maps (nothing is copied); and the line
    that says what they are, e.g. `pre-training on 11,000 images (unlabeled 8,000 + train 3,000)`."""
    splits = tuple(splits)
    arrays = {split: load_split(root, split).images for split in splits}
    sizes = " + ".join(f"{split} {len(a):,}" for split, a in arrays.items())
    held = [a for a in arrays.values() if len(a)]
    if not held:
        raise ValueError(
            f"data.pretrain_splits ({', '.join(splits)}) selects no image: {root} holds {sizes}. "
            f"Add train to data.pretrain_splits, or add images (a folder dataset: under "
            f"<data.root>/unlabeled/) and run `dvc repro download`"
        )
    images = held[0] if len(held) == 1 else ImageRows(held)
    return images, f"pre-training on {len(images):,} images ({sizes})"


# --------------------------------------------------------------------------- writing


class PreparedWriter:
    """Builds a prepared dataset in `<out>.partial/`; `commit()` renames it to `<out>`.

    Used as a context manager, it removes `.partial/` when preparation fails: nothing that looks like a
    dataset is left behind, and an existing good `<out>` is untouched.
    """

    def __init__(self, out: str | Path, val_fraction: float | None = None):
        self.out = Path(out)
        self.val_fraction = val_fraction  # given (the download stage): train labels must leave a validation split
        self.tmp = self.out.with_name(self.out.name + ".partial")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self.sizes: dict[str, int] = {}

    def __enter__(self) -> PreparedWriter:
        return self

    def __exit__(self, kind, *_) -> None:
        if kind is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def images(self, split: str, capacity: int, size: int) -> ImageSink:
        """A sink for up to `capacity` images of `split`; fewer may be written (skipped files)."""
        self.sizes[split] = capacity
        return ImageSink(self, split, capacity, size)

    def full_disk(self, path: Path):
        """A full disk while writing `path` (in .partial/) stops with one line naming it."""
        return names_full_disk(path, f" ({self.out} was left as it was)")

    def labels(self, split: str, labels: np.ndarray) -> None:
        if split == "train" and self.val_fraction is not None:  # refused here, not after the pre-training
            holdout(np.asarray(labels, dtype=np.int64), self.val_fraction)
        path = self.tmp / f"{split}_labels.npy"
        with self.full_disk(path):
            np.save(path, np.asarray(labels, dtype=np.int64))

    def commit(self, meta: dict) -> Path:
        # the digest identifies the content, so resumable pre-training state is keyed to it
        meta = {**meta, "sizes": self.sizes, "digest": _digest(sorted(self.tmp.glob("*.npy")))}
        with self.full_disk(self.tmp / "meta.json"):
            (self.tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        if self.out.exists():
            shutil.rmtree(self.out)
        self.tmp.rename(self.out)
        return self.out


class ImageSink:
    """Appends (k, size, size, 3) uint8 chunks to one split's `.npy`.

    Plain file writes rather than a writable mapping, so a split never has to fit in memory (100k
    STL-10 images are 2.8 GB) and the written pages go to the page cache instead of this process's
    resident memory, as pages dirtied through a mapping would.
    """

    def __init__(self, writer: PreparedWriter, split: str, capacity: int, size: int):
        self.path = writer.tmp / f"{split}_images.npy"  # as given (relative): the messages name it so
        with writer.full_disk(self.path):
            array = np.lib.format.open_memmap(
                self.path, mode="w+", dtype=np.uint8, shape=(capacity, size, size, 3)
            )  # header + sparse body
        self.offset = array.offset
        del array
        self.writer, self.split, self.size, self.capacity = writer, split, size, capacity
        self.count = 0
        self.file = open(self.path, "r+b")
        self.file.seek(self.offset)

    def __enter__(self) -> ImageSink:
        return self

    def __exit__(self, kind, *_) -> None:
        if kind is None:
            self.finish()
        else:
            try:
                self.file.close()
            except OSError:  # the buffer's flush fails again on a full disk: the error raised already says so
                pass

    def write(self, images: np.ndarray) -> None:
        assert images.dtype == np.uint8 and images.shape[1:] == (self.size, self.size, 3), images.shape
        assert self.count + len(images) <= self.capacity
        with self.writer.full_disk(self.path):
            self.file.write(np.ascontiguousarray(images).data)
        self.count += len(images)

    def finish(self) -> None:
        """Close; a split that received fewer images than allocated (skipped files) is cut to size."""
        with self.writer.full_disk(self.path):
            self.file.close()
        if self.count < self.capacity:
            # numpy pads .npy headers so the first dimension can be rewritten in place
            # (GROWTH_AXIS_MAX_DIGITS); the header keeps its length and the body is truncated
            header = {
                "descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
                "fortran_order": False,
                "shape": (self.count, self.size, self.size, 3),
            }
            with open(self.path, "r+b") as f:
                np.lib.format.write_array_header_1_0(f, header)
                if f.tell() != self.offset:
                    raise RuntimeError(f"{self.path}: .npy header changed length; cannot shrink in place")
                f.truncate(self.offset + self.count * self.size * self.size * 3)
            self.writer.sizes[self.split] = self.count


def _digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.name.encode())
        with open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()[:16]
