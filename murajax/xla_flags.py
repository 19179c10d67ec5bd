"""The XLA:CPU flags murajax's programs run with; they must be set before jax is imported.

XLA:CPU hands some operations to YNNPACK. Its convolutions (`individual_convolution`) are
slower than oneDNN's and XLA's own for murajax's train steps: their weight gradients are slow,
and turning them off made CNN train steps 1.2-1.3x faster on CPU (DESIGN.md). Its other fusions
stay on: its reductions and dots are what make DenseNet's BatchNorm statistics fast (turning
reductions off as well made DenseNet-169's 128 px step 1.5x slower: 0.55 -> 0.84 s).
"""

import os

CPU_FLAGS = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
"""The flags (XLA_FLAGS syntax)."""


def set_default() -> None:
    """`XLA_FLAGS` = `CPU_FLAGS` unless the user set `XLA_FLAGS` (theirs win)."""
    os.environ.setdefault("XLA_FLAGS", CPU_FLAGS)
