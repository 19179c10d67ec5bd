"""DenseNet's dense block for training, memory-efficient (Pleiss et al. 2017): one buffer per
block, and a backward pass that keeps only that buffer and each layer's 128-channel bottleneck.

A dense block's layer `l` reads the `P_l` channels written before it, and computes

    z = relu(bn0(F[..., :P_l]))       (P_l channels: the block's growing prefix)
    h = conv1x1(z)                    (128 channels)
    y = conv3x3(relu(bn1(h)))         (32 channels, written to F[..., P_l:P_l + 32])

Differentiated layer by layer, XLA keeps every layer's `F[..., :P_l]` (a copy, since the buffer
changes after it) and `z` for the backward pass: O(L^2) memory, which is why Keras's and the
naive DenseNet-169 hold gigabytes at 224 px. A channel, once written, never changes, so
`F[..., :P_l]` is the final buffer's prefix: `dense_block` keeps the final buffer, each layer's
`h` and its batch statistics, and its backward pass recomputes `z` and `relu(bn1(h))` (two
elementwise passes, no convolution) before running the layer's gradients. The values, the
batch statistics and the gradients are those of the layers differentiated one by one.
"""

from collections.abc import Sequence
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from murajax import ops
from murajax.ops import batchnorm

GROWTH_RATE = 32


class LayerParams(NamedTuple):
    """One dense-block layer's parameters (float32): BatchNorm 0's scale and bias, the 1x1
    kernel (1, 1, P, 128), BatchNorm 1's scale and bias, the 3x3 kernel (3, 3, 128, 32)."""

    scale0: jax.Array
    bias0: jax.Array
    kernel1: jax.Array
    scale1: jax.Array
    bias1: jax.Array
    kernel2: jax.Array


class LayerStats(NamedTuple):
    """One layer's batch statistics: (mean, variance) of BatchNorm 0's and BatchNorm 1's input."""

    mean0: jax.Array
    var0: jax.Array
    mean1: jax.Array
    var1: jax.Array


def _conv(x: jax.Array, kernel: jax.Array, conv_impl: str) -> jax.Array:
    return ops.conv2d(x, kernel.astype(x.dtype), None, padding="SAME", impl=conv_impl)


def _layer_forward(features, start, p: LayerParams, epsilon, conv_impl):
    """(y, h, stats) of the layer reading `features[..., :start]`."""
    native = batchnorm.native_available(features, conv_impl)
    z, mean0, var0 = batchnorm.bn_relu_prefix(
        features, start, p.scale0, p.bias0, epsilon, native=native
    )
    h = _conv(z, p.kernel1, conv_impl)
    h2, mean1, var1 = batchnorm.bn_relu_prefix(
        h, h.shape[-1], p.scale1, p.bias1, epsilon, native=native
    )
    y = _conv(h2, p.kernel2, conv_impl)
    return y, h, LayerStats(mean0, var0, mean1, var1)


def _buffer_bits(x: jax.Array) -> jax.Array:
    """`x` as the block's buffer keeps it: bfloat16 as its bits in uint16, since XLA:CPU
    updates a bfloat16 buffer in float32 (a copy of the whole buffer per layer: 8% of
    DenseNet-169's bfloat16 step), a uint16 one in place. `batchnorm` reads either."""
    return jax.lax.bitcast_convert_type(x, jnp.uint16) if x.dtype == jnp.bfloat16 else x


def _forward(x, params, epsilon, conv_impl):
    """(the block's buffer, as `_buffer_bits` keeps it; each layer's h; each layer's stats)."""
    channels = x.shape[-1]
    x = _buffer_bits(x)
    features = jnp.zeros((*x.shape[:-1], channels + len(params) * GROWTH_RATE), x.dtype)
    features = features.at[..., :channels].set(x)
    bottlenecks, stats = [], []
    for i, p in enumerate(params):
        start = channels + i * GROWTH_RATE
        y, h, s = _layer_forward(features, start, p, epsilon, conv_impl)
        features = features.at[..., start : start + GROWTH_RATE].set(_buffer_bits(y))
        bottlenecks.append(h)
        stats.append(s)
    return features, bottlenecks, stats


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _dense_block(x, params, epsilon, conv_impl):
    features, _, stats = _forward(x, params, epsilon, conv_impl)
    return batchnorm.as_activations(features), stats


def _dense_block_fwd(x, params, epsilon, conv_impl):
    features, bottlenecks, stats = _forward(x, params, epsilon, conv_impl)
    outputs = (batchnorm.as_activations(features), stats)
    return outputs, (features, x.shape[-1], params, bottlenecks, stats)


def _conv_vjp(x, kernel, conv_impl, dy):
    """(dx, dkernel) of `_conv` at (x, kernel) for the output cotangent `dy`; dkernel in the
    kernel's dtype (float32)."""
    dx, dkernel = ops.conv2d_grads(x, kernel.astype(x.dtype), dy, padding="SAME", impl=conv_impl)
    return dx, dkernel.astype(kernel.dtype)


def _dense_block_bwd(epsilon, conv_impl, residuals, cotangents):
    # Batch statistics only feed the running averages: their cotangents are ignored.
    features, channels, params, bottlenecks, stats = residuals
    native = batchnorm.native_available(features, conv_impl)
    d_features = cotangents[0]
    grads = [None] * len(params)
    for i in reversed(range(len(params))):
        p, s, h = params[i], stats[i], bottlenecks[i]
        start = channels + i * GROWTH_RATE
        dy = d_features[..., start : start + GROWTH_RATE]
        bn1 = (p.scale1, p.bias1, s.mean1, s.var1, epsilon)
        h2 = batchnorm.normalize_relu_prefix(h, h.shape[-1], *bn1, native=native)
        dh2, dkernel2 = _conv_vjp(h2, p.kernel2, conv_impl, dy)
        dh, dscale1, dbias1 = batchnorm.bn_relu_grads_prefix(
            h, h.shape[-1], dh2, *bn1, native=native
        )
        bn0 = (p.scale0, p.bias0, s.mean0, s.var0, epsilon)
        z = batchnorm.normalize_relu_prefix(features, start, *bn0, native=native)
        dz, dkernel1 = _conv_vjp(z, p.kernel1, conv_impl, dh)
        d_features, dscale0, dbias0 = batchnorm.bn_relu_grads_prefix(
            features, start, dz, *bn0, native=native, add_to=d_features
        )
        grads[i] = LayerParams(dscale0, dbias0, dkernel1, dscale1, dbias1, dkernel2)
    return d_features[..., :channels], grads


_dense_block.defvjp(_dense_block_fwd, _dense_block_bwd)


def dense_block(
    x: jax.Array,
    params: Sequence[LayerParams],
    *,
    epsilon: float,
    conv_impl: str = "auto",
) -> tuple[jax.Array, list[LayerStats]]:
    """A training-mode dense block over NHWC `x` (BatchNorm with the batch's statistics):
    (the block's output, `x` followed by each layer's 32 channels; each layer's statistics).

    Computes in `x`'s dtype (parameters are float32 and cast, as `layers.Conv` does), with
    `murajax.ops.conv2d(impl=conv_impl)`. Differentiable in `x` and `params` (not in the
    statistics); its backward pass recomputes each layer's BatchNorm-ReLU outputs instead of
    keeping them (see the module's docstring).
    """
    features, stats = _dense_block(x, list(params), epsilon, conv_impl)
    return features, list(stats)
