"""Freezing and fine-tuning: which parameters train, and at which learning rate.

`model.freeze` names the frozen part of the network by its top-level parameter groups (the
keys of `params`) in model order, the order in which the model defines its submodules.
Flax's `init` returns them in that order, but anything that flattens the params as a pytree
(`jax.jit(model.init)`, `jax.eval_shape`, checkpoints) sorts the keys, which for DenseNet-169
puts the final "bn" first and "pool2_*" after "conv5_*". So `layer_order(model, shape)` finds
the model order by tracing `init` abstractly (DenseNet-169: about a second), and the functions
here take it as `order`; without it they use the order of `params` as given.

* "none": everything trains.
* "backbone": everything but the head. The head is the top-level "head" subtree (VGG16,
  DenseNet-169 and any model with such a subtree) or, for the "cnn", its "dense*" and
  "logits" layers.
* "up_to:<prefix>": every group up to and including the last one whose name starts with
  `<prefix>`, e.g. "up_to:block3" (VGG16, CNN) or "up_to:conv4" (DenseNet-169).

A study model ("multiview") keeps its backbone under "encoder": there the groups are the
encoder's layers, "encoder/<layer>", then "head" (the view pooling and the logits), so
"backbone" freezes the whole encoder and "up_to:block3" the encoder up to its block3.

`optim.backbone_lr_multiplier` (default 1) scales the updates of the trainable non-head
groups ("backbone" label) relative to the head's.

Frozen parameters get no update (`optax.set_to_zero` in `optim.make_optimizer`'s
`multi_transform`, so no weight decay either). Frozen BatchNorm layers keep their running
statistics: `train.train_step` puts the old `batch_stats` back for them after each step. They
still normalise with the batch's statistics in training (Keras would run a frozen BatchNorm in
inference mode; that would need the models to take a per-layer flag, which they do not).
"""

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from murajax import optim
from murajax.config import Config, invalid
from murajax.errors import ConfigError
from murajax.models import ModelSpec

FROZEN, BACKBONE, TRAINABLE = "frozen", "backbone", "trainable"
UP_TO = "up_to:"


def check_syntax(freeze: str) -> None:
    """Raises `ConfigError` unless `freeze` is "none", "backbone" or "up_to:<prefix>"."""
    if freeze in ("none", "backbone"):
        return
    if freeze.startswith(UP_TO) and freeze[len(UP_TO) :].strip():
        return
    valid = "'none', 'backbone' or 'up_to:<layer-prefix>' such as 'up_to:block3'"
    raise invalid("model.freeze", freeze, valid)


def _expand(names: Sequence[str], tree: Any, spec: ModelSpec) -> list[str]:
    """Top-level group names, with a study model's encoder split into "encoder/<layer>"."""
    encoder = spec.encoder
    if encoder is None:
        return list(names)
    out = []
    for name in names:
        if name == encoder and isinstance(tree.get(encoder), Mapping):
            out += [f"{encoder}/{layer}" for layer in tree[encoder]]
        else:
            out.append(name)
    return out


def head_groups(groups: list[str], spec: ModelSpec) -> set[str]:
    """The top-level parameter groups that make up the classification head."""
    return {g for g in groups if spec.is_head(g)}


def layer_order(model: Any, input_shape: Sequence[int], encoder: str = "encoder") -> list[str]:
    """`model`'s top-level parameter groups in definition order (an abstract trace of init);
    a study model's encoder layers (the subtree `encoder`) come first, as
    "encoder/<layer>"."""
    order: list[str] = []

    def init() -> Any:
        keys = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
        variables = model.init(keys, jnp.zeros(tuple(input_shape), jnp.float32))
        params = variables["params"]  # still dicts in insertion order while tracing
        order.extend(f"{encoder}/{g}" for g in params.get(encoder, {}))
        order.extend(g for g in params if g != encoder)
        return variables

    jax.eval_shape(init)
    return order


def _ordered(params: Any, order: Sequence[str] | None, spec: ModelSpec) -> list[str]:
    groups = _expand(list(params), params, spec)
    if order is None:
        return groups
    known = [g for g in order if g in set(groups)]
    return known + [g for g in groups if g not in set(known)]


def frozen_groups(
    params: Any, freeze: str, spec: ModelSpec, order: Sequence[str] | None = None
) -> set[str]:
    """The top-level parameter groups (keys of `params`) that `freeze` freezes.

    `order`: the groups in model order (`layer_order`); None: the order of `params`.
    """
    check_syntax(freeze)
    groups = _ordered(params, order, spec)
    if freeze == "none":
        return set()
    if freeze == "backbone":
        head = head_groups(groups, spec)
        if not head:
            raise ConfigError(
                f"config.model.freeze='backbone' is invalid for model {spec.name!r}: it has no"
                f" head parameters ('head', or 'dense*'/'logits' for the cnn); groups: "
                + _few(groups)
            )
        return set(groups) - head
    prefix = freeze[len(UP_TO) :]
    matches = [
        i
        for i, g in enumerate(groups)
        if g.startswith(prefix) or g.removeprefix(f"{spec.encoder}/").startswith(prefix)
    ]
    if not matches:
        raise ConfigError(
            f"config.model.freeze={freeze!r} is invalid for model {spec.name!r}: no layer"
            f" name starts with {prefix!r}; layers in order: {_few(groups)}"
        )
    return set(groups[: matches[-1] + 1])


def _few(groups: list[str], n: int = 8) -> str:
    shown = ", ".join(groups[:n])
    return shown + (f", ... ({len(groups)} in all)" if len(groups) > n else "")


def _by_group(tree: Any, value: Any, spec: ModelSpec) -> Any:
    """`tree` with every leaf of group g replaced by value(g) (groups as `_expand` names
    them: a study model's encoder layers are "encoder/<layer>")."""

    def by_group(subtree: Any, prefix: str) -> Any:
        return {
            g: jax.tree.map(lambda _, g=g: value(prefix + g), sub) for g, sub in subtree.items()
        }

    encoder = spec.encoder
    if encoder is None or encoder not in tree:
        return by_group(tree, "")
    rest = {g: sub for g, sub in tree.items() if g != encoder}
    return {encoder: by_group(tree[encoder], f"{encoder}/"), **by_group(rest, "")}


def trainable_mask(
    params: Any, freeze: str, spec: ModelSpec, order: Sequence[str] | None = None
) -> Any:
    """A pytree like `params` of bools: True where the parameter trains."""
    frozen = frozen_groups(params, freeze, spec, order)
    return _by_group(params, lambda g: g not in frozen, spec)


def batch_stats_mask(
    params: Any,
    batch_stats: Any,
    freeze: str,
    spec: ModelSpec,
    order: Sequence[str] | None = None,
) -> Any:
    """A pytree like `batch_stats` of bools: True where the running statistics update.

    A BatchNorm layer's statistics are frozen when its parameters (same top-level name) are.
    """
    frozen = frozen_groups(params, freeze, spec, order)
    return _by_group(batch_stats or {}, lambda g: g not in frozen, spec)


def param_labels(
    params: Any,
    freeze: str,
    spec: ModelSpec,
    backbone_lr_multiplier: float = 1.0,
    order: Sequence[str] | None = None,
) -> Any:
    """`optax.multi_transform` labels: "frozen", "backbone" (scaled learning rate) or
    "trainable" (the head, and everything when the multiplier is 1)."""
    frozen = frozen_groups(params, freeze, spec, order)
    head = head_groups(_expand(list(params), params, spec), spec)
    if backbone_lr_multiplier != 1.0 and not head:
        raise ConfigError(
            f"config.optim.backbone_lr_multiplier={backbone_lr_multiplier!r} needs a head, but"
            f" model {spec.name!r} has no 'head' parameters"
        )

    def label(g: str) -> str:
        if g in frozen:
            return FROZEN
        if backbone_lr_multiplier != 1.0 and g not in head:
            return BACKBONE
        return TRAINABLE

    return _by_group(params, label, spec)


def is_active(config: Config) -> bool:
    """Whether `config` freezes anything or scales the backbone's learning rate."""
    return config.model.freeze != "none" or config.optim.backbone_lr_multiplier != 1.0


def config_layer_order(config: Config, spec: ModelSpec, model: Any) -> list[str] | None:
    """`layer_order` of `model` (of `spec`) at `config`'s input size when "up_to:" needs it,
    else None."""
    if not config.model.freeze.startswith(UP_TO):
        return None
    shape = spec.input_shape(config.data.image_size, 1)
    return layer_order(model, shape, spec.encoder or "encoder")


def make_train_optimizer(
    config: Config,
    spec: ModelSpec,
    model: Any = None,
    order: Sequence[str] | None = None,
) -> optax.GradientTransformation:
    """`optim.make_optimizer` for `config` (whose model `spec` is), with freezing and the
    backbone multiplier.

    `model` gives the layer order for "up_to:" (unless `order` is given). Without freezing or
    a multiplier, exactly `optim.make_optimizer(config.optim, config.train.steps)` (so the
    optimiser state, and hence checkpoints, keep their structure).
    """
    labels = None
    if is_active(config):
        if order is None and model is not None:
            order = config_layer_order(config, spec, model)
        labels = functools.partial(
            param_labels,
            freeze=config.model.freeze,
            spec=spec,
            backbone_lr_multiplier=config.optim.backbone_lr_multiplier,
            order=None if order is None else tuple(order),
        )
    return optim.make_optimizer(config.optim, config.train.steps, param_labels=labels)
