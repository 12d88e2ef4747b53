"""Checkpoints that know when they are not what was written, and the one place that reads them (torch.load).

Every checkpoint carries a digest of its own content (`sha256`: every tensor's bytes, dtype and shape,
and every plain value), computed when it is written and checked when it is read. A byte flipped on disk,
in DVC's cache or on a remote, or a truncated file, then stops a stage with one line naming the file and
the command that restores it, instead of loading silently (torch checks no checksum of its own).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from .model import MaskedAutoencoderViT, ViTEncoder
from .plumbing.config import ModelConfig, Params
from .plumbing.files import save_torch

DIGEST = "sha256"  # the key under which a checkpoint stores the digest of everything else in it


class CorruptCheckpoint(ValueError):
    """A checkpoint that cannot be read or does not match its digest (ValueError: a stage reports it in one line)."""


def content_digest(obj) -> str:
    """sha256 of a checkpoint's content (not of its file's bytes: see hf.weights_digest for that)."""
    h = hashlib.sha256()

    def feed(x) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(x, dict):
            h.update(f"D{len(x)}".encode())
            for k, v in x.items():  # insertion order: a state_dict's order is part of what was saved
                feed(k)
                feed(v)
        elif isinstance(x, (list, tuple)):
            h.update(f"L{len(x)}".encode())
            for v in x:
                feed(v)
        else:
            h.update(f"V{type(x).__name__}:{x!r}".encode())

    feed(obj)
    return h.hexdigest()


def _holds_tensor(x) -> bool:
    if isinstance(x, torch.Tensor):
        return True
    if isinstance(x, dict):
        return any(_holds_tensor(v) for v in x.values())
    if isinstance(x, (list, tuple)):
        return any(_holds_tensor(v) for v in x)
    return False


def canonical(obj: dict) -> dict:
    """`obj` with its values that hold no tensor (history rows, config) passed through one JSON round trip.
    Pickle writes a string once and refers back to it when the same object recurs, so rows restored from a
    resumable state (their own key strings) next to rows made since (the code's) gave other bytes than an
    uninterrupted run's; after the round trip the same content is the same objects, whatever led to it."""
    plain = json.loads(json.dumps({k: v for k, v in obj.items() if not _holds_tensor(v)}))
    return {k: v if _holds_tensor(v) else plain[k] for k, v in obj.items()}  # the order kept


def save_checkpoint(obj: dict, path: str | Path) -> Path:
    """Write `obj` and its digest atomically, with the same bytes for the same content (files.save_torch)."""
    obj = canonical(obj)
    return save_torch({**obj, DIGEST: content_digest(obj)}, path)


Fix = str | Callable[[], str]  # what restores a file; a callable is asked only once the file failed


def _said(fix: Fix) -> str:
    return fix() if callable(fix) else fix


def load_torch(path: str | Path, fix: Fix) -> dict:
    """A torch file's content, unchecked: ours, or another's (facebookresearch/mae's keep their argparse args)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {_said(fix)}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, emptied or scrambled: torch raises many kinds
        reason = " ".join(str(e).split())[:120] or type(e).__name__
        raise CorruptCheckpoint(f"{path} cannot be read ({reason}): {_said(fix)}") from None


def is_ours(saved) -> bool:
    """Written by save_checkpoint (a pipeline model, an encoder or a resumable state)."""
    return isinstance(saved, dict) and DIGEST in saved


def verified(saved, path: str | Path, fix: Fix) -> dict:
    """`saved` (load_torch's) without its digest, once the digest matches the content."""
    if not is_ours(saved):
        raise CorruptCheckpoint(f"{path} carries no digest (not written by this project's code): {_said(fix)}")
    saved = dict(saved)
    recorded = saved.pop(DIGEST)
    if content_digest(saved) != recorded:
        raise CorruptCheckpoint(
            f"{path} is corrupt: its content does not match the digest written with it: {_said(fix)}"
        )
    return saved


def read_checkpoint(path: str | Path, fix: Fix) -> dict:
    """The content of a checkpoint written by save_checkpoint, its digest checked; `fix` says what restores it
    (a callable: asked only when the file fails)."""
    return verified(load_torch(path, fix), path, fix)


def _file_md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def cached_copy(path: str | Path) -> Path | None:
    """The object in DVC's cache that dvc.lock records for `path` (None: no record), through the `dvc` CLI
    and DVC's layout `<cache>/files/md5/<2 hex>/<30 hex>` (its name is its md5)."""
    path, lock = Path(os.path.relpath(path)), Path("dvc.lock")
    if not lock.is_file():
        return None
    outs = [o for s in (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).values() for o in s.get("outs", [])]
    recorded = next((o.get("md5") for o in outs if Path(o["path"]) == path), None)
    dvc = Path(sys.executable).with_name("dvc")
    try:
        cache = subprocess.run(
            [str(dvc) if dvc.exists() else "dvc", "cache", "dir"], capture_output=True, text=True, timeout=60
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        cache = ""
    if not recorded or not cache:
        return None
    return Path(os.path.relpath(Path(cache) / "files" / "md5" / recorded[:2] / recorded[2:]))


def restore_hint(path: str | Path) -> str:
    """How to get a pipeline checkpoint back: models/<name>/... is written by init_random, or by pretrain@<name>
    (needs.pt by recipe_needs@<name>).
    Asked once the file failed: the commands depend on what DVC's cache holds for it."""
    path = Path(path)
    name = path.parent.name
    stage = "init_random" if name == "random" else f"{'recipe_needs' if path.name == 'needs.pt' else 'pretrain'}@{name}"
    repro = f"`dvc repro --force {stage}` writes it again"
    cached = cached_copy(path)
    if cached is not None and not cached.is_file():
        return f"`dvc pull {path.as_posix()}` fetches it from the DVC remote, {repro}"
    if cached is not None and _file_md5(cached) != cached.parent.name + cached.name:  # a pull without `verify`
        return (
            f"DVC's cached copy is corrupt too: `rm -f {cached.as_posix()}` drops it, then {repro} "
            f"(or `dvc pull {path.as_posix()}` from a remote that holds a good copy)"
        )
    return f"`dvc checkout --force {path.as_posix()}` restores the copy DVC cached, {repro}"


def _read_model(path: str | Path, p: Params, state_key: str, saved: dict | None = None) -> tuple[dict, ModelConfig]:
    """A pipeline checkpoint (read now, or `saved` as load_torch read it), checked against its digest and
    against the model params.yaml asks for."""
    fix = lambda: restore_hint(path)  # noqa: E731 (asked only once the file failed: it may ask DVC)
    saved = verified(load_torch(path, fix) if saved is None else saved, path, fix)
    if state_key not in saved:
        raise CorruptCheckpoint(f"{path} holds no {state_key} (keys: {', '.join(saved)}): {restore_hint(path)}")
    cfg = ModelConfig(**saved["model"])
    if cfg != p.model or saved["input_size"] != p.data.input_size:
        raise ValueError(
            f"{path} was trained with model {cfg} at {saved['input_size']} px, but params.yaml "
            f"asks for {p.model} at {p.data.input_size} px: run `dvc repro` to retrain it"
        )
    return saved, cfg


def load_encoder(path: str | Path, p: Params, drop_path: float = 0.0, saved: dict | None = None) -> ViTEncoder:
    """An encoder saved by pretrain (or init_random), for the probe and fine-tuning; `saved`: the file's
    content as load_torch read it (not read again)."""
    saved, cfg = _read_model(path, p, "encoder_state", saved)
    encoder = ViTEncoder(cfg, saved["input_size"], drop_path=drop_path)
    encoder.load_state_dict(saved["encoder_state"])
    return encoder


def load_mae(path: str | Path, p: Params) -> MaskedAutoencoderViT:
    """A whole masked autoencoder (encoder + decoder) saved by pretrain, in eval mode, for visualize."""
    saved, cfg = _read_model(path, p, "model_state")
    model = MaskedAutoencoderViT(cfg, saved["input_size"])
    model.load_state_dict(saved["model_state"])
    return model.eval()
