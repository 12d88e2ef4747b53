"""params.yaml -> validated, typed settings.

Every stage loads the whole file through `load_params`, so a typo anywhere stops every stage with the same
one-line message naming the key (`pretrain.epochs`), before any work. Each section is a frozen pydantic
model: types and ranges are declared on the fields, rules that span fields are model validators. No field
has a default: params.yaml is the single source of every knob.
"""

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Annotated, Literal, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

DataSource = Literal["shapes", "stl10", "cifar10", "folder"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]  # auto: bf16 on CUDA, fp32 on CPU
RANDOM = "random"  # the untrained encoder, every readout's floor; no recipe may take its name
DATA_SOURCES: tuple[str, ...] = get_args(DataSource)
PRECISIONS: tuple[str, ...] = get_args(Precision)


class ConfigError(ValueError):
    """A parameter is missing, unknown, of the wrong type or out of range."""


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
# YAML 1.1 reads 1.5e-4 (no dot) as a string: take it as the number it spells. An int is taken too, a bool not.
# Every float of params.yaml is a Number, and none may be .inf or .nan (an infinite lr or mlp_ratio trains nothing).
Number = Annotated[
    float,
    BeforeValidator(lambda v: float(v) if isinstance(v, str) and _FLOAT.fullmatch(v) else v),
    Field(allow_inf_nan=False),
]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]  # derived seeds (seed * 1000 + split, seed + 1) stay in 64 bits
Count = Annotated[int, Field(ge=1)]
Batch = Annotated[int, Field(ge=2)]
Positive = Annotated[Number, Field(gt=0)]
NonNegative = Annotated[Number, Field(ge=0)]
Ratio = Annotated[Number, Field(gt=0, lt=1)]  # a mask ratio: 0 and 1 leave nothing to see or to predict
Dim = Annotated[int, Field(gt=0, multiple_of=4)]  # 2D sin-cos positions split a dim in 4


def _distinct(items: tuple) -> tuple:
    if len(set(items)) < len(items):
        raise PydanticCustomError("repeated", "must not repeat an entry")
    return items


def list_of(item):
    """A non-empty YAML list without repeats, kept as a tuple (hashable); strict=False lets a list in."""
    return Annotated[tuple[item, ...], Field(strict=False, min_length=1), AfterValidator(_distinct)]


def _check(ok: bool, message: str) -> None:
    """For model validators; `message` starts with the key it blames, relative to that model."""
    if not ok:
        raise ValueError(message)


class Section(BaseModel):
    # strict: no "3" for 3, no 2.0 or true for an integer, no 1 for true
    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")


class ShapesConfig(Section):
    unlabeled: Count
    train: Count
    test: Count


class DataConfig(Section):
    source: DataSource
    root: str  # where stl10 / cifar10 archives and folder datasets live
    image_size: Annotated[int, Field(ge=8)]  # stored size of the prepared images
    input_size: Annotated[int, Field(ge=8)]  # size fed to the model (crops are resampled to it, e.g. 96 -> 224)
    skip_bad_files: bool  # folder: skip (and count) unreadable files instead of stopping at the first
    verify_md5: bool  # stl10, cifar10: check the archive's MD5; false only for a locally made archive
    pretrain_splits: list_of(Literal["unlabeled", "train"])  # what MAE pre-trains on (labels unused); never test
    val_fraction: Annotated[Number, Field(gt=0, le=0.5)]  # stratified share of train held out as validation
    shapes: ShapesConfig

    @model_validator(mode="after")
    def _valid(self):
        _check(self.root.strip() != "", "root must name a directory (the download stage depends on it)")
        _check(
            self.source != "cifar10" or "train" in self.pretrain_splits,
            "pretrain_splits must include train for source cifar10, which has no unlabeled images",
        )
        return self


class ModelConfig(Section):
    patch_size: Count
    encoder_dim: Dim
    encoder_depth: Count
    encoder_heads: Count
    decoder_dim: Dim
    decoder_depth: Count
    decoder_heads: Count
    mlp_ratio: Positive
    norm_pix_loss: bool

    @model_validator(mode="after")
    def _heads_divide_dims(self):
        for part in ("encoder", "decoder"):
            dim, heads = getattr(self, f"{part}_dim"), getattr(self, f"{part}_heads")
            _check(dim % heads == 0, f"{part}_heads ({heads}) must divide {part}_dim ({dim})")
        return self


class TrainingConfig(Section):
    """What pre-training and fine-tuning share."""

    epochs: Count
    batch_size: Batch  # the global batch, split evenly over the processes
    base_lr: Positive  # lr = base_lr * batch_size / 256 (MAE's scaling rule)
    warmup_epochs: NonNegative
    weight_decay: NonNegative
    min_crop_scale: Annotated[Number, Field(gt=0, le=1)]  # random-resized-crop scale range [min_crop_scale, 1]
    precision: Precision
    checkpoint_every: Count  # epochs between resumable checkpoints
    compile: bool  # torch.compile the transformer blocks
    processes: Count  # > 1: DistributedDataParallel under torchrun

    @model_validator(mode="after")
    def _valid(self):
        _check(
            self.warmup_epochs <= self.epochs,
            f"warmup_epochs ({self.warmup_epochs}) must not exceed epochs ({self.epochs})",
        )
        _check(
            self.batch_size % self.processes == 0,
            f"batch_size ({self.batch_size}, the global batch) must be divisible by processes "
            f"({self.processes}): every process takes an equal share",
        )
        return self


class PretrainConfig(TrainingConfig):
    """Shared by both variants."""

    # weights to start from instead of the seed's initialisation: a transformers ViTMAE folder, a
    # facebookresearch/mae checkpoint or one of ours (hf.py); null: from scratch
    init_from: str | None

    @model_validator(mode="after")
    def _init_from(self):
        _check(
            self.init_from is None or self.init_from.strip() != "",
            "init_from must be null (from scratch) or a path to a transformers folder or checkpoint file",
        )
        return self


LayerDecay = Annotated[Number, Field(gt=0, le=1)]  # lr factor per block below the head (1: none)


class FinetuneGrid(Section):
    """One encoder's own fine-tuning grid, in place of finetune.base_lr x finetune.layer_decay."""

    base_lr: list_of(Positive)
    layer_decay: list_of(LayerDecay)


class FinetuneConfig(TrainingConfig):
    # searched on validation for every encoder alike (optim.grid, optim.best): the grid, one point or more
    base_lr: list_of(Positive)  # lr = base_lr * batch_size / 256
    layer_decay: list_of(LayerDecay)
    drop_path: Annotated[Number, Field(ge=0, lt=1)]  # stochastic depth rate of the last block
    label_smoothing: Annotated[Number, Field(ge=0, lt=1)]
    # an encoder's own grid where a design fixes one per recipe (chosen on a development seed): {original: ..}
    per_encoder: dict[str, FinetuneGrid] = {}  # keys: random or a recipe section (checked by Params)

    def grid_for(self, encoder: str) -> FinetuneGrid:
        """The base lr x layer decay grid that `encoder` is fine-tuned over."""
        return self.per_encoder.get(encoder) or FinetuneGrid(base_lr=self.base_lr, layer_decay=self.layer_decay)


# What a recipe section's own settings may hold; the recipe function (mae_exp.recipes) types and checks them
_Setting = bool | StrictInt | float | str | None
RECIPE_NAME = re.compile(r"[a-z][a-z0-9_]*")  # a params section, a stage item and a folder: models/<name>/


class RecipeConfig(Section):
    """One pre-training recipe (a params.yaml section with a `recipe:` key): the function of mae_exp.recipes that
    builds it, the steps it trains for, and that function's own arguments, which it types and range-checks
    (recipes.build): no list of them here, so a new recipe is one function plus one section."""

    model_config = ConfigDict(frozen=True, strict=True, extra="allow")
    __pydantic_extra__: dict[str, _Setting | list[_Setting]]

    recipe: str  # a function name in mae_exp.recipes.RECIPES
    steps_factor: Positive  # pre-train round(factor x epochs x steps per epoch) steps, the schedule stretched alike

    def settings(self) -> dict:
        """The recipe function's arguments: every key but `recipe` and `steps_factor`."""
        return dict(self.__pydantic_extra__ or {})


class LinearProbeConfig(Section):
    """Grids, searched by k-fold cross-validation on the labeled train split (validation included) for every encoder
    alike (optim.grid, optim.best): each pooling's logistic probe its own L2, each pooling's BN + linear head its own
    (lr, weight_decay), each pooling's kNN its own (k, temperature)."""

    folds: Annotated[int, Field(ge=2)]  # k of the k-fold cross-validation that chooses every readout's setting
    logreg_l2: list_of(Positive)  # L2 strength of the logistic probe (loss = mean cross-entropy + l2/2 |W|^2)
    epochs: Count
    batch_size: Batch
    lr: list_of(Positive)
    weight_decay: list_of(NonNegative)
    knn_k: list_of(Count)  # neighbours of the weighted kNN readout
    knn_temperature: list_of(Positive)  # vote weight exp(cosine similarity / temperature)


class VisualizeConfig(Section):
    images: Count  # rows in the reconstruction grid
    eval_images: Count  # test images over which HF error and PSNR are averaged
    mask_ratio: Ratio
    mask_seed: Seed


class Params(Section):
    """The whole params.yaml: the fixed sections below, plus one section per pre-training recipe (any top-level
    mapping with a `recipe:` key, a RecipeConfig). `recipes` lists those compared, the first the baseline."""

    model_config = ConfigDict(frozen=True, strict=True, extra="allow")
    __pydantic_extra__: dict[str, RecipeConfig]

    seed: Seed
    threads: Annotated[int, Field(ge=0)]  # CPU threads per process for every stage; 0 = all cores
    data: DataConfig
    model: ModelConfig
    pretrain: PretrainConfig
    recipes: list_of(str)  # the recipes compared, each a section below; the first is the baseline
    linear_probe: LinearProbeConfig
    finetune: FinetuneConfig
    visualize: VisualizeConfig
    study: dict  # the study's design, read and checked by mae_exp.study.design alone: no stage reads it

    @model_validator(mode="before")
    @classmethod
    def _recipe_sections_only(cls, raw):
        """A top-level key that is no field must be a recipe section; anything else is a typo, named as one."""
        if isinstance(raw, dict):
            for key, value in raw.items():
                if key not in cls.model_fields and not (isinstance(value, dict) and "recipe" in value):
                    raise ValueError(
                        f"unknown key {key!r}; valid keys here: {', '.join(sorted(cls.model_fields))}, or a recipe "
                        "section (a mapping with a `recipe:` key, docs/reference.md#adding-a-recipe)"
                    )
        return raw

    @property
    def baseline(self) -> str:
        """The recipe every other one is compared with: the first of `recipes`."""
        return self.recipes[0]

    @property
    def encoders(self) -> tuple[str, ...]:
        """What the readouts evaluate: the untrained encoder, then every recipe compared."""
        return (RANDOM, *self.recipes)

    def recipe_sections(self) -> dict[str, RecipeConfig]:
        """Every recipe section of the file, compared or not (a study arm may override any)."""
        return dict(self.__pydantic_extra__ or {})

    def recipe(self, name: str) -> RecipeConfig:
        sections = self.recipe_sections()
        if name not in sections:
            raise ConfigError(f"unknown recipe {name!r}: params.yaml has recipe sections {', '.join(sections)}")
        return sections[name]

    @model_validator(mode="after")
    def _valid(self):
        sections = self.recipe_sections()
        for name in sections:
            _check(
                RECIPE_NAME.fullmatch(name) is not None and name != RANDOM,
                f"{name}: a recipe's name must be lower-case letters, digits and _, starting with a letter, and not "
                f"{RANDOM!r} (the untrained encoder's)",
            )
        for name in self.recipes:
            _check(
                name in sections,
                f"recipes: {name!r} has no section; add `{name}:` with a `recipe:` key (recipe sections: "
                f"{', '.join(sections) or 'none'})",
            )
        for name in self.finetune.per_encoder:
            _check(
                name == RANDOM or name in sections,
                f"finetune.per_encoder: {name!r} is neither {RANDOM!r} nor a recipe section ({', '.join(sections)})",
            )
        size, patch = self.data.input_size, self.model.patch_size
        hint = ", ".join(str(d) for d in range(2, size // 2 + 1) if size % d == 0) or "1"
        _check(
            size % patch == 0,
            f"model.patch_size ({patch}) must divide data.input_size ({size}); pick a patch size such as {hint}",
        )
        if self.data.source == "shapes":  # split sizes known now: refuse before pre-training, not after it
            train, test = self.data.shapes.train, self.data.shapes.test
            _check(
                self.finetune.batch_size <= train,
                f"finetune.batch_size ({self.finetune.batch_size}) must not exceed data.shapes.train ({train})",
            )
            fitted = train - math.ceil(train / self.linear_probe.folds)  # what the smallest cross-validation fit sees
            for key in ("batch_size", "knn_k"):
                value = getattr(self.linear_probe, key)
                value = max(value) if isinstance(value, tuple) else value  # knn_k is a grid: its largest
                _check(
                    value <= fitted,
                    f"linear_probe.{key} ({value}) must not exceed the {fitted} images a cross-validation fold "
                    f"trains on (data.shapes.train {train}, linear_probe.folds {self.linear_probe.folds})",
                )
            _check(
                self.visualize.eval_images <= test,
                f"visualize.eval_images ({self.visualize.eval_images}) must not exceed data.shapes.test ({test})",
            )
            pretraining = sum(getattr(self.data.shapes, split) for split in self.data.pretrain_splits)
            _check(
                self.pretrain.batch_size <= pretraining,
                f"pretrain.batch_size ({self.pretrain.batch_size}) must not exceed the {pretraining} images of "
                f"data.pretrain_splits ({', '.join(self.data.pretrain_splits)})",
            )
        return self


def _merged(raw: dict, dotted: dict) -> dict:
    """raw with each dotted key set; a key raw does not have is left in (the model then names it unknown)."""
    raw = json.loads(json.dumps(raw))
    for key, value in dotted.items():
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return raw


def with_overrides(p: Params, overrides: dict) -> Params:
    """p with each dotted key of `overrides` set (as `dvc exp run -S key=value` would), validated again."""
    return parse_params(_merged(p.model_dump(), overrides))


_YAML_WORDS = {
    "bool_type": "must be true or false",
    "tuple_type": "must be a list",
    "too_short": "must not be empty",
    "model_type": "must be a mapping of keys to values",
    "dict_type": "must be a mapping of keys to values",
}


def describe_error(err: ValidationError, model: type[BaseModel], where: str = "") -> str:
    """pydantic's first error as one line naming the dotted key, e.g.
    `pretrain.epochs must be a valid integer, got 'ten' (str)`."""
    first = min(err.errors(), key=lambda e: e["type"] != "extra_forbidden")  # a typo: unknown, not missing
    loc, kind, value = first["loc"], first["type"], first.get("input")
    key = where
    for part in loc:  # pretrain.epochs, study.seeds[1]
        key += f"[{part}]" if isinstance(part, int) else f".{part}" if key else part
    if kind == "extra_forbidden":
        for part in loc[:-1]:
            model = model.model_fields[part].annotation
        return f"unknown key {key!r}; valid keys here: {', '.join(sorted(model.model_fields))}"
    if kind == "missing":
        return f"missing key {key!r}; see params.yaml in the repository for every key"
    if kind == "value_error":  # a model validator's message, which starts with its key
        return f"{key}.{first['ctx']['error']}" if key else str(first["ctx"]["error"])
    expected = _YAML_WORDS.get(kind) or re.sub(r"^\w+ should", "must", first["msg"])  # "Input should be" -> "must be"
    got = f"{value!r} ({type(value).__name__})" if kind.endswith("_type") else repr(value)
    return f"{key or 'params'} {expected}, got {got}"


def parse_params(raw: dict) -> Params:
    try:
        return Params.model_validate(raw or {})
    except ValidationError as e:
        raise ConfigError(describe_error(e, Params)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load, but a key given twice in one mapping is an error (PyYAML keeps the last value silently;
    DVC refuses the file, so a stage run by hand must too)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise ConfigError(
                    f"key {key!r} appears twice in one section (line {key_node.start_mark.line + 1}): keep one"
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    try:
        return parse_params(yaml.load(path.read_text(), Loader=_UniqueKeyLoader))
    except FileNotFoundError:
        raise ConfigError(f"{path} not found: run the stage from the repository root") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from None
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


as_dict = BaseModel.model_dump  # as_dict(config) -> plain nested dict


def fingerprint(*parts) -> str:
    """A short stable hash of configs / plain data, for keying resumable state."""
    plain = [x.model_dump() if isinstance(x, BaseModel) else x for x in parts]
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:16]
