"""Builds, loads and registers the oneDNN convolution extension (`onednn_conv.cc`).

The extension is a small shared library compiled against the oneDNN of the `onednn-cpu-gomp`
and `onednn-devel-cpu-gomp` wheels (installed by `make install` on x86-64 Linux) and the XLA
FFI headers that jaxlib ships. `python -m murajax.ops.build` compiles it; `onednn_status()`
loads it once, runs a test convolution and registers its five handlers with XLA:CPU. When any
of that fails (no compiler, no oneDNN wheel, another CPU architecture), murajax uses XLA's own
convolution and says why once.

That oneDNN (3.2) runs its kernels on GNU OpenMP threads (the system's libgomp, which comes
with gcc), the calling thread among them. It was chosen over the newer `onednn` wheels (3.13),
which run on Intel's SYCL/OpenCL CPU runtime over TBB, because the same kernels train faster on
it: measured on 2 cores, bfloat16 kernel gradients of the benchmark CNN's layers 11-15 ms
against 16-18 ms, and whole train steps 7-13% faster (CNN C and VGG16 in bfloat16, 5% VGG16 in
float32), with a ~160 MB install instead of ~2 GB. OpenMP's threads are told to sleep between
calls (`OMP_WAIT_POLICY=passive`, set here, and so inherited by the processes this one starts,
unless the user has set it) so that they leave the cores to XLA's own passes in between.
"""

import ctypes
import functools
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import jax

from murajax.compilation_cache import cache_root

SOURCE = Path(__file__).with_name("onednn_conv.cc")
LIBRARY_NAME = "_onednn_conv.so"
TARGETS = {
    "murajax_onednn_conv_fwd": "MurajaxOnednnConvFwd",
    "murajax_onednn_conv_bwd_data": "MurajaxOnednnConvBwdData",
    "murajax_onednn_conv_bwd_weights": "MurajaxOnednnConvBwdWeights",
    "murajax_onednn_conv_relu_pool_fwd": "MurajaxOnednnConvReluPoolFwd",
    "murajax_onednn_unpool_relu_bwd": "MurajaxOnednnUnpoolReluBwd",
}


class BuildError(RuntimeError):
    """The extension could not be compiled; the message says why."""


def onednn_prefix() -> Path:
    """The installation prefix that holds oneDNN's `lib/libdnnl.so` and `include/`: the
    environment's (`sys.prefix`, where the `onednn` wheels put their files), or
    `$MURAJAX_ONEDNN_PREFIX`."""
    return Path(os.environ.get("MURAJAX_ONEDNN_PREFIX") or sys.prefix)


def cache_dir() -> Path:
    """murajax's cache folder (`$MURAJAX_CACHE`, default `~/.cache/murajax`)."""
    return Path(cache_root())


def library_candidates() -> list[Path]:
    """Where a built extension may live: beside this module (an editable or source install),
    then in the cache folder (a read-only installation)."""
    return [Path(__file__).with_name(LIBRARY_NAME), cache_dir() / LIBRARY_NAME]


def build_command(output: Path) -> list[str]:
    """The compiler command line that builds the extension into `output`."""
    prefix = onednn_prefix()
    compiler = os.environ.get("CXX") or sysconfig.get_config_var("CXX") or "g++"
    return [
        *compiler.split()[:1],
        "-O3",
        "-std=c++17",
        "-fopenmp",
        "-shared",
        "-fPIC",
        str(SOURCE),
        f"-I{jax.ffi.include_dir()}",
        f"-I{prefix / 'include'}",
        f"-L{prefix / 'lib'}",
        "-ldnnl",
        # RPATH (not RUNPATH) so that libdnnl's own dependencies beside it are found too.
        f"-Wl,--disable-new-dtags,-rpath,{prefix / 'lib'}",
        "-o",
        str(output),
    ]


def build(output: Path | None = None) -> Path:
    """Compiles the extension (atomically: a half-written library is never loaded) and
    returns its path. Raises `BuildError` saying what is missing."""
    prefix = onednn_prefix()
    if not (prefix / "include" / "oneapi" / "dnnl" / "dnnl.hpp").exists():
        raise BuildError(
            f"oneDNN headers not found under {prefix}/include "
            "(pip install -c constraints.txt onednn-devel-cpu-gomp)"
        )
    if not list((prefix / "lib").glob("libdnnl.so*")):
        raise BuildError(
            f"libdnnl.so not found under {prefix}/lib "
            "(pip install -c constraints.txt onednn-cpu-gomp)"
        )
    if output is None:
        output = library_candidates()[0]
        if not os.access(output.parent, os.W_OK):
            output = library_candidates()[1]
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f"{output.name}.{os.getpid()}.partial")
    try:
        result = subprocess.run(build_command(partial), capture_output=True, text=True)
    except OSError as e:
        raise BuildError(f"cannot run the C++ compiler: {e}") from None
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        lines = [line for line in result.stderr.splitlines() if "error" in line] or [
            result.stderr.strip()
        ]
        raise BuildError(f"compiling {SOURCE.name} failed: {lines[0][:300]}")
    os.replace(partial, output)
    return output


def _configure_runtime(prefix: Path) -> None:
    """Before oneDNN is loaded: OpenMP threads that sleep between calls (unless the user has set
    `$OMP_WAIT_POLICY`); for a oneDNN built on SYCL instead (`$MURAJAX_ONEDNN_PREFIX`), the
    OpenCL ICD loader pointed at Intel's CPU runtime (unless `$OCL_ICD_FILENAMES` is set)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")
    runtime = prefix / "lib" / "libintelocl.so"
    if runtime.exists():
        os.environ.setdefault("OCL_ICD_FILENAMES", str(runtime))


@functools.cache
def onednn_status() -> str | None:
    """Loads and registers the extension once: None when it works, else the reason it does
    not (then murajax uses XLA's convolution)."""
    if sys.platform != "linux":
        return f"the oneDNN extension is built for Linux only (this is {sys.platform})"
    library = next((p for p in library_candidates() if p.exists()), None)
    if library is None:
        return "the oneDNN extension is not built (run `python -m murajax.ops.build`)"
    _configure_runtime(onednn_prefix())
    try:
        lib = ctypes.CDLL(str(library))
    except OSError as e:
        return f"cannot load {library}: {e}"
    message = ctypes.create_string_buffer(512)
    if not lib.murajax_onednn_probe(message, len(message)):
        return f"oneDNN cannot run a convolution here: {message.value.decode(errors='replace')}"
    for target, symbol in TARGETS.items():
        capsule = jax.ffi.pycapsule(getattr(lib, symbol))
        jax.ffi.register_ffi_target(target, capsule, platform="cpu")
    return None
