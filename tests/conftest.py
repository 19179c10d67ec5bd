"""Shared pytest set-up: fast XLA:CPU flags before jax is imported."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution")
