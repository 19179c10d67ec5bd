"""Property-based tests of `murajax.ops.conv2d` and `conv2d_relu_max_pool` on oneDNN: for any
batch, image size, channels, kernel, strides, padding, dtype, bias and ReLU (and the fused 2x2
max-pooling), the values and every gradient are XLA's (`lax.conv_general_dilated`, + bias,
`jax.nn.relu`, `flax.linen.max_pool`), empty batches and images give XLA's answer, and a NaN
lands where XLA puts it. The non-CPU branches of the custom VJPs (what a GPU runs) are
computed on this CPU and compared in the same way.

Hypothesis draws the cases deterministically (`derandomize=True`: every run tries the same
ones) and does not shrink a failure (each shrinking step compiles a new shape); the failing
case is printed as drawn. `$MURAJAX_CONV_EXAMPLES` sets the number of cases per property
(tests/test_conv_isa.py runs fewer under each instruction set).

Tolerances follow the rounding error of a sum of products: with `mag` the same computation on
absolute values (`conv(|x|, |kernel|) + |bias|`, and likewise for each gradient), a result may
differ from XLA's float32 one by `mag * (eps(dtype) + 2 * terms * eps(float32))`, where `terms`
is the length of the sum (kh * kw * in channels for the output, kh * kw * out channels for the
input gradient, batch * output pixels for the kernel and bias gradients) and eps(dtype) the
rounding of the result to its dtype (bfloat16 results are compared with float32 XLA on the same
bfloat16 inputs). Winograd's rounding is bounded by the magnitudes of a whole tile rather than
value by value (`_winograd_magnitude`). Where a ReLU's input, or the gap between a pooling
window's two largest values, is within that tolerance, the two libraries may legitimately pass
a gradient differently: the cotangent is zero there (for both), and the gradients are compared
everywhere else.
"""

import contextlib
import dataclasses
import functools
import os
import platform
import sys
from collections.abc import Callable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from jax import lax

from murajax import ops
from murajax.ops import conv as conv_lib
from tests.child_process import describe, run_python

IMPLS = ("onednn", "onednn-direct")
DIMENSIONS = ("NHWC", "HWIO", "NHWC")
EXAMPLES = int(os.environ.get("MURAJAX_CONV_EXAMPLES", "30"))
ONEDNN_EXPECTED = sys.platform == "linux" and platform.machine() == "x86_64"

Padding = str | tuple[tuple[int, int], tuple[int, int]]


def _settings(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        derandomize=True,
        deadline=None,
        database=None,
        phases=(Phase.explicit, Phase.generate),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


@pytest.fixture(scope="module")
def onednn() -> None:
    """oneDNN cases run where the extension is expected (x86-64 Linux, where `make install`
    builds it): there a missing or broken extension fails the test."""
    if not ONEDNN_EXPECTED:
        pytest.skip("oneDNN's wheels exist for x86-64 Linux only")
    assert ops.onednn_status() is None, ops.onednn_status()


@dataclasses.dataclass(frozen=True)
class Case:
    """One convolution: an NHWC input of `batch` x `height` x `width` x `in_channels`, a
    `kernel_size` x `in_channels` x `out_channels` kernel, and what follows it."""

    batch: int
    height: int
    width: int
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int]
    padding: Padding
    dtype: str  # "float32" or "bfloat16"
    relu: bool
    bias: bool
    pooled: bool  # conv2d_relu_max_pool (ReLU and 2x2 max-pooling) instead of conv2d
    seed: int = 0

    @property
    def x_shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.height, self.width, self.in_channels)

    @property
    def kernel_shape(self) -> tuple[int, int, int, int]:
        return (*self.kernel_size, self.in_channels, self.out_channels)

    @property
    def pads(self) -> tuple[tuple[int, int], ...]:
        if isinstance(self.padding, str):
            return tuple(
                lax.padtype_to_pads(
                    (self.height, self.width), self.kernel_size, self.strides, self.padding
                )
            )
        return self.padding

    @property
    def conv_shape(self) -> tuple[int, int, int, int]:
        """The convolution's output shape (before any pooling)."""
        sizes = [
            (size + lo + hi - k) // stride + 1
            for size, (lo, hi), k, stride in zip(
                (self.height, self.width), self.pads, self.kernel_size, self.strides, strict=True
            )
        ]
        return (self.batch, *sizes, self.out_channels)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        n, height, width, channels = self.conv_shape
        return (n, height // 2, width // 2, channels) if self.pooled else self.conv_shape

    @property
    def empty(self) -> bool:
        return min(self.x_shape + self.output_shape) == 0

    @property
    def winograd(self) -> bool:
        """Whether "onednn" may run it as Winograd F(2x2, 3x3) (murajax.ops.conv)."""
        return (
            self.dtype == "float32"
            and self.kernel_size == (3, 3)
            and self.strides == (1, 1)
            and self.pads == ((1, 1), (1, 1))
            and self.height % 2 == 0
            and self.width % 2 == 0
            and min(self.in_channels, self.out_channels) >= 64
        )


WINOGRAD_CASE = Case(2, 8, 8, 64, 64, (3, 3), (1, 1), "SAME", "float32", True, True, False)
WINOGRAD_POOLED_CASE = dataclasses.replace(WINOGRAD_CASE, height=10, width=6, pooled=True)
# oneDNN 3.2's AVX2 kernel gradient of a 1x1 convolution strided in height only (jit_1x1:avx2)
# was wrong under ONEDNN_MAX_CPU_ISA=AVX2 (and with 8 or 16 outputs never finished).
STRIDED_1X1_CASE = Case(1, 26, 29, 6, 113, (1, 1), (2, 1), "VALID", "float32", False, False, False)


def channels() -> st.SearchStrategy[int]:
    """1-130 channels, mostly few (each case compiles; small ones compile fast)."""
    return st.one_of(st.integers(1, 8), st.integers(1, 130))


def paddings() -> st.SearchStrategy[Padding]:
    side = st.tuples(st.integers(0, 2), st.integers(0, 2))
    return st.one_of(st.sampled_from(["SAME", "VALID"]), st.tuples(side, side))


BATCHES = st.integers(1, 5)
POOLED = st.booleans()
QUANTITIES = ("output", "x", "kernel", "bias")


@st.composite
def cases(
    draw, batches: st.SearchStrategy[int] = BATCHES, pooled: st.SearchStrategy[bool] = POOLED
) -> Case:
    """Any convolution; one in four shaped for the Winograd path (float32 3x3, stride 1,
    padding 1, even sizes, 64+ channels in and out), which also tries it in bfloat16."""
    if draw(st.integers(0, 3)) == 0:
        return Case(
            batch=draw(batches),
            height=2 * draw(st.integers(1, 16)),
            width=2 * draw(st.integers(1, 16)),
            in_channels=draw(st.integers(64, 130)),
            out_channels=draw(st.integers(64, 130)),
            kernel_size=(3, 3),
            strides=(1, 1),
            padding=draw(st.sampled_from(["SAME", ((1, 1), (1, 1))])),
            dtype=draw(st.sampled_from(["float32", "bfloat16"])),
            relu=draw(st.booleans()),
            bias=draw(st.booleans()),
            pooled=draw(pooled),
            seed=draw(st.integers(0, 2**16)),
        )
    return Case(
        batch=draw(batches),
        height=draw(st.integers(1, 33)),
        width=draw(st.integers(1, 33)),
        in_channels=draw(channels()),
        out_channels=draw(channels()),
        kernel_size=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
        strides=(draw(st.integers(1, 2)), draw(st.integers(1, 2))),
        padding=draw(paddings()),
        dtype=draw(st.sampled_from(["float32", "bfloat16"])),
        relu=draw(st.booleans()),
        bias=draw(st.booleans()),
        pooled=draw(pooled),
        seed=draw(st.integers(0, 2**16)),
    )


@st.composite
def empty_cases(draw) -> Case:
    """A case whose input or output is empty: no images, an image with no rows, one smaller
    than the kernel (VALID), or (pooled) a convolution output of one row."""
    case = draw(cases(batches=st.integers(0, 5)))
    if case.empty:
        return case
    how = draw(st.sampled_from(["batch", "no rows", "smaller than the kernel", "one row"]))
    if how == "batch":
        return dataclasses.replace(case, batch=0)
    if how == "no rows":
        return dataclasses.replace(case, height=0, padding="SAME")
    kh = max(case.kernel_size[0], 2)
    if how == "smaller than the kernel":
        kernel_size = (kh, case.kernel_size[1])
        return dataclasses.replace(case, kernel_size=kernel_size, height=kh - 1, padding="VALID")
    strides = (1, case.strides[1])
    return dataclasses.replace(case, height=1, strides=strides, padding="SAME", pooled=True)


def _inputs(case: Case) -> tuple[jax.Array, ...]:
    """(x, kernel, bias, cotangent of the output), in the case's dtype; unit-variance
    outputs."""
    rng = np.random.default_rng(case.seed)
    fan_in = max(1, case.kernel_size[0] * case.kernel_size[1] * case.in_channels)
    arrays = (
        rng.standard_normal(case.x_shape),
        rng.standard_normal(case.kernel_shape) / np.sqrt(fan_in),
        rng.standard_normal(case.out_channels),
        rng.standard_normal(case.output_shape),
    )
    return tuple(jnp.asarray(a, case.dtype) for a in arrays)


def _conv(x: jax.Array, kernel: jax.Array, case: Case) -> jax.Array:
    return lax.conv_general_dilated(
        x, kernel, case.strides, case.padding, dimension_numbers=DIMENSIONS
    )


def xla_reference(case: Case) -> Callable[..., jax.Array]:
    """What `case` computes, written with XLA's own operations."""

    def f(x, kernel, bias):
        y = _conv(x, kernel, case)
        if case.bias:
            y = y + bias
        if case.relu or case.pooled:
            y = jax.nn.relu(y)
        if case.pooled:
            y = nn.max_pool(y, (2, 2), strides=(2, 2), padding="VALID")
        return y

    return f


def murajax_conv(case: Case, impl: str) -> Callable[..., jax.Array]:
    """What `case` computes, through `murajax.ops` with `impl`."""

    def f(x, kernel, bias):
        bias = bias if case.bias else None
        options = dict(strides=case.strides, padding=case.padding, impl=impl)
        if case.pooled:
            return ops.conv2d_relu_max_pool(x, kernel, bias, **options)
        return ops.conv2d(x, kernel, bias, relu=case.relu, **options)

    return f


def _tolerance(magnitude: jax.Array, dtype: str, terms: int) -> jax.Array:
    """How far a sum of `terms` products whose absolute values sum to `magnitude`, rounded to
    `dtype`, may be from XLA's float32 one (module docstring)."""
    rounding = float(jnp.finfo(dtype).eps) + 2 * terms * float(jnp.finfo(jnp.float32).eps)
    return magnitude * rounding + float(jnp.finfo(jnp.float32).tiny)


def _windows(y: jax.Array) -> jax.Array:
    """The 2x2 windows of NHWC `y` (odd last row and column dropped), as (n, h/2, w/2, c, 4)."""
    n, h, w, c = y.shape
    y = y[:, : h // 2 * 2, : w // 2 * 2, :].reshape(n, h // 2, 2, w // 2, 2, c)
    return y.transpose(0, 1, 3, 5, 2, 4).reshape(n, h // 2, w // 2, c, 4)


def _unpool(g: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Each pooled value spread over its whole 2x2 window, as an array of `shape`."""
    spread = jnp.repeat(jnp.repeat(g, 2, axis=1), 2, axis=2)
    rows, columns = shape[1] - spread.shape[1], shape[2] - spread.shape[2]
    return jnp.pad(spread, ((0, 0), (0, rows), (0, columns), (0, 0)))


def _unambiguous(case: Case, z: jax.Array, tol: jax.Array) -> jax.Array:
    """Where the output's gradient does not depend on rounding: the ReLU's input (`z`, XLA's
    float32 output before it) is farther than its tolerance from 0 and, when pooled, the
    window's largest value is clear of 0 and of the window's second largest."""
    if case.pooled:
        corners = jnp.sort(_windows(jax.nn.relu(z)), axis=-1)
        window_tol = jnp.max(_windows(tol), axis=-1)
        gap = corners[..., 3] - corners[..., 2]
        return (gap > 2 * window_tol) & (corners[..., 3] > window_tol)
    if case.relu:
        return jnp.abs(z) > tol
    return jnp.ones(z.shape, bool)


def _winograd_magnitude(name: str, magnitude: jax.Array) -> jax.Array:
    """Winograd's rounding is bounded by the magnitudes in its tiles (it computes a tile's
    values together, through transforms that add and subtract them), not value by value: the
    largest magnitude within reach of each value (an output's 2x2 tile, the 4x4 input tiles
    an input pixel belongs to, the 3x3 taps of a kernel), four times over for the
    transforms."""
    if name == "output":
        window = 3
    elif name == "x":
        window = 7
    elif name == "kernel":
        return 4 * jnp.broadcast_to(jnp.max(magnitude, axis=(0, 1)), magnitude.shape)
    else:
        return magnitude
    dims = (1, window, window, 1)
    return 4 * lax.reduce_window(magnitude, -jnp.inf, lax.max, dims, (1, 1, 1, 1), "SAME")


def _tolerances(case: Case, impl: str, magnitudes: dict, terms: dict) -> dict:
    """{quantity: tolerance} of `impl`'s values (`_tolerance`), Winograd's where it runs."""
    winograd = impl == "onednn" and case.winograd
    return {
        name: _tolerance(
            _winograd_magnitude(name, magnitude) if winograd else magnitude,
            case.dtype,
            terms[name],
        )
        for name, magnitude in magnitudes.items()
    }


def _pooled_tolerance(tol: jax.Array) -> jax.Array:
    """A 2x2 max-pool's tolerance: its window's largest (max is 1-Lipschitz)."""
    return jnp.max(_windows(tol), axis=-1)


def compare_with_xla(case: Case, impls: tuple[str, ...] = IMPLS) -> tuple[dict, dict, dict]:
    """{impl: {quantity: got}}, {quantity: XLA's}, {impl: {quantity: tolerance}} for the
    output and the gradients of x, kernel and bias, all computed in one compiled function."""
    x, kernel, bias, cotangent = _inputs(case)
    kh, kw = case.kernel_size
    n, out_h, out_w, _ = case.conv_shape
    pixels = n * out_h * out_w
    terms = {
        "output": kh * kw * case.in_channels,
        "x": kh * kw * case.out_channels,
        "kernel": pixels,
        "bias": pixels,
    }
    to32 = functools.partial(jnp.asarray, dtype=jnp.float32)

    def results(x, kernel, bias, cotangent):
        x32, kernel32, bias32, cotangent32 = map(to32, (x, kernel, bias, cotangent))
        linear = lambda x, kernel: _conv(x, kernel, case)  # noqa: E731
        z = linear(x32, kernel32) + (bias32 if case.bias else 0.0)
        z_magnitude = linear(abs(x32), abs(kernel32)) + (abs(bias32) if case.bias else 0.0)
        z_tol = jnp.max(
            jnp.stack(
                [
                    _tolerances(case, impl, {"output": z_magnitude}, terms)["output"]
                    for impl in impls
                ]
            ),
            axis=0,
        )
        cotangent32 = jnp.where(_unambiguous(case, z, z_tol), cotangent32, 0.0)
        cotangent = cotangent32.astype(case.dtype)

        want_y, vjp = jax.vjp(xla_reference(case), x32, kernel32, bias32)
        want = dict(zip(QUANTITIES, (want_y, *vjp(cotangent32)), strict=True))
        spread = abs(cotangent32)
        if case.pooled:
            spread = _unpool(spread, case.conv_shape)
        _, magnitude_vjp = jax.vjp(linear, abs(x32), abs(kernel32))
        x_magnitude, kernel_magnitude = magnitude_vjp(spread)
        magnitudes = {
            "output": z_magnitude,
            "x": x_magnitude,
            "kernel": kernel_magnitude,
            "bias": jnp.sum(spread, axis=(0, 1, 2)),
        }
        got, tol = {}, {}
        for impl in impls:
            y, vjp = jax.vjp(murajax_conv(case, impl), x, kernel, bias)
            got[impl] = dict(zip(QUANTITIES, (y, *vjp(cotangent)), strict=True))
            tol[impl] = _tolerances(case, impl, magnitudes, terms)
            if case.pooled:
                tol[impl]["output"] = _pooled_tolerance(tol[impl]["output"])
        return got, want, tol

    # A new function per case: nothing compiled for one case (or branch) serves another.
    return jax.jit(results)(x, kernel, bias, cotangent)


def assert_close_to_xla(case: Case, got: dict, want: dict, tol: dict) -> None:
    """Every quantity of every impl has XLA's shape, the case's dtype, and is within its
    tolerance of XLA's value, element by element."""
    for impl, quantities in got.items():
        for name, value in quantities.items():
            where = f"{impl} {name} of {case}"
            assert value.shape == want[name].shape, f"{where}: shape {value.shape}"
            assert value.dtype == jnp.dtype(case.dtype), f"{where}: dtype {value.dtype}"
            value32 = np.asarray(value, np.float32)
            error = np.abs(value32 - np.asarray(want[name]))
            limit = np.asarray(tol[impl][name])
            bad = ~(error <= limit)  # NaN is bad too
            if bad.any():
                first = tuple(int(i) for i in np.argwhere(bad)[0])
                raise AssertionError(
                    f"{where}: {int(bad.sum())} of {bad.size} values differ from XLA's by more "
                    f"than the tolerance; the first at {first}: {value32[first]} against "
                    f"{want[name][first]} (tolerance {limit[first]:.3g})"
                )


def check_against_xla(case: Case, impls: tuple[str, ...] = IMPLS) -> None:
    assert_close_to_xla(case, *compare_with_xla(case, impls))


@_settings(EXAMPLES)
@given(case=cases(pooled=st.just(False)).filter(lambda case: not case.empty))
@example(case=WINOGRAD_CASE)
@example(case=dataclasses.replace(WINOGRAD_CASE, relu=False, bias=False, batch=5))
@example(case=STRIDED_1X1_CASE)
def test_conv2d_values_and_gradients_are_xlas(onednn, case):
    if case == WINOGRAD_CASE:
        assert case.winograd  # the explicit example takes the Winograd path
    check_against_xla(case)


@_settings(EXAMPLES)
@given(case=cases(pooled=st.just(True)).filter(lambda case: not case.empty))
@example(case=WINOGRAD_POOLED_CASE)
def test_conv2d_relu_max_pool_values_and_gradients_are_xlas(onednn, case):
    if case == WINOGRAD_POOLED_CASE:
        assert case.winograd
    check_against_xla(case)


@_settings(EXAMPLES // 2)
@given(case=empty_cases())
@example(case=dataclasses.replace(WINOGRAD_CASE, batch=0))  # the (0, 8, 8, 64)
def check_empty_cases(case):
    """Empty inputs and outputs give XLA's answer: empty outputs, zero gradients. Run in a
    child process by `test_empty_batches_and_images_give_xlas_answer` (a crash there is a
    failed test, not a dead test run)."""
    print(f"empty case: {case}", file=sys.stderr, flush=True)
    assert case.empty
    check_against_xla(case)


def test_empty_batches_and_images_give_xlas_answer(onednn):
    result = run_python(
        "from tests.test_conv_properties import check_empty_cases; check_empty_cases()"
    )
    assert result.returncode == 0, describe(result)
    assert result.stderr.count("empty case:") >= 2  # the cases ran (explicit + drawn)


# NaN propagation: the forward output is NaN exactly where XLA's is.

NAN_SHAPES = {
    # name: (x shape, kernel shape, strides, padding)
    "direct": ((2, 7, 9, 3), (3, 3, 3, 5), (1, 1), "SAME"),
    "strided": ((2, 9, 8, 4), (3, 2, 4, 3), (2, 2), ((1, 0), (0, 2))),
    "winograd": ((1, 8, 8, 64), (3, 3, 64, 64), (1, 1), "SAME"),
}
NAN_LAYERS = ("conv", "conv+bias", "conv+bias+relu", "conv+relu+pool")


def _nan_case(shape: str, layer: str, dtype: str) -> Case:
    x_shape, kernel_shape, strides, padding = NAN_SHAPES[shape]
    return Case(
        *x_shape,
        out_channels=kernel_shape[3],
        kernel_size=kernel_shape[:2],
        strides=strides,
        padding=padding,
        dtype=dtype,
        relu="relu" in layer,
        bias="bias" in layer or "pool" in layer,
        pooled="pool" in layer,
        seed=7,
    )


def nan_positions_in_xla(case: Case, x, kernel, bias) -> np.ndarray:
    """Where XLA's output is NaN: its convolution, bias and ReLU's NaNs and, pooled, each
    window holding one (XLA's Max propagates NaN by definition, but XLA:CPU's vectorised
    reduce_window, in jax 0.10.2, drops it along 64 channels: `nn.max_pool` there, and even
    `jnp.max` of 64 values, miss a NaN)."""
    unpooled = dataclasses.replace(case, pooled=False, relu=case.relu or case.pooled)
    y = xla_reference(unpooled)(*(a.astype(jnp.float32) for a in (x, kernel, bias)))
    nan = np.isnan(np.asarray(y))
    if case.pooled:
        nan = np.asarray(jnp.any(_windows(jnp.asarray(nan)), axis=-1))
    return nan


def _assert_nan_where_xla(case: Case, x, kernel, bias) -> None:
    want = nan_positions_in_xla(case, x, kernel, bias)
    assert want.any() and not want.all()
    for impl in IMPLS:
        got = np.isnan(np.asarray(jax.jit(murajax_conv(case, impl))(x, kernel, bias), np.float32))
        assert got.shape == want.shape
        assert np.array_equal(got, want), (
            f"{impl}: NaN at {int(got.sum())} outputs, XLA at {int(want.sum())}; "
            f"{int((got & ~want).sum())} extra, {int((want & ~got).sum())} missing"
        )


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("layer", NAN_LAYERS)
@pytest.mark.parametrize("shape", list(NAN_SHAPES))
def test_a_nan_in_the_input_gives_nan_where_xla_does(onednn, shape, layer, dtype):
    """Through the convolution, the fused ReLU (XLA's relu(NaN) is NaN), Winograd (float32)
    and the pooling (XLA's max of a window with a NaN is NaN): two NaNs, one at a corner."""
    case = _nan_case(shape, layer, dtype)
    if shape == "winograd":
        assert case.winograd == (dtype == "float32")
    x, kernel, bias, _ = _inputs(case)
    x = x.at[0, 2, 3, 1].set(jnp.nan).at[-1, -1, -1, -1].set(jnp.nan)
    _assert_nan_where_xla(case, x, kernel, bias)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("layer", NAN_LAYERS)
def test_a_nan_in_the_kernel_gives_nan_where_xla_does(onednn, layer, dtype):
    """A NaN weight makes its output channel NaN (VALID padding: with padding, XLA also
    multiplies the padding's zeros by the NaN)."""
    case = dataclasses.replace(_nan_case("direct", layer, dtype), padding="VALID")
    x, kernel, bias, _ = _inputs(case)
    kernel = kernel.at[1, 2, 0, 3].set(jnp.nan)
    _assert_nan_where_xla(case, x, kernel, bias)


# The custom VJPs' default= branches: what a GPU or TPU runs (murajax.ops.conv's
# `lax.platform_dependent` calls), computed here by dropping their cpu= branch.

PLATFORM_DEPENDENT_CALLS = {
    "_forward.<locals>.onednn",
    "_input_grad.<locals>.onednn",
    "_kernel_grad.<locals>.onednn",
    "_forward_pooled.<locals>.onednn",
    "_unpool_relu.<locals>.onednn",
}


@contextlib.contextmanager
def off_cpu_branches() -> Iterator[set[str]]:
    """Within it, murajax.ops.conv's `lax.platform_dependent` calls run their `default=` branch
    on this CPU, as on a GPU; yields the names of the cpu= branches left out."""
    real = lax.platform_dependent
    left_out: set[str] = set()

    def without_cpu(*args, cpu, default, **branches):
        left_out.add(cpu.__qualname__)
        return real(*args, default=default, **branches)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(conv_lib.lax, "platform_dependent", without_cpu)
        yield left_out


@_settings(max(EXAMPLES // 2, 4))
@given(case=cases().filter(lambda case: not case.empty))
@example(case=WINOGRAD_CASE)
@example(case=WINOGRAD_POOLED_CASE)
def test_the_non_cpu_branches_give_xlas_values_and_gradients(onednn, case):
    """Values and gradients of conv2d and conv2d_relu_max_pool with impl="onednn" through the
    custom VJPs' default= branches (which never call the extension) are XLA's."""
    with off_cpu_branches():
        x, kernel, bias, _ = _inputs(case)
        text = jax.jit(murajax_conv(case, "onednn")).lower(x, kernel, bias).as_text()
        assert "murajax_onednn" not in text
        check_against_xla(case, impls=("onednn",))


def test_every_non_cpu_branch_is_computed(onednn):
    """A convolution with ReLU and one with pooling go through all five `platform_dependent`
    calls' default branches (none is left to the extension)."""
    with off_cpu_branches() as left_out:
        for case in (WINOGRAD_CASE, WINOGRAD_POOLED_CASE):
            check_against_xla(case, impls=("onednn",))
    assert left_out == PLATFORM_DEPENDENT_CALLS
