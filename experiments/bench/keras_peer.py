"""The Keras 3 peer: the same network, batch, loss and Adam, trained by `train_on_batch`.

The backend (TensorFlow or JAX) is chosen by `KERAS_BACKEND` before Keras is imported, so a
process measures one backend. The models are `keras.applications.VGG16`/`DenseNet169`
(`weights=None, include_top=False`) + global average pooling (+ dropout) + Dense(2) logits,
and a `keras.Sequential` for murajax's CNN. bfloat16 is Keras's 'mixed_bfloat16' policy
(float32 variables, bfloat16 computation); the logits layer stays float32, as Keras advises.
Keras on JAX runs with murajax's `XLA_FLAGS` (the YNN flag of `experiments/__init__.py`, which
speeds up its convolutions as it does murajax's); Keras on TensorFlow uses Keras's own choice of
`jit_compile`, which is no XLA on a CPU-only machine (there, for workload C, 1.7x faster in
float32 and 3.7x in bfloat16 than with XLA: `--only=keras-tf,keras-tf-xla`), and TensorFlow's
default thread pools.
"""

import os
from typing import Any

import numpy as np

from . import timing  # relative: a peer's process never imports `experiments` (peer.py)

BACKENDS = ("tensorflow", "jax")


def build_model(spec: dict[str, Any]) -> Any:
    """The Keras model of a workload's `spec` (`workloads.peer_spec`: its murajax config's
    architecture), mapping NHWC images to logits."""
    import keras
    from keras import layers

    s, c = spec["image_size"], spec["channels"]
    if spec["name"] == "cnn":
        stack: list[Any] = [keras.Input((s, s, c))]
        for width in spec["widths"]:
            for _ in range(spec["convs_per_block"]):
                if spec["batch_norm"]:
                    stack.append(layers.Conv2D(width, 3, padding="same", use_bias=False))
                    stack.append(
                        layers.BatchNormalization(momentum=spec["bn_momentum"], epsilon=1e-3)
                    )
                    stack.append(layers.ReLU())
                else:
                    stack.append(layers.Conv2D(width, 3, padding="same", activation="relu"))
            stack.append(layers.MaxPooling2D(2))
        pooling = {
            "avg": layers.GlobalAveragePooling2D,
            "max": layers.GlobalMaxPooling2D,
            "flatten": layers.Flatten,
        }[spec["pooling"]]
        stack.append(pooling())
        for width in spec["dense"]:
            stack.append(layers.Dense(width, activation="relu"))
            if spec["dropout_rate"]:
                stack.append(layers.Dropout(spec["dropout_rate"]))
        stack.append(layers.Dense(spec["num_classes"], dtype="float32"))
        return keras.Sequential(stack)
    applications = {
        "vgg16": keras.applications.VGG16,
        "densenet169": keras.applications.DenseNet169,
    }
    if spec["name"] not in applications:
        raise ValueError(f"no Keras peer for model {spec['name']!r}")
    base = applications[spec["name"]](weights=None, include_top=False, input_shape=(s, s, c))
    x = layers.GlobalAveragePooling2D()(base.output)
    if spec["dropout_rate"]:
        x = layers.Dropout(spec["dropout_rate"])(x)
    logits = layers.Dense(spec["num_classes"], dtype="float32")(x)
    return keras.Model(base.input, logits)


def measure(
    spec: dict[str, Any],
    dtype: str,
    backend: str,
    *,
    min_seconds: float,
    min_steps: int = 5,
    warmup_steps: int = 2,
    turns: bool = False,
    jit_compile: bool | str = "auto",
) -> dict[str, Any]:
    """Times Keras's `train_on_batch` of a workload's `spec` in `dtype` on `backend`; returns
    the row's measured fields. `jit_compile` is `model.compile`'s ('auto': Keras's choice, which is
    XLA for JAX and no XLA for TensorFlow on a CPU-only machine)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown Keras backend {backend!r}: expected one of {BACKENDS}")
    os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    if keras.backend.backend() != backend:
        raise RuntimeError(f"Keras was imported with backend {keras.backend.backend()!r} first")
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if dtype == "bfloat16" else dtype)
    model = build_model(spec)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=spec["learning_rate"]),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    rng = np.random.default_rng(0)
    shape = (spec["batch_size"], spec["image_size"], spec["image_size"], spec["channels"])
    images = rng.random(shape, dtype=np.float32)
    labels = rng.integers(0, 2, spec["batch_size"]).astype(np.int32)

    def step() -> None:
        model.train_on_batch(images, labels)  # returns the loss as a Python float: synchronous

    result = timing.time_steps(
        step,
        min_seconds=min_seconds,
        min_steps=min_steps,
        warmup_steps=warmup_steps,
        turns=turns,
    )
    row = timing.measurement_row(result, spec["images_per_step"], spec["step_flops"])
    row["flops_source"] = "analytic"
    row["jit_compile"] = bool(model.jit_compile)
    return row
