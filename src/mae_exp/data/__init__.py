"""Datasets: each source (shapes, stl10, folder) writes the prepared on-disk format of `prepared`, which
every later stage reads. Imports run one way: prepared <- shapes, stl10, folder <- this package."""

from __future__ import annotations

from pathlib import Path

from ..config import DataConfig
from .folder import prepare_folder
from .prepared import (SPLITS, ImageRows, PreparedWriter, SourceError, Split, labeled, load_meta, load_split,
                       pretrain_images, pretraining_set)
from .shapes import SHAPE_CLASSES, generate_shapes, render_shapes
from .stl10 import prepare_stl10

__all__ = ["SHAPE_CLASSES", "SPLITS", "ImageRows", "PreparedWriter", "SourceError", "Split", "labeled",
           "load_meta", "load_split", "prepare", "pretrain_images", "pretraining_set", "render_shapes"]


def prepare(cfg: DataConfig, seed: int, out: str | Path) -> Path:
    """Build the prepared dataset for `cfg.source` at `out`."""
    if cfg.source == "shapes":
        return generate_shapes(cfg, seed, out)
    if cfg.source == "stl10":
        return prepare_stl10(cfg, out)
    if cfg.source == "folder":
        return prepare_folder(cfg, out)
    raise NotImplementedError(f"data.source {cfg.source!r} has no preparation")
