"""data.source: cifar10 -> the prepared splits, from the official CIFAR-10 python archive, downloaded
(resumably) if absent and MD5-checked as the stl10 source does.

The archive (`cifar-10-batches-py/`) holds five training batches and one test batch, each a pickled dict
with `data`, uint8 (10000, 3072), one row per image as three 32x32 planes (R, G, B) in row-major order, and
`labels`, 0-based; `batches.meta` names the classes (`label_names`). The five training batches, in order,
become the train split and `test_batch` the test split, as torchvision's `CIFAR10` reads them; CIFAR-10
has no unlabeled images, so the unlabeled split is empty and pre-training reads train.

The batches are pickles: they are read with an unpickler that builds numpy arrays and nothing else, so a
damaged or hostile archive cannot run code.
"""

from __future__ import annotations

import pickle
import tarfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np
from torchvision.datasets import CIFAR10
from torchvision.datasets.utils import calculate_md5

from ..plumbing.config import DataConfig
from ..plumbing.progress import console, progress
from .prepared import PreparedWriter, SourceError
from .stl10 import _resize, download

# The address and checksum torchvision's CIFAR10 uses; read at call time, so a test can pass others.
CIFAR10_URL = CIFAR10.url
CIFAR10_ARCHIVE = CIFAR10.filename
CIFAR10_MD5 = CIFAR10.tgz_md5
CIFAR10_SIDE = 32
_IMAGE_BYTES = 3 * CIFAR10_SIDE * CIFAR10_SIDE
TRAIN_BATCHES = tuple(name for name, _ in CIFAR10.train_list)  # data_batch_1 .. data_batch_5, in order
TEST_BATCHES = tuple(name for name, _ in CIFAR10.test_list)  # test_batch
META = CIFAR10.meta["filename"]  # batches.meta


def fetch_cifar10(
    root: Path, *, verify_md5: bool = True, url: str | None = None, md5: str | None = None, **download_kw
) -> Path:
    """The archive at `root/cifar-10-python.tar.gz`, downloaded (and so verified) if absent. One already in
    place is MD5-checked unless `verify_md5` is false (data.verify_md5: a locally made archive)."""
    url, md5 = url or CIFAR10_URL, md5 or CIFAR10_MD5
    dest = root / CIFAR10_ARCHIVE
    if not dest.exists():
        return download(url, dest, md5, **download_kw)
    if not verify_md5:
        console.print(
            f"[yellow]skipped the MD5 check of {dest}[/]: data.verify_md5 is false (meant for a locally made archive)",
            highlight=False,
        )
        return dest
    console.print(f"verifying the MD5 of {dest}", highlight=False)
    actual = calculate_md5(dest)
    if actual != md5:  # someone else's file: never deleted here
        raise SourceError(
            f"{dest} is not the CIFAR-10 archive: its MD5 is {actual}, expected {md5}. It is damaged "
            f"or incomplete: delete it (the next run downloads {url}) or replace it with a good copy."
        )
    return dest


class _ArrayUnpickler(pickle.Unpickler):
    """Loads dicts, lists, strings, numbers and numpy arrays; any other class is refused."""

    _ALLOWED = frozenset(
        {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("_codecs", "encode"),
        }
    )  # how Python 3 writes bytes at pickle protocol 2

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _load(f, where: str) -> dict:
    # written by Python 2: latin1 turns its byte strings (the keys, the array bytes) back into what they were
    try:
        batch = _ArrayUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise SourceError(f"{where} is not a CIFAR-10 batch ({e}): the archive is damaged or not CIFAR-10's") from None
    if not isinstance(batch, dict):
        raise SourceError(f"{where} is not a CIFAR-10 batch (a {type(batch).__name__}, not a dict)")
    return batch


def cifar10_to_hwc(data: np.ndarray, size: int = CIFAR10_SIDE) -> np.ndarray:
    """(k, 3072) rows of R, G, B planes -> (k, size, size, 3) uint8, as torchvision's CIFAR10 reads them."""
    images = data.reshape(-1, 3, CIFAR10_SIDE, CIFAR10_SIDE).transpose(0, 2, 3, 1)
    return _resize(images, size) if size != CIFAR10_SIDE else np.ascontiguousarray(images)


def _batch(tar: tarfile.TarFile, member: tarfile.TarInfo, where: str, classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = _load(tar.extractfile(member), where)
    data, labels = batch.get("data"), batch.get("labels")
    if not (
        isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == _IMAGE_BYTES
    ):
        raise SourceError(
            f"{where}: 'data' must be a uint8 array of shape (N, {_IMAGE_BYTES}), "
            f"got {getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}"
        )
    labels = np.asarray(labels if labels is not None else [], dtype=np.int64)
    if labels.shape != (len(data),):
        raise SourceError(f"{where}: {len(data)} images but {labels.size} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= classes):
        raise SourceError(
            f"{where}: labels must lie in 0..{classes - 1} ({META} names {classes} classes), "
            f"found {labels.min()}..{labels.max()}"
        )
    return data, labels


def extract_cifar10(
    archive: Path,
    image_size: int,
    out: str | Path,
    chunk: int = 1024,
    md5_checked: bool = True,
    val_fraction: float | None = None,
) -> Path:
    """The archive's batches -> the prepared splits: train from data_batch_1..5 in order, test from test_batch,
    an empty unlabeled split. One batch (30 MB) is in memory at a time."""
    with PreparedWriter(out, val_fraction) as writer:
        try:
            with tarfile.open(archive, mode="r:gz") as tar:
                members = {PurePosixPath(m.name).name: m for m in tar.getmembers() if m.isfile()}
                missing = [n for n in (META, *TRAIN_BATCHES, *TEST_BATCHES) if n not in members]
                if missing:
                    raise SourceError(
                        f"{archive} lacks {', '.join(f'{CIFAR10.base_folder}/{m}' for m in missing)}: "
                        f"not a complete CIFAR-10 python archive"
                    )
                meta = _load(tar.extractfile(members[META]), f"{archive}:{members[META].name}")
                classes = [str(c) for c in meta.get("label_names") or []]
                if not classes:
                    raise SourceError(f"{archive}:{members[META].name} has no label_names")
                with progress() as bar:
                    for split, names in (("train", TRAIN_BATCHES), ("test", TEST_BATCHES)):
                        # a pickle is larger than its images: an upper bound, cut to the count at the end
                        capacity = sum(members[n].size for n in names) // _IMAGE_BYTES
                        task = bar.add_task(f"extracting {split}", total=len(names))
                        labels = []
                        with writer.images(split, capacity, image_size) as sink:
                            for name in names:
                                data, y = _batch(tar, members[name], f"{archive}:{members[name].name}", len(classes))
                                for start in range(0, len(data), chunk):
                                    sink.write(cifar10_to_hwc(data[start : start + chunk], image_size))
                                labels.append(y)
                                bar.advance(task)
                        writer.labels(split, np.concatenate(labels))
                with writer.images("unlabeled", 0, image_size):
                    pass  # CIFAR-10 has no unlabeled images
        except (tarfile.TarError, EOFError, zlib.error) as e:  # gzip or tar damage; disk errors pass through
            raise SourceError(f"{archive} is damaged ({e}): delete it and run again") from None
        return writer.commit(
            {
                "source": "cifar10",
                "image_size": image_size,
                "classes": classes,
                "archive": CIFAR10_ARCHIVE,
                "md5_checked": md5_checked,
            }
        )


def prepare_cifar10(
    cfg: DataConfig,
    out: str | Path,
    *,
    url: str | None = None,
    md5: str | None = None,
    val_fraction: float | None = None,
    **download_kw,
) -> Path:
    """data.source: cifar10 -> the archive under data.root (downloaded if absent) -> the prepared splits."""
    root = Path(cfg.root)
    checked = cfg.verify_md5 or not (root / CIFAR10_ARCHIVE).exists()  # a download is always verified
    archive = fetch_cifar10(root, verify_md5=cfg.verify_md5, url=url, md5=md5, **download_kw)
    return extract_cifar10(archive, cfg.image_size, out, md5_checked=checked, val_fraction=val_fraction)
