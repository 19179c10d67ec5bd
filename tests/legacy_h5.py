"""Test helper: write weights in Keras's legacy `.h5` layout with h5py, as Keras 2 and 3 do.

    /                          attrs: layer_names (every layer, with or without weights)
    /<layer>                   attrs: weight_names ("<layer>/kernel:0" in Keras 2, no ":0" in 3,
                                                "<layer>_W_1:0" in Keras 1)
    /<layer>/<weight name>     datasets (a '/' in a name nests groups, as in Keras's files)

Keras 3's `model.save_weights` only writes its new `.weights.h5` format, so the tests write
the legacy one themselves; `test_keras_parity` checks that Keras reads these files back.
"""

import os
from collections.abc import Mapping, Sequence

import h5py
import numpy as np

# (layer name, [(role, value), ...]); roles are Keras's: kernel, bias, gamma, beta, ...
LegacyLayer = tuple[str, Sequence[tuple[str, np.ndarray]]]

_KERAS_ROLES = {  # Flax (collection, name) -> Keras role, for a BatchNorm or another layer
    ("params", "scale"): "gamma",
    ("batch_stats", "mean"): "moving_mean",
    ("batch_stats", "var"): "moving_variance",
}


_KERAS1_NAMES = {"kernel": "W", "bias": "b"}


def weight_name(layer: str, role: str, style: str, index: int = 0) -> str:
    """A weight's name as each Keras wrote it: 'keras2' `block1_conv1/kernel:0`, 'keras3'
    `block1_conv1/kernel`, 'keras1' (VGG16's distributed file) `block1_conv1_W_1:0`; or
    'opaque' names that do not say what the weight is (`block1_conv1/param_0:0`)."""
    if style == "keras1":
        return f"{layer}_{_KERAS1_NAMES.get(role, role)}_1:0"
    if style == "opaque":
        return f"{layer}/param_{index}:0"
    return f"{layer}/{role}" + (":0" if style == "keras2" else "")


def write_legacy_h5(
    path: str | os.PathLike, layers: Sequence[LegacyLayer], *, style: str = "keras2"
) -> None:
    """Writes `layers` in the legacy layout, with weight names in `style` (`weight_name`)."""
    keras2 = style != "keras3"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([name.encode() for name, _ in layers])
        f.attrs["backend"] = b"tensorflow" if keras2 else b"jax"
        f.attrs["keras_version"] = b"2.15.0" if keras2 else b"3.15.1"
        for name, weights in layers:
            group = f.require_group(name)
            weight_names = [weight_name(name, r, style, i) for i, (r, _) in enumerate(weights)]
            group.attrs["weight_names"] = np.array([w.encode() for w in weight_names], dtype="S")
            for dataset, (_, value) in zip(weight_names, weights, strict=True):
                group.create_dataset(dataset, data=np.asarray(value, np.float32))


def flax_to_legacy_layers(
    variables: Mapping, order: Sequence[str] | None = None
) -> list[LegacyLayer]:
    """The layers of Flax backbone variables as Keras would save them (Keras's weight order:
    kernel, bias; or gamma, beta, moving_mean, moving_variance)."""
    params, stats = variables.get("params", {}), variables.get("batch_stats", {})
    layers = []
    for name in order or list(params):
        own = {("params", k): v for k, v in params.get(name, {}).items()}
        own |= {("batch_stats", k): v for k, v in stats.get(name, {}).items()}
        is_bn = ("params", "scale") in own
        ordered = (
            [
                ("params", "scale"),
                ("params", "bias"),
                ("batch_stats", "mean"),
                ("batch_stats", "var"),
            ]
            if is_bn
            else [("params", "kernel"), ("params", "bias")]
        )
        weights = []
        for key in ordered:
            if key in own:
                role = _KERAS_ROLES.get(key, "beta" if is_bn and key[1] == "bias" else key[1])
                weights.append((role, np.asarray(own[key])))
        layers.append((name, weights))
    return layers
