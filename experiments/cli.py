"""Shared command-line plumbing: absl flag parsing that turns user mistakes into one line."""

import os
import shlex
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from absl import flags

from murajax.config import ConfigError
from murajax.errors import TrainingDiverged, TrainingInterrupted, WorkdirError


def one_line(message: str) -> str:
    """`message` on one line: its non-empty lines, stripped, joined by spaces."""
    return " ".join(line.strip() for line in str(message).splitlines() if line.strip())


def fail(message: str, code: int = 2) -> None:
    """Prints `error: message` (on one line) to stderr and exits (no traceback)."""
    print(f"error: {one_line(message)}", file=sys.stderr)
    sys.exit(code)


def nearest_existing(path: str) -> str:
    """`path` itself if it exists, else its nearest ancestor that does."""
    path = os.path.abspath(path)
    while not os.path.lexists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def unwritable_reason(folder: str) -> str | None:
    """Why files cannot be written in `folder` (which need not exist yet), or None.

    Creates nothing: the nearest existing path on the way to `folder` must be a folder that
    accepts a new file (an anonymous temporary file, gone at once). Trying is the test that
    holds for root, read-only mounts and ACLs alike, where permission bits alone do not.
    """
    existing = nearest_existing(folder)
    if not os.path.isdir(existing):
        return f"{existing} is a file, not a folder"
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        return f"cannot create files in {existing} ({e.strerror or e})"
    return None


def check_writable(folder: str, what: str) -> None:
    """Raises `WorkdirError` if files cannot be written in `folder`; the message names
    `what` (e.g. `--workdir=W`) and why."""
    reason = unwritable_reason(folder)
    if reason is not None:
        raise WorkdirError(f"cannot write to {what}: {reason}; choose a folder you can write to")


def flag_error_line(message: str) -> str:
    """One line of an absl flag error. A config file that raised while loading is reported
    by ml_collections with the traceback: keep the flag and the exception's own last line."""
    lines = [line for line in message.splitlines() if line.strip()]
    if "Traceback (most recent call last):" in lines and len(lines) > 1:
        flag = lines[0].split(": Error whilst parsing config file", 1)[0]
        return f"{flag}: {lines[-1].strip()}"
    return lines[0] if lines else message


COMPILATION_CACHE_FLAG = "compilation_cache"


def define_compilation_cache_flag() -> None:
    """Defines `--compilation_cache` (once per process, so that programs can share it)."""
    if COMPILATION_CACHE_FLAG not in flags.FLAGS:
        flags.DEFINE_string(
            COMPILATION_CACHE_FLAG,
            None,
            "Folder of JAX's persistent compilation cache, which lets a rerun or resume skip "
            "XLA compilation; '' turns it off. Default: $MURAJAX_COMPILATION_CACHE, else "
            "$MURAJAX_CACHE/jax_compilation_cache (~/.cache/murajax/jax_compilation_cache).",
        )


def enable_compilation_cache() -> str | None:
    """Turns the persistent compilation cache on as `--compilation_cache` (or, unset, the
    environment) says; call before the program's first jitted computation. An unwritable
    folder is a warning. Returns the folder in use, or None."""
    from murajax import compilation_cache

    value = None
    if COMPILATION_CACHE_FLAG in flags.FLAGS:
        value = flags.FLAGS[COMPILATION_CACHE_FLAG].value
    return compilation_cache.enable(compilation_cache.default_dir() if value is None else value)


def loaded_config(holder: flags.FlagHolder, name: str = "config") -> Any:
    """The value of a `config_flags.DEFINE_config_file` flag. ml_collections reports a config
    file that cannot be loaded (missing, not Python) only when the config is first used, with
    a traceback; here that is one line naming the file."""
    value = holder.value
    try:
        getattr(value, "seed", None)
    except OSError as e:
        reason = str(e).strip().splitlines()[-1].strip()
        fail(f"cannot load --{name}={flags.FLAGS[name].config_filename}: {reason}")
    return value


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
        fail(flag_error_line(str(e)))
    except ConfigError as e:
        fail(str(e))
    except SyntaxError as e:  # a config file that is not valid Python
        fail(f"{e.filename}:{e.lineno}: {e.msg} (in a config file)")
    return []


def guard(
    main: Callable[[list[str]], None], user_errors: tuple[type[Exception], ...]
) -> Callable[[list[str]], None]:
    """`main` with `user_errors` turned into `error: <message>` on one line and exit status 2
    (`fail`); a diverged training run is `error: ...` and exit status 1; SIGTERM/SIGINT (a
    `TrainingInterrupted` that saved a checkpoint, or Ctrl-C elsewhere) is one line saying how
    to go on, and exit status 143/130. Any other exception is a bug and keeps its traceback."""

    def guarded(argv: list[str]) -> None:
        try:
            main(argv)
        except user_errors as e:
            fail(str(e) or type(e).__name__)
        except TrainingDiverged as e:
            fail(str(e), code=1)
        except KeyboardInterrupt as e:
            print(f"[murajax] {interruption_line(e)}", file=sys.stderr)
            sys.exit(getattr(e, "exit_status", 130))

    return guarded


def interruption_line(error: KeyboardInterrupt) -> str:
    """What was interrupted and how to go on: the program's own command line, which resumes."""
    what = str(error) if isinstance(error, TrainingInterrupted) else "interrupted"
    return f"{what}; to resume, run the same command: {shlex.join(sys.orig_argv)}"


def run_main(main: Callable[[list[str]], None], user_errors: tuple[type[Exception], ...]) -> None:
    """Runs `main` under absl; `user_errors` become one-line messages with exit status 2."""
    from absl import app

    app.run(guard(main, user_errors), flags_parser=parse_flags)


def loaded_sweep(spec: str, name: str = "config") -> Any:
    """`murajax.sweep.load_sweep(spec)` for a `--config=path.py[:arg]` string flag; a file
    that is missing, not Python, without `get_sweep`, a variant it rejects or a bad override
    is one line (`error: cannot load --config=...: reason`, or the override's own message)
    and exit status 2."""
    from murajax import sweep

    try:
        return sweep.load_sweep(spec)
    except FileNotFoundError as e:
        fail(f"cannot load --{name}={spec}: {e.args[-1] if e.args else e}")
    except SyntaxError as e:
        fail(f"{e.filename}:{e.lineno}: {e.msg} (in a config file)")
    except ConfigError as e:
        fail(str(e))
    return None
