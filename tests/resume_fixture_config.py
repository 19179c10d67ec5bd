"""A run that exercises every piece of state a resume must restore, for tests/test_resume.py:

    python -m experiments.main --config=tests/resume_fixture_config.py:DATA_DIR --workdir=W

`trivial_config` with dropout, rotations and the plateau schedule on; checkpoints every 5
steps, holdout evaluations (which also checkpoint) every 6 and train logs every 4, so that
checkpoints fall between log steps; more checkpoints than `keep_checkpoints + keep_best`.
Importing `tests.trivial_mura` registers the dataset in the command's process.
"""

from murajax.config import Config
from tests.trivial_mura import trivial_config

STEPS = 30


def get_config(arg: str | None = None) -> Config:
    """The run on the TFDS data_dir `arg` (the `data_dir` fixture's)."""
    if not arg:
        raise ValueError("resume_fixture_config.py:DATA_DIR: the data_dir is required")
    config = trivial_config(
        arg,
        steps=STEPS,
        log_every=4,
        eval_every=6,
        checkpoint_every=5,
        keep_checkpoints=2,
        keep_best=2,
    )
    config.optim.learning_rate = 0.02  # holdout kappas vary and the plateau cuts the rate
    config.model.dropout_rate = 0.25
    config.data.rotation = 15.0
    config.optim.schedule = "plateau"
    config.optim.plateau_patience = 1
    config.optim.decay_factor = 0.5
    config.eval.bootstrap_samples = 20
    return config
