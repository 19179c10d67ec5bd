"""Model registry: names in `config.model.name` -> factories that build Flax modules.

`resolve(model_config)` is where a config's model name is looked up, once: it returns a
`ModelSpec`, which is all that data, freezing, class weighting and evaluation need to know
of the model (how it wants its images, whether it takes studies, which parameters are its
head and which its backbone) and builds the Flax module.
"""

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import flax.linen as nn

from murajax import config as config_lib
from murajax.config import ModelConfig
from murajax.models import weights_hub

ModelFactory = Callable[..., nn.Module]


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


_REGISTRY: dict[str, Registration] = {}


def register(
    name: str,
    *,
    normalization: str = "unit",
    channels: int = 1,
    study_level: bool = False,
    keras_weights: bool = False,
    head: tuple[str, ...] = ("head",),
    encoder: str = "encoder",
) -> Callable[[ModelFactory], ModelFactory]:
    """Registers a model factory under `name` so that configs can name it (`model.name`).

    The factory is called as `factory(num_classes=..., **kwargs)` and returns a Flax linen
    Module whose `apply(variables, x, train=False)` maps NHWC images to logits.
    `normalization` ("unit", "imagenet" or "caffe") and `channels` (1 or 3) tell the input
    pipeline how the model wants its images.

    A `study_level` model instead maps study batches, images (B, V, H, W, C) with a
    `view_mask` (B, V) keyword, to one logit pair per study; its images are prepared as its
    `config.backbone`'s are, and its per-view encoder's parameters are the subtree `encoder`
    (see "multiview").

    `head`: the top-level parameter groups of the classification head (what
    `model.freeze='backbone'` leaves trainable); a name ending in "*" is a prefix.

    `keras_weights=True` says that the model's backbone layers are named as a Keras
    application's, so that `load_keras_weights(name, path)` fills them and a config may set
    `model.weights` (as "vgg16" and "densenet169" do).

        @murajax.models.register("tiny")
        def tiny(num_classes=2, **kwargs):
            return MyModule(num_classes=num_classes)
    """

    def decorator(factory: ModelFactory) -> ModelFactory:
        _REGISTRY[name] = Registration(
            factory, normalization, channels, study_level, keras_weights, tuple(head), encoder
        )
        return factory

    return decorator


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A config's model, resolved once (`resolve`): what the rest of murajax needs of it."""

    config: ModelConfig
    normalization: str  # how it wants its images (a study model: as its backbone)
    channels: int
    study_level: bool  # takes study batches (B, V, H, W, C) + `view_mask` (B, V)
    head: tuple[str, ...]  # the top-level parameter groups of its head ("x*": a prefix)
    encoder: str | None  # a study model's per-view encoder subtree; None for image models
    weights_model: str  # the model whose Keras file `model.weights` holds
    factory: ModelFactory = dataclasses.field(repr=False)
    num_classes: int = 2  # the size of its logits: the dataset's number of labels

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

    def build(self, **overrides: Any) -> nn.Module:
        """The Flax module, built with the config fields its factory takes (and `overrides`).

        A factory with named keyword parameters receives the config fields of those names
        (the "cnn" factory takes `widths`, `convs_per_block`, `batch_norm`, `pooling`,
        `dense`, `dropout_rate`, `dtype`); one with `**kwargs` receives every field but
        `name` and `weights` (the "multiview" factory, which hands its backbone the fields
        that backbone takes). The module holds no weights: `model.weights` is loaded into
        the variables by `pretrained_variables` (the trainer's `create_train_state`).
        """
        fields = dataclasses.asdict(self.config)
        del fields["name"], fields["weights"]
        del fields["num_classes"]
        return _call_factory(self.name, self.factory, self.num_classes, {**fields, **overrides})


def _registration(name: str) -> Registration:
    if name not in _REGISTRY:
        valid = ", ".join(repr(n) for n in registered_names())
        raise ValueError(f"unknown model {name!r}: expected one of {valid}")
    return _REGISTRY[name]


def resolve(model_config: ModelConfig, num_classes: int | None = None) -> ModelSpec:
    """The `ModelSpec` of `model_config`: the one lookup of `model_config.name` (and of a
    study model's `backbone`). Raises `ValueError` for an unregistered name.

    `num_classes` is the dataset's number of labels (`DatasetSpec.num_classes`); without it,
    `model_config.num_classes`, else 2. A config that sets `model.num_classes` to another
    number than the dataset's is refused by `check_num_classes`."""
    registration = _registration(model_config.name)
    inputs, weights_model = registration, model_config.name
    if registration.study_level:
        inputs, weights_model = _registration(model_config.backbone), model_config.backbone
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
    """Checks the fields of `model_config` that the registry decides (`model.name`,
    `model.backbone`, `model.weights`); returns its `ModelSpec` or raises `ConfigError`."""
    config_lib.check_choice("model.name", model_config.name, tuple(registered_names()))
    config_lib.check_choice("model.backbone", model_config.backbone, tuple(image_model_names()))
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
