"""data.source: folder -> the prepared splits: the user's images laid out as train/<class>/..., test/<class>/...
and optionally unlabeled/..., decoded by Pillow, scaled and centre-cropped to data.image_size."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..plumbing.config import DataConfig
from ..plumbing.progress import console, progress
from .prepared import SPLITS, PreparedWriter, SourceError

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
        raise SourceError(
            f"{stray[0]} is not inside a class folder: {split_dir} must hold one folder per "
            f"class ({FOLDER_LAYOUT}); move it into its class folder or remove it"
        )
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
        raise SourceError(
            f"{root / 'train'} has no class folders: it must hold one folder per class, "
            f"e.g. {root / 'train' / 'cat'}/img001.jpg"
        )
    unknown = [c for c in _class_folders(root / "test") if c not in classes]
    if unknown:
        raise SourceError(
            f"test class {unknown[0]!r} ({root / 'test' / unknown[0]}) has no folder in "
            f"{root / 'train'}: every test class must also be a train class (train classes: "
            f"{', '.join(classes)})"
        )
    layout = {"classes": classes}
    for split in ("train", "test"):
        layout[split] = _labeled_files(root / split, classes)
    empty = [c for c in classes if c not in {classes[i] for i in set(layout["train"][1])}]
    if empty:
        raise SourceError(f"{root / 'train' / empty[0]} holds no files: every class needs train images")
    if not layout["test"][0]:
        raise SourceError(f"{root / 'test'} holds no images: the probe and fine-tuning need a test split")
    unlabeled = root / "unlabeled"
    layout["unlabeled"] = (_files(unlabeled) if unlabeled.is_dir() else [], None)  # absent: an empty split
    if unlabeled.is_dir() and not layout["unlabeled"][0]:
        raise SourceError(
            f"{unlabeled} holds no images: add some, or remove it (data.pretrain_splits then "
            f"finds only the train images)"
        )
    return layout


def load_image(path: Path, size: int) -> np.ndarray:
    """Any image Pillow reads -> (size, size, 3) uint8: upright (EXIF), RGB, shorter side scaled to
    `size` and the centre cropped square (no distortion of the aspect ratio)."""
    with Image.open(path) as img:
        img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale when the file is much larger
        img = ImageOps.exif_transpose(img).convert("RGB")
        return np.asarray(ImageOps.fit(img, (size, size), Image.Resampling.BICUBIC))


def _write_folder_split(
    writer, split: str, files: list[Path], labels: list[int] | None, size: int, skip_bad: bool, bar, chunk: int = 256
):
    """Decode `files` into `split` (none: an empty split); returns the kept labels and the skipped files."""
    kept_labels, skipped, buffer = [], [], []
    task = bar.add_task(f"reading {split} images", total=len(files)) if files else None
    with writer.images(split, len(files), size) as sink:
        for i, path in enumerate(files):
            try:
                buffer.append(load_image(path, size))
            except _UNREADABLE as e:
                if not skip_bad:
                    raise SourceError(
                        f"{path} is not a readable image ({type(e).__name__}: {e}). Fix or remove "
                        f"it, or set data.skip_bad_files: true to skip unreadable files "
                        f"(they are counted and reported)"
                    ) from None
                skipped.append(path)
            else:
                if labels is not None:
                    kept_labels.append(labels[i])
            if len(buffer) == chunk or (i == len(files) - 1 and buffer):
                sink.write(np.stack(buffer))
                buffer.clear()
            bar.advance(task)
    return np.asarray(kept_labels, dtype=np.int64), skipped


def prepare_folder(cfg: DataConfig, out: str | Path, val_fraction: float | None = None) -> Path:
    """data.source: folder -> the prepared splits; class names are the train folder names, sorted."""
    root = Path(cfg.root)
    if root.is_dir():
        check_kept_out_of_git(root)
    layout = folder_layout(root)
    skipped: list[Path] = []
    with PreparedWriter(out, val_fraction) as writer, progress() as bar:
        for split in SPLITS:
            files, labels = layout[split]
            kept, bad = _write_folder_split(writer, split, files, labels, cfg.image_size, cfg.skip_bad_files, bar)
            if labels is not None:
                writer.labels(split, kept)
            if files and writer.sizes[split] == 0:
                raise SourceError(f"{root / split}: no readable image, all were skipped")
            skipped += bad
        if skipped:
            console.print(
                f"[yellow]skipped {len(skipped)} unreadable file(s)[/] (data.skip_bad_files: true): "
                + ", ".join(str(p) for p in skipped[:5])
                + (", ..." if len(skipped) > 5 else ""),
                highlight=False,
            )
        return writer.commit(
            {
                "source": "folder",
                "image_size": cfg.image_size,
                "classes": layout["classes"],
                "root": str(root),
                "skipped": [str(p.relative_to(root)) for p in skipped],
            }
        )


# --------------------------------------------------------------------------- keeping the images out of git


def _git(*args: str) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True)
    except FileNotFoundError:  # no git on this machine: nothing to protect
        return None


def check_kept_out_of_git(root: Path) -> None:
    """A data.root inside this git repository must be git-ignored or DVC-tracked (`<root>.dvc`); otherwise
    the next `git add -A` commits the images. Stops before any work, with the command that fixes it."""
    top = _git("rev-parse", "--show-toplevel")
    if top is None or top.returncode != 0:
        return  # not a git repository (e.g. dvc init --no-scm)
    top, inside = Path(top.stdout.strip()).resolve(), root.resolve()
    if inside == top or not inside.is_relative_to(top) or inside.with_name(inside.name + ".dvc").exists():
        return

    def ignored(path: Path) -> bool:
        return _git("check-ignore", "-q", str(path)).returncode == 0

    splits = [root / s for s in SPLITS if (root / s).is_dir()]
    if ignored(root) or (splits and all(ignored(s) for s in splits)):
        return  # e.g. data/raw: its README is in git, everything else ignored
    q = shlex.quote
    fix = f"dvc add {q(str(root))} && git add {q(f'{root}.dvc')} {q(str(root.parent / '.gitignore'))}"
    if _git("ls-files", "--", str(root)).stdout.strip():  # already committed: dvc add refuses git's files
        fix = f"git rm -r -q --cached {q(str(root))} && {fix}"
    raise SourceError(
        f"data.root ({root}) is inside the git repository but neither git-ignored nor tracked by "
        f"DVC, so git would commit the images: run `{fix}` (then commit), or git-ignore it"
    )
