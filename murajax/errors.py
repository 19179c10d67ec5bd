"""Errors that mean "the user gave something wrong", reported as one line by the commands."""

from murajax.config import ConfigError


class DataError(ValueError):
    """The dataset is missing, malformed or cannot be built; the message says what to do."""


USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, DataError, FileNotFoundError)
