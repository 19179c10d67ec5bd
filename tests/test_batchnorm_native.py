"""The extension's BatchNorm + ReLU kernels (`murajax.ops.batchnorm`, `batchnorm_relu.h`)
against the same functions in XLA: for any rows, prefix of channels, row width and dtype, the
forward values and batch statistics, the recomputed output and every gradient (written, or
added in place into a wider gradient buffer) are XLA's up to float32 rounding, a NaN lands
where XLA puts it, and bad buffers are refused with a message, never read out of bounds.

Hypothesis draws the cases deterministically (`derandomize=True`). `$MURAJAX_CONV_EXAMPLES`
sets the number per property (tests/test_conv_isa.py runs them under each instruction set).
Tolerances: a per-channel sum of `rows` float32 terms differs by up to about rows * eps(f32)
times the sum of magnitudes; bfloat16 outputs also by one bfloat16 rounding (eps 2^-8).
"""

import os
import platform
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from murajax import ops
from murajax.ops import batchnorm, onednn
from tests.child_process import describe, run_python

EXAMPLES = int(os.environ.get("MURAJAX_CONV_EXAMPLES", "25"))
EPSILON = 1.001e-5

pytestmark = pytest.mark.skipif(
    not (sys.platform == "linux" and platform.machine() == "x86_64"),
    reason="the extension is built on x86-64 Linux only",
)


@pytest.fixture(scope="module", autouse=True)
def extension() -> None:
    """Where the extension is expected, a missing or broken one fails these tests."""
    assert ops.onednn_status() is None, ops.onednn_status()


def _settings() -> settings:
    return settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        phases=(Phase.explicit, Phase.generate),
        suppress_health_check=[HealthCheck.too_slow],
    )


cases = st.fixed_dictionaries(
    {
        "rows": st.integers(1, 200),  # chunks of 64 rows: one, several, a partial last one
        "channels": st.integers(1, 70),
        "extra": st.sampled_from([0, 0, 1, 5, 32]),  # the row is wider than the prefix
        "dtype": st.sampled_from(["float32", "bfloat16"]),
        "seed": st.integers(0, 2**16),
    }
)


def _arrays(case):
    """(x (rows as 2 x (rows/2..), width), g (dense), scale, bias, total (x's shape)) drawn
    for `case`: x with a per-channel offset and spread, as activations have."""
    rng = np.random.default_rng(case["seed"])
    rows, channels = case["rows"], case["channels"]
    width = channels + case["extra"]
    offset = rng.normal(0, 2, width)
    spread = rng.uniform(0.1, 3, width)
    x = rng.normal(0, 1, (rows, width)) * spread + offset
    g = rng.normal(0, 1, (rows, channels))
    scale = rng.uniform(0.5, 1.5, channels).astype(np.float32)
    bias = rng.normal(0, 0.5, channels).astype(np.float32)
    total = rng.normal(0, 1, (rows, width))
    dtype = jnp.dtype(case["dtype"])
    as_nhwc = lambda a: jnp.asarray(a.reshape(1, 1, rows, -1), dtype)  # noqa: E731
    return as_nhwc(x), as_nhwc(g), jnp.asarray(scale), jnp.asarray(bias), as_nhwc(total)


def _forward(x, channels, scale, bias, native):
    return jax.jit(
        lambda x, s, b: batchnorm.bn_relu_prefix(x, channels, s, b, EPSILON, native=native)
    )(x, scale, bias)


def _normalize(x, channels, scale, bias, mean, var, native):
    return jax.jit(
        lambda *a: batchnorm.normalize_relu_prefix(*a, EPSILON, native=native),
        static_argnums=1,
    )(x, channels, scale, bias, mean, var)


def _grads(x, channels, g, scale, bias, mean, var, native, total=None):
    def run(x, g, scale, bias, mean, var, total):
        return batchnorm.bn_relu_grads_prefix(
            x, channels, g, scale, bias, mean, var, EPSILON, native=native, add_to=total
        )

    return jax.jit(run)(x, g, scale, bias, mean, var, total)


def _close(got, want, scale_of_terms, terms, dtype, what):
    """|got - want| <= (eps(dtype) + 4 * terms * eps(f32)) * scale_of_terms + tiny."""
    got = np.asarray(got, np.float32)
    want = np.asarray(want, np.float32)
    rounding = float(jnp.finfo(dtype).eps) + 4 * terms * float(jnp.finfo(jnp.float32).eps)
    bound = rounding * np.asarray(scale_of_terms, np.float32) + 1e-6
    excess = np.abs(got - want) - bound
    worst = np.unravel_index(np.argmax(excess), excess.shape) if excess.size else ()
    assert not excess.size or excess[worst] <= 0, (
        f"{what}: {got[worst]} vs XLA's {want[worst]} at {worst} (bound {bound[worst]})"
    )


@_settings()
@given(cases)
def test_forward_values_and_statistics_are_xlas(case):
    x, _, scale, bias, _ = _arrays(case)
    channels, dtype = case["channels"], x.dtype
    y, mean, var = _forward(x, channels, scale, bias, True)
    y_xla, mean_xla, var_xla = _forward(x, channels, scale, bias, False)
    assert y.shape == y_xla.shape and y.dtype == y_xla.dtype
    magnitude = np.abs(np.asarray(x[..., :channels], np.float32)).max(axis=(0, 1, 2))
    _close(mean, mean_xla, magnitude, case["rows"], jnp.float32, "mean")
    _close(var, var_xla, magnitude**2, case["rows"], jnp.float32, "variance")
    # y through a = scale / sqrt(var + eps): scaled by how far x is from the mean.
    y_scale = (magnitude + np.abs(mean_xla)) * np.abs(scale) / np.sqrt(var_xla + EPSILON)
    _close(y, y_xla, y_scale + np.abs(bias), case["rows"], dtype, "y")
    normalized = _normalize(x, channels, scale, bias, mean_xla, var_xla, True)
    _close(normalized, y_xla, y_scale + np.abs(bias), 1, dtype, "normalize_relu_prefix")


@_settings()
@given(cases, st.booleans())
def test_gradients_are_xlas_written_or_added_in_place(case, add):
    x, g, scale, bias, total = _arrays(case)
    channels, rows, dtype = case["channels"], case["rows"], x.dtype
    _, mean, var = _forward(x, channels, scale, bias, False)
    total = total if add else None
    dx, dscale, dbias = _grads(x, channels, g, scale, bias, mean, var, True, total)
    dx_xla, dscale_xla, dbias_xla = _grads(x, channels, g, scale, bias, mean, var, False, total)
    assert dx.shape == dx_xla.shape == (total.shape if add else g.shape)
    assert dx.dtype == dx_xla.dtype == x.dtype
    g_mag = np.abs(np.asarray(g, np.float32)).max(axis=(0, 1, 2))
    x_mag = np.abs(np.asarray(x[..., :channels], np.float32)).max(axis=(0, 1, 2))
    inv = 1 / np.sqrt(np.asarray(var) + EPSILON)
    _close(dbias, dbias_xla, rows * g_mag, rows, jnp.float32, "dbias")
    dscale_mag = rows * g_mag * (x_mag + np.abs(mean)) * inv
    _close(dscale, dscale_xla, dscale_mag, rows, jnp.float32, "dscale")
    dx_mag = np.abs(scale) * inv * (g_mag + 2 * x_mag * inv * dscale_mag / rows + 2 * g_mag)
    if add:
        untouched = np.asarray(total[..., channels:], np.float32)
        np.testing.assert_array_equal(np.asarray(dx[..., channels:], np.float32), untouched)
        _close(
            dx[..., :channels],
            dx_xla[..., :channels],
            dx_mag + np.abs(np.asarray(total[..., :channels], np.float32)),
            rows,
            dtype,
            "total + dx",
        )
    else:
        _close(dx, dx_xla, dx_mag, rows, dtype, "dx")


def test_the_block_gradient_buffer_is_updated_in_place_without_a_copy():
    """The accumulating backward pass aliases its gradient buffer: XLA adds no copy of it."""
    x, g, scale, bias, total = _arrays(
        {"rows": 130, "channels": 40, "extra": 24, "dtype": "float32", "seed": 1}
    )
    _, mean, var = _forward(x, 40, scale, bias, False)

    def run(total):
        return batchnorm.bn_relu_grads_prefix(
            x, 40, g, scale, bias, mean, var, EPSILON, native=True, add_to=total
        )[0]

    hlo = jax.jit(run, donate_argnums=0).lower(total).compile().as_text()
    assert "murajax_bn_relu_bwd_add" in hlo
    assert "output_to_operand_aliasing" in hlo


def test_a_nan_gives_nan_where_xla_does():
    x, g, scale, bias, _ = _arrays(
        {"rows": 100, "channels": 6, "extra": 2, "dtype": "float32", "seed": 2}
    )
    x = x.at[0, 0, 7, 2].set(jnp.nan)  # channel 2's statistics become NaN
    for native in (True, False):
        y, mean, var = _forward(x, 6, scale, bias, native)
        if native:
            got = (np.isnan(y), np.isnan(mean), np.isnan(var))
        else:
            want = (np.isnan(y), np.isnan(mean), np.isnan(var))
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    assert want[0][..., 2].all() and not want[0][..., 0].any()


def test_the_same_inputs_give_the_same_bits():
    """Sums run over fixed chunks in a fixed order: two calls agree bit for bit."""
    x, g, scale, bias, total = _arrays(
        {"rows": 1000, "channels": 64, "extra": 64, "dtype": "float32", "seed": 3}
    )
    first = _forward(x, 64, scale, bias, True)
    second = _forward(x, 64, scale, bias, True)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


def test_buffers_that_do_not_fit_are_refused_with_a_message():
    x = jnp.ones((2, 3, 4, 8), jnp.float32)
    outs = (
        jax.ShapeDtypeStruct((2, 3, 4, 9), jnp.float32),
        jax.ShapeDtypeStruct((9,), jnp.float32),
        jax.ShapeDtypeStruct((9,), jnp.float32),
    )
    call = jax.ffi.ffi_call("murajax_bn_relu_fwd", outs)
    vector = jnp.ones((9,), jnp.float32)
    with pytest.raises(
        Exception, match=r"murajax BatchNorm: 9 channels of x \(2, 3, 4, 8\) \(expected 1 to 8\)"
    ):
        jax.block_until_ready(call(x, vector, vector, epsilon=np.float32(1e-5)))
    eight = jax.ShapeDtypeStruct((8,), jnp.float32)
    call = jax.ffi.ffi_call("murajax_bn_relu_fwd", (outs[0], eight, eight))  # y 9 wide
    small = jnp.ones((8,), jnp.float32)
    with pytest.raises(Exception, match="does not fit x"):
        jax.block_until_ready(call(x, small, small, epsilon=np.float32(1e-5)))


def test_the_kernels_run_at_onednns_instruction_set():
    level = onednn.batchnorm_level()
    isa = onednn.onednn_isa()
    expected = "AVX512" if isa.startswith("AVX512") else "AVX2" if isa.startswith("AVX2") else None
    assert level == (expected or "baseline"), (level, isa)


def test_the_baseline_kernels_pass_too():
    """Under ONEDNN_MAX_CPU_ISA=SSE41 (read when oneDNN loads: a child process) the kernels run
    their x86-64 baseline build, as on a CPU without AVX2; AVX2 and AVX-512 run in
    tests/test_conv_isa.py."""
    tests = [
        f"tests/test_batchnorm_native.py::{name}"
        for name in (
            "test_forward_values_and_statistics_are_xlas",
            "test_gradients_are_xlas_written_or_added_in_place",
            "test_the_kernels_run_at_onednns_instruction_set",
        )
    ]
    code = (
        f"import sys, pytest; sys.exit(pytest.main({tests!r} + ['-q', '-p', 'no:cacheprovider']))"
    )
    result = run_python(
        code, env={"ONEDNN_MAX_CPU_ISA": "SSE41", "MURAJAX_CONV_EXAMPLES": "8"}, timeout=300
    )
    assert result.returncode == 0, describe(result) + "\n" + result.stdout[-3000:]
    assert "3 passed" in result.stdout, result.stdout[-500:]


@pytest.mark.parametrize("native", [True, False])
def test_bfloat16_bits_as_uint16_are_read_as_bfloat16(native):
    """A dense block keeps its bfloat16 buffer as uint16 bits: every function reads it as the
    bfloat16 it holds, with bfloat16 outputs, natively and in XLA."""
    x, g, scale, bias, total = _arrays(
        {"rows": 150, "channels": 20, "extra": 12, "dtype": "bfloat16", "seed": 4}
    )
    bits = jax.lax.bitcast_convert_type(x, jnp.uint16)
    assert batchnorm.native_available(bits, "auto")
    want = _forward(x, 20, scale, bias, native)
    got = _forward(bits, 20, scale, bias, native)
    assert got[0].dtype == jnp.bfloat16
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    _, mean, var = want
    np.testing.assert_array_equal(
        _normalize(bits, 20, scale, bias, mean, var, native),
        _normalize(x, 20, scale, bias, mean, var, native),
    )
    for add_to in (None, total):
        got = _grads(bits, 20, g, scale, bias, mean, var, native, add_to)
        want = _grads(x, 20, g, scale, bias, mean, var, native, add_to)
        assert got[0].dtype == jnp.bfloat16
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)
