"""Real datasets -> the prepared on-disk format of data.py: the STL-10 binary archive and a folder of images.

Both write each split chunk by chunk through plain file writes into the `.npy` that PreparedWriter
allocates, so a split never has to fit in memory (100k STL-10 images are 2.8 GB) and the pages written go
to the page cache instead of this process's resident memory, as pages dirtied through a mapping would.

torchvision supplies what it has: the STL-10 address, file name, MD5 and layout (`STL10`), and MD5
checking (`calculate_md5`). Its `download_url` can neither resume nor report an interrupted transfer,
and `extract_archive` would put a second 3 GB copy of the images on disk, so download and extraction are
our own: HTTP Range resume, and a single streaming pass from the .tar.gz into the prepared arrays.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import shutil
import ssl
import tarfile
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path, PurePosixPath

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torchvision.datasets import STL10
from torchvision.datasets.utils import calculate_md5

from .config import DataConfig
from .data import SPLITS, PreparedWriter
from .progress import console, progress


class SourceError(ValueError):
    """The data source cannot be prepared: unreachable, damaged or malformed. The message says what to do.

    A ValueError, so that a stage reports it as one line (cli.run_stage) rather than a traceback."""


# --------------------------------------------------------------------------- writing a split


class _ImageSink:
    """Appends (k, size, size, 3) uint8 chunks to a split allocated through the PreparedWriter."""

    def __init__(self, writer: PreparedWriter, split: str, capacity: int, size: int):
        array = writer.images(split, capacity, size)  # header + sparse body, named as data.py expects
        self.path, self.offset = Path(array.filename), array.offset
        del array  # written through the file below, not the mapping (see the module docstring)
        self.writer, self.split, self.size, self.capacity = writer, split, size, capacity
        self.count = 0
        self.file = open(self.path, "r+b")
        self.file.seek(self.offset)

    def __enter__(self) -> "_ImageSink":
        return self

    def __exit__(self, kind, *_) -> None:
        if kind is None:
            self.finish()
        else:
            self.file.close()

    def write(self, images: np.ndarray) -> None:
        assert images.dtype == np.uint8 and images.shape[1:] == (self.size, self.size, 3), images.shape
        assert self.count + len(images) <= self.capacity
        self.file.write(np.ascontiguousarray(images).data)
        self.count += len(images)

    def finish(self) -> None:
        """Close; a split that received fewer images than allocated (skipped files) is cut to size."""
        self.file.close()
        if self.count < self.capacity:
            # numpy pads .npy headers so the first dimension can be rewritten in place
            # (GROWTH_AXIS_MAX_DIGITS); the header keeps its length and the body is truncated
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                      "shape": (self.count, self.size, self.size, 3)}
            with open(self.path, "r+b") as f:
                np.lib.format.write_array_header_1_0(f, header)
                if f.tell() != self.offset:
                    raise RuntimeError(f"{self.path}: .npy header changed length; cannot shrink in place")
                f.truncate(self.offset + self.count * self.size * self.size * 3)
            self.writer.sizes[self.split] = self.count

    def read_back(self, chunk: int):
        """The images written so far, chunk by chunk, read from the file (not mapped, for the same reason)."""
        image_bytes = self.size * self.size * 3
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            for start in range(0, self.count, chunk):
                k = min(chunk, self.count - start)
                yield np.frombuffer(f.read(k * image_bytes), np.uint8).reshape(k, self.size, self.size, 3)


@contextlib.contextmanager
def _writing(out: str | Path):
    """A PreparedWriter whose `.partial` directory is removed when preparation fails: nothing that
    looks like a dataset is left behind, and an existing good `out` is untouched."""
    writer = PreparedWriter(out)
    try:
        yield writer
    except BaseException:
        shutil.rmtree(writer.tmp, ignore_errors=True)
        raise


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """(k, H, W, 3) uint8 -> (k, size, size, 3) uint8, antialiased."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


# --------------------------------------------------------------------------- stl10: download

# The address and checksum torchvision's STL10 dataset uses. Read at call time, so a test (or a mirror)
# can replace them here or pass others to prepare_stl10.
STL10_URL = STL10.url
STL10_ARCHIVE = STL10.filename
STL10_MD5 = STL10.tgz_md5
MiB = 1 << 20


class _Interrupted(Exception):
    """The transfer stopped before the announced length; what arrived is kept for resuming."""


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _offline_message(url: str, dest: Path, md5: str, reason, part: Path) -> str:
    kept = f" The {_size(part)} bytes received so far stay in {part}; the next run resumes." if _size(part) else ""
    return (f"cannot download the STL-10 archive from {url} ({reason}).{kept}\n"
            f"  If this machine is offline, download it elsewhere and place it at {dest} "
            f"(MD5 {md5}), then run again.\n"
            f"  Or use an offline source: data.source: shapes (embedded, generated) or "
            f"data.source: folder (your own images under data.root).")


def download(url: str, dest: Path, md5: str, *, retries: int = 5, timeout: float = 60.0,
             pause: float = 1.0) -> Path:
    """Fetch `url` to `dest`, verified against `md5`.

    Bytes arrive in `<dest>.part`, which survives interruptions: a broken transfer is retried up to
    `retries` times in a row, and a later call resumes it, with an HTTP Range request (or from the
    start if the server ignores Range). `dest` appears only once the whole file matches `md5`.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    failures = 0
    while True:
        before = _size(part)
        try:
            _fetch_once(url, part, timeout)
            break
        except urllib.error.URLError as e:  # no answer at all (offline, DNS, firewall) or an HTTP error
            reason = f"HTTP {e.code} {e.reason}" if isinstance(e, urllib.error.HTTPError) else e.reason
            raise SourceError(_offline_message(url, dest, md5, reason, part)) from None
        except (_Interrupted, ConnectionError, TimeoutError, ssl.SSLError, http.client.HTTPException) as e:
            # broke off mid-transfer (a local disk error is not retried: it propagates as it is)
            failures = 1 if _size(part) > before else failures + 1  # progress restarts the count
            if failures > retries:
                raise SourceError(f"the download of {url} keeps breaking off ({e}); the {_size(part)} bytes "
                                  f"received are kept in {part}: run again to resume") from None
            console.print(f"download interrupted ({e}); resuming from byte {_size(part)}", highlight=False)
            time.sleep(pause * min(2 ** failures, 30))
    console.print(f"verifying the MD5 of {part.name}", highlight=False)
    actual = calculate_md5(part)
    if actual != md5:
        part.unlink()  # a resumed file that does not verify cannot be repaired: the next run starts over
        raise SourceError(f"the download of {url} is corrupt: MD5 {actual}, expected {md5}. "
                          f"It was deleted; run again to download afresh, or place a verified copy at {dest}.")
    part.rename(dest)
    return dest


def _fetch_once(url: str, part: Path, timeout: float) -> None:
    have = _size(part)
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing past what we hold: the .part is complete (the MD5 decides)
            return
        raise
    with response:
        start = _range_start(response.headers.get("Content-Range")) if response.status == 206 else 0
        if start not in (0, have):
            part.unlink()
            raise _Interrupted(f"server answered from byte {start}, not {have}; restarting")
        if start == 0:
            have = 0  # the server ignored Range (or there was nothing to resume): start over
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with open(part, "ab" if have else "wb") as f, progress() as bar:
            task = bar.add_task(f"downloading {part.name} (MiB)", total=total / MiB if total else None,
                                completed=have / MiB)
            while chunk := response.read(MiB):
                f.write(chunk)
                bar.advance(task, len(chunk) / MiB)
    # http.client returns a short body without complaint when the server closes early
    if total is not None and _size(part) < total:
        raise _Interrupted(f"connection closed after {_size(part)} of {total} bytes")


def _range_start(content_range: str | None) -> int:
    match = re.match(r"bytes (\d+)-", content_range or "")
    return int(match.group(1)) if match else -1


def fetch_stl10(root: Path, *, url: str | None = None, md5: str | None = None, **download_kw) -> Path:
    """The verified archive at `root/stl10_binary.tar.gz`, downloaded if absent."""
    url, md5 = url or STL10_URL, md5 or STL10_MD5
    dest = root / STL10_ARCHIVE
    if not dest.exists():
        return download(url, dest, md5, **download_kw)
    console.print(f"verifying the MD5 of {dest}", highlight=False)
    actual = calculate_md5(dest)
    if actual != md5:  # someone else's file: never deleted here
        raise SourceError(f"{dest} is not the STL-10 archive: its MD5 is {actual}, expected {md5}. It is damaged "
                          f"or incomplete: delete it (the next run downloads {url}) or replace it with a good copy.")
    return dest


# --------------------------------------------------------------------------- stl10: extraction

STL10_SIDE = 96
_STL10_IMAGE_BYTES = 3 * STL10_SIDE * STL10_SIDE
_STL10_IMAGES = {"unlabeled_X.bin": "unlabeled", "train_X.bin": "train", "test_X.bin": "test"}
_STL10_LABELS = {"train_y.bin": "train", "test_y.bin": "test"}
_STL10_CLASSES = STL10.class_names_file


def stl10_to_hwc(raw: bytes, size: int = STL10_SIDE) -> np.ndarray:
    """STL-10 binary records -> (k, size, size, 3) uint8.

    Each record is 3 planes of 96x96 stored column-major, i.e. file axes (channel, x, y); torchvision
    reads them the same way (reshape to (3, 96, 96), swap the last two axes)."""
    k = len(raw) // _STL10_IMAGE_BYTES
    images = np.frombuffer(raw, np.uint8).reshape(k, 3, STL10_SIDE, STL10_SIDE).transpose(0, 3, 2, 1)
    return _resize(images, size) if size != STL10_SIDE else np.ascontiguousarray(images)


def _read_exactly(f, n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise SourceError(f"{what} ends early: the archive is truncated")
    return data


def extract_stl10(archive: Path, image_size: int, out: str | Path, chunk: int = 1024) -> Path:
    """One streaming pass over the .tar.gz: images go straight into the prepared splits."""
    labels: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    classes: list[str] | None = None
    with _writing(out) as writer:
        try:
            with tarfile.open(archive, mode="r|gz") as tar, progress() as bar:
                for member in tar:
                    name = PurePosixPath(member.name).name
                    where = f"{archive}:{member.name}"
                    if not member.isfile():
                        continue
                    if name in _STL10_IMAGES:
                        split = _STL10_IMAGES[name]
                        if member.size % _STL10_IMAGE_BYTES:
                            raise SourceError(f"{where} holds {member.size} bytes, not a whole number of "
                                              f"3x96x96 images: not an STL-10 archive")
                        n = counts[split] = member.size // _STL10_IMAGE_BYTES
                        task = bar.add_task(f"extracting {split}", total=n)
                        f = tar.extractfile(member)
                        with _ImageSink(writer, split, n, image_size) as sink:
                            for start in range(0, n, chunk):
                                k = min(chunk, n - start)
                                raw = _read_exactly(f, k * _STL10_IMAGE_BYTES, where)
                                sink.write(stl10_to_hwc(raw, image_size))
                                bar.advance(task, k)
                    elif name in _STL10_LABELS:
                        raw = _read_exactly(tar.extractfile(member), member.size, where)
                        labels[_STL10_LABELS[name]] = np.frombuffer(raw, np.uint8).astype(np.int64) - 1  # 1-based
                    elif name == _STL10_CLASSES:
                        text = tar.extractfile(member).read().decode()
                        classes = [line.strip() for line in text.splitlines() if line.strip()]
        except (tarfile.TarError, EOFError, zlib.error) as e:  # gzip or tar damage; disk errors pass through
            raise SourceError(f"{archive} is damaged ({e}): delete it and run again") from None
        _check_stl10(archive, counts, labels, classes)
        for split, y in labels.items():
            writer.labels(split, y)
        return writer.commit({"source": "stl10", "image_size": image_size, "classes": classes,
                              "archive": STL10_ARCHIVE})


def _check_stl10(archive: Path, counts: dict, labels: dict, classes: list[str] | None) -> None:
    missing = [name for name, split in _STL10_IMAGES.items() if split not in counts]
    missing += [name for name, split in _STL10_LABELS.items() if split not in labels]
    missing += [] if classes else [_STL10_CLASSES]
    if missing:
        raise SourceError(f"{archive} lacks {', '.join(f'{STL10.base_folder}/{m}' for m in missing)}: "
                          f"not a complete STL-10 archive")
    for split, y in labels.items():
        if len(y) != counts[split]:
            raise SourceError(f"{archive}: {split} has {counts[split]} images but {len(y)} labels")
        if y.min() < 0 or y.max() >= len(classes):
            raise SourceError(f"{archive}: {split} labels must lie in 1..{len(classes)} "
                              f"(one per line of {_STL10_CLASSES}), found {y.min() + 1}..{y.max() + 1}")


def prepare_stl10(cfg: DataConfig, out: str | Path, *, url: str | None = None, md5: str | None = None,
                  **download_kw) -> Path:
    """data.source: stl10 -> the archive under data.root (downloaded if absent) -> the prepared splits."""
    archive = fetch_stl10(Path(cfg.root), url=url, md5=md5, **download_kw)
    return extract_stl10(archive, cfg.image_size, out)


# --------------------------------------------------------------------------- folder

FOLDER_LAYOUT = "train/<class>/..., test/<class>/... and optionally unlabeled/... (any nesting below those)"
# What Pillow raises for a file it cannot decode: unknown format (UnidentifiedImageError is an OSError),
# truncated data, broken headers (some plugins raise SyntaxError or ValueError), absurd sizes.
_UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _visible(path: Path, top: Path) -> bool:
    # .DS_Store, ._AppleDouble, .ipynb_checkpoints/ and the like are not part of anyone's dataset
    return not any(part.startswith(".") for part in path.relative_to(top).parts)


def _files(directory: Path) -> list[Path]:
    """Every visible file below `directory`, at any depth, in a stable order."""
    return sorted(p for p in directory.rglob("*") if p.is_file() and _visible(p, directory))


def _class_folders(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and _visible(p, split_dir))


def _labeled_files(split_dir: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    stray = [p for p in split_dir.iterdir() if p.is_file() and _visible(p, split_dir)]
    if stray:
        raise SourceError(f"{stray[0]} is not inside a class folder: {split_dir} must hold one folder per "
                          f"class ({FOLDER_LAYOUT}); move it into its class folder or remove it")
    files, labels = [], []
    for label, name in enumerate(classes):
        found = _files(split_dir / name) if (split_dir / name).is_dir() else []
        files += found
        labels += [label] * len(found)
    return files, labels


def folder_layout(root: Path) -> dict:
    """Class names and the files of each split, checked against the expected layout before any decoding."""
    if not root.is_dir():
        raise SourceError(f"data.root {root} is not a directory. For data.source: folder it must hold {FOLDER_LAYOUT}")
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise SourceError(f"{root / split} is missing. data.root ({root}) must hold {FOLDER_LAYOUT}")
    classes = _class_folders(root / "train")
    if not classes:
        raise SourceError(f"{root / 'train'} has no class folders: it must hold one folder per class, "
                          f"e.g. {root / 'train' / 'cat'}/img001.jpg")
    unknown = [c for c in _class_folders(root / "test") if c not in classes]
    if unknown:
        raise SourceError(f"test class {unknown[0]!r} ({root / 'test' / unknown[0]}) has no folder in "
                          f"{root / 'train'}: every test class must also be a train class (train classes: "
                          f"{', '.join(classes)})")
    layout = {"classes": classes}
    for split in ("train", "test"):
        layout[split] = _labeled_files(root / split, classes)
    empty = [c for c in classes if c not in {classes[i] for i in set(layout["train"][1])}]
    if empty:
        raise SourceError(f"{root / 'train' / empty[0]} holds no files: every class needs train images")
    if not layout["test"][0]:
        raise SourceError(f"{root / 'test'} holds no images: the probe and fine-tuning need a test split")
    unlabeled = root / "unlabeled"
    layout["unlabeled"] = _files(unlabeled) if unlabeled.is_dir() else None  # None: reuse train
    if layout["unlabeled"] == []:
        raise SourceError(f"{unlabeled} holds no images: add some, or remove it to pre-train on the train images")
    return layout


def load_image(path: Path, size: int) -> np.ndarray:
    """Any image Pillow reads -> (size, size, 3) uint8: upright (EXIF), RGB, shorter side scaled to
    `size` and the centre cropped square (no distortion of the aspect ratio)."""
    with Image.open(path) as img:
        img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale when the file is much larger
        img = ImageOps.exif_transpose(img).convert("RGB")
        return np.asarray(ImageOps.fit(img, (size, size), Image.Resampling.BICUBIC))


def _write_folder_split(writer, split: str, files: list[Path], labels: list[int] | None, size: int,
                        skip_bad: bool, bar, chunk: int = 256):
    """Decode `files` into `split`; returns the sink, the kept labels and the skipped files."""
    kept_labels, skipped, buffer = [], [], []
    task = bar.add_task(f"reading {split} images", total=len(files))
    with _ImageSink(writer, split, len(files), size) as sink:
        for i, path in enumerate(files):
            try:
                buffer.append(load_image(path, size))
            except _UNREADABLE as e:
                if not skip_bad:
                    raise SourceError(f"{path} is not a readable image ({type(e).__name__}: {e}). Fix or remove "
                                      f"it, or set data.skip_bad_files: true to skip unreadable files "
                                      f"(they are counted and reported)") from None
                skipped.append(path)
            else:
                if labels is not None:
                    kept_labels.append(labels[i])
            if len(buffer) == chunk or (i == len(files) - 1 and buffer):
                sink.write(np.stack(buffer))
                buffer.clear()
            bar.advance(task)
    return sink, np.asarray(kept_labels, dtype=np.int64), skipped


def prepare_folder(cfg: DataConfig, out: str | Path) -> Path:
    """data.source: folder -> the prepared splits; class names are the train folder names, sorted."""
    root = Path(cfg.root)
    layout = folder_layout(root)
    skipped: list[Path] = []
    with _writing(out) as writer, progress() as bar:
        sinks = {}
        for split in ("train", "test"):
            files, labels = layout[split]
            sinks[split], kept, bad = _write_folder_split(writer, split, files, labels, cfg.image_size,
                                                          cfg.skip_bad_files, bar)
            writer.labels(split, kept)
            skipped += bad
        if layout["unlabeled"] is not None:
            _, _, bad = _write_folder_split(writer, "unlabeled", layout["unlabeled"], None, cfg.image_size,
                                            cfg.skip_bad_files, bar)
            skipped += bad
        else:  # pre-train on the train images, without their labels
            train = sinks["train"]
            with _ImageSink(writer, "unlabeled", train.count, cfg.image_size) as unlabeled:
                for images in train.read_back(1024):
                    unlabeled.write(images)
        for split in SPLITS:
            if writer.sizes[split] == 0:
                raise SourceError(f"{root / split}: no readable image, all were skipped")
        if skipped:
            console.print(f"[yellow]skipped {len(skipped)} unreadable file(s)[/] (data.skip_bad_files: true): "
                          + ", ".join(str(p) for p in skipped[:5]) + (", ..." if len(skipped) > 5 else ""),
                          highlight=False)
        return writer.commit({"source": "folder", "image_size": cfg.image_size, "classes": layout["classes"],
                              "root": str(root), "unlabeled_from": "unlabeled" if layout["unlabeled"] else "train",
                              "skipped": [str(p.relative_to(root)) for p in skipped]})
