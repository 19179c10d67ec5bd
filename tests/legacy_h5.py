"""Test helper: write weights in Keras's legacy `.h5` layout with h5py, as Keras 2 and 3 do.

    /                          attrs: layer_names (every layer, with or without weights)
    /<layer>                   attrs: weight_names ("<layer>/kernel:0" in Keras 2, no ":0" in 3,
                                                "<layer>_W_1:0" in Keras 1)
    /<layer>/<weight name>     datasets (a '/' in a name nests groups, as in Keras's files)

Keras 3's `model.save_weights` only writes its new `.weights.h5` format, so murajax writes
the legacy one itself (`murajax.models.keras_save`, whose writer this module re-exports);
`test_keras_parity` checks that Keras reads these files back. `flax_to_legacy_layers` turns
any Flax variables (not only a registered backbone's) into layers for it.
"""

from collections.abc import Mapping, Sequence

import numpy as np

# The writer is the library's (`murajax.models.keras_save`); re-exported for the tests.
from murajax.models.keras_save import LegacyLayer, weight_name, write_legacy_h5  # noqa: F401

_KERAS_ROLES = {  # Flax (collection, name) -> Keras role, for a BatchNorm or another layer
    ("params", "scale"): "gamma",
    ("batch_stats", "mean"): "moving_mean",
    ("batch_stats", "var"): "moving_variance",
}


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
