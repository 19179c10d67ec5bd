"""A long run on `trivial_mura` to interrupt, for tests/test_interrupt_nonfinite.py:

    python -m experiments.main --config=tests/interrupt_fixture_config.py:DATA_DIR --workdir=W

`trivial_config` with dropout and rotations on, `STEPS` steps (long enough to be signalled
while training), a log row every 4 steps, holdout evaluations (which checkpoint) at the
middle and the end only, no periodic checkpoints (a checkpoint at any other step is the one
an interruption saved), no final evaluation and no report. Importing `tests.trivial_mura` registers
the dataset.
"""

from murajax import train
from murajax.config import Config
from tests.trivial_mura import trivial_config

STEPS = 200


def get_config(arg: str | None = None) -> Config:
    """The run on the TFDS data_dir `arg` (the `data_dir` fixture's)."""
    if not arg:
        raise ValueError("interrupt_fixture_config.py:DATA_DIR: the data_dir is required")
    config = trivial_config(
        arg, steps=STEPS, log_every=4, eval_every=STEPS // 2, checkpoint_every=100_000
    )
    config.model.dropout_rate = 0.25
    config.eval.bootstrap_samples = 10
    config.eval.splits = ()  # the holdout rows and the checkpoints are what is compared
    train._write_report = lambda *args, **kwargs: None  # (tested elsewhere) saves 5 s a run
    return config
