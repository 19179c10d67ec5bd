"""Flax modules for BatchNorm followed by ReLU with the gradient of `murajax.ops.batchnorm`
(DenseNet's pre-activation), in Flax's `nn.BatchNorm` variable layout."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from murajax.ops.batchnorm import bn_relu, native_available, normalize_relu

Array = jax.Array


class BatchNormReLU(nn.Module):
    """`nn.relu(nn.BatchNorm(...)(x))` with the same variables (params 'scale', 'bias';
    batch_stats 'mean', 'var'), the same values and running averages, and `bn_relu`'s gradient.

    Statistics over a `jax.pmap` axis are not supported here: use Flax's BatchNorm then.
    `impl` is the model's `conv_impl`: except with "xla", training runs the extension's
    BatchNorm kernels on CPU where it is built (`murajax.ops.batchnorm`).
    """

    momentum: float = 0.99
    epsilon: float = 1e-5
    dtype: Any = None
    impl: str = "auto"

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
        native = native_available(x, self.impl)
        y, mean, var = bn_relu(x, scale, bias, self.epsilon, native=native)
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
