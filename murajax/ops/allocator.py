"""Host memory for CPU training: keep freed buffers instead of returning them to the kernel.

XLA:CPU allocates every large buffer of a step (activations, gradients, outputs) with
`posix_memalign` from its worker threads. glibc serves allocations that big with a fresh
`mmap` (a worker thread's arena cannot hold them) and `munmap`s them when freed, so every step
page-faults and zeroes all of its memory again: for a CNN step on 128x128 images, most of the
step's time was the kernel's `clear_page` (measured with `perf`). `keep_freed_memory()` tells
glibc to use one arena for all threads, never `mmap` and never trim: a step's buffers then come
back from the heap already mapped. Peak memory is unchanged; the process keeps its high-water
mark instead of returning it between steps. It is what `experiments` programs do at start-up.
"""

import ctypes
import ctypes.util
import functools
import sys

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
