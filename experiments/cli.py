"""Shared command-line plumbing: absl flag parsing that turns user mistakes into one line."""

import sys
from collections.abc import Callable

from absl import flags

from murajax.config import ConfigError


def fail(message: str, code: int = 2) -> None:
    """Prints `error: message` to stderr and exits (no traceback)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parser, with config-override mistakes reported on one line.

    ml_collections raises a raw KeyError for an unknown `--config.a.b` field and a flags error
    for a value of the wrong type; both become `error: ...` and exit status 2.
    """
    try:
        return flags.FLAGS(argv)
    except KeyError as e:
        fail(f"unknown config field: {e.args[0] if e.args else e}")
    except flags.Error as e:
        fail(str(e).splitlines()[0])
    except ConfigError as e:
        fail(str(e))
    return []


def run_main(main: Callable[[list[str]], None], user_errors: tuple[type[Exception], ...]) -> None:
    """Runs `main` under absl; `user_errors` become one-line messages with exit status 2."""
    from absl import app

    def guarded(argv: list[str]) -> None:
        try:
            main(argv)
        except user_errors as e:
            fail(str(e))

    app.run(guarded, flags_parser=parse_flags)
