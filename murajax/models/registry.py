"""Model registry: names in `config.model.name` -> factories that build Flax modules.

`resolve(model_config)` is where a config's model name is looked up, once: it returns a
`ModelSpec`, which is all that data, freezing, class weighting and evaluation need to know
of the model (how it wants its images, whether it takes studies, which parameters are its
head and which its backbone, its own config fields) and builds the Flax module.

Each model's own config fields are the dataclass it is registered with
(`register(name, config=CNNConfig)`); this module tells `murajax.config` about them
(`config.set_options_lookup`), so that `config.model.widths` is read, set, parsed from the
command line and checked as the chosen model's field.
"""

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn

from murajax import config as config_lib
from murajax.config import ModelConfig
from murajax.models import weights_hub

ModelFactory = Callable[..., nn.Module]

_BUILD_FIELDS = ("dtype", "conv_impl")
"""Shared fields handed to a factory that takes them (besides `num_classes`)."""


@dataclasses.dataclass(frozen=True)
class Registration:
    """How a model was registered (see `register`)."""

    factory: ModelFactory
    normalization: str
    channels: int
    study_level: bool
    keras_weights: bool
    head: tuple[str, ...]
    encoder: str
    config: type | None = None  # its own config fields' dataclass; None: only the shared ones


_REGISTRY: dict[str, Registration] = {}


def register(
    name: str,
    *,
    config: type | None = None,
    normalization: str = "unit",
    channels: int = 1,
    study_level: bool = False,
    keras_weights: bool = False,
    head: tuple[str, ...] = ("head",),
    encoder: str = "encoder",
) -> Callable[[ModelFactory], ModelFactory]:
    """Registers a model factory under `name` so that configs can name it (`model.name`).

    `config`: the dataclass of the model's own config fields, each with a default; a config
    then sets them as `config.model.<field>` (`--config.model.<field>=...`), and the
    factory is called with all of them as keyword arguments. Without `config` the model takes
    only the fields every model shares (`model.name`, `num_classes`, `weights`, `dtype`,
    `conv_impl`, `freeze`), and a config that sets another is refused. The dataclass may
    define `check(self)`, raising `murajax.config.ConfigError` for a bad value (e.g.
    `raise murajax.config.invalid("model.width", self.width, "a number > 0")`); types are
    checked from its annotations.

    The factory is called as `factory(num_classes=..., **fields)`, plus `dtype` and
    `conv_impl` where it takes them, and returns a Flax linen Module whose
    `apply(variables, x, train=False)` maps NHWC images to logits.
    `normalization` ("unit", "imagenet" or "caffe") and `channels` (1 or 3) tell the input
    pipeline how the model wants its images.

    A `study_level` model instead maps study batches, images (B, V, H, W, C) with a
    `view_mask` (B, V) keyword, to one logit pair per study; its `config` has a field
    `backbone` (an image model's name), whose images it takes and whose own fields it takes
    too (the factory gets them); its per-view encoder's parameters are the subtree `encoder`
    (see "multiview").

    `head`: the top-level parameter groups of the classification head (what
    `model.freeze='backbone'` leaves trainable); a name ending in "*" is a prefix.

    `keras_weights=True` says that the model's backbone layers are named as a Keras
    application's, so that `load_keras_weights(name, path)` fills them and a config may set
    `model.weights` (as "vgg16" and "densenet169" do).

        @dataclasses.dataclass
        class TinyConfig:
            width: int = 16

        @murajax.models.register("tiny", config=TinyConfig)
        def tiny(num_classes=2, *, width=16, **kwargs):
            return MyModule(num_classes=num_classes, width=width)

    Raises `TypeError` for a `config` that is not a dataclass, has a field without a default
    or named as a shared field, or that the factory does not take.
    """

    def decorator(factory: ModelFactory) -> ModelFactory:
        _check_registration(name, factory, config, study_level)
        _REGISTRY[name] = Registration(
            factory,
            normalization,
            channels,
            study_level,
            keras_weights,
            tuple(head),
            encoder,
            config,
        )
        return factory

    return decorator


def _check_registration(
    name: str, factory: ModelFactory, config: type | None, study_level: bool
) -> None:
    """Raises `TypeError` for a `register(name, config=...)` that could not work."""
    if config is None:
        if study_level:
            raise TypeError(
                f"register({name!r}, study_level=True) needs config=, a dataclass with a field"
                " 'backbone' (the image model that encodes each view)"
            )
        return
    if not (isinstance(config, type) and dataclasses.is_dataclass(config)):
        raise TypeError(f"register({name!r}, config={config!r}): expected a dataclass")
    fields = [f for f in dataclasses.fields(config) if f.init]
    for f in fields:
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise TypeError(f"{config.__name__}.{f.name} has no default: every field needs one")
        if f.name in (*config_lib.SHARED_MODEL_FIELDS, "options"):
            raise TypeError(
                f"{config.__name__}.{f.name}: every model has `model.{f.name}` already"
                " (a config dataclass holds only the model's own fields)"
            )
    if study_level and "backbone" not in {f.name for f in fields}:
        raise TypeError(
            f"register({name!r}, study_level=True): {config.__name__} has no 'backbone'"
        )
    parameters = inspect.signature(factory).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        missing = [f.name for f in fields if f.name not in parameters]
        if missing:
            raise TypeError(
                f"register({name!r}, config={config.__name__}): its factory takes no"
                f" {', '.join(missing)}"
            )


def _options_classes(name: str, options: Mapping[str, Any]) -> tuple[type, ...] | None:
    """The config dataclasses whose fields model `name` takes: its own, and a study model's
    backbone's (the backbone named in `options`, else its config's default); None for an
    unregistered name or backbone, or a backbone that is itself a study model."""
    registration = _REGISTRY.get(name) if isinstance(name, str) else None
    if registration is None:
        return None
    own = () if registration.config is None else (registration.config,)
    if not registration.study_level:
        return own
    backbone_name = _backbone_name(registration, options)
    backbone = _REGISTRY.get(backbone_name) if isinstance(backbone_name, str) else None
    if backbone is None or backbone.study_level:
        return None
    return own + (() if backbone.config is None else (backbone.config,))


def _backbone_name(registration: Registration, options: Mapping[str, Any]) -> str:
    """The backbone a study model's `options` name (else its config dataclass's default)."""
    if "backbone" in options:
        return options["backbone"]
    return config_lib.option_defaults((registration.config,))["backbone"]


config_lib.set_options_lookup(_options_classes)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A config's model, resolved once (`resolve`): what the rest of murajax needs of it.

    `options` is the model's own config dataclass (e.g. a `CNNConfig`), filled from
    `config.options` (None for a model registered without `config=`); a study model's
    backbone's is `backbone_options`. Read a model's fields through them:
    `spec.options.view_pooling`."""

    config: ModelConfig
    normalization: str  # how it wants its images (a study model: as its backbone)
    channels: int
    study_level: bool  # takes study batches (B, V, H, W, C) + `view_mask` (B, V)
    head: tuple[str, ...]  # the top-level parameter groups of its head ("x*": a prefix)
    encoder: str | None  # a study model's per-view encoder subtree; None for image models
    weights_model: str  # the model whose Keras file `model.weights` holds
    factory: ModelFactory = dataclasses.field(repr=False)
    num_classes: int = 2  # the size of its logits: the dataset's number of labels
    options: Any = None  # its own config dataclass (`register(..., config=...)`), filled
    backbone_options: Any = None  # a study model's backbone's; None for image models

    @property
    def name(self) -> str:
        """The registered name (`model.name`)."""
        return self.config.name

    @property
    def predicts(self) -> str:
        """What one prediction is of: "studies" or "images"."""
        return "studies" if self.study_level else "images"

    def is_head(self, group: str) -> bool:
        """Whether the top-level parameter group `group` belongs to the head."""
        return any(group.startswith(h[:-1]) if h.endswith("*") else group == h for h in self.head)

    def input_shape(self, image_size: int, batch_size: int) -> tuple[int, ...]:
        """The shape of a batch of the model's inputs: NHWC images, or (B, 1, H, W, C)
        studies of one view for a study model."""
        if self.study_level:
            return (batch_size, 1, image_size, image_size, self.channels)
        return (batch_size, image_size, image_size, self.channels)

    def factory_kwargs(self) -> dict[str, Any]:
        """The keyword arguments its factory is built with: `model.dtype` and
        `model.conv_impl`, a study model's backbone's fields, then its own (`options`)."""
        fields = {name: getattr(self.config, name) for name in _BUILD_FIELDS}
        for options in (self.backbone_options, self.options):
            if options is not None:
                fields.update((f.name, getattr(options, f.name)) for f in _init_fields(options))
        return fields

    def build(self, **overrides: Any) -> nn.Module:
        """The Flax module, built with `factory_kwargs()` (and `overrides`).

        A factory with named keyword parameters receives those of the fields that it takes
        (its config dataclass's, which `register` checked it takes; `dtype` and `conv_impl`
        if it names them); one with `**kwargs` receives them all (the "multiview" factory,
        which hands its backbone the fields that backbone takes). The module holds no
        weights: `model.weights` is loaded into the variables by `pretrained_variables`
        (the trainer's `create_train_state`).
        """
        return _call_factory(
            self.name, self.factory, self.num_classes, {**self.factory_kwargs(), **overrides}
        )


def _init_fields(options: Any) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(options) if f.init]


def _registration(name: str) -> Registration:
    if not isinstance(name, str) or name not in _REGISTRY:
        valid = ", ".join(repr(n) for n in registered_names())
        raise ValueError(f"unknown model {name!r}: expected one of {valid}")
    return _REGISTRY[name]


def resolve(model_config: ModelConfig, num_classes: int | None = None) -> ModelSpec:
    """The `ModelSpec` of `model_config`: the one lookup of `model_config.name` (and of a
    study model's `backbone`). Raises `ValueError` for an unregistered name.

    Its `options` are built from the fields of `model_config.options` that the model takes;
    one it does not take is refused by validation (`config.check_model_options`), not here.

    `num_classes` is the dataset's number of labels (`DatasetSpec.num_classes`); without it,
    `model_config.num_classes`, else 2. A config that sets `model.num_classes` to another
    number than the dataset's is refused by `check_num_classes`."""
    registration = _registration(model_config.name)
    values = model_config.options
    inputs, weights_model, backbone_options = registration, model_config.name, None
    if registration.study_level:
        weights_model = _backbone_name(registration, values)
        inputs = _registration(weights_model)
        if inputs.config is not None:
            backbone_options = config_lib.make_options(inputs.config, values)
    return ModelSpec(
        config=model_config,
        normalization=inputs.normalization,
        channels=inputs.channels,
        study_level=registration.study_level,
        head=registration.head,
        encoder=registration.encoder if registration.study_level else None,
        weights_model=weights_model,
        factory=registration.factory,
        num_classes=num_classes or model_config.num_classes or 2,
        options=None
        if registration.config is None
        else config_lib.make_options(registration.config, values),
        backbone_options=backbone_options,
    )


def check_num_classes(model_config: ModelConfig, num_classes: int) -> None:
    """Raises a one-line `ConfigError` if `model.num_classes` is set and is not the
    dataset's number of labels."""
    if model_config.num_classes is not None and model_config.num_classes != num_classes:
        raise config_lib.invalid(
            "model.num_classes",
            model_config.num_classes,
            f"None or {num_classes} (the dataset's number of labels)",
        )


def registered_names() -> list[str]:
    """The names `create` accepts, built-in and user-registered."""
    return sorted(_REGISTRY)


def image_model_names() -> list[str]:
    """The registered image-level models (those a study model may take as `backbone`)."""
    return sorted(n for n, r in _REGISTRY.items() if not r.study_level)


def loads_keras_weights(name: str) -> bool:
    """Whether model `name` was registered with `keras_weights=True` (see `register`)."""
    return name in _REGISTRY and _REGISTRY[name].keras_weights


def is_study_model(name: str) -> bool:
    """Whether model `name` takes study batches (B, V, H, W, C) + `view_mask` (B, V)."""
    return _registration(name).study_level


def input_spec(model: str | ModelConfig) -> tuple[str, int]:
    """How a model wants its inputs: (normalization, channels).

    `model` is a registered name or a `ModelConfig`; a study-level model (e.g. "multiview")
    wants what its `backbone` wants, so it needs the `ModelConfig`.
    """
    if isinstance(model, str):
        if is_study_model(model):
            raise ValueError(
                f"model {model!r} prepares its images as its backbone does: pass its ModelConfig"
            )
        model = ModelConfig(name=model)
    spec = resolve(model)
    return spec.normalization, spec.channels


def weights_in_create_message(name: str, weights: Any) -> str:
    """Why `create(name, weights=...)` is refused, and what loads the file instead."""
    return (
        f"models.create({name!r}, weights={weights!r}): a Flax module holds no weights, so"
        f" create() cannot load them. Build the module without `weights` and load the file"
        f" into its variables: `models.load_keras_weights({name!r}, path)` gives the backbone's"
        f" variables (for create({name!r}, num_classes=None)), and"
        f" `models.pretrained_variables(ModelConfig(name={name!r}, weights=path),"
        f" model.init(...))` puts them into a model with a head; in a config, `model.weights`"
        f" is loaded by the trainer"
    )


def create(name: str, num_classes: int | None = 2, **kwargs: Any) -> nn.Module:
    """Builds the registered model `name`; `num_classes=None` gives the backbone's features.

    Returns a Flax linen Module, which holds no variables: they come from `model.init`, or
    from a Keras file through `load_keras_weights` / `pretrained_variables`. So `weights`
    is refused (a `TypeError` saying what to call instead) rather than silently ignored;
    `weights=None` is accepted.

        model = models.create("vgg16", num_classes=None)
        variables = models.load_keras_weights("vgg16", "vgg16_..._notop.h5")
        features = model.apply(variables, images)
    """
    factory = _registration(name).factory
    weights = kwargs.pop("weights", None)
    if weights is not None:
        raise TypeError(weights_in_create_message(name, weights))
    return factory(num_classes=num_classes, **kwargs)


def _call_factory(
    name: str, factory: ModelFactory, num_classes: int | None, fields: dict[str, Any]
) -> nn.Module:
    """`factory(num_classes=..., **fields)` with those of `fields` that it takes."""
    parameters = inspect.signature(factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    kwargs = {k: v for k, v in fields.items() if takes_any or k in parameters}
    return create(name, num_classes=num_classes, **kwargs)


def create_with_fields(name: str, num_classes: int | None, fields: dict[str, Any]) -> nn.Module:
    """Builds model `name` with those of `fields` that its factory takes.

    A factory with named keyword parameters receives the fields of those names; one with
    `**kwargs` receives them all. `fields` holds no `weights` (see `create`).
    """
    return _call_factory(name, _registration(name).factory, num_classes, fields)


def check_weights_field(spec: ModelSpec) -> None:
    """Raises a one-line `ConfigError` if `model.weights` is set for a model that has no
    Keras weights to load (see `register(..., keras_weights=True)`), or is "imagenet" for a
    model that has no ImageNet file to download (`weights_hub.IMAGENET_FILES`). Reads and
    downloads nothing."""
    weights = spec.config.weights
    if weights is None:
        return
    target = spec.weights_model
    owner = "the backbone " if target != spec.name else ""
    if not loads_keras_weights(target):
        which = ", ".join(repr(n) for n in registered_names() if loads_keras_weights(n))
        raise config_lib.invalid(
            "model.weights",
            weights,
            f"None: {owner}model {target!r} does not load weights (models that do:"
            f" {which or 'none registered'}, or a study model with one of them as backbone)",
        )
    if weights == weights_hub.IMAGENET and target not in weights_hub.IMAGENET_FILES:
        which = ", ".join(repr(n) for n in weights_hub.imagenet_models())
        raise config_lib.invalid(
            "model.weights",
            weights,
            f"the path of a Keras .h5 weights file: {owner}model {target!r} has no ImageNet"
            f" weights to download (models that have: {which}, or a study model with one of"
            " them as backbone)",
        )


def check_config(model_config: ModelConfig) -> ModelSpec:
    """Checks the fields of `model_config` that the registry decides (`model.name`, a study
    model's `model.backbone`, `model.weights`); returns its `ModelSpec` or raises
    `ConfigError`. (The model's own fields: `config.check_fields`.)"""
    config_lib.check_choice("model.name", model_config.name, tuple(registered_names()))
    registration = _registration(model_config.name)
    if registration.study_level:
        backbone = _backbone_name(registration, model_config.options)
        config_lib.check_choice("model.backbone", backbone, tuple(image_model_names()))
    spec = resolve(model_config)
    check_weights_field(spec)
    return spec


def create_from_config(model_config: ModelConfig) -> nn.Module:
    """Builds `model_config`'s Flax module (`resolve(model_config).build()`, after checking
    that `model.weights` belongs to a model that loads Keras weights, else `ConfigError`).
    The file is neither read nor downloaded here, so a trained workdir loads without it."""
    spec = resolve(model_config)
    check_weights_field(spec)
    return spec.build()
