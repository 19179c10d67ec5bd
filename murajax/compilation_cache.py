"""JAX's persistent compilation cache: a rerun or resume of a config skips XLA compilation.

XLA compiles every jitted function once per process. With the cache on, each compiled
executable is also written to a folder, keyed by the program, its shapes, the jax/jaxlib
version, the devices and the XLA flags; a later process that compiles the same function
loads it from there instead (VGG16's train step: seconds instead of tens of seconds).

murajax's programs (`python -m experiments.main`, `.evaluate`, `.predict`, `.sweep`) turn it
on by default, in `default_dir()`:

    $MURAJAX_COMPILATION_CACHE                     if set ('' turns the cache off)
    $MURAJAX_CACHE/jax_compilation_cache           else ($MURAJAX_CACHE: ~/.cache/murajax)

and their flag `--compilation_cache=DIR` overrides it (`--compilation_cache=` turns it off).
Library users call `enable(path)` themselves, before their first jitted call.
"""

import os
import sys
import tempfile

import jax
from jax._src import compilation_cache as jax_compilation_cache

ENV_VAR = "MURAJAX_COMPILATION_CACHE"
"""The environment variable that names the cache folder ('' turns the cache off)."""


def cache_root() -> str:
    """murajax's cache folder: `$MURAJAX_CACHE`, default `~/.cache/murajax`."""
    return os.environ.get("MURAJAX_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "murajax"
    )


def default_dir() -> str:
    """`$MURAJAX_COMPILATION_CACHE` if set ('' means off), else
    `<cache_root()>/jax_compilation_cache`."""
    if ENV_VAR in os.environ:
        return os.environ[ENV_VAR]
    return os.path.join(cache_root(), "jax_compilation_cache")


def _writable(path: str) -> str | None:
    """None if `path` can be created and written to, else the reason why not."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".murajax-probe-"):
            pass
    except OSError as error:
        return error.strerror or type(error).__name__
    return None


def enable(path: str | None, *, min_compile_time_s: float = 0.0) -> str | None:
    """Turns JAX's persistent compilation cache on in folder `path` (created if missing).

    Every compilation that takes at least `min_compile_time_s` is cached (0: all of them;
    JAX's own default, 1 s, would skip most of a small CPU model's). `path` None or '' leaves
    the cache off. A folder that cannot be created or written is a warning on stderr, never
    an error: the program then compiles as usual. Returns the folder in use, or None.

    Call it before the first jitted computation of the process: JAX reads the setting when it
    first compiles.
    """
    if not path:
        return None
    path = os.path.abspath(os.path.expanduser(path))
    problem = _writable(path)
    if problem is not None:
        print(
            f"murajax: warning: compilation cache {path} is not writable ({problem}); "
            "compiling without it",
            file=sys.stderr,
        )
        return None

    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
    # -1: no minimum entry size (0 would let JAX pick one for the file system).
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return path


def disable() -> None:
    """Turns the persistent compilation cache off again (for tests and notebooks)."""
    jax.config.update("jax_compilation_cache_dir", None)

    jax_compilation_cache.reset_cache()
