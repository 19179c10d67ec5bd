"""The oneDNN extension is as safe as XLA: its handlers check what they are given, survive a
failed allocation, fall back per dtype where the CPU lacks kernels, and are never loaded stale."""

import platform
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from murajax import ops
from murajax.ops import conv as conv_lib
from murajax.ops import onednn

needs_onednn = pytest.mark.skipif(
    not (sys.platform == "linux" and platform.machine() == "x86_64"),
    reason="oneDNN's wheels exist for x86-64 Linux only",
)
REPO = Path(__file__).resolve().parents[1]


def _run_python(code: str, env: dict[str, str] | None = None, timeout: int = 240):
    """Runs `code` in a fresh interpreter (oneDNN reads its settings when it first loads)."""
    import os

    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=full_env,
    )


def _attributes(**overrides):
    attributes = dict(
        winograd=False,
        stride_h=np.int64(1),
        stride_w=np.int64(1),
        pad_top=np.int64(1),
        pad_bottom=np.int64(1),
        pad_left=np.int64(1),
        pad_right=np.int64(1),
    )
    attributes.update(overrides)
    return attributes


# The handlers themselves, called past conv2d's checks: a call that does not fit is an FFI error
# naming the shapes, never a read out of bounds.
@needs_onednn
@pytest.mark.parametrize(
    "x_shape, kernel_shape, bias_shape, out_shape, message",
    [
        # the Winograd-eligible shape with a kernel for 64 channels on a 128-channel image: it
        # returned 1.9e36 and the like before the handlers checked their shapes
        ((1, 8, 8, 128), (3, 3, 64, 64), (64,), (1, 8, 8, 64), "do not fit together"),
        # a (1,) bias read as 70 floats
        ((1, 8, 8, 8), (3, 3, 8, 70), (1,), (1, 8, 8, 70), "bias (1,) must be (70,)"),
        # an output of the wrong size
        ((1, 8, 8, 8), (3, 3, 8, 4), (4,), (1, 9, 8, 4), "do not fit together"),
    ],
)
def test_the_forward_handler_refuses_buffers_that_do_not_fit(
    x_shape, kernel_shape, bias_shape, out_shape, message
):
    assert onednn.onednn_status() is None
    call = jax.ffi.ffi_call("murajax_onednn_conv_fwd", jax.ShapeDtypeStruct(out_shape, jnp.float32))
    x, kernel, bias = (jnp.ones(s, jnp.float32) for s in (x_shape, kernel_shape, bias_shape))
    with pytest.raises(jax.errors.JaxRuntimeError, match="INVALID_ARGUMENT") as raised:
        call(x, kernel, bias, **_attributes(winograd=True), has_bias=True, relu=False)
    assert message in str(raised.value)


@needs_onednn
def test_the_backward_handlers_refuse_buffers_that_do_not_fit():
    dy = jnp.ones((1, 8, 8, 4), jnp.float32)
    data = jax.ffi.ffi_call(
        "murajax_onednn_conv_bwd_data", jax.ShapeDtypeStruct((1, 8, 8, 6), jnp.float32)
    )
    with pytest.raises(jax.errors.JaxRuntimeError, match="do not fit together"):
        data(dy, jnp.ones((3, 3, 8, 4), jnp.float32), **_attributes())
    with pytest.raises(jax.errors.JaxRuntimeError, match="same dtype"):
        data(dy, jnp.ones((3, 3, 6, 4), jnp.bfloat16), **_attributes())
    pooled_shape = (1, 4, 4, 4)
    unpool = jax.ffi.ffi_call(
        "murajax_onednn_unpool_relu_bwd", jax.ShapeDtypeStruct((1, 8, 8, 4), jnp.float32)
    )
    pooled = jnp.ones(pooled_shape, jnp.float32)
    with pytest.raises(jax.errors.JaxRuntimeError, match="uint8 winner"):
        unpool(pooled, pooled, jnp.zeros(pooled_shape, jnp.int8))
    with pytest.raises(jax.errors.JaxRuntimeError, match="do not fit the 2x2 pooling"):
        unpool(pooled, pooled, jnp.zeros((1, 4, 3, 4), jnp.uint8))


@needs_onednn
def test_conv2d_checks_shapes_before_any_call():
    x = jnp.ones((1, 8, 8, 128))
    with pytest.raises(ValueError, match=r"kernel \(3, 3, 64, 64\) takes 64 input channels"):
        ops.conv2d(x, jnp.ones((3, 3, 64, 64)), impl="onednn")
    with pytest.raises(ValueError, match=r"bias of shape \(3,\)"):
        ops.conv2d(x, jnp.ones((3, 3, 128, 8)), jnp.ones(3), impl="onednn")
    with pytest.raises(ValueError, match="4-D"):
        ops.conv2d(jnp.ones((8, 8, 128)), jnp.ones((3, 3, 128, 8)), impl="onednn")


@needs_onednn
@pytest.mark.parametrize("impl", ["onednn", "onednn-direct", "xla"])
def test_a_scalar_like_bias_broadcasts_as_in_xla(impl):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((1, 8, 8, 8)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((3, 3, 8, 70)), jnp.float32)
    bias = jnp.asarray([0.5], jnp.float32)
    got = ops.conv2d(x, kernel, bias, impl=impl)
    expected = ops.conv2d(x, kernel, jnp.full((70,), 0.5), impl="xla")
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@needs_onednn
@pytest.mark.parametrize("impl", ["onednn", "onednn-direct"])
@pytest.mark.parametrize("shape", [(0, 8, 8, 64), (2, 0, 8, 64), (2, 8, 0, 64)])
def test_empty_batches_and_images_give_xlas_answer(impl, shape):
    x = jnp.ones(shape, jnp.float32)
    kernel = jnp.full((3, 3, 64, 64), 0.01, jnp.float32)
    bias = jnp.ones((64,), jnp.float32)

    def loss(x, kernel, bias, impl):
        return jnp.sum(ops.conv2d(x, kernel, bias, relu=True, impl=impl))

    got = jax.grad(loss, argnums=(0, 1, 2))(x, kernel, bias, impl)
    expected = jax.grad(loss, argnums=(0, 1, 2))(x, kernel, bias, "xla")
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape
        np.testing.assert_array_equal(g, e)


# A failed allocation leaves the extension usable: the next, smaller call gives its answer. Before,
# a failed `Grow` kept the buffer's old size with no memory behind it, and the next call wrote
# through a null pointer.
@needs_onednn
def test_a_failed_allocation_leaves_the_extension_usable():
    result = _run_python(
        """
        import resource
        import jax, jax.numpy as jnp, numpy as np
        from murajax import ops

        def pooled(x, w):
            return ops.conv2d_relu_max_pool(x, w, impl="onednn")

        small = jax.jit(pooled)
        small_x, small_w = jnp.ones((1, 16, 16, 1)), jnp.full((3, 3, 1, 64), 0.1)
        expected = np.asarray(small(small_x, small_w))
        # The convolution's 1 GiB full-size output is the extension's own buffer; its pooled
        # output (256 MiB) is XLA's.
        big_x, big_w = jnp.ones((1, 256, 256, 1)), jnp.full((3, 3, 1, 4096), 0.1)
        big = jax.jit(pooled).lower(big_x, big_w).compile()
        status = open("/proc/self/status").read().split("VmSize:")[1].split()[0]
        limit = int(status) * 1024 + (700 << 20)
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
        try:
            big(big_x, big_w).block_until_ready()
            print("BIG CALL RAN")
        except Exception as e:
            print("BIG CALL FAILED:", str(e).splitlines()[0])
        print("SMALL EQUAL:", np.array_equal(np.asarray(small(small_x, small_w)), expected))
        """
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "BIG CALL FAILED: INTERNAL: murajax oneDNN convolution: out of host memory" in (
        result.stdout
    )
    assert "SMALL EQUAL: True" in result.stdout


# A CPU without bfloat16 kernels (oneDNN 3.2 below AVX-512) runs bfloat16 on XLA, with one warning
# naming what it lacks; float32 stays on oneDNN.
@needs_onednn
def test_bfloat16_falls_back_to_xla_where_onednn_has_no_kernels():
    result = _run_python(
        """
        import warnings
        import jax.numpy as jnp, numpy as np
        from murajax import ops
        from murajax.ops import onednn

        print("ISA:", onednn.onednn_isa())
        print("F32:", onednn.onednn_dtype_status("float32"))
        x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 8, 16)), jnp.bfloat16)
        w = jnp.asarray(np.random.default_rng(1).standard_normal((3, 3, 16, 8)), jnp.bfloat16)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = ops.conv2d_relu_max_pool(x, w, impl="onednn")
            again = ops.conv2d(x, w, relu=True, impl="auto")
        expected = ops.conv2d_relu_max_pool(x, w, impl="xla")
        got, expected = (np.asarray(a, np.float32) for a in (got, expected))
        print("EQUAL:", np.array_equal(got, expected))
        print("WARNINGS:", len(caught))
        print("WARNING:", caught[0].message if caught else None)
        print("WARNED AT:", caught[0].filename if caught else None)
        """,
        env={"ONEDNN_MAX_CPU_ISA": "AVX2"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ISA: AVX2" in result.stdout
    assert "F32: None" in result.stdout
    assert "EQUAL: True" in result.stdout
    assert "WARNINGS: 1" in result.stdout
    assert "oneDNN has no bfloat16 convolution for this CPU (AVX2)" in result.stdout
    assert "WARNED AT: <string>" in result.stdout  # the user's line, not murajax's or JAX's


@needs_onednn
def test_every_dtype_the_extension_takes_is_probed():
    assert onednn.onednn_dtype_status("float32") is None
    assert "float32 or bfloat16" in onednn.onednn_dtype_status("float16")


# A stale library (a `git pull` without `make`, another venv's jaxlib) is never loaded: it is
# rebuilt where a compiler exists, else murajax uses XLA with one warning.
def test_the_build_id_is_read_from_the_file_without_loading_it(tmp_path):
    library = tmp_path / "lib.so"
    library.write_bytes(b"\x7fELF junk " + onednn.BUILD_ID_MARK + b"0123abcd\0 more")
    assert onednn.library_build_id(library) == "0123abcd"
    library.write_bytes(b"\x7fELF without a mark")
    assert onednn.library_build_id(library) is None
    assert onednn.library_build_id(tmp_path / "missing.so") is None


@needs_onednn
def test_the_built_library_carries_this_checkouts_build_id():
    library = onednn.current_library()
    assert library is not None
    assert onednn.library_build_id(library) == onednn.build_id()


def _stale_library(folder: Path) -> Path:
    """A library built from other sources: it lacks the newest handler, as one built before the
    fused conv+pool handler did (`undefined symbol: MurajaxOnednnConvReluPoolFwd`)."""
    source = folder / "old.cc"
    source.write_text(
        'extern "C" const char murajax_onednn_build_id[] = "murajax-onednn-build:old";\n'
    )
    library = folder / onednn.LIBRARY_NAME
    subprocess.run(["g++", "-shared", "-fPIC", str(source), "-o", str(library)], check=True)
    return library


_WITH_CANDIDATES = """
    import warnings
    from pathlib import Path
    import jax.numpy as jnp, numpy as np
    from murajax import ops
    from murajax.ops import onednn

    folder = Path({folder!r})
    onednn.library_candidates = lambda: [folder / onednn.LIBRARY_NAME]
    {patch}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x, w = jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 4, 4))
        y = ops.conv2d(x, w, relu=True)
    print("STATUS:", onednn.onednn_status())
    print("RESOLVED:", ops.resolve_conv_impl("auto"))
    print("VALUE:", float(y[0, 3, 3, 0]))
    print("WARNINGS:", [str(w.message) for w in caught])
"""


@needs_onednn
def test_a_stale_library_without_a_compiler_falls_back_to_xla_with_one_warning(tmp_path):
    _stale_library(tmp_path)
    result = _run_python(
        _WITH_CANDIDATES.format(folder=str(tmp_path), patch="pass"), env={"CXX": "no-such-g++"}
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "is stale (built from other sources or versions)" in result.stdout
    assert "RESOLVED: xla" in result.stdout
    assert "VALUE: 36.0" in result.stdout
    assert result.stdout.count("using XLA's CPU convolution") == 1
    assert "no C++ compiler 'no-such-g++'" in result.stdout
    assert "rebuilding" not in result.stderr


@needs_onednn
def test_a_stale_library_is_rebuilt_where_a_compiler_exists(tmp_path):
    stale = _stale_library(tmp_path)
    result = _run_python(_WITH_CANDIDATES.format(folder=str(tmp_path), patch="pass"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "STATUS: None" in result.stdout
    assert "RESOLVED: onednn" in result.stdout
    assert "VALUE: 36.0" in result.stdout
    assert "WARNINGS: []" in result.stdout
    assert "was built from other sources or versions; rebuilding it" in result.stderr
    assert onednn.library_build_id(stale) == onednn.build_id()


def test_clang_builds_load_no_second_openmp_runtime():
    assert onednn.openmp_flag("/usr/bin/clang++-16") == "-fopenmp-simd"
    assert onednn.openmp_flag("g++") == "-fopenmp"


def test_the_fallback_warning_is_given_once_per_reason(monkeypatch):
    conv_lib._warn_fallback.cache_clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            conv_lib._warn_fallback("no bfloat16 kernels")
        conv_lib._warn_fallback("another reason")
    assert [str(w.message) for w in caught] == [
        "murajax: using XLA's CPU convolution: no bfloat16 kernels",
        "murajax: using XLA's CPU convolution: another reason",
    ]
