"""murajax's command-line programs (`python -m experiments.main`, `.evaluate`, ...)."""

import sys

from murajax import allocator, xla_flags  # standard library only: no jax yet


def _run_as_program(argv: list[str]) -> bool:
    """Whether `argv` (`sys.orig_argv`) is `python [options] -m experiments.<program> ...`."""
    args = iter(argv[1:])
    for arg in args:
        if arg in ("-X", "-W"):  # the interpreter's options that take a value
            next(args, None)
        elif arg.startswith("-m"):
            module = arg[2:] or next(args, "")
            return module.startswith("experiments.")
        elif not arg.startswith("-") or arg == "-c":
            return False
    return False


# A program restarts itself once with tcmalloc or jemalloc preloaded where one is installed
# (murajax.allocator: XLA compiles DenseNet-169 1.6-1.8x faster); `MURAJAX_ALLOCATOR=system`
# keeps the C library's. Importing `experiments` from other code (tests, notebooks) does not.
if _run_as_program(getattr(sys, "orig_argv", [])):
    allocator.reexec_with_fast_allocator()

# XLA:CPU flags that make murajax's train steps faster (murajax.xla_flags); they must be set
# before jax is imported and only matter on CPU; a user's own XLA_FLAGS win.
xla_flags.set_default()

# Keep the host buffers of one train step for the next instead of unmapping and page-faulting
# them again (murajax.allocator: 1.3x faster CNN steps on CPU). A no-op off glibc.
allocator.keep_freed_memory()
