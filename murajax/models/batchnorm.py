"""BatchNorm followed by ReLU as one function with a hand-written gradient (DenseNet's
pre-activation), in Flax's `nn.BatchNorm` variable layout.

`jax.grad` of `nn.BatchNorm` then `nn.relu` keeps the normalised tensor and the ReLU's mask
for the backward pass and differentiates the mean and variance through their broadcasts: on
DenseNet-169 (169 BatchNorms over ever wider inputs) that graph was two thirds of XLA's compile
time and a third of the train step. `bn_relu` computes the same values in one pass for the
statistics and one for the output; its backward pass recomputes the mask from the input and
needs two per-channel sums and one elementwise pass (the textbook BatchNorm gradient):

    a = scale / sqrt(var + eps),  y = relu(a * (x - mean) + bias)
    g' = g * [y > 0],  dbias = sum(g'),  dscale = sum(g' * (x - mean)) / sqrt(var + eps)
    dx = a * (g' - dbias / n - (x - mean) / sqrt(var + eps) * dscale / n)
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def _channel_sums(x: Array) -> Array:
    """Per-channel sums of float32 `x` over every axis but the last, as a matrix product with
    a row of ones: XLA:CPU runs it in one multithreaded pass (YNNPACK's dot) with the
    elementwise work before it fused in, where its own reduction of a (rows, channels) array
    over the rows was up to 14x slower (DenseNet-169, 224 px: a third of the train step)."""
    rows = x.reshape(-1, x.shape[-1])
    ones = jnp.ones((rows.shape[0],), jnp.float32)
    return jnp.dot(ones, rows, precision=jax.lax.Precision.HIGHEST)


def _batch_stats(x: Array) -> tuple[Array, Array]:
    """Per-channel (mean, biased variance) of `x` over every axis but the last, in float32,
    as Flax computes them (`mean(x**2) - mean(x)**2`, clipped at 0)."""
    x = x.astype(jnp.float32)
    n = x.size // x.shape[-1]
    mean = _channel_sums(x) / n
    mean2 = _channel_sums(jnp.square(x)) / n
    return mean, jnp.maximum(mean2 - jnp.square(mean), 0.0)


def _pre_relu(x: Array, scale: Array, bias: Array, mean: Array, var: Array, epsilon: float):
    """(inv, a, z): 1/sqrt(var + eps), scale * inv, and the normalised, scaled, shifted `x` in
    float32, with Flax's rounding: (x - mean) * a + bias."""
    inv = jax.lax.rsqrt(var + epsilon)
    a = scale * inv
    return inv, a, (x.astype(jnp.float32) - mean) * a + bias


def normalize_relu(
    x: Array, scale: Array, bias: Array, mean: Array, var: Array, epsilon: float
) -> Array:
    """relu((x - mean) / sqrt(var + eps) * scale + bias) in `x`'s dtype (float32 inside)."""
    return jnp.maximum(_pre_relu(x, scale, bias, mean, var, epsilon)[2], 0.0).astype(x.dtype)


@jax.custom_vjp
def _bn_relu(x: Array, scale: Array, bias: Array, epsilon: float) -> tuple[Array, Array, Array]:
    y, mean, var = _bn_relu_forward(x, scale, bias, epsilon)
    return y, mean, var


def _bn_relu_forward(x, scale, bias, epsilon):
    mean, var = _batch_stats(x)
    return normalize_relu(x, scale, bias, mean, var, epsilon), mean, var


def _bn_relu_fwd(x, scale, bias, epsilon):
    y, mean, var = _bn_relu_forward(x, scale, bias, epsilon)
    return (y, mean, var), (x, scale, bias, mean, var, epsilon)


def _bn_relu_bwd(residuals, cotangents):
    # The mean and variance only feed the running averages: their cotangents are ignored.
    return (*bn_relu_grads(residuals, cotangents[0]), None)


def bn_relu_grads(residuals: tuple, g: Array) -> tuple[Array, Array, Array]:
    """(dx, dscale, dbias) of `bn_relu`'s output for its cotangent `g`, where `residuals` are
    (x, scale, bias, mean, var, epsilon) with the batch statistics `bn_relu` returned."""
    x, scale, bias, mean, var, epsilon = residuals
    inv, a, z = _pre_relu(x, scale, bias, mean, var, epsilon)
    x32 = x.astype(jnp.float32)
    g = jnp.where(z > 0, g.astype(jnp.float32), 0.0)
    n = x.size // x.shape[-1]
    dbias = _channel_sums(g)
    dscale = (_channel_sums(g * x32) - mean * dbias) * inv
    c1 = -a * inv * dscale / n
    c0 = -a * dbias / n - mean * c1
    dx = (g * a + (x32 * c1 + c0)).astype(x.dtype)
    return dx, dscale, dbias


_bn_relu.defvjp(_bn_relu_fwd, _bn_relu_bwd)


def bn_relu(x: Array, scale: Array, bias: Array, epsilon: float) -> tuple[Array, Array, Array]:
    """(relu(batchnorm(x)), batch mean, batch variance) over every axis of `x` but the last.

    Statistics and arithmetic are float32 whatever `x`'s dtype; the output has `x`'s dtype.
    Differentiable in `x`, `scale` and `bias`; the returned mean and variance are not (they are
    for the running averages).
    """
    return _bn_relu(x, scale, bias, epsilon)


class BatchNormReLU(nn.Module):
    """`nn.relu(nn.BatchNorm(...)(x))` with the same variables (params 'scale', 'bias';
    batch_stats 'mean', 'var'), the same values and running averages, and `bn_relu`'s gradient.

    Statistics over a `jax.pmap` axis are not supported here: use Flax's BatchNorm then.
    """

    momentum: float = 0.99
    epsilon: float = 1e-5
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        channels = (x.shape[-1],)
        scale = self.param("scale", nn.initializers.ones, channels, jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, channels, jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, channels, jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, channels, jnp.float32)
        dtype = self.dtype or x.dtype
        if not train:
            return normalize_relu(x, scale, bias, ra_mean.value, ra_var.value, self.epsilon)
        y, mean, var = bn_relu(x, scale, bias, self.epsilon)
        if not self.is_initializing():
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return y.astype(dtype)


class BatchNormVariables(nn.Module):
    """A BatchNorm layer's variables, named as `nn.BatchNorm` names them, for code that
    normalises by itself (`models.dense_block`): calling it gives (scale, bias); `update` moves
    the running averages towards a batch's (mean, variance), as `BatchNormReLU` does."""

    channels: int
    momentum: float = 0.99

    def setup(self) -> None:
        shape = (self.channels,)
        self.scale = self.param("scale", nn.initializers.ones, shape, jnp.float32)
        self.bias = self.param("bias", nn.initializers.zeros, shape, jnp.float32)
        self.mean = self.variable("batch_stats", "mean", jnp.zeros, shape, jnp.float32)
        self.var = self.variable("batch_stats", "var", jnp.ones, shape, jnp.float32)

    def __call__(self) -> tuple[Array, Array]:
        return self.scale, self.bias

    def update(self, mean: Array, var: Array) -> None:
        """Running averages <- momentum * running + (1 - momentum) * batch (not at init)."""
        if not self.is_initializing():
            self.mean.value = self.momentum * self.mean.value + (1 - self.momentum) * mean
            self.var.value = self.momentum * self.var.value + (1 - self.momentum) * var
