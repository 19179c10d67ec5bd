"""Model registry: names in `config.model.name` -> factories that build Flax modules."""

import dataclasses
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import flax.linen as nn

from murajax import config as config_lib
from murajax.models import weights_hub

if TYPE_CHECKING:
    from murajax.config import ModelConfig

ModelFactory = Callable[..., nn.Module]

_FACTORIES: dict[str, ModelFactory] = {}
_NORMALIZATIONS: dict[str, tuple[str, int] | None] = {}
_STUDY_MODELS: set[str] = set()
_KERAS_WEIGHTS: set[str] = set()


def register(
    name: str,
    *,
    normalization: str = "unit",
    channels: int = 1,
    study_level: bool = False,
    keras_weights: bool = False,
) -> Callable[[ModelFactory], ModelFactory]:
    """Registers a model factory under `name` so that configs can name it (`model.name`).

    The factory is called as `factory(num_classes=..., **kwargs)` and returns a Flax linen
    Module whose `apply(variables, x, train=False)` maps NHWC images to logits.
    `normalization` ("unit", "imagenet" or "caffe") and `channels` (1 or 3) tell the input
    pipeline how the model wants its images.

    A `study_level` model instead maps study batches, images (B, V, H, W, C) with a
    `view_mask` (B, V) keyword, to one logit pair per study, and its images are prepared as its
    `config.backbone`'s are (see "multiview").

    `keras_weights=True` says that the model's backbone layers are named as a Keras
    application's, so that `load_keras_weights(name, path)` fills them and a config may set
    `model.weights` (as "vgg16" and "densenet169" do).

        @murajax.models.register("tiny")
        def tiny(num_classes=2, **kwargs):
            return MyModule(num_classes=num_classes)
    """

    def decorator(factory: ModelFactory) -> ModelFactory:
        _FACTORIES[name] = factory
        _NORMALIZATIONS[name] = None if study_level else (normalization, channels)
        if study_level:
            _STUDY_MODELS.add(name)
        else:
            _STUDY_MODELS.discard(name)
        if keras_weights:
            _KERAS_WEIGHTS.add(name)
        else:
            _KERAS_WEIGHTS.discard(name)
        return factory

    return decorator


def registered_names() -> list[str]:
    """The names `create` accepts, built-in and user-registered."""
    return sorted(_FACTORIES)


def loads_keras_weights(name: str) -> bool:
    """Whether model `name` was registered with `keras_weights=True` (see `register`)."""
    return name in _KERAS_WEIGHTS


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
    if name not in _FACTORIES:
        valid = ", ".join(repr(n) for n in registered_names())
        raise ValueError(f"unknown model {name!r}: expected one of {valid}")
    weights = kwargs.pop("weights", None)
    if weights is not None:
        raise TypeError(weights_in_create_message(name, weights))
    return _FACTORIES[name](num_classes=num_classes, **kwargs)


def is_study_model(name: str) -> bool:
    """Whether model `name` takes study batches (B, V, H, W, C) + `view_mask` (B, V)."""
    return name in _STUDY_MODELS


def input_spec(model: "str | ModelConfig") -> tuple[str, int]:
    """How a model wants its inputs: (normalization, channels).

    `model` is a registered name or a `ModelConfig`; a study-level model (e.g. "multiview")
    wants what its `backbone` wants, so it needs the `ModelConfig`.
    """
    name = model if isinstance(model, str) else model.name
    if name not in _NORMALIZATIONS:
        raise ValueError(f"unknown model {name!r}: expected one of {registered_names()}")
    spec = _NORMALIZATIONS[name]
    if spec is None:
        if isinstance(model, str):
            raise ValueError(
                f"model {name!r} prepares its images as its backbone does: pass its ModelConfig"
            )
        return input_spec(model.backbone)
    return spec


def input_shape(model_config: "ModelConfig", image_size: int, batch_size: int) -> tuple[int, ...]:
    """The shape of a batch of the model's inputs: NHWC images, or (B, 1, H, W, C) studies
    of one view for a study model."""
    _, channels = input_spec(model_config)
    if is_study_model(model_config.name):
        return (batch_size, 1, image_size, image_size, channels)
    return (batch_size, image_size, image_size, channels)


def create_with_fields(name: str, num_classes: int | None, fields: dict[str, Any]) -> nn.Module:
    """Builds model `name` with those of `fields` that its factory takes.

    A factory with named keyword parameters receives the fields of those names; one with
    `**kwargs` receives them all. `fields` holds no `weights` (see `create`).
    """
    if name not in _FACTORIES:
        valid = ", ".join(repr(n) for n in registered_names())
        raise ValueError(f"unknown model {name!r}: expected one of {valid}")
    parameters = inspect.signature(_FACTORIES[name]).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    kwargs = {k: v for k, v in fields.items() if takes_any or k in parameters}
    return create(name, num_classes=num_classes, **kwargs)


def weights_model(model_config: "ModelConfig") -> str:
    """The model whose Keras weights `model_config.weights` holds: the model itself, or a
    study model's ("multiview") `backbone`."""
    return model_config.backbone if is_study_model(model_config.name) else model_config.name


def check_weights_field(model_config: "ModelConfig") -> None:
    """Raises a one-line `ConfigError` if `model.weights` is set for a model that has no
    Keras weights to load (see `register(..., keras_weights=True)`), or is "imagenet" for a
    model that has no ImageNet file to download (`weights_hub.IMAGENET_FILES`). Reads and
    downloads nothing."""
    if model_config.weights is None:
        return
    target = weights_model(model_config)
    owner = "the backbone " if target != model_config.name else ""
    if not loads_keras_weights(target):
        which = ", ".join(repr(n) for n in sorted(_KERAS_WEIGHTS)) or "none registered"
        raise config_lib.invalid(
            "model.weights",
            model_config.weights,
            f"None: {owner}model {target!r} does not load weights (models that do: {which},"
            " or a study model with one of them as backbone)",
        )
    if model_config.weights == weights_hub.IMAGENET and target not in weights_hub.IMAGENET_FILES:
        which = ", ".join(repr(n) for n in weights_hub.imagenet_models())
        raise config_lib.invalid(
            "model.weights",
            model_config.weights,
            f"the path of a Keras .h5 weights file: {owner}model {target!r} has no ImageNet"
            f" weights to download (models that have: {which}, or a study model with one of"
            " them as backbone)",
        )


def create_from_config(model_config: "ModelConfig") -> nn.Module:
    """Builds `model_config.name` with the `ModelConfig` fields its factory takes.

    A factory with named keyword parameters receives the config fields of those names (the
    "cnn" factory takes `widths`, `convs_per_block`, `batch_norm`, `pooling`, `dense`,
    `dropout_rate`, `dtype`); one with `**kwargs` receives every field but `name` and
    `weights` (the "multiview" factory, which hands its backbone the fields that backbone
    takes).

    The Module holds no weights: `model.weights` (a Keras `.h5` file, or "imagenet") is
    checked to belong to a model that loads Keras weights (else a `ConfigError`) and is
    loaded into the variables at initialisation, by `pretrained_variables`, which the
    trainer's `create_train_state` calls. The file is neither read nor downloaded here, so a
    trained workdir loads without it.
    """
    check_weights_field(model_config)
    fields = {f.name: getattr(model_config, f.name) for f in dataclasses.fields(model_config)}
    del fields["name"], fields["weights"]
    num_classes = fields.pop("num_classes")
    return create_with_fields(model_config.name, num_classes, fields)
