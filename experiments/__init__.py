"""murajax's command-line programs (`python -m experiments.main`, `.evaluate`, ...)."""

# XLA:CPU flags that make murajax's train steps faster (murajax.xla_flags); they must be set
# before jax is imported and only matter on CPU; a user's own XLA_FLAGS win.
from murajax import xla_flags  # murajax's package does not import jax

xla_flags.set_default()

# Keep the host buffers of one train step for the next instead of unmapping and page-faulting
# them again (murajax.ops.allocator: 1.3x faster CNN steps on CPU). A no-op off glibc.
from murajax.ops.allocator import keep_freed_memory  # noqa: E402

keep_freed_memory()
