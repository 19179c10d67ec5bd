"""Model registry: names in `config.model.name` -> factories that build Flax modules."""

import dataclasses
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import flax.linen as nn

if TYPE_CHECKING:
    from murajax.config import ModelConfig

ModelFactory = Callable[..., nn.Module]

_FACTORIES: dict[str, ModelFactory] = {}
_NORMALIZATIONS: dict[str, tuple[str, int] | None] = {}
_STUDY_MODELS: set[str] = set()


def register(
    name: str, *, normalization: str = "unit", channels: int = 1, study_level: bool = False
) -> Callable[[ModelFactory], ModelFactory]:
    """Registers a model factory under `name` so that configs can name it (`model.name`).

    The factory is called as `factory(num_classes=..., **kwargs)` and returns a Flax linen
    Module whose `apply(variables, x, train=False)` maps NHWC images to logits.
    `normalization` ("unit", "imagenet" or "caffe") and `channels` (1 or 3) tell the input
    pipeline how the model wants its images.

    A `study_level` model instead maps study batches, images (B, V, H, W, C) with a
    `view_mask` (B, V) keyword, to one logit pair per study, and its images are prepared as its
    `config.backbone`'s are (see "multiview").

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
        return factory

    return decorator


def registered_names() -> list[str]:
    """The names `create` accepts, built-in and user-registered."""
    return sorted(_FACTORIES)


def create(name: str, num_classes: int | None = 2, **kwargs: Any) -> nn.Module:
    """Builds the registered model `name`; `num_classes=None` gives the backbone's features."""
    if name not in _FACTORIES:
        valid = ", ".join(repr(n) for n in registered_names())
        raise ValueError(f"unknown model {name!r}: expected one of {valid}")
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
    `**kwargs` receives them all. Setting `weights` for a model whose factory cannot take them
    is an error rather than silently training from scratch.
    """
    if name not in _FACTORIES:
        valid = ", ".join(repr(n) for n in registered_names())
        raise ValueError(f"unknown model {name!r}: expected one of {valid}")
    parameters = inspect.signature(_FACTORIES[name]).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    kwargs = {k: v for k, v in fields.items() if takes_any or k in parameters}
    if fields.get("weights") is not None and "weights" not in kwargs:
        raise ValueError(f"model {name!r} does not load weights, but model.weights is set")
    return create(name, num_classes=num_classes, **kwargs)


def create_from_config(model_config: "ModelConfig") -> nn.Module:
    """Builds `model_config.name` with the `ModelConfig` fields its factory takes.

    A factory with named keyword parameters receives the config fields of those names (the
    "cnn" factory takes `widths`, `convs_per_block`, `batch_norm`, `pooling`, `dense`,
    `dropout_rate`, `dtype`); one with `**kwargs` receives every field but `name` (the
    "multiview" factory, which hands its backbone the fields that backbone takes).
    """
    fields = {f.name: getattr(model_config, f.name) for f in dataclasses.fields(model_config)}
    del fields["name"]
    num_classes = fields.pop("num_classes")
    return create_with_fields(model_config.name, num_classes, fields)
