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


def _windows(x: jax.Array) -> tuple[jax.Array, ...]:
    """The four corners of each 2x2 window of NHWC `x` (even height and width), row-major."""
    return x[:, 0::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 0::2], x[:, 1::2, 1::2]


@jax.custom_vjp
def _max_pool_even(x: jax.Array) -> jax.Array:
    top_left, top_right, bottom_left, bottom_right = _windows(x)
    return jnp.maximum(jnp.maximum(top_left, top_right), jnp.maximum(bottom_left, bottom_right))


def _max_pool_even_fwd(x: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    y = _max_pool_even(x)
    return y, (x, y)


def _max_pool_even_bwd(residuals: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array]:
    x, y = residuals
    zero = jnp.zeros_like(g)
    taken = jnp.zeros(g.shape, bool)
    grads = []
    for corner in _windows(x):  # the first maximum in row-major order gets the gradient
        first = (corner == y) & ~taken
        taken = taken | first
        grads.append(jnp.where(first, g, zero))
    top = jnp.stack(grads[:2], axis=3)  # (N, H/2, W/2, 2, C): interleave the columns
    bottom = jnp.stack(grads[2:], axis=3)
    n, h2, w2, _, c = top.shape
    rows = jnp.stack([top.reshape(n, h2, 2 * w2, c), bottom.reshape(n, h2, 2 * w2, c)], axis=2)
    return (rows.reshape(n, 2 * h2, 2 * w2, c),)


_max_pool_even.defvjp(_max_pool_even_fwd, _max_pool_even_bwd)


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max-pooling with stride 2 over NHWC `x`.

    Same values and gradients as `flax.linen.max_pool(x, (2, 2), strides=(2, 2),
    padding="VALID")`: an odd height or width drops its last row or column (floor), and a
    window's gradient goes to its first maximum in row-major order (select-and-scatter's
    choice where maxima tie). Written as four strided corners with a custom VJP because XLA:CPU
    runs `reduce_window` and its select-and-scatter, and even a reshape + max's tie-splitting
    gradient, several times slower (the pooling gradient was a quarter of a bfloat16 CNN step).
    """
    if x.ndim != 4:
        raise ValueError(f"max_pool_2x2 expects NHWC input, got shape {x.shape}")
    _, h, w, _ = x.shape
    return _max_pool_even(x[:, : 2 * (h // 2), : 2 * (w // 2), :])


def global_pool(x: jax.Array, pooling: str) -> jax.Array:
    """An NHWC feature map to (N, D): global "avg" or "max" pooling, or "flatten"."""
    if pooling == "avg":
        return jnp.mean(x, axis=(1, 2))
    if pooling == "max":
        return jnp.max(x, axis=(1, 2))
    if pooling == "flatten":
        return x.reshape(x.shape[0], -1)
    raise ValueError(f"unknown pooling {pooling!r}: expected one of {CNN_POOLINGS}")
