"""Winograd F(2x2, 3x3) in the oneDNN extension (`model.conv_impl='onednn'`): XLA's values and
gradients to float32 rounding, used exactly where it applies, reproducible bit for bit."""

import platform
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from murajax import ops
from murajax.config import Config, ConfigError
from murajax.ops import conv as conv_lib
from murajax.validation import validate

pytestmark = pytest.mark.skipif(
    not (sys.platform == "linux" and platform.machine() == "x86_64"),
    reason="oneDNN's wheels exist for x86-64 Linux only",
)

# (batch, height, width, in, out, bias, relu). The first is transformed and multiplied in
# chunks of a few images (each image's transformed arrays are 8 MiB; a chunk holds 32 MiB), so
# the kernel gradient is summed over chunks.
CASES = [
    (5, 64, 64, 64, 64, True, True),
    (2, 6, 10, 64, 128, False, False),
    (3, 8, 8, 128, 64, True, False),
]


def _inputs(n, height, width, cin, cout, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((n, height, width, cin)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((3, 3, cin, cout)) / np.sqrt(9 * cin), jnp.float32)
    bias = jnp.asarray(rng.standard_normal(cout), jnp.float32)
    return x, kernel, bias


def _value_and_grads(impl, x, kernel, bias, relu, strides=(1, 1)):
    def loss(x, kernel, bias):
        y = ops.conv2d(x, kernel, bias, strides=strides, relu=relu, impl=impl)
        return jnp.sum(jnp.sin(y.astype(jnp.float32))), y

    argnums = (0, 1, 2) if bias is not None else (0, 1)
    return jax.jit(jax.value_and_grad(loss, argnums, has_aux=True))(x, kernel, bias)


@pytest.mark.parametrize("case", CASES, ids=["chunked", "wide-out", "wide-in"])
def test_values_and_gradients_equal_xla(case):
    """Values with the case's ReLU; gradients without it (where an output is within rounding of
    0, the two libraries' ReLUs may pass or stop its gradient differently)."""
    n, height, width, cin, cout, with_bias, relu = case
    x, kernel, bias = _inputs(n, height, width, cin, cout)
    bias = bias if with_bias else None
    (_, y), _ = _value_and_grads("onednn", x, kernel, bias, relu)
    (_, want_y), _ = _value_and_grads("xla", x, kernel, bias, relu)
    chex.assert_trees_all_close(y, want_y, rtol=1e-5, atol=1e-5)
    (loss, _), grads = _value_and_grads("onednn", x, kernel, bias, False)
    (want_loss, _), want_grads = _value_and_grads("xla", x, kernel, bias, False)
    chex.assert_trees_all_close(loss, want_loss, rtol=1e-5, atol=1e-3)
    chex.assert_trees_all_close(grads, want_grads, rtol=1e-5, atol=1e-3)


def _bitwise_equal(a, b) -> bool:
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return all(bool(jnp.all(p == q)) for p, q in pairs)


@pytest.mark.parametrize(
    "shape, dtype, strides, eligible",
    [
        ((2, 8, 8, 64, 64), jnp.float32, (1, 1), True),
        ((2, 8, 8, 32, 64), jnp.float32, (1, 1), False),  # too few input channels
        ((2, 8, 8, 64, 32), jnp.float32, (1, 1), False),  # too few output channels
        ((2, 9, 9, 64, 64), jnp.float32, (1, 1), False),  # odd size
        ((2, 8, 8, 64, 64), jnp.float32, (2, 2), False),  # strided
        ((2, 8, 8, 64, 64), jnp.bfloat16, (1, 1), False),  # float32 only
    ],
    ids=["eligible", "narrow-in", "narrow-out", "odd", "strided", "bfloat16"],
)
def test_winograd_runs_exactly_where_it_applies(shape, dtype, strides, eligible):
    """'onednn' and 'onednn-direct' give the same bits except where Winograd replaces the
    direct convolution (there they differ by rounding, in every pass)."""
    x, kernel, bias = (a.astype(dtype) for a in _inputs(*shape))
    winograd = _value_and_grads("onednn", x, kernel, bias, False, strides)
    direct = _value_and_grads("onednn-direct", x, kernel, bias, False, strides)
    if eligible:
        (_, y), grads = winograd
        (_, want_y), want_grads = direct
        for got, want in zip((y, *grads), (want_y, *want_grads), strict=True):
            assert not _bitwise_equal(got, want)
            chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-4)
    else:
        assert _bitwise_equal(winograd, direct)


def test_gradients_are_bitwise_reproducible():
    """The chunked kernel gradient and the bias gradient are summed in a fixed order."""
    x, kernel, bias = _inputs(*CASES[0][:5], seed=1)
    first = _value_and_grads("onednn", x, kernel, bias, True)
    for _ in range(3):
        chex.assert_trees_all_equal(_value_and_grads("onednn", x, kernel, bias, True), first)


def test_conv_relu_max_pool_equals_the_layers_apart():
    x, kernel, bias = _inputs(2, 16, 16, 64, 64, seed=2)

    def loss(fused):
        def f(x, kernel, bias):
            if fused:
                return jnp.sum(jnp.sin(ops.conv2d_relu_max_pool(x, kernel, bias, impl="onednn")))
            y = ops.conv2d(x, kernel, bias, relu=True, impl="onednn")
            return jnp.sum(jnp.sin(ops.max_pool_2x2(y)))

        return jax.jit(jax.value_and_grad(f, (0, 1, 2)))(x, kernel, bias)

    chex.assert_trees_all_equal(loss(True), loss(False))


def test_onednn_direct_is_a_valid_conv_impl():
    config = Config()
    config.model.conv_impl = "onednn-direct"
    validate(config)
    assert ops.resolve_conv_impl("onednn-direct") == "onednn-direct"


def test_onednn_direct_where_the_extension_cannot_run_is_refused(monkeypatch):
    monkeypatch.setattr(conv_lib, "onednn_status", lambda: "libdnnl.so not found")
    with pytest.raises(RuntimeError, match="conv_impl='onednn-direct' is not available"):
        ops.resolve_conv_impl("onednn-direct")
    with pytest.raises(ConfigError) as error:
        ops.check_conv_impl("onednn-direct")
    assert "\n" not in str(error.value)
    assert "config.model.conv_impl='onednn-direct'" in str(error.value)
