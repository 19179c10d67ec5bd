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
_NORMALIZATIONS: dict[str, tuple[str, int]] = {}


def register(
    name: str, *, normalization: str = "unit", channels: int = 1
) -> Callable[[ModelFactory], ModelFactory]:
    """Registers a model factory under `name` so that configs can name it (`model.name`).

    The factory is called as `factory(num_classes=..., **kwargs)` and returns a Flax linen
    Module whose `apply(variables, x, train=False)` maps NHWC images to logits.
    `normalization` ("unit", "imagenet" or "caffe") and `channels` (1 or 3) tell the input
    pipeline how the model wants its images.

        @murajax.models.register("tiny")
        def tiny(num_classes=2, **kwargs):
            return MyModule(num_classes=num_classes)
    """

    def decorator(factory: ModelFactory) -> ModelFactory:
        _FACTORIES[name] = factory
        _NORMALIZATIONS[name] = (normalization, channels)
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


def input_spec(name: str) -> tuple[str, int]:
    """How model `name` wants its inputs: (normalization, channels)."""
    if name not in _NORMALIZATIONS:
        raise ValueError(f"unknown model {name!r}: expected one of {registered_names()}")
    return _NORMALIZATIONS[name]


def create_from_config(model_config: "ModelConfig") -> nn.Module:
    """Builds `model_config.name` with the `ModelConfig` fields its factory takes.

    A factory with named keyword parameters receives the config fields of those names (the
    "cnn" factory takes `widths`, `convs_per_block`, `batch_norm`, `pooling`, `dense`,
    `dropout_rate`, `dtype`); one with `**kwargs` receives every field but `name`. A config
    that sets `weights` for a model whose factory cannot take them is an error rather than
    silently training from scratch.
    """
    name = model_config.name
    if name not in _FACTORIES:
        valid = ", ".join(repr(n) for n in registered_names())
        raise ValueError(f"unknown model {name!r}: expected one of {valid}")
    parameters = inspect.signature(_FACTORIES[name]).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    fields = {f.name: getattr(model_config, f.name) for f in dataclasses.fields(model_config)}
    del fields["name"]
    num_classes = fields.pop("num_classes")
    kwargs = {k: v for k, v in fields.items() if takes_any or k in parameters}
    if model_config.weights is not None and "weights" not in kwargs:
        raise ValueError(f"model {name!r} does not load weights, but model.weights is set")
    return create(name, num_classes=num_classes, **kwargs)
