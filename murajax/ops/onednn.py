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
import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import jax

from murajax.compilation_cache import cache_root

SOURCE = Path(__file__).with_name("onednn_conv.cc")
SOURCES = (
    SOURCE,
    Path(__file__).with_name("winograd.h"),
    Path(__file__).with_name("batchnorm_relu.h"),
)
LIBRARY_NAME = "_onednn_conv.so"
BUILD_ID_MARK = b"murajax-onednn-build:"
PROBE_DTYPES = {"float32": "f32", "bfloat16": "bf16"}
TARGETS = {
    "murajax_onednn_conv_fwd": "MurajaxOnednnConvFwd",
    "murajax_onednn_conv_bwd_data": "MurajaxOnednnConvBwdData",
    "murajax_onednn_conv_bwd_weights": "MurajaxOnednnConvBwdWeights",
    "murajax_onednn_conv_relu_pool_fwd": "MurajaxOnednnConvReluPoolFwd",
    "murajax_onednn_unpool_relu_bwd": "MurajaxOnednnUnpoolReluBwd",
    "murajax_bn_relu_fwd": "MurajaxBnReluFwd",
    "murajax_bn_relu_normalize": "MurajaxBnReluNormalize",
    "murajax_bn_relu_bwd": "MurajaxBnReluBwd",
    "murajax_bn_relu_bwd_add": "MurajaxBnReluBwdAdd",
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


def compiler() -> str:
    """The C++ compiler: `$CXX`, else the one Python was built with, else g++."""
    return (os.environ.get("CXX") or sysconfig.get_config_var("CXX") or "g++").split()[0]


def openmp_flag(cxx: str) -> str:
    """-fopenmp for GCC. Clang's OpenMP code runs only on its own runtime (libomp), which would
    load beside the GNU OpenMP that oneDNN's wheel runs on and oversubscribe the cores, so under
    Clang the extension's own loops are vectorised (`-fopenmp-simd`) but run on one thread; the
    oneDNN primitives, nearly all of the time, still use every core."""
    return "-fopenmp-simd" if "clang" in Path(cxx).name else "-fopenmp"


def installed_version(distribution: str) -> str:
    """The installed version of `distribution`, or "none"."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def build_id() -> str:
    """What the library to load must have been built from: a hash of the sources, the compiler
    command and the versions of jaxlib (its FFI headers) and oneDNN. A library built from
    anything else is stale."""
    digest = hashlib.sha256()
    for path in SOURCES:
        digest.update(path.read_bytes())
    digest.update(" ".join(_compile_flags() + _link_flags()).encode())
    for distribution in ("jaxlib", "onednn-cpu-gomp"):
        digest.update(f"{distribution}={installed_version(distribution)}".encode())
    return digest.hexdigest()[:20]


def library_candidates() -> list[Path]:
    """Where a built extension may live: beside this module (an editable or source install),
    then in the cache folder (a read-only installation), named there by its build id so that
    environments with other versions can share the cache."""
    return [Path(__file__).with_name(LIBRARY_NAME), cache_dir() / f"_onednn_conv-{build_id()}.so"]


def library_build_id(path: Path) -> str | None:
    """The build id recorded in a built library (read from the file, not loaded), or None."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    found = re.search(re.escape(BUILD_ID_MARK) + rb"([0-9a-z]+)\0", data)
    return found.group(1).decode() if found else None


def _compile_flags() -> list[str]:
    prefix = onednn_prefix()
    cxx = compiler()
    return [
        cxx,
        "-O3",
        "-std=c++17",
        openmp_flag(cxx),
        "-shared",
        "-fPIC",
        f"-I{jax.ffi.include_dir()}",
        f"-I{prefix / 'include'}",
    ]


def _link_flags() -> list[str]:
    prefix = onednn_prefix()
    return [
        f"-L{prefix / 'lib'}",
        "-ldnnl",
        # RPATH (not RUNPATH) so that libdnnl's own dependencies beside it are found too.
        f"-Wl,--disable-new-dtags,-rpath,{prefix / 'lib'}",
    ]


def build_command(output: Path) -> list[str]:
    """The compiler command line that builds the extension into `output` (the libraries after
    the source, so that a linker with --as-needed keeps them)."""
    return [
        *_compile_flags(),
        f'-DMURAJAX_BUILD_ID="{build_id()}"',
        str(SOURCE),
        *_link_flags(),
        "-o",
        str(output),
    ]


def build_problem() -> str | None:
    """Why the extension cannot be compiled here (no oneDNN headers or library, no compiler),
    or None."""
    prefix = onednn_prefix()
    if not (prefix / "include" / "oneapi" / "dnnl" / "dnnl.hpp").exists():
        return (
            f"oneDNN headers not found under {prefix}/include "
            "(pip install -c constraints.txt onednn-devel-cpu-gomp)"
        )
    if not list((prefix / "lib").glob("libdnnl.so*")):
        return (
            f"libdnnl.so not found under {prefix}/lib "
            "(pip install -c constraints.txt onednn-cpu-gomp)"
        )
    if shutil.which(compiler()) is None:
        return f"no C++ compiler {compiler()!r} on PATH (set $CXX)"
    return None


def build(output: Path | None = None) -> Path:
    """Compiles the extension (atomically: a half-written library is never loaded) and
    returns its path. Raises `BuildError` saying what is missing."""
    problem = build_problem()
    if problem:
        raise BuildError(problem)
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


def current_library() -> Path | None:
    """The first built library whose build id is this installation's, or None."""
    expected = build_id()
    return next((p for p in library_candidates() if library_build_id(p) == expected), None)


def _find_or_rebuild() -> tuple[Path | None, str | None]:
    """(the library to load, None), or (None, why there is none). A library built from other
    sources or versions (a `git pull` without `make`, an upgraded jaxlib) is rebuilt where a
    compiler and oneDNN's headers exist, saying so on stderr; it is never loaded."""
    library = current_library()
    if library is not None:
        return library, None
    stale = [p for p in library_candidates() if p.exists()]
    if not stale:
        return None, "the oneDNN extension is not built (run `python -m murajax.ops.build`)"
    problem = build_problem()
    if problem:
        return None, (
            f"{stale[0]} is stale (built from other sources or versions) and cannot be rebuilt "
            f"here ({problem}); run `python -m murajax.ops.build` where it can"
        )
    print(
        f"murajax: {stale[0]} was built from other sources or versions; rebuilding it "
        "(about a minute)",
        file=sys.stderr,
        flush=True,
    )
    try:
        return build(), None
    except BuildError as e:
        return None, (
            f"{stale[0]} is stale (built from other sources or versions) and cannot be rebuilt "
            f"here ({e}); run `python -m murajax.ops.build`"
        )


@functools.cache
def _loaded() -> tuple[ctypes.CDLL | None, str | None]:
    """(the loaded library with its handlers registered, None), or (None, why not)."""
    if sys.platform != "linux":
        return None, f"the oneDNN extension is built for Linux only (this is {sys.platform})"
    try:
        library, problem = _find_or_rebuild()
        if library is None:
            return None, problem
        _configure_runtime(onednn_prefix())
        lib = ctypes.CDLL(str(library))
        problem = _probe(lib, "float32")
        if problem:
            return None, f"oneDNN cannot run a convolution here: {problem}"
        for target, symbol in TARGETS.items():
            capsule = jax.ffi.pycapsule(getattr(lib, symbol))
            jax.ffi.register_ffi_target(target, capsule, platform="cpu")
    except (OSError, AttributeError) as e:  # an unloadable file, a missing symbol
        return None, f"cannot load the oneDNN extension: {e}"
    return lib, None


def _probe(lib: ctypes.CDLL, dtype: str) -> str | None:
    message = ctypes.create_string_buffer(512)
    lib.murajax_onednn_probe.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int]
    if lib.murajax_onednn_probe(PROBE_DTYPES[dtype].encode(), message, len(message)):
        return None
    return message.value.decode(errors="replace")


def onednn_isa() -> str | None:
    """The instruction set oneDNN's kernels use here (e.g. "AVX2", "AVX512_CORE_AMX"; lowered by
    `$ONEDNN_MAX_CPU_ISA`), or None where the extension does not load."""
    lib, _ = _loaded()
    if lib is None:
        return None
    lib.murajax_onednn_isa.restype = ctypes.c_char_p
    return lib.murajax_onednn_isa().decode()


def batchnorm_level() -> str | None:
    """The instruction set murajax's BatchNorm kernels run at ("AVX512", "AVX2", "baseline"):
    oneDNN's, so lowered by `$ONEDNN_MAX_CPU_ISA` too; None where the extension does not load."""
    lib, _ = _loaded()
    if lib is None:
        return None
    lib.murajax_bn_level.restype = ctypes.c_char_p
    return lib.murajax_bn_level().decode()


def onednn_status() -> str | None:
    """Loads and registers the extension once: None when it works, else the reason it does
    not (then murajax uses XLA's convolution)."""
    return _loaded()[1]


@functools.cache
def onednn_dtype_status(dtype: str) -> str | None:
    """None when oneDNN runs every convolution primitive murajax uses in `dtype` ("float32" or
    "bfloat16") on this CPU, else why not (then that dtype uses XLA's convolution). oneDNN 3.2
    has no bfloat16 convolution without AVX512_BF16-class kernels: on an AVX2-only CPU (or
    under `ONEDNN_MAX_CPU_ISA=AVX2`) bfloat16 falls back to XLA."""
    lib, problem = _loaded()
    if lib is None:
        return problem
    if dtype not in PROBE_DTYPES:
        return f"oneDNN convolutions take float32 or bfloat16, not {dtype}"
    problem = _probe(lib, dtype)
    if problem is None:
        return None
    return f"oneDNN has no {dtype} convolution for this CPU ({onednn_isa()}): {problem}"
