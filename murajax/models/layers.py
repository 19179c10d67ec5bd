"""Small building blocks shared by the models."""

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from murajax import initializers, ops
from murajax.config import CNN_POOLINGS


class Conv(nn.Module):
    """A 2-D convolution over NHWC inputs through `murajax.ops.conv2d`, optionally with its
    ReLU fused in (one pass over the output instead of two).

    Its parameters are `nn.Conv`'s: "kernel" (KH, KW, in, out) and "bias" (out), float32, with
    the same initialisers and names, so Keras weights and checkpoints load unchanged. It
    computes in `dtype`. `conv_impl` picks the CPU kernels ("auto", "xla", "onednn"; see
    `murajax.ops.resolve_conv_impl`); GPUs and TPUs always run XLA's.
    """

    features: int
    kernel_size: tuple[int, int] = (3, 3)
    strides: tuple[int, int] = (1, 1)
    padding: str | Sequence[tuple[int, int]] = "SAME"
    use_bias: bool = True
    relu: bool = False
    dtype: Any = jnp.float32
    conv_impl: str = "auto"
    kernel_init: Callable[..., jax.Array] = initializers.kernel_init
    bias_init: Callable[..., jax.Array] = initializers.bias_init

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """`relu?(conv(x) + bias?)` in `dtype`."""
        shape = (*self.kernel_size, x.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, shape, jnp.float32)
        bias = None
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
        return ops.conv2d(
            jnp.asarray(x, self.dtype),
            kernel.astype(self.dtype),
            None if bias is None else bias.astype(self.dtype),
            strides=self.strides,
            padding=self.padding,
            relu=self.relu,
            impl=self.conv_impl,
        )


def conv3x3(
    features: int,
    *,
    dtype: Any,
    name: str,
    use_bias: bool = True,
    relu: bool = False,
    conv_impl: str = "auto",
) -> Conv:
    """A 3x3 'SAME' convolution: Glorot-uniform kernel, zero bias, float32 parameters; `relu`
    fuses the ReLU that follows it."""
    return Conv(
        features,
        (3, 3),
        padding="SAME",
        use_bias=use_bias,
        relu=relu,
        dtype=dtype,
        conv_impl=conv_impl,
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
