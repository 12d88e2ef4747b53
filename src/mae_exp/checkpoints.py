"""Checkpoints that know when they are not what was written, and the one place that reads them (torch.load).

Every checkpoint carries a digest of its own content (`sha256`: every tensor's bytes, dtype and shape,
and every plain value), computed when it is written and checked when it is read. A byte flipped on disk,
in DVC's cache or on a remote, or a truncated file, then stops a stage with one line naming the file and
the command that restores it, instead of loading silently (torch checks no checksum of its own).
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import torch

from .config import ModelConfig, Params
from .files import save_torch
from .model import MaskedAutoencoderViT, ViTEncoder

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


def save_checkpoint(obj: dict, path: str | Path) -> Path:
    """Write `obj` and its digest atomically, with the same bytes for the same content (files.save_torch)."""
    return save_torch({**obj, DIGEST: content_digest(obj)}, path)


def load_torch(path: str | Path, fix: str) -> dict:
    """A torch file's content, unchecked: ours, or another's (facebookresearch/mae's keep their argparse args)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {fix}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, emptied or scrambled: torch raises many kinds
        reason = " ".join(str(e).split())[:120] or type(e).__name__
        raise CorruptCheckpoint(f"{path} cannot be read ({reason}): {fix}") from None


def is_ours(saved) -> bool:
    """Written by save_checkpoint (a pipeline model, an encoder or a resumable state)."""
    return isinstance(saved, dict) and DIGEST in saved


def verified(saved, path: str | Path, fix: str) -> dict:
    """`saved` (load_torch's) without its digest, once the digest matches the content."""
    if not is_ours(saved):
        raise CorruptCheckpoint(f"{path} carries no digest (not written by this project's code): {fix}")
    saved = dict(saved)
    recorded = saved.pop(DIGEST)
    if content_digest(saved) != recorded:
        raise CorruptCheckpoint(f"{path} is corrupt: its content does not match the digest written with it: {fix}")
    return saved


def read_checkpoint(path: str | Path, fix: str) -> dict:
    """The content of a checkpoint written by save_checkpoint, its digest checked; `fix` says what restores it."""
    return verified(load_torch(path, fix), path, fix)


def restore_hint(path: str | Path) -> str:
    """How to get a pipeline checkpoint back: models/<name>/... is written by init_random or pretrain_<name>."""
    path = Path(path)
    stage = "init_random" if path.parent.name == "random" else f"pretrain_{path.parent.name}"
    return (f"`dvc checkout --force {path.as_posix()}` restores the copy DVC cached, "
            f"`dvc repro --force {stage}` writes it again")


def _read_model(path: str | Path, p: Params, state_key: str, saved: dict | None = None) -> tuple[dict, ModelConfig]:
    """A pipeline checkpoint (read now, or `saved` as load_torch read it), checked against its digest and
    against the model params.yaml asks for."""
    saved = verified(load_torch(path, restore_hint(path)) if saved is None else saved, path, restore_hint(path))
    if state_key not in saved:
        raise CorruptCheckpoint(f"{path} holds no {state_key} (keys: {', '.join(saved)}): {restore_hint(path)}")
    cfg = ModelConfig(**saved["model"])
    if cfg != p.model or saved["input_size"] != p.data.input_size:
        raise ValueError(f"{path} was trained with model {cfg} at {saved['input_size']} px, but params.yaml "
                         f"asks for {p.model} at {p.data.input_size} px: run `dvc repro` to retrain it")
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
