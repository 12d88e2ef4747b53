"""Write a complete archive in STL-10's own binary format, with learnable content, into a data root.

`<root>/stl10_binary.tar.gz` holds `stl10_binary/` with unlabeled_X.bin, train_X.bin, train_y.bin,
test_X.bin, test_y.bin, class_names.txt and fold_indices.txt, laid out as the real archive: each image
3 planes of 96x96 stored column-major (file axes channel, x, y), labels 1-based uint8, 10 classes. The
images are the embedded shapes (`render_shapes` at 96 px, balanced classes), so a model can learn from
them. Full size is STL-10's (100,000 unlabeled, 5,000 train, 8,000 test); flags make it smaller. Images
are rendered and compressed chunk by chunk (gzip level 1 unless --level), never all in memory, into
`stl10_binary.tar.gz.partial`, renamed when complete.

Speed: on a CPU the renderer takes tens of milliseconds an image, most of an hour for the full size on
two cores; with --device cuda it renders on the GPU in chunks of CUDA_CHUNK, and the gzip stream is then
what takes the time (--level 0 stores the images uncompressed inside the gzip
stream: shapes images shrink by only about a tenth at level 1). The CUDA random stream is not the CPU's:
the same seed gives other (equally distributed) images on a GPU than on a CPU.

Its MD5 is not the real archive's, so the download stage needs the explicit switch:

    PYTHONPATH=src python benchmarks/make_stl10.py --root data/raw [--unlabeled 100000 --train 5000 --test 8000]
    PYTHONPATH=src python benchmarks/make_stl10.py --root data/raw --device cuda --level 0   # a GPU, full size
    # params.yaml: data.source: stl10, data.root: data/raw, data.verify_md5: false
"""

from __future__ import annotations

import argparse
import io
import tarfile
import time
from pathlib import Path

import numpy as np
import torch

from mae_exp.data.shapes import SHAPE_CLASSES, render_shapes

SIDE = 96
IMAGE_BYTES = 3 * SIDE * SIDE
FULL = {"unlabeled": 100_000, "train": 5_000, "test": 8_000}
CHUNK = 256  # images rendered at a time on a CPU: about 0.5 GB of working memory
CUDA_CHUNK = 1024  # on a GPU: about 10 GB of its memory
FOLDS = 10  # fold_indices.txt: 10 lines of train indices (0-based), as in the real archive


def split_labels_and_images(split: str, n: int, seed: int, device: str = "cpu"):
    """(labels 0-based, an iterator of (k, 96, 96, 3) uint8 chunks in row order) for one split: balanced
    classes in a random order; each chunk (CHUNK images, CUDA_CHUNK on a GPU) rendered from its own
    generator on `device`, seeded by `seed`, the split and the chunk, so any chunk can be reproduced alone."""
    split_seed = seed * 1000 + tuple(FULL).index(split)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    labels = (torch.arange(n) % len(SHAPE_CLASSES))[order]
    chunk = CHUNK if torch.device(device).type == "cpu" else CUDA_CHUNK

    def images():
        for start in range(0, n, chunk):
            g = torch.Generator(device).manual_seed(split_seed * 100_000 + start // chunk)
            yield render_shapes(labels[start : start + chunk], SIDE, g).cpu().numpy()

    return labels.numpy(), images()


def to_stl10_records(images: np.ndarray) -> bytes:
    """(k, 96, 96, 3) rows x columns x RGB -> STL-10 records: per image 3 planes, each column-major."""
    return np.ascontiguousarray(images.transpose(0, 3, 2, 1)).tobytes()


class _Records:
    """The records of a stream of image chunks, as a file that tarfile reads piece by piece."""

    def __init__(self, chunks, on_chunk=None):
        self.chunks, self.on_chunk = chunks, on_chunk
        self.buffer, self.at = b"", 0

    def read(self, size: int) -> bytes:
        pieces = []
        while size > 0:
            if self.at == len(self.buffer):
                images = next(self.chunks, None)
                if images is None:
                    break
                self.buffer, self.at = to_stl10_records(images), 0
                if self.on_chunk:
                    self.on_chunk(len(images))
            piece = self.buffer[self.at : self.at + size]
            self.at += len(piece)
            size -= len(piece)
            pieces.append(piece)
        return b"".join(pieces)


def write_archive(
    root: str | Path, sizes: dict[str, int], seed: int = 0, on_chunk=None, device: str = "cpu", level: int = 1
) -> Path:
    """`root/stl10_binary.tar.gz` with `sizes` images per split, rendered on `device`, gzip `level`; returns
    its path."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    dest = root / "stl10_binary.tar.gz"
    partial = dest.with_name(dest.name + ".partial")
    rng = np.random.default_rng(seed)
    folds = [np.sort(rng.choice(sizes["train"], max(1, sizes["train"] // 5), replace=False)) for _ in range(FOLDS)]
    with tarfile.open(partial, "w:gz", compresslevel=level) as tar:
        folder = tarfile.TarInfo("stl10_binary")
        folder.type, folder.mode, folder.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
        tar.addfile(folder)

        def add(name: str, size: int, fileobj) -> None:
            info = tarfile.TarInfo(f"stl10_binary/{name}")
            info.size, info.mode, info.mtime = size, 0o644, int(time.time())
            tar.addfile(info, fileobj)

        def add_bytes(name: str, data: bytes) -> None:
            add(name, len(data), io.BytesIO(data))

        add_bytes("class_names.txt", "".join(f"{c}\n" for c in SHAPE_CLASSES).encode())
        add_bytes("fold_indices.txt", "".join(" ".join(map(str, f)) + " \n" for f in folds).encode())
        for split in ("test", "train", "unlabeled"):  # labels are known before the images are rendered
            labels, images = split_labels_and_images(split, sizes[split], seed, device)
            add(f"{split}_X.bin", sizes[split] * IMAGE_BYTES, _Records(images, on_chunk))
            if split != "unlabeled":
                add_bytes(f"{split}_y.bin", (labels + 1).astype(np.uint8).tobytes())
    partial.rename(dest)
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="data root to write stl10_binary.tar.gz into (e.g. data/raw)")
    for split, n in FULL.items():
        parser.add_argument(f"--{split}", type=int, default=n, help=f"{split} images (default {n:,})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="where to render (cuda: much faster; other images than the CPU's for the same seed)",
    )
    parser.add_argument(
        "--level",
        type=int,
        choices=range(10),
        default=1,
        metavar="0-9",
        help="gzip level (default 1; 0 stores, the fastest)",
    )
    args = parser.parse_args()
    sizes = {split: getattr(args, split) for split in FULL}
    if min(sizes.values()) < 1:
        parser.error("every split needs at least one image")
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no GPU is visible to PyTorch; use --device cpu")

    from mae_exp.plumbing.progress import progress

    start = time.time()
    with progress() as bar:
        task = bar.add_task(f"rendering STL-10-format images on {device}", total=sum(sizes.values()))
        dest = write_archive(
            args.root, sizes, args.seed, on_chunk=lambda k: bar.advance(task, k), device=device, level=args.level
        )
    print(
        f"wrote {dest} ({dest.stat().st_size / 1e9:.2f} GB; {sizes['unlabeled']:,} unlabeled, "
        f"{sizes['train']:,} train, {sizes['test']:,} test; rendered on {device}) in {time.time() - start:.0f} s. "
        f"Prepare it with data.source: stl10, data.root: {args.root}, data.verify_md5: false"
    )


if __name__ == "__main__":
    main()
