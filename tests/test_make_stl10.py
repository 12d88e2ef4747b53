"""benchmarks/make_stl10.py: an archive in STL-10's binary format that torchvision's reader and the real
stl10 download stage (through `dvc repro`) read back pixel for pixel; the MD5 switch is explicit."""

from __future__ import annotations

import importlib.util
import tarfile

import numpy as np
import pytest
import torch
import yaml
from torchvision.datasets import STL10

from conftest import REPO, copy_repo, dvc, run
from mae_exp.data.prepared import load_meta, load_split
from mae_exp.data.shapes import SHAPE_CLASSES, render_shapes

spec = importlib.util.spec_from_file_location("make_stl10", REPO / "benchmarks" / "make_stl10.py")
make_stl10 = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_stl10)


def expected(split: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The images (rows x columns x RGB) and 0-based labels the generator renders for one split."""
    labels, chunks = make_stl10.split_labels_and_images(split, n, seed)
    return np.concatenate(list(chunks)), labels


class UncheckedSTL10(STL10):
    """torchvision's own STL-10 reader; only its MD5 check of the real files is left out."""

    def _check_integrity(self) -> bool:
        return True


def test_torchvision_reads_the_generated_archive_as_stl10(tmp_path):
    sizes = {"unlabeled": 6, "train": 15, "test": 4}
    archive = make_stl10.write_archive(tmp_path / "raw", sizes, seed=5)
    assert not (tmp_path / "raw" / "stl10_binary.tar.gz.partial").exists()
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "extracted", filter="data")
    for split, n in sizes.items():
        images, labels = expected(split, n, seed=5)
        ours = UncheckedSTL10(tmp_path / "extracted", split=split)
        np.testing.assert_array_equal(ours.data.transpose(0, 2, 3, 1), images, err_msg=split)  # NCHW -> NHWC
        if split != "unlabeled":
            np.testing.assert_array_equal(ours.labels, labels)
            counts = np.bincount(labels, minlength=len(SHAPE_CLASSES))
            assert counts.max() - counts.min() <= 1  # balanced classes
        assert ours.classes == list(SHAPE_CLASSES)
    # fold_indices.txt: 10 folds of train indices, each a fifth of the train split
    fold = UncheckedSTL10(tmp_path / "extracted", split="train", folds=9)
    assert len(fold.data) == 3
    # the records themselves, read from the definition: byte [i, c, x, y] is pixel row y, column x
    raw = (tmp_path / "extracted/stl10_binary/train_X.bin").read_bytes()
    images, _ = expected("train", 15, seed=5)
    record = np.frombuffer(raw, np.uint8).reshape(15, 3, 96, 96)
    assert record[7, 2, 10, 40] == images[7, 40, 10, 2] and record[7, 2, 40, 10] == images[7, 10, 40, 2]


@pytest.mark.slow
def test_the_download_stage_prepares_it_only_with_the_md5_switch_off(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    sizes, seed = {"unlabeled": 200, "train": 50, "test": 50}, 3
    made = run(
        [
            "python",
            "benchmarks/make_stl10.py",
            "--root",
            "data/raw",
            "--seed",
            str(seed),
            *(f"--{split}={n}" for split, n in sizes.items()),
        ],
        repo,
    )
    assert "data.verify_md5: false" in made.stdout
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"].update(source="stl10", root="data/raw", image_size=96, input_size=96, verify_md5=True)
    (repo / "params.yaml").write_text(yaml.safe_dump(params))

    # the switch on (the default): not the real archive, stopped by today's message, nothing prepared
    proc = dvc("repro", "download", cwd=repo, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in out
    assert "data/raw/stl10_binary.tar.gz is not the STL-10 archive: its MD5 is" in out
    assert not (repo / "data/prepared").exists()

    params["data"]["verify_md5"] = False
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    proc = dvc("repro", "download", cwd=repo)
    skipped = [line for line in (proc.stdout + proc.stderr).splitlines() if "MD5" in line]
    assert len(skipped) == 1 and "skipped the MD5 check of data/raw/stl10_binary.tar.gz" in skipped[0]
    assert "data.verify_md5 is false" in skipped[0]

    prepared = repo / "data/prepared"
    meta = load_meta(prepared)
    assert meta["source"] == "stl10" and meta["classes"] == list(SHAPE_CLASSES) and meta["md5_checked"] is False
    assert meta["sizes"] == sizes
    for split, n in sizes.items():
        images, labels = expected(split, n, seed)
        stored = load_split(prepared, split)
        np.testing.assert_array_equal(stored.images, images, err_msg=split)
        if split != "unlabeled":
            np.testing.assert_array_equal(stored.labels, labels)


def test_gzip_level_changes_only_the_compression(tmp_path):
    sizes = {"unlabeled": 3, "train": 10, "test": 2}
    stored = make_stl10.write_archive(tmp_path / "stored", sizes, seed=1, level=0)
    packed = make_stl10.write_archive(tmp_path / "packed", sizes, seed=1, level=1)
    assert stored.stat().st_size > packed.stat().st_size
    with tarfile.open(stored) as a, tarfile.open(packed) as b:
        assert a.getnames() == b.getnames()
        for member in a.getmembers():
            if member.isfile():
                assert a.extractfile(member).read() == b.extractfile(member.name).read(), member.name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_rendering_on_the_gpu_gives_the_same_kind_of_images():
    labels = torch.arange(40) % len(SHAPE_CLASSES)
    cpu = render_shapes(labels, 32, torch.Generator().manual_seed(0))
    gpu = render_shapes(labels, 32, torch.Generator("cuda").manual_seed(0))
    assert gpu.device.type == "cuda" and gpu.dtype == torch.uint8 and gpu.shape == cpu.shape
    assert not torch.equal(gpu.cpu(), cpu)  # CUDA's random stream: other images ...
    assert abs(gpu.float().mean().item() - cpu.float().mean().item()) < 15  # ... of the same kind
    assert abs(gpu.float().std().item() - cpu.float().std().item()) < 15
