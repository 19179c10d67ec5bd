"""Losses: (class-weighted, label-smoothed) softmax cross-entropy and an L2 penalty on kernels.

Models emit logits z over the classes {0: normal, 1: abnormal}; the loss applies the softmax.
For one example with one-hot (or smoothed) target y,

    L(z) = -sum_k y_k log softmax(z)_k,        dL/dz = softmax(z) - y.

(The thesis states that gradient wrongly; `tests/test_losses.py` checks it.) The batch loss
`cross_entropy_loss` is a weighted mean over the real (unmasked) examples,

    loss = sum_i m_i w_i L_i / sum_i m_i,    dloss/dz_i = m_i w_i (softmax(z_i) - y_i) / sum_j m_j,

with m_i the mask (0 for padding) and w_i the example's class weight. The MURA paper's class
weights (Rajpurkar et al. 2017) make the two classes count equally in expectation: with N normal
and A abnormal training examples, w_abnormal = N / (A + N) and w_normal = A / (A + N).
"""

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

NUM_CLASSES = 2
"""Labels: 0 = normal, 1 = abnormal (`tfds_mura.LABEL_NAMES`)."""

NUM_BODY_PARTS = 7
"""Body parts: `tfds_mura.BODY_PARTS` (XR_ELBOW ... XR_WRIST), in that order."""

CLASS_WEIGHTINGS = ("none", "global", "body_part")


# --------------------------------------------------------------------------- class weights


def class_weights(num_normal: int, num_abnormal: int) -> tuple[float, float]:
    """The MURA paper's class weights `(w_normal, w_abnormal)` from training-set counts.

    w_abnormal = N / (A + N) and w_normal = A / (A + N): the rarer class weighs more, the
    weights sum to 1, and N * w_normal == A * w_abnormal.

    >>> class_weights(num_normal=3, num_abnormal=1)
    (0.25, 0.75)
    """
    if num_normal < 0 or num_abnormal < 0:
        raise ValueError(f"class counts must be >= 0, got {num_normal=}, {num_abnormal=}")
    total = num_normal + num_abnormal
    if total == 0:
        raise ValueError("class weights need at least one training example")
    return num_abnormal / total, num_normal / total


def count_classes(
    labels: Any, body_parts: Any = None, num_body_parts: int = NUM_BODY_PARTS
) -> np.ndarray:
    """Counts examples per class: shape (2,), or (num_body_parts, 2) given `body_parts`.

    `counts[c]` (or `counts[b, c]`) is the number of examples of label c (of body part b).
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if body_parts is None:
        return np.bincount(labels, minlength=NUM_CLASSES).astype(np.int64)
    body_parts = np.asarray(body_parts, dtype=np.int64).reshape(-1)
    counts = np.zeros((num_body_parts, NUM_CLASSES), np.int64)
    np.add.at(counts, (body_parts, labels), 1)
    return counts


def body_part_class_weights(counts: Any) -> np.ndarray:
    """A (num_body_parts, 2) table of `class_weights`, row b from `counts[b] = (N_b, A_b)`.

    A body part whose counts lack a class (the formula would give the class it has weight 0,
    and no signal) gets the global weights from the summed counts instead.
    """
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 2 or counts.shape[1] != NUM_CLASSES:
        raise ValueError(f"counts must have shape (num_body_parts, 2), got {counts.shape}")
    global_weights = class_weights(*counts.sum(axis=0))
    table = np.empty(counts.shape, np.float32)
    for b, (n, a) in enumerate(counts):
        table[b] = class_weights(n, a) if n > 0 and a > 0 else global_weights
    return table


def class_weight_table(weighting: str, counts: Any) -> np.ndarray:
    """The (body parts, 2) loss-weight table for `TrainConfig.class_weighting`, from the
    training split's (body parts, 2) [normal, abnormal] counts.

    "none": ones; "global": the MURA paper's weights of the whole split in every row;
    "body_part": one row per body part (`body_part_class_weights`). Index it as
    `table[body_part, label]` (`cross_entropy_loss(class_weights=table, body_parts=...)`).
    """
    counts = np.asarray(counts)
    if weighting == "none":
        return np.ones(counts.shape, np.float32)
    if weighting == "global":
        table = np.empty(counts.shape, np.float32)
        table[:] = class_weights(*counts.sum(axis=0))
        return table
    if weighting == "body_part":
        return body_part_class_weights(counts)
    raise ValueError(f"unknown class weighting {weighting!r}: expected one of {CLASS_WEIGHTINGS}")


def example_weights(
    labels: jax.Array,
    class_weights: jax.Array | np.ndarray | None = None,
    body_parts: jax.Array | None = None,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Per-example weights m_i * w_i: class weight (by label, or by body part and label) x mask.

    `class_weights` is None (all 1), shape (2,) indexed by label, or shape (P, 2) indexed by
    `[body_parts, labels]`. `mask` (bool or float, shape like `labels`) zeroes padding.
    """
    labels = jnp.asarray(labels)
    if class_weights is None:
        weights = jnp.ones(labels.shape, jnp.float32)
    else:
        table = jnp.asarray(class_weights, jnp.float32)
        if table.ndim == 1:
            weights = table[labels]
        elif table.ndim == 2:
            if body_parts is None:
                raise ValueError("a (num_body_parts, 2) class-weight table needs body_parts")
            weights = table[jnp.asarray(body_parts), labels]
        else:
            raise ValueError(f"class_weights must have shape (2,) or (P, 2), got {table.shape}")
    if mask is not None:
        weights = weights * jnp.asarray(mask, jnp.float32)
    return weights


# --------------------------------------------------------------------------- cross-entropy


def softmax_cross_entropy(
    logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0
) -> jax.Array:
    """Per-example softmax cross-entropy, shape `labels.shape`, computed in float32.

    `labels` are integer classes; with `label_smoothing` = a the target is
    `optax.smooth_labels(one_hot, a)` = (1 - a) * one_hot + a / num_classes.
    """
    logits = jnp.asarray(logits, jnp.float32)
    targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def cross_entropy_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    class_weights: jax.Array | np.ndarray | None = None,
    body_parts: jax.Array | None = None,
    mask: jax.Array | None = None,
    label_smoothing: float = 0.0,
) -> jax.Array:
    """The batch loss: sum_i m_i w_i CE_i / max(sum_i m_i, 1), a scalar float32.

    Args:
      logits: (B, num_classes) model outputs, any float dtype.
      labels: (B,) integer labels (0 normal, 1 abnormal).
      class_weights: None, (2,) or (P, 2); see `example_weights` and `class_weight_table`.
      body_parts: (B,) body-part indices, needed with a (P, 2) table.
      mask: (B,) 1 for real examples, 0 for padding; None means all real.
      label_smoothing: passed to `softmax_cross_entropy`.

    The denominator counts real examples, not their weights, so that class weights scale the
    loss as in the MURA paper (and a batch-size change does not).
    """
    losses = softmax_cross_entropy(logits, labels, label_smoothing)
    weights = example_weights(labels, class_weights, body_parts, mask)
    count = jnp.float32(labels.shape[0]) if mask is None else jnp.sum(mask, dtype=jnp.float32)
    return jnp.sum(weights * losses) / jnp.maximum(count, 1.0)


# --------------------------------------------------------------------------- regularisation


def _is_kernel(path: tuple[Any, ...]) -> bool:
    last = path[-1] if path else None
    name = getattr(last, "key", getattr(last, "name", None))
    return name == "kernel"


def l2_penalty(params: Mapping[str, Any]) -> jax.Array:
    """Sum of squares of every leaf named "kernel" (not biases, not BatchNorm scales).

    Multiply by `TrainConfig.l2_weight` and add to the loss; this matches Keras's
    `regularizers.l2(l2_weight)` on each kernel (no factor 1/2).
    """
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    squares = [jnp.sum(jnp.square(jnp.asarray(x, jnp.float32))) for p, x in leaves if _is_kernel(p)]
    return jnp.sum(jnp.stack(squares)) if squares else jnp.zeros((), jnp.float32)
