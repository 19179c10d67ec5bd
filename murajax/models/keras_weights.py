"""Keras `.h5` weights -> Flax variables, for backbones that use Keras's layer names.

Keras's distributed ImageNet files (`vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5`,
`densenet169_weights_tf_dim_ordering_tf_kernels_notop.h5`, and the files with the top) use
the legacy HDF5 layout that Keras 1, 2 and 3 all write with `save_weights_to_hdf5_group`:

    /                    attrs: layer_names = [b"input_1", b"block1_conv1", ...]
    /<layer name>        attrs: weight_names = [b"block1_conv1/kernel:0", ...]  (may be empty)
    /<layer name>/<weight name>   one dataset per weight

Layer names may hold '/' (Keras 2's DenseNet stem 'conv1/conv'; HDF5 nests them as groups),
which Flax names cannot: murajax names that layer 'conv1_conv', as Keras 3 does. Weight names
end in ':0' in Keras 2 files and not in Keras 3 files; Keras 1 files (VGG16's) call a kernel
'block1_conv1_W_1:0'. Keras itself loads these files by order, not by name; here a layer is
matched by name and its weights by name where the names say which is which, else by order:
kernel, bias for convolutions and dense layers; gamma, beta, moving_mean, moving_variance for
BatchNorm (Flax's scale, bias, and the "batch_stats" mean, var). Kernel layouts are the same
in both (H, W, in, out), so values are copied as they are.

Only h5py reads the file; nothing is unpickled. `load_keras_weights` compares every
dataset's shape and dtype (which h5py gives without reading) with the model before it reads
any values, so a small file that declares a huge dataset is refused without allocating it;
datasets whose bytes live elsewhere (HDF5 external storage, virtual datasets) and soft or
external links are refused too, so a weights file never makes murajax read another file.
"""

import contextlib
import dataclasses
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import flax.linen as nn
import h5py
import jax
import jax.numpy as jnp
import numpy as np

from murajax.config import ModelConfig
from murajax.errors import WeightsError
from murajax.models import registry, weights_hub
from murajax.models.registry import ModelSpec

Variables = dict[str, Any]
Shape = tuple[int, ...]

log = logging.getLogger(__name__)

KERAS_TOP_LAYERS: dict[str, tuple[str, ...]] = {
    "vgg16": ("fc1", "fc2", "predictions"),
    "densenet169": ("predictions", "fc1000"),
}
"""ImageNet classifier layers of the files with the top: read past, never loaded."""

BATCH_NORM_ROLES = ("gamma", "beta", "moving_mean", "moving_variance")
DENSE_ROLES = ("kernel", "bias")

_FLAX_NAMES = {  # Keras role -> (Flax collection, Flax variable name)
    "kernel": ("params", "kernel"),
    "bias": ("params", "bias"),
    "gamma": ("params", "scale"),
    "beta": ("params", "bias"),
    "moving_mean": ("batch_stats", "mean"),
    "moving_variance": ("batch_stats", "var"),
}

_LIST_LIMIT = 8


@dataclasses.dataclass(frozen=True)
class KerasLayer:
    """One layer of a legacy Keras `.h5` file that holds weights: its values are numpy
    arrays (`read_keras_h5`) or the file's unread h5py datasets (`open_keras_h5`)."""

    name: str
    weight_names: tuple[str, ...]
    values: tuple[np.ndarray | h5py.Dataset, ...]


@dataclasses.dataclass(frozen=True)
class ExpectedWeight:
    """Where a Keras weight goes in the Flax variables, and the shape it must have."""

    collection: str
    flax_name: str
    shape: Shape


LayerSpec = dict[str, ExpectedWeight]  # Keras role -> target, in Keras's weight order


# --------------------------------------------------------------------------- reading the file


def _decode(value: Any) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def read_attribute_list(group: h5py.Group, name: str) -> list[str]:
    """A list-of-strings attribute, also when Keras split it into `name0`, `name1`, ... chunks
    (it does for attributes over HDF5's 64 KB header limit)."""
    if name in group.attrs:
        return [_decode(v) for v in np.atleast_1d(group.attrs[name])]
    values, chunk = [], 0
    while f"{name}{chunk}" in group.attrs:
        values += [_decode(v) for v in np.atleast_1d(group.attrs[f"{name}{chunk}"])]
        chunk += 1
    return values


def _hard_link_target(group: h5py.Group, name: str, path: str) -> Any:
    """The object `name` (a path below `group`, '/' nesting groups) through hard links only.

    Raises `WeightsError` for a soft or external link on the way (it could lead anywhere,
    another file included) and `KeyError` for a name that is not there."""
    node = group
    for part in (p for p in name.split("/") if p):
        link = node.get(part, getlink=True)
        if link is None:
            raise KeyError(f"{name} is not in the file")
        if not isinstance(link, h5py.HardLink):
            kind = "an external link" if isinstance(link, h5py.ExternalLink) else "a soft link"
            raise WeightsError(
                f"{path}: {node.name.rstrip('/')}/{part} is {kind}; murajax reads weights only"
                " from datasets stored in the file itself"
            )
        node = node[part]
    return node


def _checked_dataset(group: h5py.Group, name: str, path: str) -> h5py.Dataset:
    """The dataset `name` below `group`, unread; refuses (`WeightsError`) links, external
    storage and virtual datasets, whose bytes come from other files."""
    dataset = _hard_link_target(group, name, path)
    if not isinstance(dataset, h5py.Dataset):
        raise KeyError(f"{name} is not a dataset")
    where = f"{path}: dataset {dataset.name}"
    if dataset.external:
        raise WeightsError(
            f"{where} keeps its values in external files ({dataset.external[0][0]}, ...);"
            " murajax reads weights only from datasets stored in the file itself"
        )
    if dataset.is_virtual:
        raise WeightsError(
            f"{where} is a virtual dataset (its values come from other datasets or files);"
            " murajax reads weights only from datasets stored in the file itself"
        )
    return dataset


@contextlib.contextmanager
def open_keras_h5(path: str | os.PathLike) -> Iterator[list[KerasLayer]]:
    """The layers that hold weights in a legacy Keras `.h5` weights file, in file order, with
    their values as the file's h5py datasets: shapes and dtypes known, nothing read yet
    (valid inside the `with` block, which keeps the file open).

    Also reads a whole-model `.h5` (its "model_weights" group). Raises FileNotFoundError for a
    missing path and `WeightsError` for a file that is not a legacy Keras weights file or whose
    datasets are links, external storage or virtual (see `_checked_dataset`).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"Keras weights file {path} does not exist (expected a Keras .h5 weights file,"
            " such as keras.applications' *_weights_tf_dim_ordering_tf_kernels_notop.h5)"
        )
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise WeightsError(f"{path} is not an HDF5 file ({_first_line(e)})") from None
    with f:
        root = f
        if "layer_names" not in f.attrs and "model_weights" in f:
            root = _hard_link_target(f, "model_weights", path)
        layer_names = read_attribute_list(root, "layer_names")
        if not layer_names:
            raise WeightsError(
                f"{path} is not a legacy Keras .h5 weights file (no 'layer_names' attribute);"
                " Keras 3's `.weights.h5` format is not supported: use the files that"
                " keras.applications downloads (*_weights_tf_dim_ordering_tf_kernels*.h5)"
            )
        layers = []
        for name in layer_names:
            try:
                group = _hard_link_target(root, name, path)
                if not isinstance(group, h5py.Group):
                    raise KeyError(f"{name} is not a group")
                weight_names = tuple(read_attribute_list(group, "weight_names"))
                datasets = tuple(_checked_dataset(group, w, path) for w in weight_names)
            except WeightsError:
                raise
            except (OSError, KeyError, ValueError, TypeError) as e:  # listed but absent, damaged
                raise WeightsError(
                    f"{path} is damaged: layer {name} cannot be read ({_first_line(e)});"
                    " download the weights file again"
                ) from None
            if weight_names:
                layers.append(KerasLayer(name, weight_names, datasets))
        yield layers


def read_dataset(dataset: np.ndarray | h5py.Dataset, path: str) -> np.ndarray:
    """The values of a dataset of the file `path` (an array comes back as it is); a dataset
    that cannot be read (damaged, an unavailable filter) is a one-line `WeightsError`."""
    try:
        return np.asarray(dataset[()])
    except (OSError, ValueError, TypeError) as e:
        raise WeightsError(
            f"{path} is damaged: dataset {dataset.name} cannot be read ({_first_line(e)});"
            " download the weights file again"
        ) from None


def read_keras_h5(path: str | os.PathLike) -> list[KerasLayer]:
    """The layers that hold weights in a legacy Keras `.h5` weights file, in file order, with
    every value read (all of the file's weights in memory: `load_keras_weights` checks shapes
    against a model first, and reads only what fits).

    Raises as `open_keras_h5` does.
    """
    with open_keras_h5(path) as layers:
        return [
            dataclasses.replace(
                layer, values=tuple(read_dataset(v, os.fspath(path)) for v in layer.values)
            )
            for layer in layers
        ]


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0].strip()


# --------------------------------------------------------------------------- names


def flax_layer_name(keras_name: str) -> str:
    """The Flax name of a Keras layer: '/' (Keras 2's 'conv1/conv') becomes '_'."""
    return keras_name.replace("/", "_")


_ROLE = re.compile(r"^(kernel|bias|gamma|beta|moving_mean|moving_variance)(?:_\d+)?$")
_KERAS1_ROLE = re.compile(r"(?:^|_)(W|b|gamma|beta|running_mean)(?:_\d+)?$")
_KERAS1_ROLES = {"W": "kernel", "b": "bias", "running_mean": "moving_mean"}


def weight_role(weight_name: str) -> str | None:
    """What a Keras weight is ('kernel', 'bias', 'gamma', 'beta', 'moving_mean',
    'moving_variance') from its name, or None when the name does not say.

    >>> weight_role("conv1/bn/moving_variance:0"), weight_role("block1_conv1/kernel")
    ('moving_variance', 'kernel')
    >>> weight_role("block1_conv1_W_1:0"), weight_role("block1_conv1_b_1:0")  # Keras 1
    ('kernel', 'bias')
    """
    last = re.sub(r":\d+$", "", weight_name).rsplit("/", 1)[-1]
    match = _ROLE.match(last)
    if match:
        return match.group(1)
    match = _KERAS1_ROLE.search(last)
    if match:
        return _KERAS1_ROLES.get(match.group(1), match.group(1))
    return None


# --------------------------------------------------------------------------- the model's side


def layer_specs(variables_shapes: Mapping[str, Any]) -> dict[str, LayerSpec]:
    """What each layer of a Flax backbone expects from Keras, from its variables' shapes.

    `variables_shapes` is `model.init`'s output (or `jax.eval_shape` of it) for a model whose
    layers are the top-level entries of "params": a layer with a "scale" (or BatchNorm
    statistics) is a BatchNorm, any other a convolution or dense layer.
    """
    params = variables_shapes.get("params", {})
    stats = variables_shapes.get("batch_stats", {})
    specs: dict[str, LayerSpec] = {}
    for layer in sorted(set(params) | set(stats)):
        own = {("params", k): v for k, v in params.get(layer, {}).items()}
        own |= {("batch_stats", k): v for k, v in stats.get(layer, {}).items()}
        if any(not hasattr(v, "shape") for v in own.values()):
            raise ValueError(f"layer {layer!r} has nested modules: cannot map Keras weights to it")
        is_bn = ("params", "scale") in own or layer in stats
        spec = {}
        for role in BATCH_NORM_ROLES if is_bn else DENSE_ROLES:
            collection, flax_name = _FLAX_NAMES[role]
            if (collection, flax_name) in own:
                shape = tuple(own[collection, flax_name].shape)
                spec[role] = ExpectedWeight(collection, flax_name, shape)
        specs[layer] = spec
    return specs


def backbone_shapes(name: str) -> Variables:
    """Shapes of the variables of `create(name, num_classes=None)`, computed without FLOPs."""
    spec = registry.resolve(ModelConfig(name=name))
    model = registry.create(name, num_classes=None)
    x = jax.ShapeDtypeStruct((1, 32, 32, spec.channels), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)


def layer_call_order(name: str) -> list[str]:
    """The names of `create(name, num_classes=None)`'s submodules in the order its forward pass
    first calls them (traced, without FLOPs): the order of a Keras model's layers, by which
    Keras's own `.h5` loader matches a file's layers. (A variables dict has lost that order:
    pytrees sort their keys.)"""
    spec = registry.resolve(ModelConfig(name=name))
    model = registry.create(name, num_classes=None)
    order: dict[str, None] = {}

    def record(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and context.module.name is not None:
            order.setdefault(context.module.name, None)
        return next_fun(*args, **kwargs)

    x = jax.ShapeDtypeStruct((1, 32, 32, spec.channels), jnp.float32)
    with nn.intercept_methods(record):
        jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    return list(order)


# --------------------------------------------------------------------------- matching


def _listing(names: Iterable[str]) -> str:
    names = list(names)
    shown = ", ".join(names[:_LIST_LIMIT])
    more = len(names) - _LIST_LIMIT
    return shown + (f" (+{more} more)" if more > 0 else "")


def _shape_text(shape: Shape) -> str:
    return "(" + ",".join(str(d) for d in shape) + ")"


def match_layer(
    layer: KerasLayer, spec: LayerSpec
) -> tuple[list[tuple[ExpectedWeight, Any]], list[str]]:
    """Pairs a Keras layer's weights with the Flax variables of `spec`: by name when every
    weight name says its role, else by Keras's order. Returns (pairs, problems); a weight of
    another shape, or not of floats, is a problem. Reads no values (only shapes and dtypes)."""
    name = flax_layer_name(layer.name)
    roles = [weight_role(w) for w in layer.weight_names]
    if None in roles and len(roles) == len(spec):
        roles = list(spec)  # names that say nothing: Keras's own rule, the file's order
    if sorted(map(str, roles)) != sorted(spec):
        found = ", ".join(r or w for r, w in zip(roles, layer.weight_names, strict=True))
        return [], [f"{name} holds weights [{found}], the model expects [{', '.join(spec)}]"]
    pairs, problems = [], []
    for role, value in zip(roles, layer.values, strict=True):
        target = spec[role]
        if tuple(value.shape) != target.shape:
            problems.append(
                f"shape mismatch {name}/{role} {_shape_text(value.shape)} in the file vs"
                f" {_shape_text(target.shape)} in the model"
            )
        elif value.dtype.kind != "f":
            problems.append(f"{name}/{role} holds {value.dtype} values, the model expects floats")
        else:
            pairs.append((target, value))
    return pairs, problems


def keras_layers_to_variables(
    name: str, layers: list[KerasLayer], specs: Mapping[str, LayerSpec], source: str
) -> tuple[Variables, list[str]]:
    """Flax variables for the layers of `specs` from a file's `layers`; (variables, ignored).

    `ignored` lists the file's ImageNet top layers (`KERAS_TOP_LAYERS`). Anything else that
    does not fit (missing layers, unexpected layers, weights that differ in number, shape or
    dtype) raises one `WeightsError` that lists all of it, before any value is read (the
    `layers` of `open_keras_h5` hold unread datasets).
    """
    tops = set(KERAS_TOP_LAYERS.get(name, ()))
    by_name = {flax_layer_name(layer.name): layer for layer in layers}
    ignored = [n for n in by_name if n in tops]
    unexpected = [n for n in by_name if n not in specs and n not in tops]
    missing = [n for n in specs if n not in by_name]
    if len(missing) == len(specs):
        raise WeightsError(
            f"{name} weights from {source}: none of the model's {len(specs)} layers is in the"
            f" file, which holds {_listing(by_name)}: is it the weights of another model?"
        )
    problems = []
    if missing:
        problems.append(f"missing layers {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected layers {_listing(unexpected)}")
    matched = []
    for layer_name, spec in specs.items():
        if layer_name not in by_name:
            continue
        pairs, layer_problems = match_layer(by_name[layer_name], spec)
        problems += layer_problems
        matched += [(layer_name, target, value) for target, value in pairs]
    if problems:
        raise WeightsError(f"{name} weights from {source}: " + "; ".join(problems))
    variables: Variables = {}  # read only now, when every shape is known to fit
    for layer_name, target, value in matched:
        collection = variables.setdefault(target.collection, {})
        collection.setdefault(layer_name, {})[target.flax_name] = jnp.asarray(
            read_dataset(value, source), jnp.float32
        )
    return variables, ignored


def load_keras_weights(name: str, path: str | os.PathLike) -> Variables:
    """The variables of `create(name, num_classes=None)` from a Keras `.h5` weights file.

    Returns `{"params": ..., "batch_stats": ...}` (no "batch_stats" for a model without
    BatchNorm), float32, ready for `model.apply` of the backbone; a file with Keras's ImageNet
    top loads its backbone and logs the top layers it ignores. A file that does not fit raises
    one `WeightsError` listing what does not fit. `path="imagenet"` is Keras's ImageNet file
    for `name` ("vgg16", "densenet169"), downloaded once into murajax's cache
    (`weights_hub.resolve_weights`).

        variables = load_keras_weights(
            "densenet169", "densenet169_weights_tf_dim_ordering_tf_kernels_notop.h5"
        )
        features = models.create("densenet169", num_classes=None).apply(variables, images)
        variables = load_keras_weights("vgg16", "imagenet")  # fetched once, then cached
    """
    path = weights_hub.resolve_weights(name, path)
    specs = layer_specs(backbone_shapes(name))
    with open_keras_h5(path) as layers:  # shapes and dtypes are checked before any read
        variables, ignored = keras_layers_to_variables(name, layers, specs, path)
    if ignored:
        log.info("%s weights from %s: ignored the top layers %s", name, path, ", ".join(ignored))
    return variables


# --------------------------------------------------------------------------- into a model


def replace_backbone(initial: Variables, loaded: Variables, source: str = "the file") -> Variables:
    """`initial` with each of `loaded`'s layers put in its place; the rest (a new head) kept.

    Raises `WeightsError` listing the layers `initial` lacks and the shapes that differ (e.g.
    a 1-channel model given 3-channel weights).
    """
    problems = []
    merged = {collection: dict(layers) for collection, layers in initial.items()}
    for collection, layers in loaded.items():
        target = merged.setdefault(collection, {})
        for layer, values in layers.items():
            if layer not in target:
                problems.append(f"the model has no {collection} layer {layer}")
                continue
            for var, value in values.items():
                old = target[layer].get(var)
                if old is None or old.shape != value.shape:
                    old_shape = "nothing" if old is None else _shape_text(old.shape)
                    problems.append(
                        f"shape mismatch {layer}/{var} {_shape_text(value.shape)} in the file vs"
                        f" {old_shape} in the model"
                    )
            target[layer] = dict(values)
    if problems:
        raise WeightsError(f"weights from {source}: " + "; ".join(problems))
    return merged


def _spec(model: ModelConfig | ModelSpec) -> ModelSpec:
    return model if isinstance(model, ModelSpec) else registry.resolve(model)


def weights_file(model: ModelConfig | ModelSpec) -> str | None:
    """The Keras file `model.weights` names (of a `ModelConfig`, or of a resolved
    `ModelSpec`'s config), downloaded first if it is "imagenet"
    (`weights_hub.resolve_weights`); None without weights. Raises as `pretrained_variables`
    does for a model or download that does not fit, so a trainer can call it before any
    compute."""
    spec = _spec(model)
    if spec.config.weights is None:
        return None
    registry.check_weights_field(spec)
    return weights_hub.resolve_weights(spec.weights_model, spec.config.weights)


def pretrained_variables(model: ModelConfig | ModelSpec, initial_variables: Variables) -> Variables:
    """`initial_variables` with the backbone loaded from `model.weights`, if set (`model`: a
    `ModelConfig`, or its resolved `ModelSpec`).

    The trainer calls this on `model.init`'s output: the backbone comes from the Keras file
    (`load_keras_weights(name, model.weights)`), the new head stays as initialised. For a
    study model ("multiview") the file holds its `backbone`'s weights and fills its
    "encoder". Without `weights`, `initial_variables` come back unchanged.
    `weights="imagenet"` is Keras's ImageNet file for the model, downloaded once into
    murajax's cache (`weights_hub.resolve_weights`).

    Raises `ConfigError` if the model loads no Keras weights (or has no ImageNet file),
    `FileNotFoundError` for a missing file and `WeightsError` for a download that fails or a
    file that is damaged, not Keras weights, another model's, or of other shapes (each names
    the file and what does not fit).
    """
    spec = _spec(model)
    path = weights_file(spec)
    if path is None:
        return initial_variables
    loaded = load_keras_weights(spec.weights_model, path)
    if spec.encoder is None:
        return replace_backbone(initial_variables, loaded, source=path)
    # A study model ("multiview"): the file is its backbone's, loaded into its encoder.
    key = spec.encoder
    encoder = {c: layers[key] for c, layers in initial_variables.items() if key in layers}
    encoder = replace_backbone(encoder, loaded, source=path)
    return {
        c: {**layers, **({key: encoder[c]} if c in encoder else {})}
        for c, layers in initial_variables.items()
    }
