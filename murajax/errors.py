"""Errors that mean "the user gave something wrong", reported as one line by the commands."""

from murajax.config import ConfigError


class DataError(ValueError):
    """The dataset is missing, malformed or cannot be built; the message says what to do."""


class WeightsError(ValueError):
    """A weights file does not fit the model; the message lists everything that does not fit."""


USER_ERRORS: tuple[type[Exception], ...] = (
    ConfigError,
    DataError,
    WeightsError,
    FileNotFoundError,
)
