"""params.yaml -> validated, typed settings.

Every stage loads the whole file through `load_params`, so a typo anywhere stops every stage with the
same message, before any work. Each section is a frozen dataclass; the loader checks unknown keys,
types and ranges and names the offending key (`pretrain.epochs`), never a Python traceback.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

VARIANTS = ("original", "improved")
ENCODERS = ("random",) + VARIANTS  # what the probe and fine-tuning evaluate
DATA_SOURCES = ("shapes", "stl10", "folder")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PRETRAIN_SPLITS = ("unlabeled", "train")  # stored splits pre-training may use; test never


class ConfigError(ValueError):
    """A parameter is missing, unknown, of the wrong type or out of range."""


@dataclass(frozen=True)
class ShapesConfig:
    unlabeled: int
    train: int
    test: int


@dataclass(frozen=True)
class DataConfig:
    source: str
    root: str  # where stl10 archives / folder datasets live
    image_size: int  # stored size of the prepared images
    input_size: int  # size fed to the model (crops are resampled to it, e.g. 96 -> 224)
    skip_bad_files: bool  # folder: skip (and count) unreadable files instead of stopping at the first
    verify_md5: bool  # stl10: check the archive's MD5; false only for a locally made archive
    pretrain_splits: tuple[str, ...]  # stored splits MAE pre-trains on (labels unused); never test
    val_fraction: float  # stratified share of the labeled train split held out as validation
    shapes: ShapesConfig


@dataclass(frozen=True)
class ModelConfig:
    patch_size: int
    encoder_dim: int
    encoder_depth: int
    encoder_heads: int
    decoder_dim: int
    decoder_depth: int
    decoder_heads: int
    mlp_ratio: float
    norm_pix_loss: bool


@dataclass(frozen=True)
class PretrainConfig:
    epochs: int
    batch_size: int
    base_lr: float  # lr = base_lr * batch_size / 256 (MAE's scaling rule)
    warmup_epochs: float
    weight_decay: float
    min_crop_scale: float
    precision: str  # auto: bf16 on CUDA, fp32 on CPU
    checkpoint_every: int  # epochs between resumable checkpoints
    threads: int  # torch CPU threads; 0 = all cores
    compile: bool  # torch.compile the transformer blocks
    processes: int  # > 1: DistributedDataParallel under torchrun; batch_size stays the global batch


@dataclass(frozen=True)
class VariantConfig:
    """One pre-training recipe. The original MAE is this with the extras switched off."""

    mask_ratio: float  # final mask ratio
    mask_ratio_start: float  # ratio at step 0; ramps linearly to mask_ratio
    curriculum_fraction: float  # fraction of training over which the ramp runs
    lambda_freq: float  # weight of the masked Laplacian L1 loss
    lambda_unif: float  # weight of the uniformity loss on pooled embeddings


@dataclass(frozen=True)
class LinearProbeConfig:
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int
    batch_size: int
    base_lr: float  # lr = base_lr * batch_size / 256
    warmup_epochs: float
    weight_decay: float
    min_crop_scale: float
    precision: str
    threads: int
    compile: bool
    processes: int  # > 1: DistributedDataParallel under torchrun; batch_size stays the global batch


@dataclass(frozen=True)
class VisualizeConfig:
    images: int  # rows in the reconstruction grid
    eval_images: int  # test images over which HF error and PSNR are averaged
    mask_ratio: float
    mask_seed: int


@dataclass(frozen=True)
class StudyConfig:
    """Seeds x ablations for `python -m mae_exp.study` (no pipeline stage reads this section)."""

    seeds: tuple[int, ...]
    # ablation name -> {"improved.<key>": value} applied on top of `improved`; {} = all improvements
    ablations: dict[str, dict[str, float]]


@dataclass(frozen=True)
class Params:
    seed: int
    data: DataConfig
    model: ModelConfig
    pretrain: PretrainConfig
    original: VariantConfig
    improved: VariantConfig
    linear_probe: LinearProbeConfig
    finetune: FinetuneConfig
    visualize: VisualizeConfig
    study: StudyConfig

    def variant(self, name: str) -> VariantConfig:
        if name not in VARIANTS:
            raise ConfigError(f"unknown variant {name!r}: expected one of {', '.join(VARIANTS)}")
        return getattr(self, name)


# --------------------------------------------------------------------------- parsing


def _build(cls, raw, where: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'params'} must be a mapping of keys to values, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(f"unknown key {key!r}; valid keys here: {', '.join(sorted(known))}")
    missing = sorted(known - set(raw))
    if missing:  # no silent defaults: params.yaml is the single source of every knob
        key = f"{where}.{missing[0]}" if where else missing[0]
        raise ConfigError(f"missing key {key!r}; see params.yaml in the repository for every key")
    values = {}
    for name in known & set(raw):
        key = f"{where}.{name}" if where else name
        values[name] = _coerce(hints[name], raw[name], key)
    return cls(**values)


def _coerce(kind, value, key: str):
    if dataclasses.is_dataclass(kind):
        return _build(kind, value if value is not None else {}, key)
    if kind == tuple[int, ...]:
        if isinstance(value, list) and value:
            return tuple(_coerce(int, v, f"{key}[{i}]") for i, v in enumerate(value))
        raise ConfigError(f"{key} must be a non-empty list of integers, got {value!r}")
    if kind == tuple[str, ...]:
        if isinstance(value, list) and value:
            return tuple(_coerce(str, v, f"{key}[{i}]") for i, v in enumerate(value))
        raise ConfigError(f"{key} must be a non-empty list of names, got {value!r}")
    if kind == dict[str, dict[str, float]]:
        return _overrides(value, key)
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1.5e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - only the kinds above appear in the dataclasses
        raise TypeError(kind)
    raise ConfigError(f"{key} must be {_kind_name(kind)}, got {value!r} ({type(value).__name__})")


ABLATION_NAME = re.compile(r"[A-Za-z0-9_]+")


def _overrides(value, key: str) -> dict[str, dict[str, float]]:
    """study.ablations: name -> {"improved.<key>": number}; names become experiment names."""
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"{key} must be a non-empty mapping of ablation name -> overrides, got {value!r}")
    fields = typing.get_type_hints(VariantConfig)
    valid = ", ".join(f"improved.{f}" for f in fields)
    out = {}
    for name, overrides in value.items():
        where = f"{key}.{name}"
        if not isinstance(name, str) or not ABLATION_NAME.fullmatch(name):
            raise ConfigError(f"{key}: ablation name {name!r} must use only letters, digits and _")
        if overrides is None:
            overrides = {}
        if not isinstance(overrides, dict):
            raise ConfigError(f"{where} must be a mapping of improved.* keys to values ({{}} for none), "
                              f"got {overrides!r}")
        out[name] = {}
        for dotted, v in overrides.items():
            section, _, field = str(dotted).partition(".")
            if section != "improved" or field not in fields:
                raise ConfigError(f"{where}: unknown override {dotted!r}; valid keys: {valid}")
            out[name][dotted] = _coerce(fields[field], v, f"{where}.{dotted}")
    return out


def _kind_name(kind) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[kind]


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key} {message}")


def validate(p: Params) -> Params:
    """Range checks that a type alone cannot express."""
    _check(p.data.source in DATA_SOURCES, "data.source",
           f"must be one of {', '.join(DATA_SOURCES)}, got {p.data.source!r}")
    _check(p.data.image_size >= 8, "data.image_size", f"must be at least 8, got {p.data.image_size}")
    _check(p.data.input_size >= 8, "data.input_size", f"must be at least 8, got {p.data.input_size}")
    _check(p.data.root.strip() != "", "data.root", "must name a directory (the download stage depends on it)")
    splits = p.data.pretrain_splits
    _check(set(splits) <= set(PRETRAIN_SPLITS) and len(set(splits)) == len(splits), "data.pretrain_splits",
           f"must name each of {', '.join(PRETRAIN_SPLITS)} at most once (never test), got {list(splits)}")
    _check(0 < p.data.val_fraction <= 0.5, "data.val_fraction", f"must lie in (0, 0.5], got {p.data.val_fraction}")
    for split in ("unlabeled", "train", "test"):
        n = getattr(p.data.shapes, split)
        _check(n >= 1, f"data.shapes.{split}", f"must be at least 1, got {n}")
    m = p.model
    _check(m.patch_size >= 1, "model.patch_size", f"must be positive, got {m.patch_size}")
    _check(p.data.input_size % m.patch_size == 0, "model.patch_size",
           f"({m.patch_size}) must divide data.input_size ({p.data.input_size}); "
           f"pick a patch size such as {_divisors_hint(p.data.input_size)}")
    for prefix in ("encoder", "decoder"):
        dim, depth, heads = (getattr(m, f"{prefix}_{k}") for k in ("dim", "depth", "heads"))
        _check(depth >= 1, f"model.{prefix}_depth", f"must be at least 1, got {depth}")
        _check(heads >= 1 and dim % heads == 0, f"model.{prefix}_heads",
               f"({heads}) must be positive and divide model.{prefix}_dim ({dim})")
        _check(dim % 4 == 0, f"model.{prefix}_dim", f"must be a multiple of 4 (2D sin-cos positions), got {dim}")
    _check(m.mlp_ratio > 0, "model.mlp_ratio", f"must be positive, got {m.mlp_ratio}")
    for section in ("pretrain", "finetune"):
        s = getattr(p, section)
        _check(s.epochs >= 1, f"{section}.epochs", f"must be at least 1, got {s.epochs}")
        _check(s.batch_size >= 2, f"{section}.batch_size", f"must be at least 2, got {s.batch_size}")
        _check(s.base_lr > 0, f"{section}.base_lr", f"must be positive, got {s.base_lr}")
        _check(0 <= s.warmup_epochs <= s.epochs, f"{section}.warmup_epochs",
               f"must lie in [0, {section}.epochs], got {s.warmup_epochs}")
        _check(s.weight_decay >= 0, f"{section}.weight_decay", f"must be >= 0, got {s.weight_decay}")
        _check(0 < s.min_crop_scale <= 1, f"{section}.min_crop_scale", f"must lie in (0, 1], got {s.min_crop_scale}")
        _check(s.precision in PRECISIONS, f"{section}.precision",
               f"must be one of {', '.join(PRECISIONS)}, got {s.precision!r}")
        _check(s.threads >= 0, f"{section}.threads", f"must be >= 0 (0 = all cores), got {s.threads}")
        _check(s.processes >= 1, f"{section}.processes", f"must be at least 1, got {s.processes}")
        _check(s.batch_size % s.processes == 0, f"{section}.batch_size",
               f"({s.batch_size}, the global batch) must be divisible by {section}.processes ({s.processes}): "
               f"every process takes an equal share")
    _check(p.pretrain.checkpoint_every >= 1, "pretrain.checkpoint_every",
           f"must be at least 1, got {p.pretrain.checkpoint_every}")
    for name in VARIANTS:
        _check_variant(p.variant(name), name)
    lp = p.linear_probe
    _check(lp.epochs >= 1, "linear_probe.epochs", f"must be at least 1, got {lp.epochs}")
    _check(lp.batch_size >= 2, "linear_probe.batch_size", f"must be at least 2, got {lp.batch_size}")
    _check(lp.lr > 0, "linear_probe.lr", f"must be positive, got {lp.lr}")
    _check(lp.weight_decay >= 0, "linear_probe.weight_decay", f"must be >= 0, got {lp.weight_decay}")
    vz = p.visualize
    _check(vz.images >= 1, "visualize.images", f"must be at least 1, got {vz.images}")
    _check(vz.eval_images >= 1, "visualize.eval_images", f"must be at least 1, got {vz.eval_images}")
    _check(0 < vz.mask_ratio < 1, "visualize.mask_ratio", f"must lie strictly between 0 and 1, got {vz.mask_ratio}")
    _validate_study(p)
    return p


def ablation_variant(p: Params, name: str) -> VariantConfig:
    """The improved recipe with study ablation `name`'s overrides applied."""
    overrides = {k.partition(".")[2]: v for k, v in p.study.ablations[name].items()}
    return dataclasses.replace(p.improved, **overrides)


def _validate_study(p: Params) -> None:
    seeds = p.study.seeds
    dupes = sorted({s for s in seeds if seeds.count(s) > 1})
    _check(not dupes, "study.seeds", f"must not repeat a seed, got {dupes[0] if dupes else ''} twice")
    # Only per-value checks here: inside an ablation experiment `improved` already carries that ablation's
    # overrides, so checks that compare ablations (two giving the same recipe) belong to mae_exp.study.
    for name in p.study.ablations:
        _check_variant(ablation_variant(p, name), f"study.ablations.{name}: improved")


def _check_variant(v: VariantConfig, prefix: str) -> None:
    """Range checks of one recipe; `prefix` names it in messages (`improved`, `study.ablations.x: improved`)."""
    for key in ("mask_ratio", "mask_ratio_start"):
        r = getattr(v, key)
        _check(0 < r < 1, f"{prefix}.{key}", f"must lie strictly between 0 and 1, got {r}")
    _check(0 <= v.curriculum_fraction <= 1, f"{prefix}.curriculum_fraction",
           f"must lie in [0, 1], got {v.curriculum_fraction}")
    for key in ("lambda_freq", "lambda_unif"):
        _check(getattr(v, key) >= 0, f"{prefix}.{key}", f"must be >= 0, got {getattr(v, key)}")


def _divisors_hint(n: int) -> str:
    return ", ".join(str(d) for d in range(2, n // 2 + 1) if n % d == 0 and n // d >= 2) or "1"


def parse_params(raw: dict) -> Params:
    return validate(_build(Params, raw or {}, ""))


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} not found: run the stage from the repository root")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    try:
        return parse_params(raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def as_dict(obj) -> dict:
    return dataclasses.asdict(obj)


def fingerprint(*parts) -> str:
    """A short stable hash of dataclasses / plain data, for keying resumable state."""
    def plain(x):
        return as_dict(x) if dataclasses.is_dataclass(x) else x
    blob = json.dumps([plain(x) for x in parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]

