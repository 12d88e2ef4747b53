"""Peak resident memory of preparing a full-size STL-10 archive (not part of the test suite).

Builds an archive in the real STL-10 binary layout and real split sizes (5,000 train, 8,000 test,
100,000 unlabeled 96x96x3 images: 3.3 GB of pixels) in a temporary directory, then runs the download
stage's preparation (MD5 check of the archive in data.root, streaming extraction) in a child process and
prints that process's peak resident set size next to the data sizes. A second child that only imports
the same modules gives the floor (torch, numpy) that any stage pays.

    PYTHONPATH=src python benchmarks/stl10_prepare_memory.py [--unlabeled 100000] [--dir /tmp] [--keep]

Needs about 7 GB of free disk (the archive, incompressible here, plus the prepared arrays).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
IMAGE_BYTES = 3 * 96 * 96
CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


class RandomImages:
    """`n` random images in the STL-10 layout, generated as tarfile reads them (never all in memory)."""

    def __init__(self, n: int, seed: int):
        self.left = n * IMAGE_BYTES
        self.rng = np.random.default_rng(seed)

    def read(self, size=-1):
        size = self.left if size is None or size < 0 else min(size, self.left)
        self.left -= size
        return self.rng.integers(0, 256, size, dtype=np.uint8).tobytes()


def build_archive(path: Path, sizes: dict[str, int]) -> None:
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:

        def add(name, data=None, n=None, seed=0):
            info = tarfile.TarInfo(f"stl10_binary/{name}")
            info.size = len(data) if data is not None else n * IMAGE_BYTES
            tar.addfile(info, io.BytesIO(data) if data is not None else RandomImages(n, seed))

        add("class_names.txt", ("\n".join(CLASSES) + "\n").encode())
        for seed, split in enumerate(("train", "test", "unlabeled")):
            add(f"{split}_X.bin", n=sizes[split], seed=seed + 1)
            if split != "unlabeled":
                add(f"{split}_y.bin", rng.integers(1, 11, sizes[split], dtype=np.uint8).tobytes())


CHILD = """
import json, resource, sys, time
from mae_exp.plumbing.config import load_params
import dataclasses
from mae_exp.data.stl10 import prepare_stl10
root, out, md5, work = sys.argv[1:5]
start = time.time()
if work == "prepare":
    cfg = dataclasses.replace(load_params(sys.argv[5]).data, source="stl10", root=root, image_size=96)
    prepare_stl10(cfg, out, md5=md5)
print(json.dumps({"peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "seconds": round(time.time() - start, 1)}))
"""


def child(work: str, root: Path, out: Path, md5: str) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(root), str(out), md5, work, str(REPO / "params.yaml")],
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        sys.exit(f"the {work} child failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--unlabeled", type=int, default=100_000)
    parser.add_argument("--train", type=int, default=5_000)
    parser.add_argument("--test", type=int, default=8_000)
    parser.add_argument("--dir", default=None, help="where the temporary directory goes (default: the system's)")
    parser.add_argument("--keep", action="store_true", help="leave the archive and prepared data in place")
    args = parser.parse_args()
    sizes = {"train": args.train, "test": args.test, "unlabeled": args.unlabeled}

    work = Path(tempfile.mkdtemp(prefix="stl10-memory-", dir=args.dir))
    try:
        root, out = work / "raw", work / "prepared"
        root.mkdir()
        archive = root / "stl10_binary.tar.gz"
        t = time.time()
        build_archive(archive, sizes)
        print(f"built {archive} ({archive.stat().st_size / 1e9:.2f} GB) in {time.time() - t:.0f} s", flush=True)
        from torchvision.datasets.utils import calculate_md5

        md5 = calculate_md5(archive)

        floor = child("import", root, out, md5)
        run = child("prepare", root, out, md5)
        pixels = sum(sizes.values()) * IMAGE_BYTES
        prepared = sum(p.stat().st_size for p in out.iterdir())
        print(
            json.dumps(
                {
                    "images": sizes,
                    "archive_gb": round(archive.stat().st_size / 1e9, 2),
                    "pixels_gb": round(pixels / 1e9, 2),
                    "prepared_gb": round(prepared / 1e9, 2),
                    "prepare_peak_rss_mib": round(run["peak_rss_kib"] / 1024),
                    "prepare_seconds": run["seconds"],
                    "import_only_peak_rss_mib": round(floor["peak_rss_kib"] / 1024),
                },
                indent=2,
            )
        )
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
