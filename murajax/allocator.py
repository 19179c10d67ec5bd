"""The malloc of murajax's programs: tcmalloc where installed, and glibc's tuned otherwise.

XLA:CPU compiles a train step from many threads that allocate and free millions of small
objects. Under glibc's malloc, DenseNet-169's compile took 55-65 s on 2 cores (its arenas'
locks and the kernel's `clear_page` were a quarter of the time, `perf`); with tcmalloc or
jemalloc it took 32-38 s, its first step 1.7-2.5 s instead of 4.9-5.5 s, and the process's
peak memory was 2.5 GB instead of 4.1-4.9 GB (224 px, batch 8, float32; steps within 3%).
`python -m experiments.<program>` therefore restarts itself once, at start-up, with tcmalloc
(else jemalloc) in `LD_PRELOAD` (`reexec_with_fast_allocator`; `MURAJAX_ALLOCATOR` = auto,
tcmalloc, jemalloc or system), and `python -m murajax.allocator COMMAND` runs any command so.
Debian and Ubuntu: `apt-get install libtcmalloc-minimal4` (`make system-packages`).

Where neither is installed, glibc is tuned instead (`keep_freed_memory`): XLA:CPU allocates
every large buffer of a step (activations, gradients, outputs) with `posix_memalign` from its
worker threads. glibc serves allocations that big with a fresh `mmap` (a worker thread's arena
cannot hold them) and `munmap`s them when freed, so every step page-faults and zeroes all of its
memory again: for a CNN step on 128x128 images, most of the step's time was the kernel's
`clear_page` (measured with `perf`). `keep_freed_memory()` tells glibc to use one arena for all
threads, never `mmap` and never trim: a step's buffers then come back from the heap already
mapped. Peak memory is unchanged; the process keeps its high-water mark instead of returning it
between steps. It is what `experiments` programs do at start-up (a no-op under tcmalloc).
"""

import ctypes
import ctypes.util
import functools
import os
import sys
from collections.abc import Callable, Mapping

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


@functools.cache
def keep_freed_memory() -> bool:
    """Configures glibc's malloc as described in the module docstring, once per process.
    Returns whether it did (False on other C libraries and platforms, which are unchanged)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        if not hasattr(libc, "gnu_get_libc_version"):  # glibc only: musl ignores these
            return False
    except (OSError, AttributeError):
        return False
    settings = (
        (_M_ARENA_MAX, 1),
        (_M_MMAP_MAX, 0),
        (_M_TRIM_THRESHOLD, 2**31 - 1),
        (_M_TOP_PAD, 64 << 20),
    )
    return all(mallopt(param, value) == 1 for param, value in settings)


# ------------------------------------------------------------------ a faster malloc, preloaded

ALLOCATOR_ENV = "MURAJAX_ALLOCATOR"
"""Chooses the malloc of murajax's programs: 'auto' (default: tcmalloc, else jemalloc, else the
C library's), 'tcmalloc', 'jemalloc' or 'system' (the C library's; no re-exec)."""

PRELOADED_ENV = "MURAJAX_PRELOADED"
"""Set by `preload_environment` to the library it added to `LD_PRELOAD` (so that a peer's
process can be given the environment without it, and a re-exec happens once)."""

_LIBRARIES = {"tcmalloc": ("tcmalloc_minimal", "tcmalloc"), "jemalloc": ("jemalloc",)}
_CHOICES = ("auto", *_LIBRARIES, "system")
INSTALL_HINT = "apt-get install libtcmalloc-minimal4 (Debian, Ubuntu), dnf install gperftools-libs"


class AllocatorError(ValueError):
    """`MURAJAX_ALLOCATOR` names an allocator that is unknown or not installed."""


def find_library(name: str) -> str | None:
    """The shared library of allocator `name` ('tcmalloc', 'jemalloc') that the dynamic loader
    finds (e.g. 'libtcmalloc_minimal.so.4'), or None."""
    for library in _LIBRARIES[name]:
        found = ctypes.util.find_library(library)
        if found:
            return found
    return None


def _preloads_an_allocator(preload: str) -> bool:
    return any(lib in preload for libs in _LIBRARIES.values() for lib in libs)


def preload_environment(
    environ: Mapping[str, str], find: Callable[[str], str | None] = find_library
) -> dict[str, str] | None:
    """The environment to re-exec a murajax program with, so that tcmalloc or jemalloc serves
    its `malloc` (`$MURAJAX_ALLOCATOR`, default 'auto'); None to carry on as it is: the
    choice is 'system', an allocator is preloaded already, or ('auto') none is installed.

    Raises `AllocatorError` when the choice is unknown, or names an allocator not installed.
    """
    choice = environ.get(ALLOCATOR_ENV, "auto").strip().lower() or "auto"
    if choice not in _CHOICES:
        raise AllocatorError(
            f"{ALLOCATOR_ENV}={environ[ALLOCATOR_ENV]!r} is not one of {', '.join(_CHOICES)}"
        )
    preload = environ.get("LD_PRELOAD", "")
    if choice == "system" or PRELOADED_ENV in environ or _preloads_an_allocator(preload):
        return None
    for name in _LIBRARIES if choice == "auto" else (choice,):
        library = find(name)
        if library:
            return {
                **environ,
                "LD_PRELOAD": f"{library} {preload}".strip(),
                PRELOADED_ENV: library,
            }
    if choice != "auto":
        raise AllocatorError(
            f"{ALLOCATOR_ENV}={choice} but no {choice} library is installed "
            f"(install it: {INSTALL_HINT}; or set {ALLOCATOR_ENV}=auto)"
        )
    return None


def without_preload(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` less the library `preload_environment` added: for a process that must run as
    its own users run it (a benchmark peer)."""
    env = dict(environ)
    library = env.pop(PRELOADED_ENV, None)
    if library:
        rest = [x for x in env.get("LD_PRELOAD", "").split() if x != library]
        if rest:
            env["LD_PRELOAD"] = " ".join(rest)
        else:
            env.pop("LD_PRELOAD", None)
    return env


def malloc_in_use() -> str:
    """'tcmalloc', 'jemalloc' or 'system': which malloc this process runs with (from the
    libraries mapped into it, on Linux; 'system' elsewhere)."""
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:
        return "system"
    for name, libraries in _LIBRARIES.items():
        if any(f"lib{lib}." in maps or f"lib{lib}_" in maps for lib in libraries):
            return name
    return "system"


def _preload_environment_or_exit() -> dict[str, str] | None:
    """`preload_environment(os.environ)`; a bad `MURAJAX_ALLOCATOR` exits with its one-line
    error (status 2)."""
    try:
        return preload_environment(os.environ)
    except AllocatorError as e:
        print(f"murajax: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def reexec_with_fast_allocator() -> None:
    """Restarts this process (the same command line, `sys.orig_argv`) with tcmalloc or jemalloc
    preloaded, as `preload_environment` decides; returns where it does not. XLA:CPU compiles
    from many threads that allocate and free millions of small objects: glibc's malloc made
    DenseNet-169's compile 1.6-1.8x slower. A bad `MURAJAX_ALLOCATOR` exits with its one-line
    error (status 2)."""
    if not sys.platform.startswith("linux") or not getattr(sys, "orig_argv", None):
        return
    env = _preload_environment_or_exit()
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError:  # not executable any more, or the loader refused: carry on as we are
        return


def main(argv: list[str]) -> int:
    """`python -m murajax.allocator COMMAND [ARGS...]`: runs COMMAND with the malloc murajax's
    programs use (tcmalloc or jemalloc where installed, `MURAJAX_ALLOCATOR`): for your own
    scripts, notebooks' kernels and test runs (`make test`)."""
    if not argv:
        print("usage: python -m murajax.allocator COMMAND [ARGS...]", file=sys.stderr)
        return 2
    env = _preload_environment_or_exit() or dict(os.environ)
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as e:
        print(f"murajax: cannot run {argv[0]!r}: {e.strerror}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
