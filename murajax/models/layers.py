"""Small building blocks shared by the models, and the choices they implement.

- `DTYPES` / `as_dtype`: the computation dtypes a model may take ("float32", "bfloat16").
- `Conv`, `conv3x3`, `dense`, `max_pool_2x2`: layers with murajax's initialisers and kernels;
  `KernelVariable`: a `Conv`'s kernel alone, for code that convolves by itself.
- `CNN_POOLINGS` / `global_pool`: how a feature map becomes one vector per image.
- `FEATURES` / `mark_features`: the mark each model puts on its last convolutional feature
  map, through which `murajax.heatmaps` reaches it (Grad-CAM, CAM).
- `BN_AXIS_FIELD` / `with_bn_axis`: a model built for `jax.pmap`, its BatchNorm layers
  averaging their statistics over the devices.
"""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from murajax import initializers, ops

DTYPES: tuple[str, ...] = ("float32", "bfloat16")
"""The computation dtypes a model takes by name (`model.dtype`); parameters stay float32."""

CNN_POOLINGS: tuple[str, ...] = ("avg", "max", "flatten")
"""How `global_pool` turns an NHWC feature map into (N, D) (`model.pooling`)."""

FEATURES = "features"
"""The name under which a model marks its feature map (`mark_features`)."""

BN_AXIS_FIELD = "bn_axis_name"
"""The field by which a model hands a mapped axis to its BatchNorm layers (`with_bn_axis`)."""


def as_dtype(dtype: Any) -> jnp.dtype:
    """A computation dtype from its name in `DTYPES` or a numpy/jax dtype."""
    if isinstance(dtype, str) and dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: expected one of {DTYPES}")
    return jnp.dtype(dtype)


def mark_features(module: nn.Module, x: jax.Array) -> jax.Array:
    """Marks `x` as `module`'s feature map, the one tensor that heatmaps explain; returns `x`.

    Call it once, on the last convolutional feature map: `x = mark_features(self, x)`. It
    changes nothing in `init` or in an ordinary `apply` (no variables, the same values).
    `murajax.heatmaps` reads the map from the "intermediates" collection (`sow`) and the
    gradient of a logit with respect to it through a zero "perturbations" variable
    (`Module.perturb`), which exists only when the caller makes that collection mutable.
    """
    module.sow("intermediates", FEATURES, x)
    if module.is_initializing():
        return x  # `init` would otherwise add a "perturbations" collection to the variables
    return module.perturb(FEATURES, x)


def with_bn_axis(model: nn.Module, axis_name: str) -> nn.Module:
    """`model` with BatchNorm averaging its batch statistics over the mapped axis `axis_name`
    (inside `jax.pmap`), so that it normalises with the whole global batch's statistics, as
    one device would.

    A copy (`clone`) of `model`, and of the modules held in its fields (a `MultiView`'s
    encoder), with `bn_axis_name=axis_name` wherever a module has that field: the CNN and
    DenseNet-169 hand it to each of their BatchNorm layers; a user's module takes part by
    having the same field. Parameters and their names are unchanged, and neither `init` nor
    evaluation (running averages) uses the axis.
    """
    fields = dataclasses.fields(model)
    changes = {
        field.name: with_bn_axis(value, axis_name)
        for field in fields
        if field.name != "parent" and isinstance(value := getattr(model, field.name), nn.Module)
    }
    if any(field.name == BN_AXIS_FIELD for field in fields):
        changes[BN_AXIS_FIELD] = axis_name
    return model.clone(**changes) if changes else model


class Conv(nn.Module):
    """A 2-D convolution over NHWC inputs through `murajax.ops.conv2d`, optionally with its
    ReLU fused in (one pass over the output instead of two) and, after the ReLU, the 2x2
    max-pooling that follows it (`pool=True`: `murajax.ops.conv2d_relu_max_pool`, whose
    backward pass is leaner than the layers' apart; the module then returns the pooled map).

    Its parameters are `nn.Conv`'s: "kernel" (KH, KW, in, out) and "bias" (out), float32, with
    the same initialisers and names, so Keras weights and checkpoints load unchanged. It
    computes in `dtype`. `conv_impl` picks the CPU kernels ("auto", "xla", "onednn",
    "onednn-direct"; see `murajax.ops.resolve_conv_impl`); GPUs and TPUs always run XLA's.
    """

    features: int
    kernel_size: tuple[int, int] = (3, 3)
    strides: tuple[int, int] = (1, 1)
    padding: str | Sequence[tuple[int, int]] = "SAME"
    use_bias: bool = True
    relu: bool = False
    pool: bool = False
    dtype: Any = jnp.float32
    conv_impl: str = "auto"
    kernel_init: Callable[..., jax.Array] = initializers.kernel_init
    bias_init: Callable[..., jax.Array] = initializers.bias_init

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """`pool?(relu?(conv(x) + bias?))` in `dtype`."""
        shape = (*self.kernel_size, x.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, shape, jnp.float32)
        bias = None
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
        x = jnp.asarray(x, self.dtype)
        kernel = kernel.astype(self.dtype)
        bias = None if bias is None else bias.astype(self.dtype)
        options = {"strides": self.strides, "padding": self.padding, "impl": self.conv_impl}
        if self.pool and self.relu:
            return ops.conv2d_relu_max_pool(x, kernel, bias, **options)
        y = ops.conv2d(x, kernel, bias, relu=self.relu, **options)
        return max_pool_2x2(y) if self.pool else y


class KernelVariable(nn.Module):
    """A convolution's kernel as `Conv` (and `nn.Conv`) names and initialises it, for code that
    convolves by itself (`models.dense_block`): calling it gives the float32 kernel `shape`."""

    shape: tuple[int, ...]
    kernel_init: Callable[..., jax.Array] = initializers.kernel_init

    @nn.compact
    def __call__(self) -> jax.Array:
        return self.param("kernel", self.kernel_init, self.shape, jnp.float32)


def conv3x3(
    features: int,
    *,
    dtype: Any,
    name: str,
    use_bias: bool = True,
    relu: bool = False,
    pool: bool = False,
    conv_impl: str = "auto",
) -> Conv:
    """A 3x3 'SAME' convolution: Glorot-uniform kernel, zero bias, float32 parameters; `relu`
    fuses the ReLU that follows it, `pool` the 2x2 max-pooling after that."""
    return Conv(
        features,
        (3, 3),
        padding="SAME",
        use_bias=use_bias,
        relu=relu,
        pool=pool,
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


max_pool_2x2 = ops.max_pool_2x2  # 2x2 max-pooling with flax's gradient (`murajax.ops.pool`)


def global_pool(x: jax.Array, pooling: str) -> jax.Array:
    """An NHWC feature map to (N, D): global "avg" or "max" pooling, or "flatten"."""
    if pooling == "avg":
        return jnp.mean(x, axis=(1, 2))
    if pooling == "max":
        return jnp.max(x, axis=(1, 2))
    if pooling == "flatten":
        return x.reshape(x.shape[0], -1)
    raise ValueError(f"unknown pooling {pooling!r}: expected one of {CNN_POOLINGS}")
