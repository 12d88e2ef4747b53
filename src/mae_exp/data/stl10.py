"""data.source: stl10 -> the prepared splits: the official binary archive, downloaded (resumably) if absent,
MD5-checked, and extracted in one streaming pass.

torchvision supplies what it has: the STL-10 address, file name, MD5 and layout (`STL10`), and MD5
checking (`calculate_md5`). Its `download_url` can neither resume nor report an interrupted transfer,
and `extract_archive` would put a second 3 GB copy of the images on disk, so download and extraction are
our own: HTTP Range resume, and a single streaming pass from the .tar.gz into the prepared arrays.
"""

from __future__ import annotations

import http.client
import re
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
from torchvision.datasets import STL10
from torchvision.datasets.utils import calculate_md5

from ..plumbing.config import DataConfig
from ..plumbing.progress import console, progress
from .prepared import PreparedWriter, SourceError


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
    return (
        f"cannot download {dest.name} from {url} ({reason}).{kept}\n"
        f"  If this machine is offline, download it elsewhere and place it at {dest} "
        f"(MD5 {md5}), then run again.\n"
        f"  Or use an offline source: data.source: shapes (embedded, generated) or "
        f"data.source: folder (your own images under data.root)."
    )


def download(url: str, dest: Path, md5: str, *, retries: int = 5, timeout: float = 60.0, pause: float = 1.0) -> Path:
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
                raise SourceError(
                    f"the download of {url} keeps breaking off ({e}); the {_size(part)} bytes "
                    f"received are kept in {part}: run again to resume"
                ) from None
            console.print(f"download interrupted ({e}); resuming from byte {_size(part)}", highlight=False)
            time.sleep(pause * min(2**failures, 30))
    console.print(f"verifying the MD5 of {part.name}", highlight=False)
    actual = calculate_md5(part)
    if actual != md5:
        part.unlink()  # a resumed file that does not verify cannot be repaired: the next run starts over
        raise SourceError(
            f"the download of {url} is corrupt: MD5 {actual}, expected {md5}. "
            f"It was deleted; run again to download afresh, or place a verified copy at {dest}."
        )
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
            task = bar.add_task(
                f"downloading {part.name} (MiB)", total=total / MiB if total else None, completed=have / MiB
            )
            while chunk := response.read(MiB):
                f.write(chunk)
                bar.advance(task, len(chunk) / MiB)
    # http.client returns a short body without complaint when the server closes early
    if total is not None and _size(part) < total:
        raise _Interrupted(f"connection closed after {_size(part)} of {total} bytes")


def _range_start(content_range: str | None) -> int:
    match = re.match(r"bytes (\d+)-", content_range or "")
    return int(match.group(1)) if match else -1


def fetch_stl10(
    root: Path, *, verify_md5: bool = True, url: str | None = None, md5: str | None = None, **download_kw
) -> Path:
    """The archive at `root/stl10_binary.tar.gz`, downloaded (and so verified) if absent. One already in
    place is MD5-checked unless `verify_md5` is false (data.verify_md5: a locally made archive)."""
    url, md5 = url or STL10_URL, md5 or STL10_MD5
    dest = root / STL10_ARCHIVE
    if not dest.exists():
        return download(url, dest, md5, **download_kw)
    if not verify_md5:
        console.print(
            f"[yellow]skipped the MD5 check of {dest}[/]: data.verify_md5 is false (meant for a "
            f"locally made archive such as benchmarks/make_stl10.py writes)",
            highlight=False,
        )
        return dest
    console.print(f"verifying the MD5 of {dest}", highlight=False)
    actual = calculate_md5(dest)
    if actual != md5:  # someone else's file: never deleted here
        raise SourceError(
            f"{dest} is not the STL-10 archive: its MD5 is {actual}, expected {md5}. It is damaged "
            f"or incomplete: delete it (the next run downloads {url}) or replace it with a good copy."
        )
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


def extract_stl10(
    archive: Path,
    image_size: int,
    out: str | Path,
    chunk: int = 1024,
    md5_checked: bool = True,
    val_fraction: float | None = None,
) -> Path:
    """One streaming pass over the .tar.gz: images go straight into the prepared splits."""
    labels: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    classes: list[str] | None = None
    with PreparedWriter(out, val_fraction) as writer:
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
                            raise SourceError(
                                f"{where} holds {member.size} bytes, not a whole number of "
                                f"3x96x96 images: not an STL-10 archive"
                            )
                        n = counts[split] = member.size // _STL10_IMAGE_BYTES
                        task = bar.add_task(f"extracting {split}", total=n)
                        f = tar.extractfile(member)
                        with writer.images(split, n, image_size) as sink:
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
        return writer.commit(
            {
                "source": "stl10",
                "image_size": image_size,
                "classes": classes,
                "archive": STL10_ARCHIVE,
                "md5_checked": md5_checked,
            }
        )


def _check_stl10(archive: Path, counts: dict, labels: dict, classes: list[str] | None) -> None:
    missing = [name for name, split in _STL10_IMAGES.items() if split not in counts]
    missing += [name for name, split in _STL10_LABELS.items() if split not in labels]
    missing += [] if classes else [_STL10_CLASSES]
    if missing:
        raise SourceError(
            f"{archive} lacks {', '.join(f'{STL10.base_folder}/{m}' for m in missing)}: not a complete STL-10 archive"
        )
    for split, y in labels.items():
        if len(y) != counts[split]:
            raise SourceError(f"{archive}: {split} has {counts[split]} images but {len(y)} labels")
        if y.min() < 0 or y.max() >= len(classes):
            raise SourceError(
                f"{archive}: {split} labels must lie in 1..{len(classes)} "
                f"(one per line of {_STL10_CLASSES}), found {y.min() + 1}..{y.max() + 1}"
            )


def prepare_stl10(
    cfg: DataConfig,
    out: str | Path,
    *,
    url: str | None = None,
    md5: str | None = None,
    val_fraction: float | None = None,
    **download_kw,
) -> Path:
    """data.source: stl10 -> the archive under data.root (downloaded if absent) -> the prepared splits."""
    root = Path(cfg.root)
    checked = cfg.verify_md5 or not (root / STL10_ARCHIVE).exists()  # a download is always verified
    archive = fetch_stl10(root, verify_md5=cfg.verify_md5, url=url, md5=md5, **download_kw)
    return extract_stl10(archive, cfg.image_size, out, md5_checked=checked, val_fraction=val_fraction)
