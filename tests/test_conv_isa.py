"""The oneDNN extension on every x86 CPU, from this one: convolutions under `ONEDNN_MAX_CPU_ISA`
AVX2, AVX512_CORE and the CPU's own, so that an AVX-512 or AMX machine runs the AVX2 kernels a
common cloud CPU runs (issue 19: `make test` failed there, and bfloat16 could not train).

oneDNN reads the variable once, when it loads, so each instruction set runs in a child process:
a tiny CNN's training step (float32 and bfloat16, through conv2d_relu_max_pool, direct and
Winograd layers) against XLA's, with `ONEDNN_VERBOSE=1` proving which kernels oneDNN ran; and,
under the two capped sets, a selection of the convolution tests (fewer property examples).
Under AVX2, oneDNN 3.2 has no bfloat16 convolution: bfloat16 must give XLA's answer there, with
one warning, not an error.
"""

import json
import platform
import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from murajax import models, ops
from murajax.config import ModelConfig
from tests.child_process import describe, run_python

pytestmark = pytest.mark.skipif(
    not (sys.platform == "linux" and platform.machine() == "x86_64"),
    reason="oneDNN's wheels (and ONEDNN_MAX_CPU_ISA's instruction sets) are x86-64 Linux only",
)

RESULT_MARK = "murajax-isa-check:"
# Instruction sets above each cap, as oneDNN names them in its kernels ("jit:avx2",
# "brgconv:avx512_core", "jit_bf16:avx512_core_bf16", "brg:avx512_core_amx").
ABOVE = {
    "AVX2": ("avx512", "amx", "avx2_vnni"),
    "AVX512_CORE": ("avx512_core_vnni", "avx512_core_bf16", "avx512_core_fp16", "amx"),
}
# /proc/cpuinfo flags a CPU needs for each set (AVX512_CORE: AVX-512 F, BW, VL and DQ).
CPU_FLAGS = {"AVX2": ("avx2",), "AVX512_CORE": ("avx512f", "avx512bw", "avx512vl", "avx512dq")}
CONVOLUTION_TESTS = [
    "tests/test_conv.py::test_float32_values_and_gradients_equal_xla",
    "tests/test_conv.py::test_bfloat16_values_and_gradients_as_close_to_float32_as_xla",
    "tests/test_conv.py::test_conv_relu_max_pool_equals_the_layers_apart",
    "tests/test_winograd.py::test_values_and_gradients_equal_xla",
    "tests/test_winograd.py::test_conv_relu_max_pool_equals_the_layers_apart",
    "tests/test_conv_properties.py::test_conv2d_values_and_gradients_are_xlas",
    "tests/test_conv_properties.py::test_conv2d_relu_max_pool_values_and_gradients_are_xlas",
    "tests/test_conv_properties.py::test_a_nan_in_the_input_gives_nan_where_xla_does",
    # murajax's BatchNorm kernels, built per instruction set, follow oneDNN's.
    "tests/test_batchnorm_native.py::test_forward_values_and_statistics_are_xlas",
    "tests/test_batchnorm_native.py::test_gradients_are_xlas_written_or_added_in_place",
    "tests/test_batchnorm_native.py::test_the_kernels_run_at_onednns_instruction_set",
]


def cpu_has(isa: str) -> bool:
    """Whether this CPU has the instruction set `isa` ("AVX2", "AVX512_CORE")."""
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return all(flag in flags for flag in CPU_FLAGS[isa])


# The child process's side.

TINY_CNN = dict(name="cnn", widths=(8, 64, 64), dense=(8,), dropout_rate=0.0)


def _train_step(dtype: str, conv_impl: str, images, labels) -> dict:
    """Logits, loss, gradients and the loss after one SGD step of a tiny CNN: 16x16 images,
    a 1 -> 8 and an 8 -> 64 layer (direct) and a 64 -> 64 layer on 4x4 maps (Winograd in
    float32), each with ReLU and 2x2 max-pooling fused."""
    model = models.create_from_config(ModelConfig(**TINY_CNN, dtype=dtype, conv_impl=conv_impl))
    params = model.init(jax.random.key(0), images)["params"]
    optimizer = optax.sgd(0.1)

    def loss_fn(params):
        logits = model.apply({"params": params}, images)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits

    @jax.jit
    def step(params):
        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, _ = optimizer.update(grads, optimizer.init(params))
        return loss, logits, grads, loss_fn(optax.apply_updates(params, updates))[0]

    loss, logits, grads, next_loss = step(params)
    return {"loss": loss, "logits": logits, "grads": grads, "next_loss": next_loss}


def _relative_error(got, want) -> float:
    """The largest relative L2 error over the leaves of two trees."""
    errors = [
        float(jnp.linalg.norm(g.astype(jnp.float32) - w) / (jnp.linalg.norm(w) + 1e-30))
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True)
    ]
    return max(errors)


def train_tiny_cnn_and_compare_with_xla() -> None:
    """The child process: under this process's ONEDNN_MAX_CPU_ISA, a tiny CNN's training step
    with conv_impl "auto" (oneDNN, or XLA where it cannot run a dtype) gives XLA's values, in
    float32 and bfloat16, and a bfloat16 conv2d gives XLA's answer without raising. Prints one
    JSON line after RESULT_MARK."""
    assert ops.onednn_status() is None, ops.onednn_status()
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.random((4, 16, 16, 1)), jnp.float32)
    labels = jnp.asarray([0, 1, 1, 0])
    reference = _train_step("float32", "xla", images, labels)
    result = _train_step("float32", "auto", images, labels)
    for name in ("logits", "grads"):
        np.testing.assert_allclose(
            np.concatenate([np.ravel(a) for a in jax.tree.leaves(result[name])]),
            np.concatenate([np.ravel(a) for a in jax.tree.leaves(reference[name])]),
            rtol=1e-4,
            atol=1e-5,
            err_msg=f"float32 {name}",
        )
    np.testing.assert_allclose(result["next_loss"], reference["next_loss"], rtol=1e-5)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bfloat16 = _train_step("bfloat16", "auto", images, labels)
        xla_bfloat16 = _train_step("bfloat16", "xla", images, labels)
        x = jnp.asarray(rng.standard_normal((2, 8, 8, 16)), jnp.bfloat16)
        kernel = jnp.asarray(rng.standard_normal((3, 3, 16, 8)) / 12, jnp.bfloat16)
        conv = np.asarray(ops.conv2d(x, kernel, relu=True, impl="auto"), np.float32)
    want_conv = np.asarray(ops.conv2d(x, kernel, relu=True, impl="xla"), np.float32)
    np.testing.assert_allclose(conv, want_conv, rtol=2e-2, atol=2e-2, err_msg="bfloat16 conv2d")
    # bfloat16 rounds differently in each library: both as close to float32 XLA.
    errors = {
        "auto": _relative_error(bfloat16["grads"], reference["grads"]),
        "xla": _relative_error(xla_bfloat16["grads"], reference["grads"]),
    }
    assert errors["auto"] < max(3e-2, 2 * errors["xla"]), errors
    assert abs(float(bfloat16["next_loss"]) - float(reference["next_loss"])) < 3e-2
    fallbacks = [str(w.message) for w in caught if "XLA's CPU convolution" in str(w.message)]
    print(RESULT_MARK, json.dumps({"fallback_warnings": fallbacks, "bfloat16_errors": errors}))


# The test process's side.


def _onednn_lines(stdout: str) -> tuple[str | None, list[tuple[str, str]]]:
    """(the instruction set murajax's oneDNN 3.2 reports, [(primitive, implementation)] of
    each primitive it ran), from its ONEDNN_VERBOSE=1 lines (XLA's own oneDNN writes
    "onednn_verbose,v1,..." lines, left out)."""
    isa, ran = None, []
    for line in stdout.splitlines():
        fields = line.split(",")
        if fields[:3] == ["onednn_verbose", "info", "cpu"] and fields[3].startswith("isa:"):
            isa = fields[3].removeprefix("isa:")
        elif fields[:3] == ["onednn_verbose", "exec", "cpu"]:
            ran.append((fields[3], fields[4]))
    return isa, ran


def _run_under(isa: str | None, code: str, timeout: float, **env: str):
    return run_python(code, env={"ONEDNN_MAX_CPU_ISA": isa, **env}, timeout=timeout)


@pytest.mark.parametrize("isa", ["AVX2", "AVX512_CORE", None], ids=["AVX2", "AVX512_CORE", "own"])
def test_a_tiny_cnn_trains_as_on_xla_under_each_instruction_set(isa):
    code = (
        "from tests.test_conv_isa import train_tiny_cnn_and_compare_with_xla; "
        "train_tiny_cnn_and_compare_with_xla()"
    )
    result = _run_under(isa, code, timeout=300, ONEDNN_VERBOSE="1")
    assert result.returncode == 0, describe(result)
    [summary] = [line for line in result.stdout.splitlines() if line.startswith(RESULT_MARK)]
    summary = json.loads(summary.removeprefix(RESULT_MARK))

    reported_isa, ran = _onednn_lines(result.stdout)
    assert reported_isa is not None, "oneDNN 3.2 printed no 'isa:' line"
    convolutions = [impl for primitive, impl in ran if primitive == "convolution"]
    assert convolutions, "murajax's oneDNN ran no convolution"
    assert not [impl for impl in convolutions if impl.startswith("ref")]  # no reference kernels
    if isa is not None:
        above = sorted({impl for _, impl in ran if any(name in impl for name in ABOVE[isa])})
        assert not above, f"under {isa} oneDNN ran {above} ({reported_isa})"
        if cpu_has(isa):
            assert any(isa.lower() in impl for impl in convolutions), (reported_isa, convolutions)

    bfloat16_convolutions = [
        impl for primitive, impl in ran if primitive == "convolution" and "bf16" in impl
    ]
    if isa == "AVX2" or not cpu_has("AVX512_CORE"):
        # oneDNN 3.2 has no bfloat16 convolution below AVX-512: XLA's, said once.
        assert len(summary["fallback_warnings"]) == 1, summary
        assert "bfloat16" in summary["fallback_warnings"][0]
        assert not bfloat16_convolutions
    else:
        assert summary["fallback_warnings"] == [], summary
        assert bfloat16_convolutions, "bfloat16 did not run on oneDNN"


@pytest.mark.parametrize("isa", ["AVX2", "AVX512_CORE"])
def test_the_convolution_tests_pass_under_a_capped_instruction_set(isa):
    """The CPU's own set runs them in the suite itself."""
    code = (
        "import sys, pytest; "
        f"sys.exit(pytest.main({CONVOLUTION_TESTS!r} + ['-q', '-p', 'no:cacheprovider']))"
    )
    result = _run_under(isa, code, timeout=300, MURAJAX_CONV_EXAMPLES="4")
    assert result.returncode == 0, describe(result) + "\n" + result.stdout[-3000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-500:]
