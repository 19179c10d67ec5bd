"""`murajax.ops.conv2d` and `conv2d_relu_max_pool` check shapes and dtypes before calling oneDNN:
what does not fit is a Python `ValueError` (or `TypeError`) naming the shapes, what oneDNN does
not take gets XLA's answer, and nothing returns garbage (issue 19, finding 4: a kernel for 64
input channels on a 128-channel image returned 1.9e36 on the Winograd path; a bias of the
wrong length was read past its end)."""

import platform
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from murajax import ops
from tests.child_process import describe, run_python

ONEDNN_IMPLS = ("auto", "onednn", "onednn-direct")
DIMENSIONS = ("NHWC", "HWIO", "NHWC")

pytestmark = pytest.mark.skipif(
    not (sys.platform == "linux" and platform.machine() == "x86_64"),
    reason="oneDNN's wheels exist for x86-64 Linux only",
)


@pytest.fixture(scope="module", autouse=True)
def onednn() -> None:
    assert ops.onednn_status() is None, ops.onednn_status()


def _array(shape: tuple[int, ...], dtype=jnp.float32, seed: int = 0) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def _op(pooled: bool):
    return ops.conv2d_relu_max_pool if pooled else ops.conv2d


def _xla(x, kernel, bias=None, *, strides=(1, 1), padding="SAME", pooled=False) -> jax.Array:
    """The same convolution on XLA's own operations (ReLU and 2x2 max-pool when pooled)."""
    y = lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=DIMENSIONS)
    if bias is not None:
        y = y + bias
    if pooled:
        y = nn.max_pool(jax.nn.relu(y), (2, 2), strides=(2, 2), padding="VALID")
    return y


def _refused(call, *names: str) -> str:
    """Runs `call`, which must raise ValueError or TypeError naming each of `names`."""
    with pytest.raises((ValueError, TypeError)) as error:
        jax.block_until_ready(call())
    message = str(error.value)
    for name in names:
        assert name in message, f"{name!r} not in the error {message!r}"
    return message


def refuse_kernels_for_other_input_channels(x_shape, kernel_shape) -> None:
    """conv2d and conv2d_relu_max_pool, with each oneDNN impl, refuse `kernel_shape` on an
    image of `x_shape` naming both shapes."""
    x, kernel = _array(x_shape), _array(kernel_shape, seed=1)
    for op in (ops.conv2d, ops.conv2d_relu_max_pool):
        for impl in ONEDNN_IMPLS:
            _refused(
                lambda op=op, impl=impl: op(x, kernel, impl=impl),
                *map(str, (x_shape, kernel_shape)),
            )


def test_a_kernel_for_other_input_channels_is_refused_naming_the_shapes():
    refuse_kernels_for_other_input_channels((2, 6, 6, 5), (3, 3, 3, 4))


def test_a_winograd_shaped_kernel_for_other_input_channels_is_refused_naming_the_shapes():
    """64 input channels on a 128-channel image, 3x3, 64 outputs: the Winograd path returned
    1.9e36 or crashed the process (SIGSEGV), so it runs in a child process."""
    code = (
        "from tests.test_conv_input_checks import refuse_kernels_for_other_input_channels; "
        "refuse_kernels_for_other_input_channels((1, 8, 8, 128), (3, 3, 64, 64))"
    )
    result = run_python(code, timeout=120)
    assert result.returncode == 0, describe(result)


@pytest.mark.parametrize("pooled", [False, True], ids=["conv2d", "conv2d_relu_max_pool"])
@pytest.mark.parametrize("impl", ONEDNN_IMPLS)
@pytest.mark.parametrize("bias_shape", [(3,), (16,), (8, 1)])
def test_a_bias_that_does_not_fit_the_output_channels_is_refused_naming_the_shapes(
    bias_shape, impl, pooled
):
    x, kernel, bias = _array((2, 8, 8, 4)), _array((3, 3, 4, 8), seed=1), _array(bias_shape)
    _refused(lambda: _op(pooled)(x, kernel, bias, impl=impl), str(bias_shape))


@pytest.mark.parametrize("pooled", [False, True], ids=["conv2d", "conv2d_relu_max_pool"])
@pytest.mark.parametrize("impl", ONEDNN_IMPLS)
@pytest.mark.parametrize("bias_shape", [(1,), ()], ids=["one-value", "scalar"])
def test_a_bias_that_xla_broadcasts_is_broadcast_or_refused(bias_shape, impl, pooled):
    """One value for every channel: XLA adds it to each; murajax does the same or refuses it
    naming the shapes, but never reads past it (oneDNN read 8 floats from a 1-float buffer)."""
    x, kernel = _array((2, 8, 8, 4)), _array((3, 3, 4, 8), seed=1)
    bias = jnp.full(bias_shape, 0.75, jnp.float32)
    try:
        got = _op(pooled)(x, kernel, bias, impl=impl)
    except (ValueError, TypeError) as error:
        assert str(bias_shape) in str(error)
        return
    np.testing.assert_allclose(got, _xla(x, kernel, bias, pooled=pooled), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pooled", [False, True], ids=["conv2d", "conv2d_relu_max_pool"])
@pytest.mark.parametrize("impl", ONEDNN_IMPLS)
@pytest.mark.parametrize(
    "x_shape, kernel_shape",
    [((8, 8, 4), (3, 3, 4, 8)), ((2, 8, 8, 4), (3, 4, 8)), ((1, 2, 8, 8, 4), (1, 3, 3, 4, 8))],
    ids=["3-D input", "3-D kernel", "5-D"],
)
def test_arrays_that_are_not_nhwc_and_hwio_are_refused_naming_the_shapes(
    x_shape, kernel_shape, impl, pooled
):
    x, kernel = _array(x_shape), _array(kernel_shape, seed=1)
    _refused(lambda: _op(pooled)(x, kernel, impl=impl), str(x_shape), str(kernel_shape))


@pytest.mark.parametrize("impl", ONEDNN_IMPLS)
@pytest.mark.parametrize("strides", [(0, 1), (1, -1)])
def test_strides_below_one_are_refused(strides, impl):
    """No division by zero anywhere (lax.padtype_to_pads raised ZeroDivisionError)."""
    x, kernel = _array((2, 8, 8, 4)), _array((3, 3, 4, 8), seed=1)
    _refused(lambda: ops.conv2d(x, kernel, strides=strides, impl=impl), "strides")


@pytest.mark.parametrize("pooled", [False, True], ids=["conv2d", "conv2d_relu_max_pool"])
@pytest.mark.parametrize("impl", ONEDNN_IMPLS)
def test_negative_padding_crops_as_in_xla(impl, pooled):
    """XLA takes negative padding (it crops the image); oneDNN's primitives do not."""
    x, kernel, bias = _array((2, 9, 10, 4)), _array((3, 3, 4, 8), seed=1), _array((8,), seed=2)
    padding = ((-1, 0), (1, -2))
    got = _op(pooled)(x, kernel, bias, padding=padding, impl=impl)
    want = _xla(x, kernel, bias, padding=padding, pooled=pooled)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pooled", [False, True], ids=["conv2d", "conv2d_relu_max_pool"])
@pytest.mark.parametrize("impl", ONEDNN_IMPLS)
@pytest.mark.parametrize("dtype", [jnp.float16, jnp.int32])
def test_dtypes_onednn_does_not_take_give_xlas_answer(dtype, impl, pooled):
    """float16 and integers: XLA's convolution (or a TypeError naming the dtype)."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.integers(-3, 4, (2, 8, 8, 4)), dtype)
    kernel = jnp.asarray(rng.integers(-2, 3, (3, 3, 4, 8)), dtype)
    bias = jnp.asarray(rng.integers(-2, 3, (8,)), dtype)
    try:
        got = _op(pooled)(x, kernel, bias, impl=impl)
    except TypeError as error:
        assert jnp.dtype(dtype).name in str(error)
        return
    want = _xla(x, kernel, bias, pooled=pooled)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)  # small integers: exact in float16 too
