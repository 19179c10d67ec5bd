"""Experiment configuration: plain dataclasses, and the checks of each field on its own.

Configs are Python files under `experiments/configs/` whose `get_config(arg=None)` returns a
`Config`. `check_fields(config)` checks every field's type and range and raises a
`ConfigError` whose one-line message names the field, the bad value and what would be valid.
Which names are legal choices (optimisers, models, poolings...) is said by the module that
implements them; `murajax.validation.validate` composes all checks, before any compute.

`config.model` holds the fields every model shares and the chosen model's own (`options`),
those of the config dataclass it was registered with (`murajax.models.register(name,
config=CNNConfig)`): `ModelConfig` reads, sets and checks them as the model registry says
(`set_options_lookup`, installed when `murajax.models` is imported), so that this module
needs no model.

This module imports nothing from murajax but `murajax.errors`.
"""

import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable, Mapping
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
    # "image_folder": a CSV manifest with columns path,label[,study_id,patient_id,group,split]
    manifest: str | None = None
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


SHARED_MODEL_FIELDS: tuple[str, ...] = (
    "name",
    "num_classes",
    "weights",
    "dtype",
    "conv_impl",
    "freeze",
)
"""The fields every model takes, directly on `ModelConfig`; a model's own are its `options`."""

OptionsLookup = Callable[[str, Mapping[str, Any]], tuple[type, ...] | None]
"""`(model name, its options so far) -> the config dataclasses whose fields it takes`."""


def _unregistered(name: str, options: Mapping[str, Any]) -> None:
    return None


_options_lookup: OptionsLookup = _unregistered


def set_options_lookup(lookup: OptionsLookup) -> None:
    """Tells `ModelConfig` which fields each model takes: `murajax.models.registry` installs
    its lookup when imported (`register(name, config=...)`), so that this module, which
    imports no model, knows their fields. `lookup(name, options)` returns the config
    dataclasses of model `name` (a study model's own, then its backbone's, the backbone read
    from `options`), `()` for a model registered without one, None for an unknown name."""
    global _options_lookup
    _options_lookup = lookup


def options_classes(name: str, options: Mapping[str, Any]) -> tuple[type, ...] | None:
    """The config dataclasses whose fields model `name` takes (see `set_options_lookup`);
    None if the name (or a study model's backbone) is not a registered model."""
    return _options_lookup(name, options)


def option_fields(classes: tuple[type, ...]) -> dict[str, dataclasses.Field]:
    """The fields of `classes`, in order; a name that two have is the first's (a study
    model's `dropout_rate` is its own, also handed to its backbone)."""
    fields: dict[str, dataclasses.Field] = {}
    for cls in classes:
        for f in dataclasses.fields(cls):
            if f.init:
                fields.setdefault(f.name, f)
    return fields


def option_types(classes: tuple[type, ...]) -> dict[str, Any]:
    """The type annotation of each field of `classes` (see `option_fields`)."""
    types_: dict[str, Any] = {}
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.init:
                types_.setdefault(f.name, hints[f.name])
    return types_


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"model config field {f.name!r} has no default: every field needs one")


def option_defaults(classes: tuple[type, ...]) -> dict[str, Any]:
    """Each field of `classes` with its default (see `option_fields`)."""
    return {name: _default(f) for name, f in option_fields(classes).items()}


def make_options(cls: type, values: Mapping[str, Any]) -> Any:
    """An instance of the model config dataclass `cls` from those of `values` it has (the
    rest keep their defaults); lists become tuples for tuple fields (JSON has no tuples)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.init and f.name in values:
            kwargs[f.name] = _as_annotated(values[f.name], hints[f.name])
    return cls(**kwargs)


def _as_annotated(value: Any, annotation: Any) -> Any:
    """`value`, a list made a tuple where `annotation` is (or allows) a tuple."""
    options = (
        typing.get_args(annotation)
        if typing.get_origin(annotation) in (typing.Union, types.UnionType)
        else (annotation,)
    )
    if isinstance(value, list) and any(typing.get_origin(a) is tuple for a in options):
        return tuple(value)
    return value


@dataclasses.dataclass(init=False)
class ModelConfig:
    """Which network: the fields every model shares, and the chosen model's own (`options`).

    Each model's own fields are the config dataclass it was registered with,
    `murajax.models.register(name, config=CNNConfig)`; a study model ("multiview") also
    takes its backbone's. They are read and set as if they were fields of this class,
    `config.model.widths = (16, 32)`, and live in `options`, a dict of the chosen model's
    fields and values (what `dataclasses.asdict` and `config.json` hold):

        {"name": "vgg16", "num_classes": null, ..., "options": {"dropout_rate": 0.5}}

    `options` holds every field the chosen model takes (its defaults unless set) and any
    field set that it does not take, which `check_fields` (so `validation.validate`)
    refuses in one line naming the field and the model. Choosing another model (setting
    `name`, or a study model's `backbone`) keeps the values the new model takes, drops the
    fields that only the old one took (a config file that imports the CNN's and sets
    `name = "vgg16"` loses the CNN's widths, as a command line's `model.name=vgg16` does),
    and keeps the others: so a file may set a field before the `name` of the model that
    takes it. Models are known once `murajax.models` is imported (`set_options_lookup`).
    """

    name: str = "cnn"  # a registered model (murajax.models.registered_names())
    num_classes: int | None = None  # None: the dataset's number of labels (else must equal it)
    # vgg16 / densenet169 (or a multiview on one): a Keras .h5 weights file, or "imagenet"
    # (Keras's file, downloaded once into $MURAJAX_CACHE/weights: murajax.models.weights_hub)
    weights: str | None = None
    dtype: str = "float32"  # computation dtype; parameters stay float32
    # CPU convolutions: "auto" (oneDNN where its extension is built and runs, else XLA),
    # "xla", or "onednn" (an error where it cannot run). GPUs and TPUs always use XLA's.
    conv_impl: str = "auto"
    # "none", "backbone" (all but the head) or "up_to:<layer-prefix>" (murajax.freeze).
    freeze: str = "none"
    # The chosen model's own fields: "cnn" (murajax.models.CNNConfig: widths, convs_per_block,
    # batch_norm, bn_momentum, pooling, dense, dropout_rate), "vgg16" and "densenet169"
    # (dropout_rate), "multiview" (MultiViewConfig: backbone, pooling, view_pooling,
    # attention_dim, dropout_rate, and its backbone's fields).
    options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __init__(
        self,
        name: str = "cnn",
        *,
        num_classes: int | None = None,
        weights: str | None = None,
        dtype: str = "float32",
        conv_impl: str = "auto",
        freeze: str = "none",
        options: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> None:
        """The shared fields by name; the model's own in `options` or as keywords
        (`ModelConfig(name="cnn", widths=(8, 16))`), the rest at the model's defaults."""
        for key, value in (
            ("name", name),
            ("num_classes", num_classes),
            ("weights", weights),
            ("dtype", dtype),
            ("conv_impl", conv_impl),
            ("freeze", freeze),
        ):
            object.__setattr__(self, key, value)
        values = {**(options or {}), **fields}
        classes = options_classes(name, values)
        object.__setattr__(self, "options", {**option_defaults(classes or ()), **values})
        # The fields the last registered model chosen takes (see `_choose`).
        object.__setattr__(self, "_taken", frozenset(option_fields(classes or ())))

    def __getattr__(self, key: str) -> Any:
        """A model field (`config.model.widths`): its value, else the model's default."""
        if key.startswith("_") or "options" not in self.__dict__:
            raise AttributeError(key)
        if key in self.options:
            return self.options[key]
        classes = options_classes(self.name, self.options)
        fields = option_fields(classes or ())
        if key in fields:
            return _default(fields[key])
        if classes is None:
            raise AttributeError(
                f"config.model has no field {key!r}: model {self.name!r} is not registered"
                " (importing murajax.models registers the built-in models)"
            )
        raise AttributeError(f"config.model: {no_such_field(self, classes, key)}")

    def __setattr__(self, key: str, value: Any) -> None:
        """Sets a shared field, or one of the model's own (see the class docstring)."""
        if key.startswith("_") or key == "options" or "options" not in self.__dict__:
            object.__setattr__(self, key, value)
        elif key in SHARED_MODEL_FIELDS:
            if key == "name":
                self._choose(value, self.options)
            object.__setattr__(self, key, value)
        else:
            self._choose(self.name, {**self.options, key: value})

    def _choose(self, name: str, values: dict[str, Any]) -> None:
        """`options` become `values` for model `name`: if that changes which fields the model
        takes, the new model's defaults fill its fields not set, and the fields only the
        old model took are dropped (see the class docstring). Nothing is dropped for a model
        (or backbone) that is not registered: validation names it, and the fields stay."""
        old = options_classes(self.name, self.options)
        new = options_classes(name, values)
        if new is None or old == new:
            object.__setattr__(self, "options", values)
            if new is None and old is not None:
                object.__setattr__(self, "_taken", frozenset(option_fields(old)))
            return
        # Leaving an unregistered model (a typo): the fields of the last registered one go.
        taken_before = (
            option_fields(old) if old is not None else self.__dict__.get("_taken", frozenset())
        )
        taken_now = option_fields(new)
        kept = {k: v for k, v in values.items() if k in taken_now or k not in taken_before}
        object.__setattr__(self, "options", {**option_defaults(new), **kept})
        object.__setattr__(self, "_taken", frozenset(taken_now))


def model_fields(model: ModelConfig) -> dict[str, Any] | None:
    """The type annotation of each field that `model`'s chosen model takes besides the
    shared ones (a study model's with its backbone's); None if it is not a registered model."""
    classes = options_classes(model.name, model.options)
    return None if classes is None else option_types(classes)


def no_such_field(model: ModelConfig, classes: tuple[type, ...], field: str) -> str:
    """Why `field` is not a field of the model that `model` chooses (whose config dataclasses
    are `classes`): "model 'vgg16' has no field 'widths' (it takes: dropout_rate)"."""
    fields = option_fields(classes)
    which = f"model {model.name!r}"
    if "backbone" in fields:
        which += f" (backbone {model.options.get('backbone', _default(fields['backbone']))!r})"
    takes = (
        f"it takes: {', '.join(fields)}"
        if fields
        else f"it takes only the shared fields: {', '.join(SHARED_MODEL_FIELDS)}"
    )
    return f"{which} has no field {field!r} ({takes})"


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
    # metrics.json's `triage` section (murajax.triage), chosen on the holdout: operating points
    # (binary datasets), "temperature" scaling of the probabilities (every score then uses
    # the calibrated ones), and split-conformal sets at these alphas.
    operating_points: tuple[str, ...] = (
        "sensitivity=0.95",
        "sensitivity=0.90",
        "specificity=0.90",
        "youden",
    )
    calibration: str = "none"
    conformal_alphas: tuple[float, ...] = (0.05, 0.10)
    # The share of the least certain studies referred to a reader in predictions.csv and the
    # study browser (the referral curve covers 0-50%).
    referral_fraction: float = 0.1
    # Attributions (murajax.attribution_maps): the methods drawn in the study browser and the
    # report ("gradcam", "ig", "occlusion"); integrated gradients' path steps and baseline;
    # occlusion's square patch and stride in pixels of the model's input ("black": a black
    # image as the pipeline normalises it, "mean": each image's mean; also occlusion's fill).
    # Patch 32 stride 32 is 49 placements of a 224 px view: seconds per study on a CPU.
    attributions: tuple[str, ...] = ("gradcam",)
    ig_steps: int = 32
    ig_baseline: str = "black"
    occlusion_patch: int = 32
    occlusion_stride: int = 32
    # The study browser (murajax.browser), eval/<split>/browser/index.html.
    browser: bool = True
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


ATTRIBUTION_METHODS: tuple[str, ...] = ("gradcam", "ig", "occlusion")
"""`eval.attributions`: Grad-CAM, integrated gradients, occlusion (murajax.attribution_maps)."""
IG_BASELINES: tuple[str, ...] = ("black", "mean")
"""`eval.ig_baseline` (also occlusion's fill): a black image, or each image's mean."""


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
    if annotation is Any:
        return
    if typing.get_origin(annotation) is not None:  # list[int], dict[str, int]...: the container
        annotation = typing.get_origin(annotation)
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
        if isinstance(obj, ModelConfig) and f.name == "options":
            continue  # typed by the chosen model: check_model_options
        value = getattr(obj, f.name)
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            if not isinstance(value, hints[f.name]):
                _fail(name, value, f"a {hints[f.name].__name__}")
            _check_types(value, prefix=f"{name}.")
        else:
            _check_type(name, value, hints[f.name])


def check_model_options(model: ModelConfig) -> None:
    """Checks the fields in `model.options` against the chosen model's config dataclasses:
    a field the model does not take is refused in one line naming the field and the model and
    listing what it takes; then each field's type, and each dataclass's own `check()`, if it
    has one (the ranges and choices of its fields: `CNNConfig.check`). An unregistered model
    (or a study model's backbone) is left to `murajax.models.check_config`, which names it."""
    classes = options_classes(model.name, model.options)
    if classes is None:
        return
    annotations = option_types(classes)
    for key, value in model.options.items():
        if key not in annotations:
            raise ConfigError(
                f"config.model.{key}={value!r} is invalid: {no_such_field(model, classes, key)}"
            )
        _check_type(f"model.{key}", value, annotations[key])
    for cls in classes:
        check = getattr(make_options(cls, model.options), "check", None)
        if callable(check):
            check()


def check_choice(field: str, value: Any, choices: tuple[str, ...]) -> None:
    """Raises the `invalid` error unless `value` is one of `choices`."""
    if value not in choices:
        _fail(field, value, "one of " + ", ".join(repr(c) for c in choices))


def check_at_least(field: str, value: float, low: float) -> None:
    """Raises the `invalid` error unless `value >= low`."""
    if value < low:
        _fail(field, value, f"a number >= {low}")


def check_positive(field: str, value: float) -> None:
    """Raises the `invalid` error unless `value > 0`."""
    if not value > 0:
        _fail(field, value, "a number > 0")


def check_range(field: str, value: float, low: float, high: float, *, closed: bool = True) -> None:
    """Raises the `invalid` error unless `low <= value <= high` (`closed=False`: `< high`)."""
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
    check_range("data.image_size", d.image_size, 8, 4096)
    check_range("data.holdout_fraction", d.holdout_fraction, 0.0, 1.0, closed=False)
    check_at_least("data.num_workers", d.num_workers, 0)
    check_range("data.rotation", d.rotation, 0.0, 180.0)
    check_range("data.zoom", d.zoom, 0.0, 1.0)
    check_range("data.brightness", d.brightness, 0.0, 1.0)
    check_range("data.contrast", d.contrast, 0.0, 1.0)
    check_range("data.max_views", d.max_views, 1, 64)

    if m.num_classes is not None:
        check_at_least("model.num_classes", m.num_classes, 2)
    check_model_options(m)

    check_positive("optim.learning_rate", o.learning_rate)
    check_range("optim.momentum", o.momentum, 0.0, 1.0, closed=False)
    check_range("optim.b1", o.b1, 0.0, 1.0, closed=False)
    check_range("optim.b2", o.b2, 0.0, 1.0, closed=False)
    check_positive("optim.eps", o.eps)
    check_range("optim.decay", o.decay, 0.0, 1.0, closed=False)
    check_at_least("optim.weight_decay", o.weight_decay, 0.0)
    check_at_least("optim.warmup_steps", o.warmup_steps, 0)
    if o.warmup_steps >= t.steps and o.schedule == "warmup_cosine":
        _fail("optim.warmup_steps", o.warmup_steps, f"fewer than train.steps={t.steps}")
    check_at_least("optim.decay_every", o.decay_every, 1)
    check_range("optim.decay_factor", o.decay_factor, 0.0, 1.0, closed=False)
    check_at_least("optim.plateau_patience", o.plateau_patience, 1)
    check_at_least("optim.min_learning_rate", o.min_learning_rate, 0.0)
    if o.grad_clip_norm is not None:
        check_positive("optim.grad_clip_norm", o.grad_clip_norm)
    check_positive("optim.backbone_lr_multiplier", o.backbone_lr_multiplier)

    check_at_least("train.steps", t.steps, 1)
    check_at_least("train.batch_size", t.batch_size, 1)
    for name in ("log_every", "eval_every", "checkpoint_every", "keep_checkpoints", "keep_best"):
        check_at_least(f"train.{name}", getattr(t, name), 1)
    check_range("train.label_smoothing", t.label_smoothing, 0.0, 1.0, closed=False)
    check_at_least("train.l2_weight", t.l2_weight, 0.0)
    check_at_least("train.max_skipped", t.max_skipped, 1)

    check_at_least("eval.batch_size", e.batch_size, 1)
    check_range("eval.threshold", e.threshold, 0.0, 1.0)
    check_at_least("eval.bootstrap_samples", e.bootstrap_samples, 0)
    check_range("eval.confidence", e.confidence, 0.5, 1.0, closed=False)
    check_choice("eval.kappa_weights", e.kappa_weights, KAPPA_WEIGHTS)
    for method in e.attributions:
        check_choice("eval.attributions", method, ATTRIBUTION_METHODS)
    check_at_least("eval.ig_steps", e.ig_steps, 1)
    check_choice("eval.ig_baseline", e.ig_baseline, IG_BASELINES)
    check_at_least("eval.occlusion_patch", e.occlusion_patch, 1)
    check_at_least("eval.occlusion_stride", e.occlusion_stride, 1)
    return config


# --------------------------------------------------------------------------- (de)serialisation


def to_dict(config: Config) -> dict[str, Any]:
    """The resolved config as `dataclasses.asdict` gives it (what `config.json` holds)."""
    return dataclasses.asdict(config)


def lift_model_options(values: dict[str, Any]) -> dict[str, Any]:
    """A config as JSON values (`to_dict`'s, or a `config.json`) with the model's own fields
    (`model.options`) lifted into `model`, so that they are named as on the command line,
    `model.widths`; values without `model.options` as they are."""
    model = values.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("options"), dict):
        return values
    lifted = {k: v for k, v in model.items() if k != "options"}
    return {**values, "model": {**lifted, **model["options"]}}


def to_json(config: Config) -> str:
    """The resolved config as pretty JSON."""
    return json.dumps(to_dict(config), indent=2, sort_keys=False)


def from_dict(values: dict[str, Any]) -> Config:
    """Rebuilds a `Config` from `to_dict`'s output (e.g. a workdir's `config.json`).

    An older murajax wrote every model's fields flat into `model` (`widths` even for
    "vgg16"): those the chosen model takes become its `options` and the others are dropped,
    as that murajax ignored them (all are kept for a model not registered here)."""
    sections = {}
    for f in dataclasses.fields(Config):
        if f.name == "seed":
            continue
        section_type = typing.get_type_hints(Config)[f.name]
        section_values = dict(values.get(f.name, {}))
        if section_type is ModelConfig:
            sections[f.name] = _model_from_dict(section_values)
            continue
        hints = typing.get_type_hints(section_type)
        for key, value in section_values.items():
            if isinstance(value, list) and typing.get_origin(hints.get(key)) is tuple:
                section_values[key] = tuple(value)
        unknown = set(section_values) - {x.name for x in dataclasses.fields(section_type)}
        if unknown:
            raise ConfigError(f"config.{f.name} has unknown field(s): {', '.join(sorted(unknown))}")
        sections[f.name] = section_type(**section_values)
    return Config(seed=values.get("seed", 0), **sections)


def _model_from_dict(values: dict[str, Any]) -> ModelConfig:
    """`config.json`'s `model` section as a `ModelConfig` (see `from_dict`)."""
    shared = {k: values.pop(k) for k in SHARED_MODEL_FIELDS if k in values}
    name = shared.get("name", "cnn")
    options = values.pop("options", None)
    if options is None:  # an older murajax's flat section
        classes = options_classes(name, values)
        options = (
            values
            if classes is None
            else {k: v for k, v in values.items() if k in option_fields(classes)}
        )
    elif values:
        raise ConfigError(f"config.model has unknown field(s): {', '.join(sorted(values))}")
    if not isinstance(options, dict):
        raise ConfigError(f"config.model.options={options!r} is invalid: expected an object")
    annotations = model_fields(ModelConfig(name, options=options)) or {}
    options = {k: _as_annotated(v, annotations.get(k)) for k, v in options.items()}
    return ModelConfig(**shared, options=options)
