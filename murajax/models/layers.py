"""Small building blocks shared by the models."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from murajax import initializers
from murajax.config import CNN_POOLINGS


def conv3x3(features: int, *, dtype: Any, name: str, use_bias: bool = True) -> nn.Conv:
    """A 3x3 'SAME' convolution: Glorot-uniform kernel, zero bias, float32 parameters."""
    return nn.Conv(
        features,
        (3, 3),
        padding="SAME",
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=initializers.kernel_init,
        bias_init=initializers.bias_init,
        name=name,
    )


def dense(features: int, *, dtype: Any, name: str) -> nn.Dense:
    """A dense layer: Glorot-uniform kernel, zero bias, float32 parameters."""
    return nn.Dense(
        features,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=initializers.kernel_init,
        bias_init=initializers.bias_init,
        name=name,
    )


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max-pooling with stride 2 over NHWC `x`, written as a reshape and a max.

    Same values as `flax.linen.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")`: an odd
    height or width drops its last row or column (floor). Gradients are the same wherever each
    window's maximum is unique; where a window holds tied maxima, `nn.max_pool` (select-and-
    scatter) sends the whole gradient to one of them and this splits it evenly among them. On
    XLA:CPU this form is 1.3-1.5x faster than `reduce_window` (see DESIGN.md), and it is no
    slower elsewhere.
    """
    if x.ndim != 4:
        raise ValueError(f"max_pool_2x2 expects NHWC input, got shape {x.shape}")
    n, h, w, c = x.shape
    h2, w2 = h // 2, w // 2
    x = x[:, : 2 * h2, : 2 * w2, :]
    return x.reshape(n, h2, 2, w2, 2, c).max(axis=(2, 4))


def global_pool(x: jax.Array, pooling: str) -> jax.Array:
    """An NHWC feature map to (N, D): global "avg" or "max" pooling, or "flatten"."""
    if pooling == "avg":
        return jnp.mean(x, axis=(1, 2))
    if pooling == "max":
        return jnp.max(x, axis=(1, 2))
    if pooling == "flatten":
        return x.reshape(x.shape[0], -1)
    raise ValueError(f"unknown pooling {pooling!r}: expected one of {CNN_POOLINGS}")
