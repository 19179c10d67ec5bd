"""Losses: (class-weighted, label-smoothed) softmax cross-entropy and an L2 penalty on kernels.

Models emit logits z over the dataset's classes (MURA: {0: normal, 1: abnormal}); the loss
applies the softmax.
For one example with one-hot (or smoothed) target y,

    L(z) = -sum_k y_k log softmax(z)_k,        dL/dz = softmax(z) - y.

(The thesis states that gradient wrongly; `tests/test_losses.py` checks it.) The batch loss
`cross_entropy_loss` is a weighted mean over the real (unmasked) examples,

    loss = sum_i m_i w_i L_i / sum_i m_i,    dloss/dz_i = m_i w_i (softmax(z_i) - y_i) / sum_j m_j,

with m_i the mask (0 for padding) and w_i the example's class weight. The MURA paper's class
weights (Rajpurkar et al. 2017) make the two classes count equally in expectation: with N normal
and A abnormal training examples, w_abnormal = N / (A + N) and w_normal = A / (A + N); for K
classes, w_c is proportional to 1 / n_c and the weights sum to 1 (`balanced_class_weights`).
"""

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

CLASS_WEIGHTINGS = ("none", "global", "group", "body_part")
"""`train.class_weighting`: "group" weighs each group (MURA's body part) by its own counts;
"body_part" is MURA's name for it."""


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


def balanced_class_weights(counts: Any) -> tuple[float, ...]:
    """The MURA paper's weights for any number of classes: w_c proportional to 1 / n_c over
    the classes present, summing to 1 (so n_c * w_c is the same for every present class; a
    class without examples gets 0). For two classes these are `class_weights`, bit for bit.

    >>> balanced_class_weights([1, 2, 2])
    (0.5, 0.25, 0.25)
    """
    counts = [int(c) for c in np.asarray(counts).reshape(-1)]
    if len(counts) == 2:
        return class_weights(*counts)
    if min(counts) < 0 or sum(counts) == 0:
        raise ValueError(f"class weights need counts >= 0 and one example, got {counts}")
    present = [c for c in counts if c > 0]
    # w_c = prod_{j != c} n_j / sum_i prod_{j != i} n_j, exactly (Python ints), then rounded.
    products = [math.prod(present) // c if c > 0 else 0 for c in counts]
    total = sum(products)
    return tuple(p / total for p in products)


def count_classes(
    labels: Any, groups: Any = None, num_groups: int = 1, num_classes: int = 2
) -> np.ndarray:
    """Counts examples per class: shape (num_classes,), or (num_groups, num_classes) given
    `groups` (MURA's body parts). `counts[c]` (or `counts[g, c]`) is the number of examples of
    label c (of group g)."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    num_classes = max(num_classes, int(labels.max(initial=-1)) + 1)
    if groups is None:
        return np.bincount(labels, minlength=num_classes).astype(np.int64)
    groups = np.asarray(groups, dtype=np.int64).reshape(-1)
    num_groups = max(num_groups, int(groups.max(initial=-1)) + 1)
    counts = np.zeros((num_groups, num_classes), np.int64)
    np.add.at(counts, (groups, labels), 1)
    return counts


def group_class_weights(counts: Any) -> np.ndarray:
    """A (num_groups, num_classes) table of `balanced_class_weights`, row g from `counts[g]`.

    A group whose counts lack a class that the whole split has (the formula would give it
    weight 0 there) gets the global weights from the summed counts instead.
    """
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 2 or counts.shape[1] < 2:
        raise ValueError(f"counts must have shape (num_groups, num_classes), got {counts.shape}")
    totals = counts.sum(axis=0)
    global_weights = balanced_class_weights(totals)
    table = np.empty(counts.shape, np.float32)
    for g, row in enumerate(counts):
        complete = np.all((row > 0) | (totals == 0))
        table[g] = balanced_class_weights(row) if complete else global_weights
    return table


def class_weight_table(weighting: str, counts: Any) -> np.ndarray:
    """The (groups, classes) loss-weight table for `TrainConfig.class_weighting`, from the
    training split's (groups, classes) counts (one row for a dataset without groups).

    "none": ones; "global": the MURA paper's weights of the whole split in every row;
    "group" (or MURA's "body_part"): one row per group (`group_class_weights`). Index it as
    `table[group, label]` (`cross_entropy_loss(class_weights=table, groups=...)`).
    """
    counts = np.asarray(counts)
    if weighting == "none":
        return np.ones(counts.shape, np.float32)
    if weighting == "global":
        table = np.empty(counts.shape, np.float32)
        table[:] = balanced_class_weights(counts.sum(axis=0))
        return table
    if weighting in ("group", "body_part"):
        return group_class_weights(counts)
    raise ValueError(f"unknown class weighting {weighting!r}: expected one of {CLASS_WEIGHTINGS}")


def example_weights(
    labels: jax.Array,
    class_weights: jax.Array | np.ndarray | None = None,
    groups: jax.Array | None = None,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Per-example weights m_i * w_i: class weight (by label, or by group and label) x mask.

    `class_weights` is None (all 1), shape (K,) indexed by label, or shape (G, K) indexed by
    `[groups, labels]`. `mask` (bool or float, shape like `labels`) zeroes padding.
    """
    labels = jnp.asarray(labels)
    if class_weights is None:
        weights = jnp.ones(labels.shape, jnp.float32)
    else:
        table = jnp.asarray(class_weights, jnp.float32)
        if table.ndim == 1:
            weights = table[labels]
        elif table.ndim == 2:
            if groups is None:
                raise ValueError("a (num_groups, num_classes) class-weight table needs groups")
            weights = table[jnp.asarray(groups), labels]
        else:
            raise ValueError(f"class_weights must have shape (K,) or (G, K), got {table.shape}")
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
    groups: jax.Array | None = None,
    mask: jax.Array | None = None,
    label_smoothing: float = 0.0,
) -> jax.Array:
    """The batch loss: sum_i m_i w_i CE_i / max(sum_i m_i, 1), a scalar float32.

    Args:
      logits: (B, num_classes) model outputs, any float dtype.
      labels: (B,) integer class indices (MURA: 0 normal, 1 abnormal).
      class_weights: None, (K,) or (G, K); see `example_weights` and `class_weight_table`.
      groups: (B,) group indices (MURA's body parts), needed with a (G, K) table.
      mask: (B,) 1 for real examples, 0 for padding; None means all real.
      label_smoothing: passed to `softmax_cross_entropy`.

    The denominator counts real examples, not their weights, so that class weights scale the
    loss as in the MURA paper (and a batch-size change does not).
    """
    losses = softmax_cross_entropy(logits, labels, label_smoothing)
    weights = example_weights(labels, class_weights, groups, mask)
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
