"""The cifar10 source: generated archives in the official CIFAR-10 python format (read back by torchvision's
own CIFAR10 reader), the real download code against an HTTP server on loopback, and the real dvc CLI."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile

import numpy as np
import pytest
import test_sources
import yaml
from torchvision.datasets import CIFAR10

from conftest import REPO, copy_repo, dvc
from mae_exp.data.cifar10 import _ArrayUnpickler, prepare_cifar10
from mae_exp.data.prepared import SourceError, load_meta, load_split, pretraining_set
from mae_exp.plumbing.config import ConfigError, load_params, parse_params

# the STL-10 tests' loopback HTTP server (with its no-proxy fixture) and helpers
server, no_proxy_for_loopback = test_sources.server, test_sources.no_proxy_for_loopback
closed_port_url, data_cfg = test_sources.closed_port_url, test_sources.data_cfg

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
BATCH = 7  # images per training batch (10,000 in the real archive)
TEST = 5
# the order of the official archive's members, which is not the batches' order
MEMBERS = [
    "data_batch_4",
    "readme.html",
    "test_batch",
    "data_batch_3",
    "batches.meta",
    "data_batch_2",
    "data_batch_5",
    "data_batch_1",
]


def pixel(i, y, x, c):
    """A value that differs under any swap of rows, columns or channels, and per image (i: global index)."""
    return (7 * i + 3 * y + 5 * x + 80 * c) % 256


def expected(first: int, n: int) -> np.ndarray:
    """Images first..first+n-1 as rows x columns x RGB."""
    i, y, x, c = np.indices((n, 32, 32, 3))
    return pixel(i + first, y, x, c).astype(np.uint8)


def labels_of(first: int, n: int) -> list[int]:
    return [(first + k) * 3 % 10 for k in range(n)]


def batch(first: int, n: int, labels: list[int] | None = None) -> bytes:
    """A batch as the official files hold it, written from the format's definition: per image a row of 3072
    bytes, the 1024 red values first, then green, then blue, each plane row by row."""
    i, c, y, x = np.indices((n, 3, 32, 32))
    data = pixel(i + first, y, x, c).astype(np.uint8).reshape(n, 3072)
    return pickle.dumps(
        {
            "batch_label": "generated",
            "labels": labels or labels_of(first, n),
            "data": data,
            "filenames": [f"{first + k}.png" for k in range(n)],
        },
        protocol=2,
    )


def make_archive(files: dict[str, bytes] | None = None, skip: tuple[str, ...] = ()) -> bytes:
    files = {
        **{f"data_batch_{b}": batch((b - 1) * BATCH, BATCH) for b in range(1, 6)},
        "test_batch": batch(1000, TEST),
        "batches.meta": pickle.dumps(
            {"label_names": CLASSES, "num_cases_per_batch": BATCH, "num_vis": 3072}, protocol=2
        ),
        "readme.html": b"<html>generated</html>",
        **(files or {}),
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in [m for m in MEMBERS if m not in skip]:
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(files[name])
            tar.addfile(info, io.BytesIO(files[name]))
    return buf.getvalue()


ARCHIVE = make_archive()
ARCHIVE_MD5 = hashlib.md5(ARCHIVE).hexdigest()


class UncheckedCIFAR10(CIFAR10):
    """torchvision's own CIFAR-10 reader; only its MD5 checks of the real files are left out."""

    def _check_integrity(self) -> bool:
        return True

    def _load_meta(self) -> None:
        with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as f:
            self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]


def test_torchvision_reads_the_generated_archive_as_cifar10(tmp_path):
    with tarfile.open(fileobj=io.BytesIO(ARCHIVE)) as tar:
        tar.extractall(tmp_path, filter="data")
    train, test = UncheckedCIFAR10(str(tmp_path), train=True), UncheckedCIFAR10(str(tmp_path), train=False)
    assert train.classes == CLASSES
    np.testing.assert_array_equal(train.data, expected(0, 5 * BATCH))  # batches 1..5 in order
    assert train.targets == labels_of(0, 5 * BATCH)
    np.testing.assert_array_equal(test.data, expected(1000, TEST))
    assert test.targets == labels_of(1000, TEST)


def test_download_verifies_and_prepares_train_test_and_an_empty_unlabeled_split(tmp_path, server):
    server.payload = ARCHIVE
    root, out = tmp_path / "raw", tmp_path / "prepared"
    prepare_cifar10(data_cfg(root, source="cifar10", image_size=32), out, url=server.url, md5=ARCHIVE_MD5)
    assert (root / "cifar-10-python.tar.gz").read_bytes() == ARCHIVE and not out.with_name("prepared.partial").exists()
    meta = load_meta(out)
    assert meta["source"] == "cifar10" and meta["classes"] == CLASSES and meta["md5_checked"] is True
    assert meta["sizes"] == {"train": 5 * BATCH, "test": TEST, "unlabeled": 0}
    train, test = load_split(out, "train"), load_split(out, "test")
    np.testing.assert_array_equal(train.images, expected(0, 5 * BATCH))
    assert train.labels.tolist() == labels_of(0, 5 * BATCH)
    np.testing.assert_array_equal(test.images, expected(1000, TEST))
    assert test.labels.tolist() == labels_of(1000, TEST)
    assert train.images[0, 2, 1].tolist() == [11, 91, 171]  # row 2, column 1: 3*2 + 5*1 (+80 per channel)
    images, line = pretraining_set(out, ("unlabeled", "train"))  # the default pretrain_splits
    assert len(images) == 5 * BATCH and line == f"pre-training on {5 * BATCH} images (unlabeled 0 + train 35)"

    # an archive in place is used without the network, and resized on the way for another image_size
    small = prepare_cifar10(
        data_cfg(root, source="cifar10", image_size=16), tmp_path / "small", url=closed_port_url(), md5=ARCHIVE_MD5
    )
    assert load_split(small, "train").images.shape == (5 * BATCH, 16, 16, 3)


def test_a_corrupt_download_fails_on_md5_and_leaves_nothing(tmp_path, server):
    server.payload = ARCHIVE[:-10] + b"x" * 10
    root, out = tmp_path / "raw", tmp_path / "prepared"
    with pytest.raises(SourceError, match="is corrupt: MD5"):
        prepare_cifar10(data_cfg(root, source="cifar10"), out, url=server.url, md5=ARCHIVE_MD5)
    assert list(root.iterdir()) == [] and not out.exists() and not out.with_name("prepared.partial").exists()


def test_an_archive_in_place_is_md5_checked_unless_verify_md5_is_false(tmp_path, capfd):
    root = tmp_path / "raw"
    root.mkdir()
    (root / "cifar-10-python.tar.gz").write_bytes(ARCHIVE)  # stands for a locally made archive
    with pytest.raises(SourceError, match="is not the CIFAR-10 archive: its MD5 is"):
        prepare_cifar10(data_cfg(root, source="cifar10"), tmp_path / "prepared", md5="0" * 32)
    assert (root / "cifar-10-python.tar.gz").read_bytes() == ARCHIVE  # someone's file: kept
    out = prepare_cifar10(data_cfg(root, source="cifar10", verify_md5=False), tmp_path / "prepared", md5="0" * 32)
    assert load_meta(out)["md5_checked"] is False
    assert "skipped the MD5 check" in capfd.readouterr().err


def test_offline_the_message_names_the_address_the_manual_route_and_the_alternatives(tmp_path):
    root, url = tmp_path / "raw", closed_port_url()
    with pytest.raises(SourceError) as err:
        prepare_cifar10(data_cfg(root, source="cifar10"), tmp_path / "prepared", url=url, md5=ARCHIVE_MD5)
    for words in (url, str(root / "cifar-10-python.tar.gz"), ARCHIVE_MD5, "data.source: shapes", "data.source: folder"):
        assert words in str(err.value)


# np.array([1, 2], np.uint8) pickled as Python 2 with numpy 1 wrote the official batches: the class path
# numpy.core.multiarray (numpy 2 keeps it for old pickles) and the bytes as a Python 2 str
PY2_ARRAY = (
    b"\x80\x02cnumpy.core.multiarray\n_reconstruct\nq\x00cnumpy\nndarray\nq\x01K\x00\x85q\x02U\x01bq\x03"
    b"\x87q\x04Rq\x05(K\x01K\x02\x85q\x06cnumpy\ndtype\nq\x07U\x02u1q\x08K\x00K\x01\x87q\tRq\n(K\x03U"
    b"\x01|q\x0bNNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tq\x0cb\x89U\x02\x01\x02q\rtq\x0eb."
)


def test_an_array_pickled_by_python_2_loads():
    array = _ArrayUnpickler(io.BytesIO(PY2_ARRAY), encoding="latin1").load()
    assert array.dtype == np.uint8 and array.tolist() == [1, 2]


class RunsACommand:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize(
    "files, skip, says",
    [
        ({}, ("data_batch_3",), "lacks cifar-10-batches-py/data_batch_3: not a complete CIFAR-10 python archive"),
        ({"test_batch": batch(1000, TEST, labels=[0, 1, 2, 3, 10])}, (), "labels must lie in 0..9"),
        ({"data_batch_2": batch(BATCH, BATCH, labels=[1, 2])}, (), "7 images but 2 labels"),
        (
            {"data_batch_1": pickle.dumps({"data": np.zeros((2, 3071), np.uint8), "labels": [0, 1]})},
            (),
            "'data' must be a uint8 array of shape (N, 3072)",
        ),
        ({"data_batch_1": b"not a pickle"}, (), "data_batch_1 is not a CIFAR-10 batch"),
        ({"batches.meta": pickle.dumps(RunsACommand())}, (), "refusing to load"),
    ],
)
def test_a_malformed_archive_stops_with_what_is_wrong_and_runs_nothing(tmp_path, monkeypatch, files, skip, says):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "raw"
    root.mkdir()
    archive = make_archive(files, skip)
    (root / "cifar-10-python.tar.gz").write_bytes(archive)
    with pytest.raises(SourceError) as err:
        prepare_cifar10(data_cfg(root, source="cifar10"), tmp_path / "prepared", md5=hashlib.md5(archive).hexdigest())
    assert says in str(err.value)
    assert not (tmp_path / "prepared").exists() and not (tmp_path / "prepared.partial").exists()
    assert not (tmp_path / "pwned").exists()


def test_pretrain_splits_must_include_train_for_cifar10():
    raw = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    raw["data"].update(source="cifar10", pretrain_splits=["unlabeled"])
    with pytest.raises(ConfigError, match="data.pretrain_splits must include train for source cifar10"):
        parse_params(raw)
    raw["data"]["pretrain_splits"] = ["train"]
    assert parse_params(raw).data.source == "cifar10"
    assert load_params(REPO / "configs" / "tiny.yaml").data.source == "shapes"


@pytest.mark.slow
def test_the_download_stage_prepares_a_local_archive_through_dvc(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    (repo / "data/raw/cifar-10-python.tar.gz").write_bytes(ARCHIVE)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    # 35 train images, 3 or 4 a class: a validation share of 0.5 holds some out (download refuses none held out)
    params["data"].update(source="cifar10", root="data/raw", image_size=32, verify_md5=True, val_fraction=0.5)
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    proc = dvc("repro", "download", cwd=repo, check=False)  # not the real archive: refused, nothing prepared
    assert proc.returncode != 0 and "Traceback" not in proc.stdout + proc.stderr
    assert "data/raw/cifar-10-python.tar.gz is not the CIFAR-10 archive" in proc.stdout + proc.stderr
    assert not (repo / "data/prepared").exists()

    params["data"]["verify_md5"] = False
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    dvc("repro", "download", cwd=repo)
    meta = load_meta(repo / "data/prepared")
    assert meta["source"] == "cifar10" and meta["sizes"] == {"train": 35, "test": 5, "unlabeled": 0}
    np.testing.assert_array_equal(load_split(repo / "data/prepared", "test").images, expected(1000, TEST))
    # the archive under data.root is .dvcignored: the stage's dependency on the folder does not see it
    (repo / "data/raw/cifar-10-python.tar.gz.part").write_bytes(b"partial")
    assert "up to date" in dvc("status", "download", cwd=repo).stdout
