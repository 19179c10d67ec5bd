"""Compiled train steps kept on disk, so that a rerun's first step neither traces nor compiles.

JAX's persistent compilation cache (`murajax.compilation_cache`) skips XLA's compile, but its
key is the lowered program: every process still traces and lowers the step first, which for
DenseNet-169 (224 px) is 8 of a rerun's 11 s. `CachedExecutable` wraps a jitted function
and keys its executable by what made it instead:

- `identity`: what the caller says determines the traced program beyond its arguments' shapes
  (for the train step: the resolved config and the class-weight table drawn from the data);
- the arguments' tree, shapes, dtypes and shardings;
- murajax's own source files and its native extension's build, the versions of jax, jaxlib,
  flax, optax and numpy, XLA_FLAGS, the devices, the CPU and the instruction set oneDNN runs.

On a hit it loads the executable (`jax.experimental.serialize_executable`) without calling
the Python function; on a miss it traces, compiles and stores it (atomically: a half-written
file is never read), unless JAX's persistent cache answered the compile: XLA:CPU cannot
serialize an executable loaded from there whole, so only real compiles are stored. A file
that cannot be read, or a function that cannot be serialized, costs a compile and one
warning, never an error. The cache lives in the persistent compilation cache's folder
(`murajax_executables/`), so it is on exactly when that one is.
"""

import hashlib
import os
import pickle
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import serialize_executable

from murajax.ops import onednn

SUBDIR = "murajax_executables"
FORMAT = 2  # 2: no executable that JAX's persistent cache gave is stored (see `_executable`)
_DISTRIBUTIONS = ("jax", "jaxlib", "flax", "optax", "numpy")
_JAX_OPTIONS = (
    "jax_enable_x64",
    "jax_default_matmul_precision",
    "jax_default_prng_impl",
    "jax_numpy_rank_promotion",
)


def cache_dir() -> Path | None:
    """The folder executables go to: `murajax_executables/` in the persistent compilation
    cache's folder, or None when that cache is off."""
    root = jax.config.jax_compilation_cache_dir
    return Path(root) / SUBDIR if root else None


def _source_digest() -> str:
    """A hash of every source file of the murajax package (Python and the extension's)."""
    package = Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*")):
        if path.suffix in (".py", ".cc", ".h") and path.is_file():
            digest.update(str(path.relative_to(package)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _cpu() -> str:
    """The CPU's model and flags (an executable is compiled for the instruction set it has)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    return "\n".join(
        sorted({line for line in lines if line.startswith(("model name", "flags", "Features"))})
    )


def environment() -> str:
    """Everything outside the call that shapes a compiled murajax program, as text. (Asking
    oneDNN's status also loads the extension and registers its kernels, which a loaded
    executable calls.)"""
    devices = jax.devices()
    parts = [
        f"format={FORMAT}",
        f"murajax-sources={_source_digest()}",
        *(f"{d}={onednn.installed_version(d)}" for d in _DISTRIBUTIONS),
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')}",
        *(f"{option}={getattr(jax.config, option)}" for option in _JAX_OPTIONS),
        f"devices={[(d.platform, d.device_kind, d.id) for d in devices]}",
        f"processes={jax.process_count()}/{jax.process_index()}",
        f"onednn={onednn.onednn_status()} {onednn.onednn_isa()} {onednn.build_id()}",
        f"onednn-bfloat16={onednn.onednn_dtype_status('bfloat16')}",
        f"cpu={_cpu()}",
    ]
    return "\n".join(parts)


def _arguments(args: tuple) -> str:
    """The arguments' tree and each leaf's shape, dtype, weak type and sharding, as text."""
    leaves, tree = jax.tree.flatten(args)
    described = [
        (
            tuple(jax.numpy.shape(x)),
            str(jax.numpy.result_type(x)),
            bool(getattr(x, "weak_type", False)),
            str(getattr(x, "sharding", None)),
        )
        for x in leaves
    ]
    return f"{tree}\n{described}"


def cache_key(identity: str, args: tuple) -> str:
    """The file name of the executable for `identity` called on `args` here."""
    text = "\n".join([environment(), identity, _arguments(args)])
    return hashlib.sha256(text.encode()).hexdigest()


_PERSISTENT_CACHE_HIT = "/jax/compilation_cache/cache_hits"
_persistent_cache_hits = 0


def _count_persistent_cache_hits(event: str, **kwargs: Any) -> None:
    """A `jax.monitoring` listener: counts the compiles that JAX's persistent compilation
    cache answered."""
    global _persistent_cache_hits
    if event == _PERSISTENT_CACHE_HIT:
        _persistent_cache_hits += 1


jax.monitoring.register_event_listener(_count_persistent_cache_hits)


def _warn(message: str) -> None:
    warnings.warn(f"murajax executable cache: {message}", RuntimeWarning, stacklevel=3)


def _load(path: Path) -> jax.stages.Compiled | None:
    """The executable stored at `path`, or None (missing, or unreadable: one warning)."""
    try:
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        _warn(f"cannot read {path} ({e.strerror}); compiling instead")
        return None
    try:
        serialized, in_tree, out_tree = pickle.loads(data)
        return serialize_executable.deserialize_and_load(serialized, in_tree, out_tree)
    except Exception as e:  # a torn or foreign file: compile, and write a good one
        _warn(f"cannot load {path} ({type(e).__name__}: {e}); compiling instead")
        return None


def _store(path: Path, compiled: jax.stages.Compiled) -> None:
    """Writes `compiled` to `path` atomically; a function or folder that cannot be stored is a
    warning."""
    try:
        data = pickle.dumps(serialize_executable.serialize(compiled))
    except (ValueError, NotImplementedError, TypeError, pickle.PicklingError) as e:
        _warn(f"this executable cannot be stored ({e}); the next run compiles it again")
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".partial-", delete=False) as f:
            f.write(data)
        os.replace(f.name, path)
    except OSError as e:
        _warn(f"cannot write {path.parent} ({e.strerror}); the next run compiles it again")


class CachedExecutable:
    """`jitted` (a `jax.jit` function), whose executable for the first call's arguments is
    loaded from `folder` (default `cache_dir()`; None: no cache) when one was stored for the
    same `identity` (see the module docstring), and stored there otherwise. Later calls must
    have the first call's shapes (a train step's do). `loaded` says whether it was loaded."""

    def __init__(
        self, jitted: Callable[..., Any], identity: str, folder: Path | None | str = "default"
    ) -> None:
        self._jitted = jitted
        self._identity = identity
        self._folder = cache_dir() if folder == "default" else folder
        self._compiled: jax.stages.Compiled | None = None
        self.loaded = False

    def lower(self, *args: Any) -> jax.stages.Lowered:
        """`jitted.lower(*args)`: the program, traced (for inspection; not cached)."""
        return self._jitted.lower(*args)

    def _executable(self, args: tuple) -> jax.stages.Compiled:
        if self._folder is None or jax.process_count() > 1:
            return self._jitted.lower(*args).compile()
        path = Path(self._folder) / f"{cache_key(self._identity, args)}.bin"
        compiled = _load(path)
        if compiled is not None:
            self.loaded = True
            return compiled
        hits = _persistent_cache_hits
        compiled = self._jitted.lower(*args).compile()
        if _persistent_cache_hits == hits:
            _store(path, compiled)
        # Else JAX's persistent cache gave the executable, and one loaded from there does not
        # serialize whole on XLA:CPU (the copy lacks its fused kernels: "Function
        # add_select_fusion.1 not found" when run). That cache serves the next run instead;
        # the next real compile (a miss in both) is stored.
        return compiled

    def __call__(self, *args: Any) -> Any:
        if self._compiled is None:
            self._compiled = self._executable(args)
        try:
            return self._compiled(*args)
        except (TypeError, ValueError):
            # Arguments of other shapes or placements than the first call's (checked before
            # anything runs): jit traces and compiles for them, as it would have.
            return self._jitted(*args)


def describe(*values: Any) -> str:
    """Text for an `identity` from config objects, arrays and other values: arrays by their
    dtype, shape and bytes, everything else by its `repr`."""
    parts = []
    for value in values:
        if hasattr(value, "dtype") and hasattr(value, "shape"):
            array = np.asarray(value)
            parts.append(
                f"{array.dtype}{array.shape}:{hashlib.sha256(array.tobytes()).hexdigest()}"
            )
        else:
            parts.append(repr(value))
    return "\n".join(parts)
