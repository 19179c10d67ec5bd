"""Shared command-line plumbing: absl flag parsing that turns user mistakes into one line."""

import functools
import re
import shlex
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

from absl import flags

from murajax.errors import ConfigError, TrainingDiverged, TrainingInterrupted

T = TypeVar("T")
COMPILATION_CACHE_FLAG = "compilation_cache"
OVERRIDE_FLAG = "config"  # `--config.<field>=value` (`murajax.config_files.parse_overrides`)
_OVERRIDE_ARG = re.compile(rf"^--?(no)?{OVERRIDE_FLAG}\.([^=]+)(?:=(.*))?$", re.DOTALL)


def one_line(message: str) -> str:
    """`message` on one line: its non-empty lines, stripped, joined by spaces."""
    return " ".join(line.strip() for line in str(message).splitlines() if line.strip())


def fail(message: str, code: int = 2) -> NoReturn:
    """Prints `error: message` (on one line) to stderr and exits (no traceback)."""
    print(f"error: {one_line(message)}", file=sys.stderr)
    sys.exit(code)


def define_checkpoint_flags(*, ensemble: bool = True) -> None:
    """Defines `--checkpoint` (which checkpoint of a workdir) and, with `ensemble`,
    `--ensemble` (the mean of the K best): `evaluate`, `export` and `predict` share them."""
    flags.DEFINE_string("checkpoint", "best", "'best' (holdout kappa), 'latest' or a step number.")
    if ensemble:
        flags.DEFINE_integer(
            "ensemble", 1, "Average the K checkpoints with the best holdout kappa.", lower_bound=1
        )


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
    from murajax import compilation_cache  # here, not at the top: jax; --help is fast

    value = None
    if COMPILATION_CACHE_FLAG in flags.FLAGS:
        value = flags.FLAGS[COMPILATION_CACHE_FLAG].value
    return compilation_cache.enable(compilation_cache.default_dir() if value is None else value)


def split_override_args(args: list[str]) -> tuple[dict[str, str], list[str]]:
    """The `--config.<field>=value` arguments of `args` as `{field: value text}` (in the
    order of their last occurrence; a later one wins), and the other arguments.

    `--config.<field> value` works too (a value that starts with '-' needs the '='),
    `--config.<field>` alone is 'true' and `--noconfig.<field>` 'false'.
    """
    overrides: dict[str, str] = {}
    others: list[str] = []
    position = 0
    while position < len(args):
        match = _OVERRIDE_ARG.match(args[position])
        position += 1
        if match is None:
            others.append(args[position - 1])
            continue
        negated, field, value = match.groups()
        if negated:
            value = "false"
        elif value is None and position < len(args) and not args[position].startswith("-"):
            value, position = args[position], position + 1
        overrides.pop(field, None)
        overrides[field] = "true" if value is None else value
    return overrides, others


def parse_flags(argv: list[str], *, config_overrides: bool = False) -> list[str]:
    """absl's flag parser, whose mistakes (an unknown flag, a bad value) are one line.

    With `config_overrides`, the `--config.<field>=value` arguments are not absl flags: they
    are handed to the program's `main` after its positional arguments (`config_overrides`).
    """
    overrides: dict[str, str] = {}
    if config_overrides:
        overrides, others = split_override_args(argv[1:])
        argv = argv[:1] + others
    try:
        rest = flags.FLAGS(argv)
    except flags.Error as e:
        fail(str(e).splitlines()[0])
    return rest + [f"--{OVERRIDE_FLAG}.{k}={v}" for k, v in overrides.items()]


def config_overrides(argv: list[str]) -> dict[str, str]:
    """The `{field: value text}` of the `--config.<field>=value` arguments `main` receives;
    any other argument is `error: unexpected arguments`."""
    overrides, others = split_override_args(argv[1:])
    if others:
        fail(f"unexpected arguments: {' '.join(others)}")
    return overrides


def loaded(load: Callable[[str], T], spec: str, name: str = "config") -> T:
    """`load(spec)` for a `--config=path.py[:arg]` flag: a file that is missing, not Python,
    without the function asked for, a variant it rejects or a bad override is one line
    (`error: cannot load --config=...: reason`, or the mistake's own message) and exit
    status 2."""
    try:
        return load(spec)
    except FileNotFoundError as e:
        fail(f"cannot load --{name}={spec}: {e}")
    except ConfigError as e:
        fail(str(e))


def loaded_sweep(spec: str) -> Any:
    """`murajax.sweep.load_sweep(spec)` (a `Sweep`), its mistakes one line (`loaded`)."""
    from murajax import sweep  # here, not at the top: jax takes seconds; --help is fast

    return loaded(sweep.load_sweep, spec)


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


def run_main(
    main: Callable[[list[str]], None],
    user_errors: tuple[type[Exception], ...],
    *,
    config_overrides: bool = False,
) -> None:
    """Runs `main` under absl; `user_errors` become one-line messages with exit status 2.
    `config_overrides`: the program takes `--config.<field>=value` (see `parse_flags`)."""
    from absl import app

    parser = functools.partial(parse_flags, config_overrides=config_overrides)
    app.run(guard(main, user_errors), flags_parser=parser)
