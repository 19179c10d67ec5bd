"""What the thesis's sweep configs share: their variants and the config every run starts from.

Each section's config file (`baseline.py`, `image_size.py`, `regularisation.py`,
`optimizers.py`, `pretrained.py`) takes an optional variant after the colon: nothing
(`mura_synthetic`, minutes on a CPU), "mura" (real MURA, a GPU run) where it has one, or
"smoke" (seconds on `mura_synthetic/tiny`, for tests).
"""

import os
from collections.abc import Sequence

from experiments.configs import default, quickstart
from murajax.config import Config


def check_variant(file: str, arg: str | None, variants: Sequence[str | None]) -> None:
    """Raises a one-line `ValueError` naming `file:arg` unless `arg` is one of `variants`."""
    if arg not in variants:
        valid = ", ".join(repr(a) for a in variants if a is not None)
        raise ValueError(f"{file}:{arg}: unknown variant, expected nothing or {valid}")


def base_config(arg: str | None) -> Config:
    """`quickstart.py` (its smoke variant for "smoke"), or for "mura" `default.py` on real
    MURA with `data.manual_dir` from $MURA_MANUAL_DIR (the folder holding MURA-v1.1/, needed
    only the first time the dataset is built)."""
    if arg == "mura":
        config = default.get_config()
        config.data.manual_dir = os.environ.get("MURA_MANUAL_DIR")
        return config
    return quickstart.get_config("smoke" if arg == "smoke" else None)
