"""The download stage's entry: build the prepared dataset from the source that data.source names."""

from __future__ import annotations

from pathlib import Path

from ..plumbing.config import DataConfig


def prepare(cfg: DataConfig, seed: int, out: str | Path) -> Path:
    """Build the prepared dataset for `cfg.source` at `out`; a train split that leaves no validation image
    (data.val_fraction) is refused before anything is written there, not after the pre-training."""
    if cfg.source != "shapes" and Path(cfg.root).exists() and not Path(cfg.root).is_dir():
        raise ValueError(
            f"data.root ({cfg.root}) is a file, but data.source: {cfg.source} reads a directory: "
            f"point data.root at a directory"
        )
    # each source imported when named: the archive readers bring torchvision (2 s of start-up) that shapes
    # and folder datasets do not need
    if cfg.source == "shapes":
        from .shapes import generate_shapes

        return generate_shapes(cfg, seed, out, val_fraction=cfg.val_fraction)
    if cfg.source == "stl10":
        from .stl10 import prepare_stl10

        return prepare_stl10(cfg, out, val_fraction=cfg.val_fraction)
    if cfg.source == "cifar10":
        from .cifar10 import prepare_cifar10

        return prepare_cifar10(cfg, out, val_fraction=cfg.val_fraction)
    if cfg.source == "folder":
        from .folder import prepare_folder

        return prepare_folder(cfg, out, val_fraction=cfg.val_fraction)
    raise NotImplementedError(f"data.source {cfg.source!r} has no preparation")
