"""STL-10 and folder sources: the real download code against an HTTP server on loopback, real archives in
the STL-10 binary layout, real PNG/JPEG files, and the real dvc CLI for the download stage's dependency."""

from __future__ import annotations

import hashlib
import io
import re
import socket
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import REPO, copy_repo, dvc, git, run, stage_cmd
from mae_exp.data.folder import prepare_folder
from mae_exp.data.prepared import SourceError, load_meta, load_split, pretraining_set
from mae_exp.data.stl10 import prepare_stl10
from mae_exp.plumbing.config import ConfigError, load_params, parse_params

CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
SPLIT_SIZES = {"train": 3, "test": 2, "unlabeled": 4}
TRAIN_Y, TEST_Y = [1, 10, 5], [2, 3]  # 1-based, as in the real files


def pixel(i, y, x, c, offset):
    """A value that differs under any swap of x and y or of channels, and per image."""
    return (offset + 7 * i + 3 * y + 5 * x + 80 * c) % 256


def stl10_bin(n: int, offset: int) -> bytes:
    """n images in the STL-10 file layout, written from its definition: per image 3 channel planes, each
    96x96 column-major, so byte [c, x, y] holds the pixel at row y, column x."""
    i, c, x, y = np.indices((n, 3, 96, 96))
    return pixel(i, y, x, c, offset).astype(np.uint8).tobytes()


def expected_hwc(n: int, offset: int) -> np.ndarray:
    i, y, x, c = np.indices((n, 96, 96, 3))
    return pixel(i, y, x, c, offset).astype(np.uint8)


OFFSETS = {"train": 0, "test": 100, "unlabeled": 200}


def make_stl10_archive() -> bytes:
    files = {f"{split}_X.bin": stl10_bin(n, OFFSETS[split]) for split, n in SPLIT_SIZES.items()}
    files["train_y.bin"] = bytes(TRAIN_Y)
    files["test_y.bin"] = bytes(TEST_Y)
    files["class_names.txt"] = ("\n".join(CLASSES) + "\n").encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"stl10_binary/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


ARCHIVE = make_stl10_archive()
ARCHIVE_MD5 = hashlib.md5(ARCHIVE).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    """Serves server.payload with optional Range support; server.cuts[k] cuts the k-th response short."""

    def do_GET(self):
        srv = self.server
        rng = self.headers.get("Range")
        srv.ranges.append(rng)
        data, start = srv.payload, 0
        if rng and srv.honour_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = srv.cuts.pop(0) if srv.cuts else None
        self.wfile.write(body if cut is None else body[:cut])  # HTTP/1.0: the connection closes after

    def log_message(self, *args):
        pass


@pytest.fixture(autouse=True)
def no_proxy_for_loopback(monkeypatch):
    # a machine with http_proxy set would otherwise send the loopback requests to its proxy
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.payload, srv.ranges, srv.cuts, srv.honour_range = ARCHIVE, [], [], True
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/stl10_binary.tar.gz"
    yield srv
    srv.shutdown()
    srv.server_close()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/stl10_binary.tar.gz"  # nobody listens there now


def data_cfg(root: Path, **changes):
    p = load_params(REPO / "configs" / "tiny.yaml")
    return p.data.model_copy(update={"root": str(root), **changes})


def assert_stl10_prepared(out: Path):
    meta = load_meta(out)
    assert meta["source"] == "stl10" and meta["classes"] == CLASSES
    assert meta["sizes"] == SPLIT_SIZES
    for split, n in SPLIT_SIZES.items():
        images = load_split(out, split).images
        assert images.shape == (n, 96, 96, 3)
        np.testing.assert_array_equal(images, expected_hwc(n, OFFSETS[split]), err_msg=split)
    # row y, column x of image 0: 3y + 5x (+80 per channel); a transposed read would give 5y + 3x
    train = load_split(out, "train")
    assert train.images[0, 2, 1].tolist() == [11, 91, 171]
    assert train.labels.tolist() == [0, 9, 4] and load_split(out, "test").labels.tolist() == [1, 2]


# --------------------------------------------------------------------------- stl10


def test_good_archive_downloads_and_prepares_hwc_images_with_zero_based_labels(tmp_path, server):
    root, out = tmp_path / "raw", tmp_path / "prepared"
    prepare_stl10(data_cfg(root, image_size=96), out, url=server.url, md5=ARCHIVE_MD5)
    assert_stl10_prepared(out)
    assert (root / "stl10_binary.tar.gz").read_bytes() == ARCHIVE
    assert not (root / "stl10_binary.tar.gz.part").exists() and not (tmp_path / "prepared.partial").exists()
    assert server.ranges == [None]  # one plain request

    # an archive already in place is used as it is: no network needed (the placed-by-hand route)
    small = tmp_path / "small"
    prepare_stl10(data_cfg(root, image_size=32), small, url=closed_port_url(), md5=ARCHIVE_MD5)
    images = load_split(small, "unlabeled").images
    assert images.shape == (4, 32, 32, 3)
    full = expected_hwc(4, OFFSETS["unlabeled"]).reshape(4, 32, 3, 32, 3, 3).astype(float)
    # the antialiased resize stays close to the 3x3 block means of the original
    assert np.abs(images - full.mean(axis=(2, 4))).mean() < 6
    assert len(server.ranges) == 1


def test_corrupt_download_fails_on_md5_and_leaves_nothing_prepared(tmp_path, server):
    root, out = tmp_path / "raw", tmp_path / "prepared"
    damaged = bytearray(ARCHIVE)
    damaged[len(damaged) // 2] ^= 0xFF
    server.payload = bytes(damaged)
    with pytest.raises(SourceError) as err:
        prepare_stl10(data_cfg(root, image_size=96), out, url=server.url, md5=ARCHIVE_MD5)
    message = str(err.value)
    assert "corrupt" in message and ARCHIVE_MD5 in message and server.url in message
    assert hashlib.md5(damaged).hexdigest() in message
    assert not out.exists() and not (tmp_path / "prepared.partial").exists()
    assert list(root.iterdir()) == []  # the bad bytes are gone, so the next run starts afresh


def test_a_damaged_archive_never_replaces_a_good_prepared_dataset(tmp_path, server):
    root, out = tmp_path / "raw", tmp_path / "prepared"
    prepare_stl10(data_cfg(root, image_size=96), out, url=server.url, md5=ARCHIVE_MD5)
    good = load_meta(out)["digest"]
    # an archive whose MD5 matches what we were told but whose tar stream is cut inside unlabeled_X.bin
    truncated = tmp_path / "other" / "stl10_binary.tar.gz"
    truncated.parent.mkdir()
    truncated.write_bytes(ARCHIVE[: len(ARCHIVE) * 2 // 3])
    with pytest.raises(SourceError) as err:
        prepare_stl10(
            data_cfg(truncated.parent, image_size=96), out, md5=hashlib.md5(truncated.read_bytes()).hexdigest()
        )
    assert str(truncated) in str(err.value)
    assert load_meta(out)["digest"] == good and not (tmp_path / "prepared.partial").exists()
    assert_stl10_prepared(out)

    # a file of the right name but the wrong content is reported, and kept (it may be the user's)
    (truncated.parent / "stl10_binary.tar.gz").write_bytes(b"not it")
    with pytest.raises(SourceError, match="is not the STL-10 archive: its MD5 is"):
        prepare_stl10(data_cfg(truncated.parent, image_size=96), tmp_path / "x", md5=ARCHIVE_MD5)
    assert (truncated.parent / "stl10_binary.tar.gz").read_bytes() == b"not it"


def test_verify_md5_false_skips_only_the_check_of_an_archive_in_place(tmp_path, server, capfd):
    root = tmp_path / "raw"
    root.mkdir()
    (root / "stl10_binary.tar.gz").write_bytes(ARCHIVE)  # stands for a locally made archive
    out = prepare_stl10(data_cfg(root, image_size=96, verify_md5=False), tmp_path / "prepared", md5="0" * 32)
    assert_stl10_prepared(out)
    assert load_meta(out)["md5_checked"] is False
    said = [line for line in capfd.readouterr().err.splitlines() if "MD5" in line]
    assert len(said) == 1 and "skipped the MD5 check" in said[0] and "data.verify_md5 is false" in said[0]

    # a download is verified whatever the switch says: it is how a broken transfer shows
    damaged = bytearray(ARCHIVE)
    damaged[len(damaged) // 2] ^= 0xFF
    server.payload = bytes(damaged)
    with pytest.raises(SourceError, match="is corrupt"):
        prepare_stl10(
            data_cfg(tmp_path / "empty", image_size=96, verify_md5=False),
            tmp_path / "p2",
            url=server.url,
            md5=ARCHIVE_MD5,
        )


def test_interrupted_download_is_resumed_by_the_next_run_with_a_range_request(tmp_path, server):
    root, out = tmp_path / "raw", tmp_path / "prepared"
    cut = len(ARCHIVE) * 2 // 5
    server.cuts = [cut]
    with pytest.raises(SourceError, match="run again to resume"):
        prepare_stl10(data_cfg(root, image_size=96), out, url=server.url, md5=ARCHIVE_MD5, retries=0)
    part = root / "stl10_binary.tar.gz.part"
    assert part.stat().st_size == cut and not (root / "stl10_binary.tar.gz").exists() and not out.exists()

    prepare_stl10(data_cfg(root, image_size=96), out, url=server.url, md5=ARCHIVE_MD5, retries=0)
    assert server.ranges == [None, f"bytes={cut}-"]
    assert (root / "stl10_binary.tar.gz").read_bytes() == ARCHIVE and not part.exists()
    assert_stl10_prepared(out)


@pytest.mark.parametrize("honour_range", [True, False])
def test_a_broken_transfer_is_retried_within_the_run(tmp_path, server, honour_range):
    """Resumed where the server honours Range; restarted from byte 0 where it ignores it."""
    server.honour_range = honour_range
    server.cuts = [len(ARCHIVE) // 3, len(ARCHIVE) // 4]  # two breaks, then a whole response
    root = tmp_path / "raw"
    prepare_stl10(
        data_cfg(root, image_size=96), tmp_path / "prepared", url=server.url, md5=ARCHIVE_MD5, retries=2, pause=0
    )
    assert len(server.ranges) == 3 and server.ranges[0] is None and server.ranges[1] is not None
    assert (root / "stl10_binary.tar.gz").read_bytes() == ARCHIVE
    assert_stl10_prepared(tmp_path / "prepared")


def test_offline_the_message_names_the_address_the_manual_route_and_the_alternatives(tmp_path):
    root = tmp_path / "raw"
    url = closed_port_url()
    with pytest.raises(SourceError) as err:
        prepare_stl10(data_cfg(root), tmp_path / "prepared", url=url, md5=ARCHIVE_MD5)
    message = str(err.value)
    for words in (url, str(root / "stl10_binary.tar.gz"), ARCHIVE_MD5, "data.source: shapes", "data.source: folder"):
        assert words in message
    assert not (tmp_path / "prepared").exists()


def test_offline_through_the_stage_script_one_clear_line_and_no_work(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["source"] = "stl10"
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    url = closed_port_url()
    # the stage exactly as dvc runs it, with the address pointed at a closed port on loopback
    code = (
        f"import runpy, mae_exp.data.stl10 as s; s.STL10_URL = {url!r}; "
        f"import sys; sys.argv = {stage_cmd('download')[1:]!r}; "
        f"runpy.run_path('stages/download.py', run_name='__main__')"
    )
    proc = run(["python", "-c", code], repo, check=False)
    assert proc.returncode == 1, proc.stderr
    assert url in proc.stderr and "data/raw/stl10_binary.tar.gz" in proc.stderr and "shapes" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (repo / "data" / "prepared").exists()


# --------------------------------------------------------------------------- folder

RED, BLUE, GREEN = (220, 30, 30), (30, 30, 220), (30, 200, 30)


def write_image(path: Path, colour, size=(24, 24), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, colour)
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path)


def make_folder(root: Path, unlabeled: bool = True) -> Path:
    """cat images red, dog images blue, unlabeled green; PNG and JPEG, nested, odd sizes and modes."""
    write_image(root / "train/cat/a.png", RED)
    write_image(root / "train/cat/more/b.jpg", RED, size=(40, 20))  # nested, not square
    write_image(root / "train/cat/c.png", RED, mode="RGBA")
    write_image(root / "train/dog/d.jpg", BLUE)
    write_image(root / "train/dog/e.png", BLUE, mode="P")
    write_image(root / "test/cat/f.jpg", RED, size=(10, 30))
    write_image(root / "test/dog/g.png", BLUE)
    (root / "train/dog/.DS_Store").write_bytes(b"\0\1 finder junk")  # hidden: not part of the dataset
    if unlabeled:
        write_image(root / "unlabeled/x/y/h.png", GREEN)
        write_image(root / "unlabeled/i.jpg", GREEN, size=(50, 50))
    return root


def mean_colours(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1, 3).mean(axis=1)


def test_folder_dataset_classes_labels_and_resized_images(tmp_path):
    root = make_folder(tmp_path / "images")
    out = prepare_folder(data_cfg(root, source="folder", image_size=16), tmp_path / "prepared")
    meta = load_meta(out)
    assert meta["classes"] == ["cat", "dog"] and meta["sizes"] == {"train": 5, "test": 2, "unlabeled": 2}
    assert meta["skipped"] == []
    train, test, unlabeled = (load_split(out, s) for s in ("train", "test", "unlabeled"))
    assert train.images.shape == (5, 16, 16, 3) and unlabeled.labels is None
    assert train.labels.tolist() == [0, 0, 0, 1, 1] and test.labels.tolist() == [0, 1]
    # each image keeps its colour (JPEG within a few levels): the right file landed under the right label
    expected = [RED] * 3 + [BLUE] * 2
    assert np.abs(mean_colours(train.images) - np.array(expected)).max() < 6
    assert np.abs(mean_colours(test.images) - np.array([RED, BLUE])).max() < 6
    assert np.abs(mean_colours(unlabeled.images) - np.array([GREEN, GREEN])).max() < 6


def test_without_unlabeled_folder_the_unlabeled_split_is_empty_and_pretraining_takes_train(tmp_path):
    root = make_folder(tmp_path / "images", unlabeled=False)
    out = prepare_folder(data_cfg(root, source="folder", image_size=16), tmp_path / "prepared")
    assert load_meta(out)["sizes"] == {"unlabeled": 0, "train": 5, "test": 2}
    unlabeled = load_split(out, "unlabeled")  # nothing copied: a valid .npy of 0 images
    assert unlabeled.images.shape == (0, 16, 16, 3) and unlabeled.labels is None
    images, line = pretraining_set(out, ("unlabeled", "train"))
    np.testing.assert_array_equal(images, load_split(out, "train").images)
    assert line == "pre-training on 5 images (unlabeled 0 + train 5)"
    with pytest.raises(ValueError) as err:
        pretraining_set(out, ("unlabeled",))
    assert "data.pretrain_splits" in str(err.value) and "unlabeled 0" in str(err.value)


def test_a_broken_file_stops_with_its_name_or_is_skipped_and_counted(tmp_path):
    root = make_folder(tmp_path / "images")
    text = root / "train/dog/notes.txt"
    text.write_text("not an image")
    jpeg = io.BytesIO()
    Image.new("RGB", (64, 64), BLUE).save(jpeg, "JPEG")
    truncated = root / "test/dog/cut.jpg"
    truncated.write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    out = tmp_path / "prepared"

    with pytest.raises(SourceError) as err:
        prepare_folder(data_cfg(root, source="folder", image_size=16), out)
    assert str(text) in str(err.value) and "data.skip_bad_files: true" in str(err.value)
    assert not out.exists() and not (tmp_path / "prepared.partial").exists()

    prepare_folder(data_cfg(root, source="folder", image_size=16, skip_bad_files=True), out)
    meta = load_meta(out)
    assert meta["skipped"] == ["train/dog/notes.txt", "test/dog/cut.jpg"]
    assert meta["sizes"] == {"train": 5, "test": 2, "unlabeled": 2}
    train = load_split(out, "train")
    assert train.images.shape == (5, 16, 16, 3) and train.labels.tolist() == [0, 0, 0, 1, 1]
    # the shrunk split is a well-formed .npy of exactly its size
    path = out / "train_images.npy"
    assert path.stat().st_size == train.images.offset + 5 * 16 * 16 * 3


def test_a_test_class_missing_from_train_is_an_error(tmp_path):
    root = make_folder(tmp_path / "images")
    write_image(root / "test/horse/h.png", GREEN)
    with pytest.raises(SourceError) as err:
        prepare_folder(data_cfg(root, source="folder", image_size=16), tmp_path / "prepared")
    assert "'horse'" in str(err.value) and str(root / "train") in str(err.value)


@pytest.mark.parametrize(
    "breakage, words",
    [
        (lambda root: None, ["is not a directory", "train/<class>"]),
        (lambda root: write_image(root / "train/cat/a.png", RED), ["test is missing"]),
        (
            lambda root: [
                write_image(root / name, RED) for name in ("train/cat/c.png", "train/a.png", "test/cat/b.png")
            ],
            ["train/a.png is not inside a class folder"],
        ),
    ],
)
def test_a_wrong_layout_names_what_is_wrong(tmp_path, breakage, words):
    root = tmp_path / "images"
    breakage(root)
    with pytest.raises(SourceError) as err:
        prepare_folder(data_cfg(root, source="folder", image_size=16), tmp_path / "prepared")
    for word in words:
        assert word in str(err.value)


def test_skip_bad_files_is_a_validated_param():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"]["skip_bad_files"] = "yes"
    with pytest.raises(ConfigError, match="data.skip_bad_files must be true or false"):
        parse_params(raw)
    del raw["data"]["skip_bad_files"]
    with pytest.raises(ConfigError, match="missing key 'data.skip_bad_files'"):
        parse_params(raw)


# --------------------------------------------------------------------------- dvc


def folder_repo(tmp_path: Path, root, cache: str = "shared") -> Path:
    """A scratch repository whose params say data.source: folder, data.root: `root`."""
    repo = copy_repo(tmp_path / "repo", cache=cache)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    # val_fraction 0.5: make_folder's 3 cat + 2 dog train images then leave a validation split, which download checks
    params["data"].update(source="folder", root=str(root), val_fraction=0.5)
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    return repo


@pytest.mark.slow
def test_download_stage_tracks_the_folder_content_but_not_the_stl10_archive(tmp_path):
    repo = folder_repo(tmp_path, "data/images")
    make_folder(repo / "data/images")
    with open(repo / "data/.gitignore", "a") as f:
        f.write("/images\n")  # kept out of git this way or by `dvc add` (next test)
    dvc("repro", "download", cwd=repo)
    assert load_meta(repo / "data/prepared")["classes"] == ["cat", "dog"]
    assert "up to date" in dvc("status", "download", cwd=repo).stdout

    # an STL-10 archive (whole or partial) under data.root is an input checked by MD5, not content
    (repo / "data/images/stl10_binary.tar.gz").write_bytes(b"archive")
    (repo / "data/images/stl10_binary.tar.gz.part").write_bytes(b"arch")
    assert "up to date" in dvc("status", "download", cwd=repo).stdout

    write_image(repo / "data/images/train/dog/new.png", BLUE)  # the user's images changed
    status = dvc("status", "download", cwd=repo).stdout
    assert "changed deps" in status and "data/images" in status
    dvc("repro", "download", cwd=repo)
    assert load_meta(repo / "data/prepared")["sizes"]["train"] == 6


@pytest.mark.slow
@pytest.mark.parametrize("committed", [False, True])
def test_a_folder_inside_the_repo_that_git_would_commit_stops_with_the_command_that_fixes_it(tmp_path, committed):
    repo = folder_repo(tmp_path, "data/images", cache="own")  # the stage must run (and stop), not be restored
    make_folder(repo / "data/images")
    if committed:  # the images were already committed to git: dvc add needs them out of git's index first
        git("add", "data/images", cwd=repo)
        git("commit", "-q", "-m", "images in git", cwd=repo)
    proc = dvc("repro", "download", cwd=repo, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in out
    line = next(line for line in out.splitlines() if "data.root (data/images)" in line)
    fix = re.search(r"run `([^`]+)`", line).group(1)
    assert fix.startswith("git rm -r -q --cached data/images && " if committed else "dvc add data/images && ")
    assert not (repo / "data/prepared").exists() and "reading" not in out  # stopped before any work

    run(["bash", "-c", fix], repo)  # exactly what the message says, then the stage runs
    git("commit", "-q", "-m", "images tracked by dvc", cwd=repo)
    assert (repo / "data/images.dvc").exists()
    assert git("status", "--porcelain", "--untracked-files=all", "data/images", cwd=repo).stdout == ""
    dvc("repro", "download", cwd=repo)
    assert load_meta(repo / "data/prepared")["classes"] == ["cat", "dog"]


@pytest.mark.slow
def test_a_folder_outside_the_repo_is_an_external_dependency_of_the_download_stage(tmp_path):
    photos = make_folder(tmp_path / "datasets" / "photos", unlabeled=False)
    repo = folder_repo(tmp_path, photos.resolve())
    dvc("repro", "download", cwd=repo)
    assert load_meta(repo / "data/prepared")["sizes"] == {"unlabeled": 0, "train": 5, "test": 2}
    assert "up to date" in dvc("status", "download", cwd=repo).stdout

    write_image(photos / "train/cat/a.png", GREEN)  # an image edited in place, outside the repository
    status = dvc("status", "download", cwd=repo).stdout
    assert "changed deps" in status and str(photos.resolve()) in status
    dvc("repro", "download", cwd=repo)
    first = load_split(repo / "data/prepared", "train").images[0]
    assert np.abs(first.reshape(-1, 3).mean(axis=0) - np.array(GREEN)).max() < 6
