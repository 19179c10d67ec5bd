"""BatchNorm followed by ReLU in training mode (DenseNet's pre-activation), as functions with a
hand-written gradient, in XLA and, on CPU, in murajax's native extension.

`jax.grad` of `nn.BatchNorm` then `nn.relu` keeps the normalised tensor and the ReLU's mask
for the backward pass and differentiates the mean and variance through their broadcasts: on
DenseNet-169 (169 BatchNorms over ever wider inputs) that graph was two thirds of XLA's compile
time and a third of the train step. `bn_relu` computes the same values in one pass for the
statistics and one for the output; its backward pass recomputes the mask from the input and
needs two per-channel sums and one elementwise pass (the textbook BatchNorm gradient):

    a = scale / sqrt(var + eps),  y = relu(a * (x - mean) + bias)
    g' = g * [y > 0],  dbias = sum(g'),  dscale = sum(g' * (x - mean)) / sqrt(var + eps)
    dx = a * (g' - dbias / n - (x - mean) / sqrt(var + eps) * dscale / n)

The `*_prefix` functions are the same three passes over the first `channels` channels of a
wider array (a dense block's feature buffer), for code that writes its own backward pass
(`models.dense_block`). With `native=True` they run on CPU as the extension's kernels
(`batchnorm_relu.h`): those read the prefix in place instead of copying it out, and the
backward pass adds its input gradient into a gradient buffer in place. Off CPU, or with
`native=False`, they are XLA's, with the same values up to float32 rounding.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from murajax.ops import graph_style
from murajax.ops.conv import resolve_conv_impl

Array = jax.Array

NATIVE_DTYPES = (jnp.float32, jnp.bfloat16)


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
    """relu((x - mean) / sqrt(var + eps) * scale + bias) in `x`'s dtype (float32 inside);
    `x * a + b` while tracing for ONNX (`graph_style`)."""
    if graph_style.tracing_for_onnx():
        a = scale * jax.lax.rsqrt(var + epsilon)
        y = x.astype(jnp.float32) * a + (bias - mean * a)
        return jnp.maximum(y, 0.0).astype(x.dtype)
    return jnp.maximum(_pre_relu(x, scale, bias, mean, var, epsilon)[2], 0.0).astype(x.dtype)


def _bn_relu_forward(x, scale, bias, epsilon):
    mean, var = _batch_stats(x)
    return normalize_relu(x, scale, bias, mean, var, epsilon), mean, var


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


def _activation_dtype(x: Array) -> jnp.dtype:
    """The dtype `x` holds: bfloat16 for uint16 bits (`as_activations`), else `x`'s own."""
    return jnp.dtype(jnp.bfloat16) if x.dtype == jnp.uint16 else x.dtype


def as_activations(x: Array) -> Array:
    """`x`, or bfloat16 `x` kept as its bits in uint16 (what the native kernels also take:
    `models.dense_block` keeps its buffer so, since XLA:CPU updates uint16 in place)."""
    return jax.lax.bitcast_convert_type(x, jnp.bfloat16) if x.dtype == jnp.uint16 else x


def native_available(x: Array, conv_impl: str) -> bool:
    """Whether the native kernels serve `x` under `model.conv_impl`: the extension runs here
    (`conv_impl` is not "xla") and `x` is float32 or bfloat16."""
    return _activation_dtype(x) in NATIVE_DTYPES and resolve_conv_impl(conv_impl) != "xla"


def _vector(channels: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((channels,), jnp.float32)


def _dense(x: Array, channels: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((*x.shape[:-1], channels), _activation_dtype(x))


def _native_or_xla(target, outs, args, xla, epsilon, native, **ffi_options):
    """`xla(*args)`, or with `native` on CPU the extension's handler `target` with results
    `outs` (one, or a tuple) and the attribute `epsilon`; XLA's on other platforms."""
    if not native:
        return xla(*args)
    call = jax.ffi.ffi_call(target, outs, **ffi_options)

    def cpu(*args):
        result = call(*args, epsilon=np.float32(epsilon))
        return tuple(result) if isinstance(outs, tuple) else result

    return lax.platform_dependent(*args, cpu=cpu, default=xla)


def bn_relu_prefix(
    x: Array, channels: int, scale: Array, bias: Array, epsilon: float, *, native: bool
) -> tuple[Array, Array, Array]:
    """(relu(batchnorm(x[..., :channels])), batch mean, batch variance): `bn_relu`'s values
    (not differentiable) over the first `channels` channels of `x` (float32, bfloat16, or
    bfloat16 bits as uint16: `as_activations`)."""

    def xla(x, scale, bias):
        return _bn_relu_forward(as_activations(x)[..., :channels], scale, bias, epsilon)

    outs = (_dense(x, channels), _vector(channels), _vector(channels))
    return _native_or_xla("murajax_bn_relu_fwd", outs, (x, scale, bias), xla, epsilon, native)


def normalize_relu_prefix(
    x: Array,
    channels: int,
    scale: Array,
    bias: Array,
    mean: Array,
    var: Array,
    epsilon: float,
    *,
    native: bool,
) -> Array:
    """`normalize_relu` of `x[..., :channels]` with the given statistics."""

    def xla(x, scale, bias, mean, var):
        return normalize_relu(as_activations(x)[..., :channels], scale, bias, mean, var, epsilon)

    args = (x, scale, bias, mean, var)
    outs = _dense(x, channels)
    return _native_or_xla("murajax_bn_relu_normalize", outs, args, xla, epsilon, native)


def bn_relu_grads_prefix(
    x: Array,
    channels: int,
    g: Array,
    scale: Array,
    bias: Array,
    mean: Array,
    var: Array,
    epsilon: float,
    *,
    native: bool,
    add_to: Array | None = None,
) -> tuple[Array, Array, Array]:
    """(dx, dscale, dbias): `bn_relu_grads` of `bn_relu_prefix` for its output's cotangent `g`
    (`channels` wide). With `add_to` (an array with `x`'s rows, at least `channels` wide), the
    first value is `add_to` with dx added to its first `channels` channels instead of dx."""

    def xla(x, g, scale, bias, mean, var, *total):
        residuals = (as_activations(x)[..., :channels], scale, bias, mean, var, epsilon)
        dx, dscale, dbias = bn_relu_grads(residuals, g)
        if total:
            dx = total[0].at[..., :channels].add(dx)
        return dx, dscale, dbias

    vectors = (_vector(channels), _vector(channels))
    args = (x, g, scale, bias, mean, var)
    if add_to is None:
        outs = (_dense(x, channels), *vectors)
        return _native_or_xla("murajax_bn_relu_bwd", outs, args, xla, epsilon, native)
    outs = (jax.ShapeDtypeStruct(add_to.shape, add_to.dtype), *vectors)
    return _native_or_xla(
        "murajax_bn_relu_bwd_add",
        outs,
        (*args, add_to),
        xla,
        epsilon,
        native,
        input_output_aliases={6: 0},  # add_to is updated in place
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _bn_relu(x, scale, bias, epsilon, native):
    return bn_relu_prefix(x, x.shape[-1], scale, bias, epsilon, native=native)


def _bn_relu_fwd(x, scale, bias, epsilon, native):
    y, mean, var = bn_relu_prefix(x, x.shape[-1], scale, bias, epsilon, native=native)
    return (y, mean, var), (x, scale, bias, mean, var)


def _bn_relu_bwd(epsilon, native, residuals, cotangents):
    # The mean and variance only feed the running averages: their cotangents are ignored.
    x, *rest = residuals
    return bn_relu_grads_prefix(x, x.shape[-1], cotangents[0], *rest, epsilon, native=native)


_bn_relu.defvjp(_bn_relu_fwd, _bn_relu_bwd)


def bn_relu(
    x: Array, scale: Array, bias: Array, epsilon: float, *, native: bool = False
) -> tuple[Array, Array, Array]:
    """(relu(batchnorm(x)), batch mean, batch variance) over every axis of `x` but the last.

    Statistics and arithmetic are float32 whatever `x`'s dtype; the output has `x`'s dtype.
    Differentiable in `x`, `scale` and `bias`; the returned mean and variance are not (they are
    for the running averages). `native`: the extension's kernels on CPU (`native_available`).
    """
    return _bn_relu(x, scale, bias, epsilon, native)
