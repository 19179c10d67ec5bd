"""`conv2d`: an NHWC x HWIO convolution (+ bias, + ReLU) on oneDNN or XLA.

    y = conv2d(x, kernel, bias, strides=(1, 1), padding="SAME", relu=True, impl="auto")

is `relu(lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=("NHWC",
"HWIO", "NHWC")) + bias)`, and with `impl="xla"` it is exactly that. With "onednn" (and "auto"
where the extension works, `murajax.ops.onednn_status()`), a CPU runs the three passes of a
training step, forward, input gradient and kernel (+ bias) gradient, as oneDNN primitives called
through XLA's FFI, tied together by a `jax.custom_vjp`; bias and ReLU are fused into the forward
pass (and, in `conv2d_relu_max_pool`, the 2x2 max-pooling that follows). Every call is wrapped
in `lax.platform_dependent`, so a GPU or TPU always compiles XLA's own convolution: the choice
only ever changes CPU code.

With "onednn" (and "auto"), float32 3x3 convolutions with stride 1 and padding 1 on images of
even size, between layers of at least 64 channels, run all three passes as Winograd F(2x2, 3x3)
instead (`winograd.h`: 2.25x fewer multiplications, as 16 oneDNN matrix products): VGG16's
float32 step on 2 cores took 0.83x the time of oneDNN's direct convolutions at 128 px, 0.70x
at 224 px. Its results differ
from a direct convolution's by float32 rounding only (about 1e-6 relative), and are as
reproducible; "onednn-direct" keeps oneDNN's direct convolutions everywhere.
"""

import functools
import os
import sys
import warnings
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from murajax.errors import ConfigError
from murajax.ops.onednn import onednn_dtype_status, onednn_status
from murajax.ops.pool import crop_even, max_pool_2x2, pool_with_argmax, unpool_2x2

CONV_IMPLS: tuple[str, ...] = ("auto", "xla", "onednn", "onednn-direct")
"""The CPU convolution kernels a model may ask for (`model.conv_impl`; `resolve_conv_impl`):
"onednn" runs oneDNN's direct convolutions and, for float32 3x3 layers that it speeds up,
Winograd F(2x2, 3x3) (module docstring); "onednn-direct" only the direct ones."""
_ONEDNN_IMPLS = ("onednn", "onednn-direct")

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")
_ONEDNN_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))

Padding = str | Sequence[tuple[int, int]]


_SKIPPED_PACKAGES = ("murajax", "jax", "jaxlib", "flax", "optax")


def _library_dirs() -> tuple[str, ...]:
    """Folders whose frames a warning skips, so that it names the user's line that built or
    called the model (under jit, Flax, JAX and standard-library frames lie between the two)."""
    dirs = [os.path.dirname(os.__file__)]  # the standard library
    for name in _SKIPPED_PACKAGES:
        module = sys.modules.get(name)
        if module is not None and getattr(module, "__file__", None):
            dirs.append(os.path.dirname(os.path.abspath(module.__file__)))
    return tuple(d + os.sep for d in dirs)


def _user_stacklevel() -> int:
    """The `stacklevel` of the first frame, from the caller of `warnings.warn`'s caller
    outward, outside those folders (the outermost frame if every one is inside)."""
    skipped = _library_dirs()
    level, frame = 2, sys._getframe(2)
    while frame.f_back is not None and frame.f_code.co_filename.startswith(skipped):
        frame, level = frame.f_back, level + 1
    return level


@functools.cache
def _warn_fallback(reason: str) -> None:
    warnings.warn(
        f"murajax: using XLA's CPU convolution: {reason}",
        RuntimeWarning,
        stacklevel=_user_stacklevel(),
    )


def resolve_conv_impl(impl: str) -> str:
    """ "xla", "onednn" or "onednn-direct" for a `model.conv_impl` value. "auto" is "onednn",
    or falls back to "xla" (with one warning) where the oneDNN extension does not work;
    "onednn" and "onednn-direct" there raise `RuntimeError`."""
    if impl not in CONV_IMPLS:
        raise ValueError(f"unknown conv_impl {impl!r}: expected one of {CONV_IMPLS}")
    if impl == "xla":
        return "xla"
    problem = onednn_status()
    if problem is None:
        return "onednn" if impl == "auto" else impl
    if impl in _ONEDNN_IMPLS:
        raise RuntimeError(f"conv_impl={impl!r} is not available: {problem}")
    _warn_fallback(problem)
    return "xla"


def check_conv_impl(impl: str) -> None:
    """Raises the one-line `ConfigError` for `model.conv_impl='onednn'` where the extension
    cannot run (before any compute); "auto" and "xla" always work."""
    try:
        resolve_conv_impl(impl)
    except RuntimeError as e:
        raise ConfigError(
            f"config.model.conv_impl={impl!r} cannot run here ({onednn_status()}): "
            "use 'auto' or 'xla'"
        ) from e


def _xla_conv(x, kernel, bias, strides, pads, relu):
    y = lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=_DIMENSIONS)
    if bias is not None:
        y = y + bias
    return jax.nn.relu(y) if relu else y


def _attributes(
    strides: tuple[int, int], pads: tuple[tuple[int, int], ...], winograd: bool
) -> dict:
    (top, bottom), (left, right) = pads
    return {
        "winograd": winograd,
        "stride_h": np.int64(strides[0]),
        "stride_w": np.int64(strides[1]),
        "pad_top": np.int64(top),
        "pad_bottom": np.int64(bottom),
        "pad_left": np.int64(left),
        "pad_right": np.int64(right),
    }


def _output_shape(x_shape, kernel_shape, strides, pads) -> tuple[int, int, int, int]:
    n, h, w, _ = x_shape
    kh, kw, _, features = kernel_shape
    out_h = (h + pads[0][0] + pads[0][1] - kh) // strides[0] + 1
    out_w = (w + pads[1][0] + pads[1][1] - kw) // strides[1] + 1
    return n, out_h, out_w, features


# What the custom VJPs below compute off CPU (their `lax.platform_dependent` default= branch, on a
# GPU or TPU): XLA's convolution and its gradients, one pass at a time.


def xla_forward(x, kernel, bias, strides, pads, relu, has_bias):
    """The forward pass off CPU: `relu?(conv(x, kernel) + bias?)` on XLA."""
    return _xla_conv(x, kernel, bias if has_bias else None, strides, pads, relu)


def xla_input_grad(dy, kernel, x_shape, strides, pads):
    """The input gradient off CPU, from the output's gradient `dy`."""
    x = jnp.zeros(x_shape, dy.dtype)
    _, vjp = jax.vjp(lambda x: _xla_conv(x, kernel, None, strides, pads, False), x)
    return vjp(dy)[0]


def xla_kernel_grad(x, dy, kernel_shape, strides, pads):
    """(kernel gradient, bias gradient) off CPU, from the output's gradient `dy`."""
    kernel = jnp.zeros(kernel_shape, x.dtype)
    _, vjp = jax.vjp(lambda k: _xla_conv(x, k, None, strides, pads, False), kernel)
    return vjp(dy)[0], jnp.sum(dy, axis=(0, 1, 2))


def xla_forward_pooled(x, kernel, bias, strides, pads, has_bias):
    """(2x2 max-pool of relu(conv + bias?), each window's winning corner) off CPU."""
    y = _xla_conv(x, kernel, bias if has_bias else None, strides, pads, True)
    return pool_with_argmax(crop_even(y))


def xla_unpool_relu(pooled, g, winner, shape):
    """The gradient of relu(conv) from its pooling's gradient `g`, off CPU."""
    return unpool_2x2(jnp.where(pooled > 0, g, jnp.zeros_like(g)), winner, shape)


def _forward(x, kernel, bias, strides, pads, relu, has_bias, winograd):
    out = jax.ShapeDtypeStruct(_output_shape(x.shape, kernel.shape, strides, pads), x.dtype)
    call = jax.ffi.ffi_call("murajax_onednn_conv_fwd", out)
    attributes = _attributes(strides, pads, winograd)

    def onednn(x, kernel, bias):
        return call(x, kernel, bias, **attributes, has_bias=has_bias, relu=relu)

    def xla(x, kernel, bias):
        return xla_forward(x, kernel, bias, strides, pads, relu, has_bias)

    return lax.platform_dependent(x, kernel, bias, cpu=onednn, default=xla)


def _input_grad(dy, kernel, x_shape, strides, pads, winograd):
    out = jax.ShapeDtypeStruct(x_shape, dy.dtype)
    call = jax.ffi.ffi_call("murajax_onednn_conv_bwd_data", out)

    def onednn(dy, kernel):
        return call(dy, kernel, **_attributes(strides, pads, winograd))

    def xla(dy, kernel):
        return xla_input_grad(dy, kernel, x_shape, strides, pads)

    return lax.platform_dependent(dy, kernel, cpu=onednn, default=xla)


def _kernel_grad(x, dy, kernel_shape, strides, pads, has_bias, winograd):
    outs = (
        jax.ShapeDtypeStruct(kernel_shape, x.dtype),
        jax.ShapeDtypeStruct(kernel_shape[-1:], x.dtype),
    )
    call = jax.ffi.ffi_call("murajax_onednn_conv_bwd_weights", outs)

    def onednn(x, dy):
        return call(x, dy, **_attributes(strides, pads, winograd), has_bias=has_bias)

    def xla(x, dy):
        return xla_kernel_grad(x, dy, kernel_shape, strides, pads)

    return lax.platform_dependent(x, dy, cpu=onednn, default=xla)


def _conv_grads(x, kernel, dy, strides, pads, has_bias, winograd):
    """(d x, d kernel, d bias) of the convolution from its output's gradient `dy`."""
    dx = _input_grad(dy, kernel, x.shape, strides, pads, winograd)
    dkernel, dbias = _kernel_grad(x, dy, kernel.shape, strides, pads, has_bias, winograd)
    if not has_bias:
        dbias = jnp.zeros_like(dbias)
    return dx, dkernel, dbias


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7))
def _onednn_conv(x, kernel, bias, strides, pads, relu, has_bias, winograd):
    return _forward(x, kernel, bias, strides, pads, relu, has_bias, winograd)


def _onednn_conv_fwd(x, kernel, bias, strides, pads, relu, has_bias, winograd):
    y = _forward(x, kernel, bias, strides, pads, relu, has_bias, winograd)
    return y, (x, kernel, y if relu else None)


def _onednn_conv_bwd(strides, pads, relu, has_bias, winograd, residuals, dy):
    x, kernel, y = residuals
    if relu:
        dy = jnp.where(y > 0, dy, jnp.zeros_like(dy))
    return _conv_grads(x, kernel, dy, strides, pads, has_bias, winograd)


_onednn_conv.defvjp(_onednn_conv_fwd, _onednn_conv_bwd)


def _forward_pooled(x, kernel, bias, strides, pads, has_bias, winograd):
    """(2x2 max-pool of relu(conv + bias), which corner of each window won)."""
    n, height, width, features = _output_shape(x.shape, kernel.shape, strides, pads)
    pooled_shape = (n, height // 2, width // 2, features)
    outs = (
        jax.ShapeDtypeStruct(pooled_shape, x.dtype),
        jax.ShapeDtypeStruct(pooled_shape, jnp.uint8),
    )
    call = jax.ffi.ffi_call("murajax_onednn_conv_relu_pool_fwd", outs)

    def onednn(x, kernel, bias):
        return call(x, kernel, bias, **_attributes(strides, pads, winograd), has_bias=has_bias)

    def xla(x, kernel, bias):
        return xla_forward_pooled(x, kernel, bias, strides, pads, has_bias)

    return lax.platform_dependent(x, kernel, bias, cpu=onednn, default=xla)


def _unpool_relu(pooled, g, winner, shape):
    """The gradient of relu(conv) from that of its pooling `g`: `g` where the window's maximum
    `pooled` is positive, at its `winner` corner, zero elsewhere; an array of `shape`."""
    call = jax.ffi.ffi_call("murajax_onednn_unpool_relu_bwd", jax.ShapeDtypeStruct(shape, g.dtype))

    def onednn(pooled, g, winner):
        return call(pooled, g, winner)

    def xla(pooled, g, winner):
        return xla_unpool_relu(pooled, g, winner, shape)

    return lax.platform_dependent(pooled, g, winner, cpu=onednn, default=xla)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _onednn_conv_relu_pool(x, kernel, bias, strides, pads, has_bias, winograd):
    return _forward_pooled(x, kernel, bias, strides, pads, has_bias, winograd)[0]


def _onednn_conv_relu_pool_fwd(x, kernel, bias, strides, pads, has_bias, winograd):
    pooled, winner = _forward_pooled(x, kernel, bias, strides, pads, has_bias, winograd)
    # The full-size ReLU output is not kept: where a window's maximum is positive, its winner is
    # where the ReLU passed the gradient; where it is 0, the ReLU stopped it.
    return pooled, (x, kernel, pooled, winner)


def _onednn_conv_relu_pool_bwd(strides, pads, has_bias, winograd, residuals, g):
    x, kernel, pooled, winner = residuals
    shape = _output_shape(x.shape, kernel.shape, strides, pads)
    dy = _unpool_relu(pooled, g, winner, shape)
    return _conv_grads(x, kernel, dy, strides, pads, has_bias, winograd)


_onednn_conv_relu_pool.defvjp(_onednn_conv_relu_pool_fwd, _onednn_conv_relu_pool_bwd)


def _check_shapes(x, kernel, bias) -> None:
    """Raises `ValueError` naming the shapes unless NHWC `x`, HWIO `kernel` and `bias` fit."""
    if x.ndim != 4 or kernel.ndim != 4:
        raise ValueError(
            f"conv2d expects an NHWC input and an HWIO kernel (4-D each), got shapes {x.shape} "
            f"and {kernel.shape}"
        )
    if kernel.shape[2] != x.shape[3]:
        raise ValueError(
            f"conv2d: the kernel {kernel.shape} takes {kernel.shape[2]} input channels but the "
            f"input {x.shape} has {x.shape[3]}"
        )
    bias_shape = tuple(np.shape(bias))  # numpy's: jax2onnx's tracing patches `jnp.shape`
    if bias is not None and bias_shape not in ((), (1,), (kernel.shape[3],)):
        raise ValueError(
            f"conv2d: bias of shape {bias_shape} does not fit the kernel {kernel.shape}: "
            f"expected ({kernel.shape[3]},) (or a scalar)"
        )


def _prepare(x, kernel, bias, strides, padding):
    """Checked shapes; integer strides and explicit pads; kernel and bias in `x`'s dtype, the
    bias one value per output channel."""
    _check_shapes(x, kernel, bias)
    strides = tuple(int(s) for s in strides)
    if len(strides) != 2 or min(strides) < 1:
        raise ValueError(f"conv2d: strides must be two positive integers, got {strides}")
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(x.shape[1:3], kernel.shape[:2], strides, padding)
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    if bias is not None:
        bias = jnp.broadcast_to(jnp.asarray(bias, x.dtype), kernel.shape[-1:])
    return kernel.astype(x.dtype), bias, strides, pads


def _onednn_can_run(x, kernel, strides, pads, pooled: bool = False) -> bool:
    """Whether oneDNN's kernels take this convolution: float32 or bfloat16 (where this CPU runs
    that dtype; else one warning), no negative padding, and no empty input, kernel or output
    (XLA gives those their answer: empty outputs, zero gradients)."""
    if any(lo < 0 or hi < 0 for lo, hi in pads):
        return False
    output = _output_shape(x.shape, kernel.shape, strides, pads)
    if min(x.shape + kernel.shape + output) < 1:
        return False
    if pooled and min(output[1:3]) < 2:
        return False  # an empty pooled output
    problem = onednn_dtype_status(x.dtype.name)
    if problem is not None:
        _warn_fallback(problem)
        return False
    return True


def _unstride_pointwise(x, kernel, strides, pads):
    """A strided 1x1 convolution without padding as a stride-1 one on the rows and columns it
    reads (a strided slice, whose gradient XLA pads back with zeros). oneDNN 3.2's AVX2 kernel
    gradient of strided 1x1 convolutions (`jit_1x1:avx2`) gives wrong values, or never returns;
    this keeps every CPU off that kernel. Other convolutions pass through unchanged."""
    if kernel.shape[:2] != (1, 1) or strides == (1, 1) or any(p for pad in pads for p in pad):
        return x, strides
    _, out_h, out_w, _ = _output_shape(x.shape, kernel.shape, strides, pads)
    if min(out_h, out_w) < 1:
        return x, strides
    rows = slice(0, (out_h - 1) * strides[0] + 1, strides[0])
    columns = slice(0, (out_w - 1) * strides[1] + 1, strides[1])
    return x[:, rows, columns, :], (1, 1)


def _onednn_winograd(x, kernel, strides, pads, impl, pooled: bool = False) -> bool | None:
    """None where XLA runs the convolution; else whether oneDNN's kernels may use Winograd."""
    if x.dtype not in _ONEDNN_DTYPES:
        return None
    resolved = resolve_conv_impl(impl)
    if resolved == "xla" or not _onednn_can_run(x, kernel, strides, pads, pooled):
        return None
    return resolved == "onednn"


def conv2d(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None = None,
    *,
    strides: Sequence[int] = (1, 1),
    padding: Padding = "SAME",
    relu: bool = False,
    impl: str = "auto",
) -> jax.Array:
    """`relu?(conv(x, kernel) + bias?)` for NHWC `x` and HWIO `kernel`, in their dtype.

    `padding` is "SAME", "VALID" or ((top, bottom), (left, right)). `impl` chooses the CPU
    kernels (see `resolve_conv_impl`); float32 and bfloat16 run on oneDNN, other dtypes on
    XLA. Values and gradients equal XLA's up to float rounding.
    """
    kernel, bias, strides, pads = _prepare(x, kernel, bias, strides, padding)
    winograd = _onednn_winograd(x, kernel, strides, pads, impl)
    if winograd is None:
        return _xla_conv(x, kernel, bias, strides, pads, relu)
    has_bias = bias is not None
    if bias is None:
        bias = jnp.zeros(kernel.shape[-1:], x.dtype)
    x, strides = _unstride_pointwise(x, kernel, strides, pads)
    return _onednn_conv(x, kernel, bias, strides, pads, relu, has_bias, winograd)


def conv2d_grads(
    x: jax.Array,
    kernel: jax.Array,
    dy: jax.Array,
    *,
    padding: Padding = "SAME",
    impl: str = "auto",
) -> tuple[jax.Array, jax.Array]:
    """(d x, d kernel) of `conv2d(x, kernel, padding=padding, impl=impl)` (stride 1, no bias,
    no ReLU) for its output's gradient `dy`, in `x`'s dtype, without tracing or running the
    forward convolution: for code that writes its own backward pass (`models.dense_block`)."""
    kernel, _, strides, pads = _prepare(x, kernel, None, (1, 1), padding)
    winograd = _onednn_winograd(x, kernel, strides, pads, impl)
    if winograd is None:
        _, vjp = jax.vjp(lambda x, k: _xla_conv(x, k, None, strides, pads, False), x, kernel)
        return vjp(dy)
    dx, dkernel, _ = _conv_grads(x, kernel, dy, strides, pads, False, winograd)
    return dx, dkernel


def conv2d_relu_max_pool(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None = None,
    *,
    strides: Sequence[int] = (1, 1),
    padding: Padding = "SAME",
    impl: str = "auto",
) -> jax.Array:
    """`max_pool_2x2(relu(conv(x, kernel) + bias?))`: `conv2d(..., relu=True)` followed by
    `murajax.ops.max_pool_2x2`, with the same values and gradients.

    On oneDNN the convolution, ReLU and pooling are one call whose full-size output never
    leaves it (oneDNN's pooling records which corner won), and the backward pass goes straight
    from the pooled gradient to the convolution's (oneDNN's ReLU and pooling gradients) without
    keeping the full-size ReLU output: less memory and, in bfloat16, about a third less time
    around the convolution than the two layers apart (15% less for the benchmark CNN's whole
    step than the same with XLA's pooling). Elsewhere it is the two layers apart.
    """
    kernel, bias, strides, pads = _prepare(x, kernel, bias, strides, padding)
    winograd = _onednn_winograd(x, kernel, strides, pads, impl, pooled=True)
    if winograd is None:
        return max_pool_2x2(_xla_conv(x, kernel, bias, strides, pads, True))
    has_bias = bias is not None
    if bias is None:
        bias = jnp.zeros(kernel.shape[-1:], x.dtype)
    x, strides = _unstride_pointwise(x, kernel, strides, pads)
    return _onednn_conv_relu_pool(x, kernel, bias, strides, pads, has_bias, winograd)
