"""Flax backbone variables -> a Keras `.h5` weights file: the inverse of `load_keras_weights`.

`save_keras_weights(name, variables, path)` writes the variables of
`create(name, num_classes=None)` (e.g. a seeded `init`, or a fine-tuned backbone) in the
legacy HDF5 layout that Keras's ImageNet files use (see `murajax.models.keras_weights`):

    /                           attrs: layer_names, backend, keras_version
    /<layer>                    attrs: weight_names ("<layer>/kernel:0" ...)
    /<layer>/<weight name>      one float32 dataset per weight

so that `load_keras_weights(name, path)` returns the same variables, and `model.weights=path`
starts a run from them, and Keras's own `model.load_weights(path)` loads them into the Keras
model. Layers are in the order the model calls them (`layer_call_order`), which is the Keras
model's layer order that its loader matches by position; within a layer, weights are in
Keras's order (kernel, bias; or gamma, beta, moving_mean, moving_variance). Names use Flax's
layer names ("conv1_conv", as Keras 3 names DenseNet's stem), which the loader matches
directly.

`write_legacy_h5(path, layers, style=...)` is the lower-level writer: any list of layers,
with weight names as Keras 1, 2 or 3 wrote them (the tests use it for files of each kind).
The file is written to a temporary name beside `path` and renamed into place, so a reader
never sees half a file.
"""

import os
from collections.abc import Mapping, Sequence
from typing import Any

import h5py
import numpy as np

from murajax import files
from murajax.models.keras_weights import backbone_shapes, layer_call_order, layer_specs

LegacyLayer = tuple[str, Sequence[tuple[str, Any]]]
"""(layer name, [(Keras role, value), ...]); roles: kernel, bias, gamma, beta, moving_mean,
moving_variance."""

STYLES = ("keras1", "keras2", "keras3", "opaque")

_KERAS1_NAMES = {"kernel": "W", "bias": "b"}


def weight_name(layer: str, role: str, style: str, index: int = 0) -> str:
    """A weight's name as each Keras wrote it: 'keras2' `block1_conv1/kernel:0`, 'keras3'
    `block1_conv1/kernel`, 'keras1' (VGG16's distributed file) `block1_conv1_W_1:0`; or
    'opaque' names that do not say what the weight is (`block1_conv1/param_0:0`)."""
    if style not in STYLES:
        raise ValueError(f"weight name style {style!r}: expected one of {STYLES}")
    if style == "keras1":
        return f"{layer}_{_KERAS1_NAMES.get(role, role)}_1:0"
    if style == "opaque":
        return f"{layer}/param_{index}:0"
    return f"{layer}/{role}" + (":0" if style == "keras2" else "")


def write_legacy_h5(
    path: str | os.PathLike, layers: Sequence[LegacyLayer], *, style: str = "keras2"
) -> str:
    """Writes `layers` in Keras's legacy `.h5` layout, weight names in `style`
    (`weight_name`), atomically (a temporary file renamed into place). Returns the path."""
    path = os.fspath(path)
    keras2 = style != "keras3"
    names = [[weight_name(n, r, style, i) for i, (r, _) in enumerate(ws)] for n, ws in layers]
    with files.replacing(path) as part, h5py.File(part, "w") as f:
        f.attrs["layer_names"] = np.array([name.encode() for name, _ in layers])
        f.attrs["backend"] = b"tensorflow" if keras2 else b"jax"
        f.attrs["keras_version"] = b"2.15.0" if keras2 else b"3.15.1"
        for (name, weights), weight_names in zip(layers, names, strict=True):
            group = f.require_group(name)
            group.attrs["weight_names"] = np.array([w.encode() for w in weight_names], "S")
            for dataset, (_, value) in zip(weight_names, weights, strict=True):
                group.create_dataset(dataset, data=np.asarray(value, np.float32))
    return path


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in np.shape(value))


def backbone_layers(name: str, variables: Mapping[str, Any]) -> list[LegacyLayer]:
    """The layers of `create(name, num_classes=None)`'s `variables` as Keras saves them.

    Raises `ValueError` naming every layer that is missing, unexpected (a head, another
    model's) or of another shape than the model's, so a written file always loads back.
    """
    specs = layer_specs(backbone_shapes(name))
    params = variables.get("params", {})
    stats = variables.get("batch_stats", {})
    present = list(params) + [layer for layer in stats if layer not in params]
    # Keras's loader matches a file's layers to the model's by position: the model's call order.
    order = {layer: i for i, layer in enumerate(layer_call_order(name))}
    present.sort(key=lambda layer: order.get(layer, len(order)))
    problems = []
    missing = [layer for layer in specs if layer not in present]
    unexpected = [layer for layer in present if layer not in specs]
    if missing:
        problems.append(f"missing layers {', '.join(missing)}")
    if unexpected:
        problems.append(f"layers that {name}'s backbone lacks {', '.join(unexpected)}")
    layers: list[LegacyLayer] = []
    for layer in present:
        if layer not in specs:
            continue
        weights = []
        for role, target in specs[layer].items():
            value = variables.get(target.collection, {}).get(layer, {}).get(target.flax_name)
            if value is None:
                problems.append(f"{layer} has no {target.collection}/{target.flax_name}")
            elif _shape(value) != target.shape:
                problems.append(f"{layer}/{role} has shape {_shape(value)}, not {target.shape}")
            else:
                weights.append((role, np.asarray(value, np.float32)))
        layers.append((layer, weights))
    if problems:
        raise ValueError(f"not the backbone variables of {name!r}: " + "; ".join(problems))
    return layers


def save_keras_weights(
    name: str, variables: Mapping[str, Any], path: str | os.PathLike, *, style: str = "keras2"
) -> str:
    """Writes the backbone `variables` of model `name` as a Keras `.h5` weights file.

    The inverse of `load_keras_weights(name, path)`, which returns the same values (as
    float32). Raises `ValueError` if `variables` are not `create(name, num_classes=None)`'s.
    Returns the path.

        model = models.create("vgg16", num_classes=None)
        variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
        models.save_keras_weights("vgg16", variables, "vgg16_seed0_notop.h5")
    """
    return write_legacy_h5(path, backbone_layers(name, variables), style=style)
