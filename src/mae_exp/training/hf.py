"""Hugging Face interop: this project's MAE as a `transformers` ViTMAE folder, and weights back in.

Export writes `config.json` + `model.safetensors` that `ViTMAEForPreTraining.from_pretrained` (the whole
MAE) and `ViTMAEModel.from_pretrained` (the encoder) load; writing needs only `safetensors`. Tensor names
are the hub's (transformers 4.x, e.g. `vit.encoder.layer.0.attention.attention.query.weight`), which
transformers 5 renames on load; import reads both spellings. Import also reads facebookresearch/mae
checkpoints (`{"model": state_dict}`, fused `qkv`) and this project's own checkpoint.pt / encoder.pt.

The two things that make the weights mean the same there as here: the 2-D sin-cos position tables are
MAE's (columns first, model.sincos_2d), written out and checked on import; LayerNorm eps is 1e-6 (the
transformers default is 1e-12), written into config.json.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import torch
from torch import nn

from .. import checkpoints
from ..checkpoints import read_checkpoint, restore_hint
from ..model import MaskedAutoencoderViT, ViTEncoder, sincos_2d
from ..plumbing.config import ModelConfig
from ..plumbing.files import atomic_write, save_json
from ..plumbing.progress import console
from .augment import MEAN, STD

WEIGHTS, CONFIG = "model.safetensors", "config.json"
FIXED = ("vit.embeddings.position_embeddings", "decoder.decoder_pos_embed")  # sin-cos tables, not learned
# per block: our name -> the hub's (the fused qkv is split into three)
_BLOCK_HF = {
    "norm1": "layernorm_before",
    "norm2": "layernorm_after",
    "attn.proj": "attention.output.dense",
    "mlp.0": "intermediate.dense",
    "mlp.2": "output.dense",
}
_QKV_HF = ("attention.attention.query", "attention.attention.key", "attention.attention.value")
# transformers 5 spellings -> the hub's, applied in order to every name read from a folder: 5.x models name
# tensors `vit.layers.N.attention.q_proj`...; 5.x save_pretrained writes the hub's names, except the decoder's
# blocks, as `decoder.decoder_encoder.layer.N` (5.24; it reads them back), hence the second rule.
_HF5_TO_HUB = [
    (r"^vit\.layers\.", "vit.encoder.layer."),
    (r"^decoder\.decoder_encoder\.layer\.", "decoder.decoder_layers."),
    (r"\.attention\.q_proj\.", ".attention.attention.query."),
    (r"\.attention\.k_proj\.", ".attention.attention.key."),
    (r"\.attention\.v_proj\.", ".attention.attention.value."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.mlp\.fc1\.", ".intermediate.dense."),
    (r"\.mlp\.fc2\.", ".output.dense."),
]


class WeightsMismatch(ValueError):
    """An imported checkpoint does not fit the model params.yaml describes."""


def hf_config(cfg: ModelConfig, image_size: int, mask_ratio: float) -> dict:
    """transformers' ViTMAEConfig for these sizes, as config.json holds it."""
    return {
        "architectures": ["ViTMAEForPreTraining"],
        "model_type": "vit_mae",
        "image_size": image_size,
        "patch_size": cfg.patch_size,
        "num_channels": 3,
        "hidden_size": cfg.encoder_dim,
        "num_hidden_layers": cfg.encoder_depth,
        "num_attention_heads": cfg.encoder_heads,
        "intermediate_size": int(cfg.encoder_dim * cfg.mlp_ratio),
        "decoder_hidden_size": cfg.decoder_dim,
        "decoder_num_hidden_layers": cfg.decoder_depth,
        "decoder_num_attention_heads": cfg.decoder_heads,
        "decoder_intermediate_size": int(cfg.decoder_dim * cfg.mlp_ratio),
        "hidden_act": "gelu",
        "qkv_bias": True,
        "layer_norm_eps": 1e-6,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "mask_ratio": mask_ratio,
        "norm_pix_loss": cfg.norm_pix_loss,
    }


def preprocessor_config(image_size: int) -> dict:
    """What the model was fed: images resized to image_size, scaled to [0, 1], ImageNet-normalised."""
    return {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": True,
        "size": {"height": image_size, "width": image_size},
        "resample": 2,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": MEAN.tolist(),
        "image_std": STD.tolist(),
    }


def _hub_names(cfg: ModelConfig) -> dict[str, str | tuple[str, ...]]:
    """Our MaskedAutoencoderViT's state-dict names -> the hub's (a tuple: q, k, v of our fused qkv)."""
    names: dict[str, str | tuple[str, ...]] = {
        "encoder.cls_token": "vit.embeddings.cls_token",
        "encoder.patch_embed.weight": "vit.embeddings.patch_embeddings.projection.weight",
        "encoder.patch_embed.bias": "vit.embeddings.patch_embeddings.projection.bias",
    }

    def blocks(ours: str, hub: str, depth: int) -> None:
        for i in range(depth):
            for kind in ("weight", "bias"):
                names[f"{ours}.{i}.attn.qkv.{kind}"] = tuple(f"{hub}.{i}.{q}.{kind}" for q in _QKV_HF)
                for a, b in _BLOCK_HF.items():
                    names[f"{ours}.{i}.{a}.{kind}"] = f"{hub}.{i}.{b}.{kind}"

    blocks("encoder.blocks", "vit.encoder.layer", cfg.encoder_depth)
    names |= {f"encoder.norm.{k}": f"vit.layernorm.{k}" for k in ("weight", "bias")}
    names["mask_token"] = "decoder.mask_token"
    names |= {f"decoder_embed.{k}": f"decoder.decoder_embed.{k}" for k in ("weight", "bias")}
    blocks("decoder_blocks", "decoder.decoder_layers", cfg.decoder_depth)
    names |= {f"decoder_{m}.{k}": f"decoder.decoder_{m}.{k}" for m in ("norm", "pred") for k in ("weight", "bias")}
    return names


def _mae_name(ours: str) -> str:
    """Our name -> facebookresearch/mae's: the same modules but for the encoder prefix and the MLP's."""
    name = re.sub(r"\.mlp\.0\.", ".mlp.fc1.", re.sub(r"\.mlp\.2\.", ".mlp.fc2.", ours))
    return name.replace("encoder.patch_embed.", "patch_embed.proj.").removeprefix("encoder.")


# --------------------------------------------------------------------------- export


def to_hf_state(state: dict[str, torch.Tensor], cfg: ModelConfig, image_size: int) -> dict[str, torch.Tensor]:
    """Our MaskedAutoencoderViT state dict -> the hub's names, position tables included."""
    out = {}
    for ours, hub in _hub_names(cfg).items():
        t = state[ours]
        for name, part in zip(hub, t.chunk(3)) if isinstance(hub, tuple) else [(hub, t)]:
            out[name] = part.detach().float().clone().contiguous()  # own storage: safetensors refuses shared
    grid = image_size // cfg.patch_size
    out[FIXED[0]], out[FIXED[1]] = sincos_2d(cfg.encoder_dim, grid)[None], sincos_2d(cfg.decoder_dim, grid)[None]
    return out


def export(checkpoint: str | Path, out_dir: str | Path, mask_ratio: float) -> Path:
    """A pre-training checkpoint.pt -> out_dir/{config.json, model.safetensors, preprocessor_config.json}."""
    from safetensors.torch import save_file

    saved = read_checkpoint(checkpoint, lambda: restore_hint(checkpoint))  # its digest checked
    cfg, size = ModelConfig(**saved["model"]), saved["input_size"]
    out = Path(out_dir)
    tensors = to_hf_state(saved["model_state"], cfg, size)
    atomic_write(out / WEIGHTS, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    save_json(hf_config(cfg, size, mask_ratio), out / CONFIG)
    save_json(preprocessor_config(size), out / "preprocessor_config.json")
    return out


# --------------------------------------------------------------------------- import

TABLES = ("encoder.pos_embed", "decoder_pos_embed")  # our fixed position buffers, checked on import
READABLE = "expected a transformers ViTMAE folder, a facebookresearch/mae checkpoint or this project's checkpoint.pt"


def read_weights(path: str | Path, cfg: ModelConfig) -> tuple[dict[str, torch.Tensor], str]:
    """A transformers folder, a facebookresearch/mae checkpoint or one of ours -> (our names -> tensors, its
    format). Only the tensors present (an encoder-only file has no decoder), position tables as TABLES."""
    path = Path(path)
    if path.is_dir():
        return _from_hub(_read_folder(path), cfg, path), "transformers"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file or folder ({READABLE})")
    return weights_in(checkpoints.load_torch(path, READABLE), path, cfg)


def weights_in(saved, path: Path, cfg: ModelConfig) -> tuple[dict[str, torch.Tensor], str]:
    """read_weights of a file's content (checkpoints.load_torch's), its digest checked if it is ours."""
    if checkpoints.is_ours(saved):
        saved = checkpoints.verified(saved, path, lambda: restore_hint(path))
    if "model_state" in saved:
        return dict(saved["model_state"]), "this project's"
    if "encoder_state" in saved:
        return {f"encoder.{k}": v for k, v in saved["encoder_state"].items()}, "this project's"
    if isinstance(saved.get("model"), dict):
        return _from_mae(saved["model"], cfg, path), "facebookresearch/mae"
    raise WeightsMismatch(
        f"{path}: not a checkpoint this project reads (no `model` state dict as "
        f"facebookresearch/mae saves, no `model_state` / `encoder_state`)"
    )


def hub_name(name: str) -> str:
    """A tensor name as transformers 4.x or 5.x writes it (ViTMAEForPreTraining or ViTMAEModel) -> the hub's."""
    if name.startswith(("embeddings.", "layers.", "encoder.", "layernorm.")):
        name = "vit." + name  # saved from ViTMAEModel (the encoder alone)
    for pattern, repl in _HF5_TO_HUB:
        name = re.sub(pattern, repl, name)
    return name


def _read_folder(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not (path / WEIGHTS).is_file():
        raise FileNotFoundError(
            f"{path}: no {WEIGHTS}; export one with `dvc repro export@<variant>` or `save_pretrained` in transformers"
        )
    return {hub_name(name): t for name, t in load_file(path / WEIGHTS).items()}


def _from_hub(hub: dict[str, torch.Tensor], cfg: ModelConfig, source: Path) -> dict:
    out = {ours: hub.pop(name) for ours, name in zip(TABLES, FIXED) if name in hub}
    for ours, name in _hub_names(cfg).items():
        parts = name if isinstance(name, tuple) else (name,)
        if all(p in hub for p in parts):
            out[ours] = torch.cat([hub.pop(p) for p in parts])
    _no_leftovers(hub, source)
    return out


def _from_mae(mae: dict[str, torch.Tensor], cfg: ModelConfig, source: Path) -> dict:
    mae = dict(mae)
    out = {ours: mae.pop(name) for ours, name in zip(TABLES, ("pos_embed", "decoder_pos_embed")) if name in mae}
    out |= {ours: mae.pop(_mae_name(ours)) for ours in _hub_names(cfg) if _mae_name(ours) in mae}
    _no_leftovers(mae, source)
    return out


def _no_leftovers(rest: dict, source: Path) -> None:
    if rest:
        first = next(iter(rest))
        raise WeightsMismatch(
            f"{source}: tensor {first} {tuple(rest[first].shape)} has no place in the model "
            f"params.yaml describes (model.*: a deeper model, or another architecture)"
        )


def weights_digest(path: str | Path) -> str:
    """A short hash of the bytes of the weights at `path` (a folder's model.safetensors, or the file): what keys
    resumable state (not a checkpoint's content digest, checkpoints.content_digest)."""
    path = Path(path)
    return hashlib.sha256((path / WEIGHTS if path.is_dir() else path).read_bytes()).hexdigest()[:16]


def load_any_encoder(path: str | Path, p, drop_path: float = 0.0) -> ViTEncoder:
    """Fine-tuning's start: this project's encoder.pt / checkpoint.pt (checkpoints.load_encoder: its digest and
    model checked), or the encoder of a transformers folder or a facebookresearch/mae checkpoint at params.yaml's
    sizes. The file is read once."""
    path = Path(path)
    saved = None if path.is_dir() else checkpoints.load_torch(path, READABLE)
    if checkpoints.is_ours(saved) and "encoder_state" in saved:
        return checkpoints.load_encoder(path, p, drop_path, saved)
    encoder = ViTEncoder(p.model, p.data.input_size, drop_path=drop_path)
    console.print(init_from(encoder, path, p.model, saved), highlight=False)
    return encoder


def init_from(module: nn.Module, path: str | Path, cfg: ModelConfig, saved: dict | None = None) -> str:
    """Load `path`'s weights into a MaskedAutoencoderViT or a ViTEncoder built from params.yaml, checking every
    tensor, then the position tables; the first that is missing, extra or of another shape is named. A MAE
    whose file has no decoder keeps its own. `saved`: the file's content, read already (checkpoints.load_torch).
    Returns a line saying what was loaded."""
    weights, kind = read_weights(path, cfg) if saved is None else weights_in(saved, Path(path), cfg)
    whole = isinstance(module, MaskedAutoencoderViT)
    decoder_given = any(not k.startswith("encoder.") and k not in TABLES for k in weights)
    if not whole:  # an encoder alone
        weights = {k.removeprefix("encoder."): v for k, v in weights.items() if k.startswith("encoder.")}
    tables = {k: weights.pop(k) for k in (*TABLES, "pos_embed") if k in weights}
    target = module.state_dict()
    if extra := [k for k in weights if k not in target]:
        raise WeightsMismatch(
            f"{path}: tensor {extra[0]} {tuple(weights[extra[0]].shape)} has no place in the "
            f"model params.yaml describes (model.*)"
        )
    for name, t in target.items():
        if name not in weights and (name.startswith("encoder.") or decoder_given or not whole):
            raise WeightsMismatch(
                f"{path}: no tensor for {name} {tuple(t.shape)}: the file's model is smaller "
                f"than the one params.yaml describes (model.*)"
            )
        if name in weights and weights[name].shape != t.shape:
            raise WeightsMismatch(
                f"{path}: {name} is {tuple(weights[name].shape)} there but {tuple(t.shape)} here: "
                f"set model.* in params.yaml to the file's sizes"
            )
    buffers = dict(module.named_buffers())
    for name, table in tables.items():
        ours = buffers[name]
        if table.shape != ours.shape:
            raise WeightsMismatch(
                f"{path}: position table {name} is {tuple(table.shape)} there but "
                f"{tuple(ours.shape)} here: another grid (data.input_size / model.patch_size)"
            )
        if (table.float() - ours).abs().max() > 1e-4:
            raise WeightsMismatch(
                f"{path}: position table {name} is not MAE's 2-D sin-cos table (columns first) "
                f"that this model uses: the weights were trained with other positions"
            )
    module.load_state_dict({**target, **{k: v.to(target[k].dtype) for k, v in weights.items()}})
    part = "encoder and decoder" if decoder_given and whole else "encoder" + (" (decoder kept)" if whole else "")
    return f"{part} from {kind} weights in {path}"
