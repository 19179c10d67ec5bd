"""Experiment configuration: plain dataclasses, and the checks of each field on its own.

Configs are Python files under `experiments/configs/` whose `get_config(arg=None)` returns a
`Config`. `check_fields(config)` checks every field's type and range and raises a
`ConfigError` whose one-line message names the field, the bad value and what would be valid.
Which names are legal choices (optimisers, models, poolings...) is said by the module that
implements them; `murajax.validation.validate` composes all checks, before any compute.

This module imports nothing from murajax but `murajax.errors`.
"""

import dataclasses
import json
import math
import types
import typing
from typing import Any

from murajax.errors import ConfigError


@dataclasses.dataclass
class DataConfig:
    """Where the data comes from and how images become model inputs."""

    dataset: str = "mura_synthetic"  # a TFDS name, optionally with a config: "mura_synthetic/tiny"
    data_dir: str | None = None  # None: TFDS's default ($TFDS_DATA_DIR or ~/tensorflow_datasets)
    # Real MURA: the folder holding MURA-v1.1/ or MURA-v1.1.zip. "image_folder": the root of
    # your own tree ROOT/<split>/<label>/[<group>/]<study>/image.png (README, "Training on your
    # own radiographs").
    manual_dir: str | None = None
    manifest: str | None = None  # "image_folder": a CSV of path,label[,study_id,patient_id,group,split]
    build_if_missing: bool = True  # download_and_prepare on first use
    image_size: int = 224
    resize: str = "pad"  # aspect-preserving resize, then "pad" or "crop" to a square
    normalization: str | None = None  # None: the model's own; or one of NORMALIZATIONS
    holdout_fraction: float = 0.1  # patient-disjoint slice of train for model selection
    num_workers: int = 0  # grain worker processes (0: in the main process)
    # Train-time augmentation (the MURA paper: lateral flips, rotations up to 30 degrees).
    flip: bool = True
    rotation: float = 30.0  # degrees, uniform in [-rotation, +rotation]
    zoom: float = 0.0  # random zoom/crop: scale uniform in [1, 1 + zoom]
    brightness: float = 0.0  # additive, uniform in [-brightness, +brightness] on [0, 1] images
    contrast: float = 0.0  # multiplicative, uniform in [1 - contrast, 1 + contrast]
    # Study batches (study-level models such as "multiview"): views per study in training; a
    # study with more gets a random subset each epoch. Evaluation always sees every view.
    max_views: int = 4
    # Decoded, pre-resized images (murajax.data.cache): "none" decodes and resizes every image
    # every epoch; "memory" does it once per process into host RAM; "disk" once, as array_record
    # files reused by later runs (beside the TFDS data, or in `cache_dir`). Same batches.
    cache: str = "none"
    cache_dir: str | None = None  # "disk" only; None: beside the data or $MURAJAX_CACHE/data


@dataclasses.dataclass
class ModelConfig:
    """Which network, and the thesis's CNN's shape."""

    name: str = "cnn"
    num_classes: int | None = None  # None: the dataset's number of labels (else must equal it)
    dropout_rate: float = 0.5
    # vgg16 / densenet169 (or a multiview on one): a Keras .h5 weights file, or "imagenet"
    # (Keras's file, downloaded once into $MURAJAX_CACHE/weights: murajax.models.weights_hub)
    weights: str | None = None
    dtype: str = "float32"  # computation dtype; parameters stay float32
    # CPU convolutions: "auto" (oneDNN where its extension is built and runs, else XLA),
    # "xla", or "onednn" (an error where it cannot run). GPUs and TPUs always use XLA's.
    conv_impl: str = "auto"
    # The configurable CNN: blocks of `convs_per_block` 3x3 conv + ReLU (+BN) + 2x2 max-pool.
    widths: tuple[int, ...] = (32, 64, 128)
    convs_per_block: int = 1
    batch_norm: bool = False
    bn_momentum: float = 0.99  # running-statistics decay (Keras: 0.99; short runs: 0.9)
    pooling: str = "avg"  # global "avg" or "max" pooling, or "flatten"
    dense: tuple[int, ...] = (128,)
    # "none", "backbone" (all but the head) or "up_to:<layer-prefix>" (murajax.freeze).
    freeze: str = "none"
    # "multiview" only: the shared per-view encoder (a registered image model, its fields
    # above), and how the views' features pool into one study ("mean", "max", "attention").
    backbone: str = "cnn"
    view_pooling: str = "mean"
    attention_dim: int = 128  # hidden width of the gated attention pooling


@dataclasses.dataclass
class OptimConfig:
    """The optax optimiser, its schedule and gradient clipping."""

    name: str = "adam"
    learning_rate: float = 1e-3
    momentum: float = 0.9  # sgd momentum; rmsprop momentum
    nesterov: bool = False
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    decay: float = 0.9  # rmsprop's moving-average decay
    weight_decay: float = 1e-4  # adamw only
    schedule: str = "constant"
    warmup_steps: int = 0
    decay_every: int = 1000  # "step": multiply by decay_factor every decay_every steps
    decay_factor: float = 0.1  # "step" and "plateau"
    plateau_patience: int = 2  # "plateau": holdout evaluations without improvement
    min_learning_rate: float = 0.0
    grad_clip_norm: float | None = None
    backbone_lr_multiplier: float = 1.0  # the backbone's learning rate / the head's


@dataclasses.dataclass
class TrainConfig:
    """The training loop: length, batch, logging, checkpoints and the loss."""

    steps: int = 10_000
    batch_size: int = 32  # global, over all devices and processes
    log_every: int = 50
    eval_every: int = 1000
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3  # the latest few checkpoints
    keep_best: int = 5  # and the best few by holdout kappa (for `evaluate --ensemble=K`)
    parallelism: str = "jit"
    class_weighting: str = "global"  # the MURA paper's weighted cross-entropy
    label_smoothing: float = 0.0
    l2_weight: float = 0.0  # L2 penalty on kernels, added to the loss
    progress: bool = True  # tqdm progress bar
    # A non-finite loss, gradient or updated parameter (checked on device in every step):
    # "stop" ends the run naming the step (the last good checkpoint stays the newest);
    # "skip" leaves params, batch statistics and optimiser state as they were for that step
    # and counts it in the train rows' `skipped`, stopping after `max_skipped` in a row.
    on_nonfinite: str = "stop"
    max_skipped: int = 10


@dataclasses.dataclass
class EvalConfig:
    """How evaluation aggregates images into studies and scores them."""

    batch_size: int = 64
    aggregation: str = "mean"  # study probability: mean (the MURA paper) or max of its images
    threshold: float = 0.5
    threshold_method: str = "fixed"  # or "youden", chosen on the holdout
    bootstrap_samples: int = 1000
    confidence: float = 0.95
    # Cohen's kappa: "none" (unweighted, the MURA paper's) or "quadratic" / "linear" for
    # ordinal labels (classes in the dataset's label order).
    kappa_weights: str = "none"
    splits: tuple[str, ...] = ("validation",)  # evaluated at the end of training
    checkpoint: str = "best"  # which checkpoint the final evaluation uses


@dataclasses.dataclass
class Config:
    """A whole experiment."""

    seed: int = 0
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)


# --------------------------------------------------------------------------- validation

KAPPA_WEIGHTS: tuple[str, ...] = ("none", "linear", "quadratic")
"""`eval.kappa_weights`: Cohen's kappa unweighted, or weighted for ordinal labels."""



def invalid(field: str, value: Any, valid: str) -> ConfigError:
    """The one-line error for `config.<field>=value`, naming what would be `valid`."""
    return ConfigError(f"config.{field}={value!r} is invalid: expected {valid}")


def _fail(field: str, value: Any, valid: str) -> typing.NoReturn:
    raise invalid(field, value, valid)


def _check_type(field: str, value: Any, annotation: Any) -> None:
    """Checks `value` against a (simple) type annotation: int, float, str, bool, X | None, tuple."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return
        inner = [a for a in options if a is not type(None)]
        return _check_type(field, value, inner[0])
    if origin is tuple:
        (item_type, *_) = typing.get_args(annotation)
        if not isinstance(value, tuple | list):
            _fail(field, value, f"a tuple of {item_type.__name__}")
        for item in value:
            _check_type(field, item, item_type)
        return
    if annotation is bool:
        ok = isinstance(value, bool)
    elif annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif annotation is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    elif annotation is str:
        ok = isinstance(value, str)
    else:
        ok = isinstance(value, annotation)
    if not ok:
        _fail(
            field,
            value,
            f"a finite {annotation.__name__}"
            if annotation is float
            else f"a {annotation.__name__}",
        )


def _check_types(obj: Any, prefix: str = "") -> None:
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            if not isinstance(value, hints[f.name]):
                _fail(name, value, f"a {hints[f.name].__name__}")
            _check_types(value, prefix=f"{name}.")
        else:
            _check_type(name, value, hints[f.name])


def check_choice(field: str, value: Any, choices: tuple[str, ...]) -> None:
    """Raises the `invalid` error unless `value` is one of `choices`."""
    if value not in choices:
        _fail(field, value, "one of " + ", ".join(repr(c) for c in choices))


def _at_least(field: str, value: float, low: float) -> None:
    if value < low:
        _fail(field, value, f"a number >= {low}")


def _positive(field: str, value: float) -> None:
    if not value > 0:
        _fail(field, value, "a number > 0")


def _in_range(field: str, value: float, low: float, high: float, *, closed: bool = True) -> None:
    ok = low <= value <= high if closed else low <= value < high
    if not ok:
        bracket = "]" if closed else ")"
        _fail(field, value, f"a number in [{low}, {high}{bracket}")


def check_fields(config: Config) -> Config:
    """Checks every field's type and range (not which names are legal choices: see
    `murajax.validation`); returns `config` unchanged or raises `ConfigError`."""
    _check_types(config)
    d, m, o, t, e = config.data, config.model, config.optim, config.train, config.eval
    if not d.dataset.strip():
        _fail("data.dataset", d.dataset, "a TFDS dataset name such as 'mura' or 'mura_synthetic'")
    _in_range("data.image_size", d.image_size, 8, 4096)
    _in_range("data.holdout_fraction", d.holdout_fraction, 0.0, 1.0, closed=False)
    _at_least("data.num_workers", d.num_workers, 0)
    _in_range("data.rotation", d.rotation, 0.0, 180.0)
    _in_range("data.zoom", d.zoom, 0.0, 1.0)
    _in_range("data.brightness", d.brightness, 0.0, 1.0)
    _in_range("data.contrast", d.contrast, 0.0, 1.0)
    _in_range("data.max_views", d.max_views, 1, 64)

    if m.num_classes is not None:
        _at_least("model.num_classes", m.num_classes, 2)
    _in_range("model.dropout_rate", m.dropout_rate, 0.0, 1.0, closed=False)
    if not m.widths:
        _fail("model.widths", m.widths, "at least one block width")
    for i, w in enumerate(m.widths):
        _positive(f"model.widths[{i}]", w)
    for i, w in enumerate(m.dense):
        _positive(f"model.dense[{i}]", w)
    _at_least("model.convs_per_block", m.convs_per_block, 1)
    _in_range("model.bn_momentum", m.bn_momentum, 0.0, 1.0, closed=False)
    _at_least("model.attention_dim", m.attention_dim, 1)

    _positive("optim.learning_rate", o.learning_rate)
    _in_range("optim.momentum", o.momentum, 0.0, 1.0, closed=False)
    _in_range("optim.b1", o.b1, 0.0, 1.0, closed=False)
    _in_range("optim.b2", o.b2, 0.0, 1.0, closed=False)
    _positive("optim.eps", o.eps)
    _in_range("optim.decay", o.decay, 0.0, 1.0, closed=False)
    _at_least("optim.weight_decay", o.weight_decay, 0.0)
    _at_least("optim.warmup_steps", o.warmup_steps, 0)
    if o.warmup_steps >= t.steps and o.schedule == "warmup_cosine":
        _fail("optim.warmup_steps", o.warmup_steps, f"fewer than train.steps={t.steps}")
    _at_least("optim.decay_every", o.decay_every, 1)
    _in_range("optim.decay_factor", o.decay_factor, 0.0, 1.0, closed=False)
    _at_least("optim.plateau_patience", o.plateau_patience, 1)
    _at_least("optim.min_learning_rate", o.min_learning_rate, 0.0)
    if o.grad_clip_norm is not None:
        _positive("optim.grad_clip_norm", o.grad_clip_norm)
    _positive("optim.backbone_lr_multiplier", o.backbone_lr_multiplier)

    _at_least("train.steps", t.steps, 1)
    _at_least("train.batch_size", t.batch_size, 1)
    for name in ("log_every", "eval_every", "checkpoint_every", "keep_checkpoints", "keep_best"):
        _at_least(f"train.{name}", getattr(t, name), 1)
    _in_range("train.label_smoothing", t.label_smoothing, 0.0, 1.0, closed=False)
    _at_least("train.l2_weight", t.l2_weight, 0.0)
    _at_least("train.max_skipped", t.max_skipped, 1)

    _at_least("eval.batch_size", e.batch_size, 1)
    _in_range("eval.threshold", e.threshold, 0.0, 1.0)
    _at_least("eval.bootstrap_samples", e.bootstrap_samples, 0)
    _in_range("eval.confidence", e.confidence, 0.5, 1.0, closed=False)
    check_choice("eval.kappa_weights", e.kappa_weights, KAPPA_WEIGHTS)
    return config


# --------------------------------------------------------------------------- (de)serialisation


def to_dict(config: Config) -> dict[str, Any]:
    """The resolved config as `dataclasses.asdict` gives it (what `config.json` holds)."""
    return dataclasses.asdict(config)


def to_json(config: Config) -> str:
    """The resolved config as pretty JSON."""
    return json.dumps(to_dict(config), indent=2, sort_keys=False)


def from_dict(values: dict[str, Any]) -> Config:
    """Rebuilds a `Config` from `to_dict`'s output (e.g. a workdir's `config.json`)."""
    sections = {}
    for f in dataclasses.fields(Config):
        if f.name == "seed":
            continue
        section_type = typing.get_type_hints(Config)[f.name]
        section_values = dict(values.get(f.name, {}))
        hints = typing.get_type_hints(section_type)
        for key, value in section_values.items():
            if isinstance(value, list) and typing.get_origin(hints.get(key)) is tuple:
                section_values[key] = tuple(value)
        unknown = set(section_values) - {x.name for x in dataclasses.fields(section_type)}
        if unknown:
            raise ConfigError(f"config.{f.name} has unknown field(s): {', '.join(sorted(unknown))}")
        sections[f.name] = section_type(**section_values)
    return Config(seed=values.get("seed", 0), **sections)
