"""murajax's VGG16 and DenseNet-169 against Keras itself: same feature maps, same counts.

Keras (KERAS_BACKEND=jax) builds `keras.applications.VGG16` and `DenseNet169` with
`weights=None, include_top=False` at 32x32; every weight is randomised, BatchNorm moving
statistics included; the weights go to legacy `.h5` files in Keras 2's names (with ':0', and
DenseNet's 'conv1/conv' stem) and Keras 3's (without ':0'), and to a whole-model `.h5` from
Keras 3's own `model.save`; `load_keras_weights` reads each, and murajax's feature map must
equal Keras's `predict` to a relative 1e-4 (measured: under 1e-6 for both).
"""

import os

os.environ["KERAS_BACKEND"] = "jax"  # before keras is imported, here or by TensorFlow

import functools  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from murajax import models  # noqa: E402
from tests.legacy_h5 import LegacyLayer, write_legacy_h5  # noqa: E402

SIZE = 32  # the smallest input DenseNet accepts in Keras
TOLERANCE = 1e-4  # max |murajax - keras| / max |keras|

KERAS_APPLICATIONS = {
    "vgg16": keras.applications.VGG16,
    "densenet169": keras.applications.DenseNet169,
}
KERAS2_RENAMES = {"conv1_conv": "conv1/conv", "conv1_bn": "conv1/bn", "conv1_relu": "conv1/relu"}
"""Keras 2 (and its distributed DenseNet files) named the stem with '/'; Keras 3 with '_'."""


def randomise(model: keras.Model, seed: int = 0) -> None:
    """New random values for every weight: He-scaled kernels, small biases, BatchNorm gammas,
    betas, moving means and (positive) moving variances, so BatchNorm does real work."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        values = []
        for weight in layer.weights:
            role, shape = weight.path.rsplit("/", 1)[-1], tuple(weight.shape)
            if role == "kernel":
                value = rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[:-1])), shape)
            elif role in ("gamma", "moving_variance"):
                value = rng.uniform(0.5, 1.5, shape)
            else:  # bias, beta, moving_mean
                value = rng.normal(0.0, 0.1, shape)
            values.append(value.astype(np.float32))
        if values:
            layer.set_weights(values)


def keras_layers(model: keras.Model, renames: dict[str, str] | None = None) -> list[LegacyLayer]:
    """Every layer of `model` (weightless ones too, as Keras saves them) with its weights in
    Keras's legacy order: trainable, then non-trainable."""
    renames = renames or {}
    layers = []
    for layer in model.layers:
        weights = layer.trainable_weights + layer.non_trainable_weights
        roles = [(w.path.rsplit("/", 1)[-1], np.asarray(w.numpy())) for w in weights]
        layers.append((renames.get(layer.name, layer.name), roles))
    return layers


@functools.cache
def _jitted_apply(name: str):
    return jax.jit(models.create(name, num_classes=None).apply)


def exact(fn):
    """`fn` with float32 convolutions computed in float32 (GPUs would otherwise use TF32)."""

    def call(*args, **kwargs):
        with jax.default_matmul_precision("highest"):
            return fn(*args, **kwargs)

    return call


def relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.max(np.abs(ours - reference)) / np.max(np.abs(reference)))


@pytest.fixture(scope="module", params=sorted(KERAS_APPLICATIONS))
def reference(request, tmp_path_factory) -> dict:
    """A randomised Keras backbone, its output on random images, and its weights files.

    DenseNet-169 costs about 35 s on 2 busy CPU cores (Keras builds it in ~20 s, then Keras's
    `predict` and murajax's forward pass each compile), VGG16 about 10 s."""
    name = request.param
    assert keras.backend.backend() == "jax", (
        f"keras runs on {keras.backend.backend()!r}: it was imported before this module set"
        " KERAS_BACKEND=jax"
    )
    start = time.perf_counter()
    model = KERAS_APPLICATIONS[name](weights=None, include_top=False, input_shape=(SIZE, SIZE, 3))
    randomise(model)
    x = np.random.default_rng(1).normal(size=(2, SIZE, SIZE, 3)).astype(np.float32)
    folder = tmp_path_factory.mktemp(name)
    paths = {
        "keras2": str(folder / f"{name}_keras2_notop.h5"),
        "keras3": str(folder / f"{name}_keras3_notop.h5"),
    }
    write_legacy_h5(paths["keras2"], keras_layers(model, KERAS2_RENAMES), style="keras2")
    write_legacy_h5(paths["keras3"], keras_layers(model), style="keras3")
    print(f"{name}: Keras build and files in {time.perf_counter() - start:.1f}s")
    return {
        "name": name,
        "model": model,
        "x": x,
        "expected": np.asarray(exact(model.predict)(x, verbose=0)),
        "paths": paths,
        "folder": folder,
    }


def check_parity(name: str, path: str, x: np.ndarray, expected: np.ndarray) -> float:
    variables = models.load_keras_weights(name, path)
    ours = np.asarray(exact(_jitted_apply(name))(variables, x))
    assert ours.shape == expected.shape
    error = relative_error(ours, expected)
    print(f"{name} ({os.path.basename(path)}): max relative error {error:.2e}")
    assert error < TOLERANCE
    return error


@pytest.mark.parametrize("style", ["keras2", "keras3"])
def test_feature_map_equals_keras(reference, style):
    check_parity(
        reference["name"], reference["paths"][style], reference["x"], reference["expected"]
    )


def test_reads_keras3_whole_model_h5(reference):
    """Keras 3's own legacy writer: `model.save("x.h5")` (weights under "model_weights").

    The same code path for every model: VGG16 only, DenseNet-169's save takes ~10 s."""
    if reference["name"] != "vgg16":
        pytest.skip("the whole-model path is the same for every model")
    path = str(reference["folder"] / "whole_model.h5")
    reference["model"].save(path)
    check_parity(reference["name"], path, reference["x"], reference["expected"])


def test_keras_reads_the_test_files(reference):
    """The helper's files are what Keras's legacy loader reads (it matches by order)."""
    model = reference["model"]
    saved = [np.asarray(w.numpy()) for w in model.weights]
    for layer in model.layers:
        if layer.weights:
            layer.set_weights([np.zeros(w.shape, np.float32) for w in layer.weights])
    model.load_weights(reference["paths"]["keras2"])
    for value, weight in zip(saved, model.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(weight.numpy()), value)


def test_parameter_count_equals_keras(reference):
    shapes = jax.eval_shape(
        lambda x: models.create(reference["name"], num_classes=None).init(jax.random.key(0), x),
        jax.ShapeDtypeStruct((1, SIZE, SIZE, 3), np.float32),
    )
    ours = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes))
    assert ours == reference["model"].count_params()


def test_keras_loads_the_files_murajax_saves(reference):
    """`save_keras_weights` writes layers in the model's call order, the order Keras's loader
    matches by: Keras loads a DenseNet-169 file murajax wrote (sorted by name, its final `bn`
    came first and Keras refused it) into its own model, every weight in place."""
    model = reference["model"]
    saved = [np.asarray(w.numpy()) for w in model.weights]
    variables = models.load_keras_weights(reference["name"], reference["paths"]["keras3"])
    path = models.save_keras_weights(
        reference["name"], variables, reference["folder"] / "saved_by_murajax.h5"
    )
    for layer in model.layers:
        if layer.weights:
            layer.set_weights([np.zeros(w.shape, np.float32) for w in layer.weights])
    model.load_weights(path)
    for value, weight in zip(saved, model.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(weight.numpy()), value)
