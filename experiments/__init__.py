"""murajax's command-line programs (`python -m experiments.main`, `.evaluate`, ...)."""

import os

# XLA:CPU hands convolutions to YNNPACK, whose weight gradients are slow; this flag made CNN
# train steps 1.2-1.3x faster on CPU (DESIGN.md). It must be set before jax is imported and
# only matters on CPU; a user's own XLA_FLAGS win.
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution")

# Keep the host buffers of one train step for the next instead of unmapping and page-faulting
# them again (murajax.ops.allocator: 1.3x faster CNN steps on CPU). A no-op off glibc.
from murajax.ops.allocator import keep_freed_memory  # noqa: E402

keep_freed_memory()
