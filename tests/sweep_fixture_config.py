"""A 2-run sweep on `trivial_mura` for tests/test_sweep.py, run as a user runs a sweep:

    python -m experiments.sweep --config=tests/sweep_fixture_config.py:DATA_DIR --workdir=W

The argument is the TFDS data_dir that holds `trivial_mura` (the `data_dir` fixture).
Importing `tests.trivial_mura` registers the dataset in the sweep's process.
"""

from typing import Any

from murajax.config import Config
from tests.trivial_mura import trivial_config


def get_config(arg: str | None = None) -> Config:
    """`trivial_config` on the data_dir `arg`: 16 steps, holdout every 8, tiny bootstrap."""
    if not arg:
        raise ValueError("sweep_fixture_config.py:DATA_DIR: the data_dir is required")
    config = trivial_config(arg, steps=16, eval_every=8, checkpoint_every=8, log_every=4)
    config.eval.bootstrap_samples = 20
    return config


def get_sweep(arg: str | None = None) -> list[dict[str, Any]]:
    """Two runs: one field, and two fields (the second's name has a comma)."""
    del arg
    return [{"seed": 0}, {"seed": 1, "optim.learning_rate": 0.005}]
