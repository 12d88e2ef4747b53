"""Writing files so that a reader never sees half of one, and the same content gives the same bytes.

No torch at import time: the report and the study use these without loading the training runtime.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .errors import DiskFull, out_of_space


def atomic_write(path: str | Path, write) -> Path:
    """Call write(tmp_path), then rename over `path`: a reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except Exception as e:
        if out_of_space(e):  # torch reports it as "unexpected pos 704 vs 598", the OSError only in the chain
            raise DiskFull(
                f"no space left on device while writing {path} (it was left as it was): free some "
                f"space, then `dvc repro` resumes from the last good state"
            ) from None
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def save_torch(obj, path: str | Path) -> Path:
    """torch.save through an open file: given a path, torch names the archive's root folder after the
    (random) temporary file, so the same weights would get new bytes, and a new DVC hash, every time."""
    import torch

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    return atomic_write(path, write)


def save_json(obj, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2) + "\n"))


def save_predictions(path: str | Path, predictions: dict, labels) -> Path:
    """A readout stage's predicted class of every test image, one int16 array per readout, and the labels, in
    one .npz: what the report resamples test images from, and the accuracy it reported, recomputable."""
    import numpy as np

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(
                f, labels=np.asarray(labels, np.int16), **{k: np.asarray(v, np.int16) for k, v in predictions.items()}
            )

    return atomic_write(path, write)
