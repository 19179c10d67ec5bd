"""Errors that mean "the user gave something wrong", reported as one line by the commands.

This module imports nothing from murajax, so that every other module may import it.
"""


class ConfigError(ValueError):
    """A config field has an illegal value; the message names the field and what is valid."""


class DataError(ValueError):
    """The dataset is missing, malformed or cannot be built; the message says what to do."""


class WeightsError(ValueError):
    """A weights file does not fit the model; the message lists everything that does not fit."""


class WorkdirError(ValueError):
    """A workdir (or another folder or file a command writes or reads) cannot be used: it
    does not exist, is not writable, or lacks what the command needs; one-line message."""


USER_ERRORS: tuple[type[Exception], ...] = (
    ConfigError,
    DataError,
    WeightsError,
    WorkdirError,
    FileNotFoundError,
)


class NonFinitePredictions(ValueError):
    """A model gave non-finite probabilities (a diverged checkpoint); nothing was scored."""


# A checkpoint whose model outputs NaN is a bad input to `evaluate` (exit status 2 there);
# `experiments.main` reports a diverged training run with its own status (TrainingDiverged).
USER_ERRORS = (*USER_ERRORS, NonFinitePredictions)


class ExportFailed(ValueError):
    """An exported artifact does not reproduce the model (`murajax.export`): no package was
    written; the message names the artifact, the difference and the tolerance."""


USER_ERRORS = (*USER_ERRORS, ExportFailed)


class TrainingDiverged(RuntimeError):
    """Training met a non-finite loss, gradient or parameter (`train.on_nonfinite`); the
    message names the step and the last good checkpoint, which is kept as it was."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGTERM or SIGINT stopped training (a KeyboardInterrupt, so that code handling Ctrl-C
    handles it). `step` is where it stopped with a checkpoint saved (None if it stopped
    before training or after it), `exit_status` what a shell expects (128 + the signal)."""

    def __init__(self, message: str, *, signum: int, step: int | None = None):
        super().__init__(message)
        self.signum = signum
        self.step = step
        self.exit_status = 128 + signum
