"""The Keras 3 peer: the same network, batch, loss and Adam, trained by `train_on_batch`.

The backend (TensorFlow or JAX) is chosen by `KERAS_BACKEND` before Keras is imported, so a
process measures one backend. The models are `keras.applications.VGG16`/`DenseNet169`
(`weights=None, include_top=False`) + global average pooling (+ dropout) + Dense(2) logits,
a `keras.Sequential` for murajax's CNN, and for the multi-view study model a functional model
of the same pieces as murajax's: the backbone's encoder on all B * V views at once, per-view
pooling, gated attention over the real views of the view mask, Dense logits. bfloat16 is
Keras's 'mixed_bfloat16' policy (float32 variables, bfloat16 computation); the logits layer
stays float32, as Keras advises.
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


def _cnn_blocks(spec: dict[str, Any]) -> list[Any]:
    """murajax's CNN's convolution blocks as Keras layers: [conv3x3 (+ BatchNorm) + ReLU] x
    `convs_per_block`, then a 2x2 max-pool, for each width."""
    from keras import layers

    blocks: list[Any] = []
    for width in spec["widths"]:
        for _ in range(spec["convs_per_block"]):
            if spec["batch_norm"]:
                blocks.append(layers.Conv2D(width, 3, padding="same", use_bias=False))
                blocks.append(layers.BatchNormalization(momentum=spec["bn_momentum"], epsilon=1e-3))
                blocks.append(layers.ReLU())
            else:
                blocks.append(layers.Conv2D(width, 3, padding="same", activation="relu"))
        blocks.append(layers.MaxPooling2D(2))
    return blocks


def _global_pooling(pooling: str) -> Any:
    """The Keras layer of murajax's `global_pool` ("avg", "max" or "flatten")."""
    from keras import layers

    return {
        "avg": layers.GlobalAveragePooling2D,
        "max": layers.GlobalMaxPooling2D,
        "flatten": layers.Flatten,
    }[pooling]()


_APPLICATIONS = {"vgg16": "VGG16", "densenet169": "DenseNet169"}


def _backbone(name: str, spec: dict[str, Any]) -> Any:
    """The feature extractor of model `name` (NHWC images to the last feature map, as
    murajax's models with `num_classes=None`): murajax's CNN blocks, or a Keras application
    with `include_top=False`."""
    import keras

    s, c = spec["image_size"], spec["channels"]
    if name == "cnn":
        return keras.Sequential([keras.Input((s, s, c)), *_cnn_blocks(spec)], name="encoder")
    if name not in _APPLICATIONS:
        raise ValueError(f"no Keras peer for model {name!r}")
    application = getattr(keras.applications, _APPLICATIONS[name])
    return application(weights=None, include_top=False, input_shape=(s, s, c))


def _view_layers() -> tuple[type, type, type]:
    """The multi-view model's own Keras layers (made once Keras is imported, with its backend
    chosen): `FoldViews` (B, V, H, W, C) -> (B * V, H, W, C); `UnfoldViews` (B * V, D) ->
    (B, V, D); `PoolViews`, murajax's `pool_views` over the real views of `view_mask`."""
    import keras
    from keras import ops

    class FoldViews(keras.layers.Layer):
        def call(self, images: Any) -> Any:
            return ops.reshape(images, (-1, *images.shape[2:]))

        def compute_output_shape(self, shape: tuple) -> tuple:
            return (None if shape[0] is None else shape[0] * shape[1], *shape[2:])

    class UnfoldViews(keras.layers.Layer):
        def __init__(self, views: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.views = views

        def call(self, features: Any) -> Any:
            return ops.reshape(features, (-1, self.views, features.shape[-1]))

        def compute_output_shape(self, shape: tuple) -> tuple:
            return (None if shape[0] is None else shape[0] // self.views, self.views, shape[-1])

    class PoolViews(keras.layers.Layer):
        """(B, V, D) features, (B, V) bool mask (and (B, V, 1) attention scores) to (B, D):
        "mean", "max" or "attention" (softmax of the scores over the real views, in float32;
        a study without a real view pools as murajax's does)."""

        def __init__(self, method: str, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.method = method

        def call(self, features: Any, view_mask: Any, scores: Any = None) -> Any:
            mask = ops.cast(view_mask, "bool")
            if self.method == "mean":
                weights = ops.cast(mask, features.dtype)
                count = ops.maximum(ops.sum(weights, axis=1, keepdims=True), 1)
                return ops.sum(features * weights[..., None], axis=1) / count
            if self.method == "max":
                lowest = -3.0e38  # below every float32 and bfloat16 feature
                pooled = ops.max(ops.where(mask[..., None], features, lowest), axis=1)
                return ops.where(ops.any(mask, axis=1, keepdims=True), pooled, 0)
            scores = ops.cast(ops.squeeze(scores, -1), "float32")
            mask = ops.logical_or(mask, ops.logical_not(ops.any(mask, axis=1, keepdims=True)))
            weights = ops.softmax(ops.where(mask, scores, float("-inf")), axis=1)
            weights = ops.cast(ops.where(mask, weights, 0.0), features.dtype)
            return ops.einsum("bv,bvd->bd", weights, features)

    return FoldViews, UnfoldViews, PoolViews


def _multiview(spec: dict[str, Any]) -> Any:
    """murajax's multi-view study model: the backbone's encoder shared by every view of a
    study (one batch of B * V images, so BatchNorm sees them all), per-view global pooling,
    the views pooled over the real ones of `view_mask` (gated attention: `attention_V`,
    `attention_U`, `attention_w`, as murajax's head), dropout and Dense logits."""
    import keras
    from keras import layers

    fold_views, unfold_views, pool_views = _view_layers()
    s, c, views = spec["image_size"], spec["channels"], spec["views"]
    images = keras.Input((views, s, s, c), name="image")
    view_mask = keras.Input((views,), dtype="bool", name="view_mask")
    encoder = _backbone(spec["backbone"], spec)
    x = _global_pooling(spec["pooling"])(encoder(fold_views()(images)))
    x = unfold_views(views)(x)
    pool = pool_views(spec["view_pooling"])
    if spec["view_pooling"] == "attention":
        width = spec["attention_dim"]
        hidden = layers.Dense(width, activation="tanh", name="attention_V")(x)
        gate = layers.Dense(width, activation="sigmoid", name="attention_U")(x)
        scores = layers.Dense(1, name="attention_w")(layers.Multiply()([hidden, gate]))
        x = pool(x, view_mask, scores)
    else:
        x = pool(x, view_mask)
    if spec["dropout_rate"]:
        x = layers.Dropout(spec["dropout_rate"])(x)
    logits = layers.Dense(spec["num_classes"], dtype="float32", name="logits")(x)
    return keras.Model({"image": images, "view_mask": view_mask}, logits)


def build_model(spec: dict[str, Any]) -> Any:
    """The Keras model of a workload's `spec` (`workloads.peer_spec`: its murajax config's
    architecture), mapping NHWC images (for the multi-view model, `{"image": (B, V, H, W,
    C), "view_mask": (B, V)}`) to logits."""
    import keras
    from keras import layers

    if spec["name"] == "multiview":
        return _multiview(spec)
    s, c = spec["image_size"], spec["channels"]
    if spec["name"] == "cnn":
        stack: list[Any] = [keras.Input((s, s, c)), *_cnn_blocks(spec)]
        stack.append(_global_pooling(spec["pooling"]))
        for width in spec["dense"]:
            stack.append(layers.Dense(width, activation="relu"))
            if spec["dropout_rate"]:
                stack.append(layers.Dropout(spec["dropout_rate"]))
        stack.append(layers.Dense(spec["num_classes"], dtype="float32"))
        return keras.Sequential(stack)
    base = _backbone(spec["name"], spec)
    x = layers.GlobalAveragePooling2D()(base.output)
    if spec["dropout_rate"]:
        x = layers.Dropout(spec["dropout_rate"])(x)
    logits = layers.Dense(spec["num_classes"], dtype="float32")(x)
    return keras.Model(base.input, logits)


def inputs(spec: dict[str, Any], seed: int = 0) -> tuple[Any, np.ndarray]:
    """A random batch of `spec`'s inputs (NHWC images in [0, 1); a study batch with every
    view real) and labels, on the host."""
    rng = np.random.default_rng(seed)
    b, s, c = spec["batch_size"], spec["image_size"], spec["channels"]
    labels = rng.integers(0, 2, b).astype(np.int32)
    if spec["name"] == "multiview":
        images = rng.random((b, spec["views"], s, s, c), dtype=np.float32)
        return {"image": images, "view_mask": np.ones((b, spec["views"]), bool)}, labels
    return rng.random((b, s, s, c), dtype=np.float32), labels


def measure(
    spec: dict[str, Any],
    dtype: str,
    backend: str,
    *,
    min_seconds: float,
    min_steps: int = 5,
    warmup_steps: int = 2,
    turns: bool = False,
    deadline: float | None = None,
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
    images, labels = inputs(spec)

    def step() -> None:
        model.train_on_batch(images, labels)  # returns the loss as a Python float: synchronous

    result = timing.time_steps(
        step,
        min_seconds=min_seconds,
        min_steps=min_steps,
        warmup_steps=warmup_steps,
        turns=turns,
        deadline=deadline,
    )
    row = timing.measurement_row(result, spec["images_per_step"], spec["step_flops"])
    row["flops_source"] = "analytic"
    row["jit_compile"] = bool(model.jit_compile)
    row["params"] = timing.parameter_count(w.shape for w in model.trainable_weights)
    return row
