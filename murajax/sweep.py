"""Sweeps: one base config, several runs that each change a few fields, trained in turn.

A config file may define, beside `get_config(arg=None)`, `get_sweep(arg=None)`: a list of
dicts that map dotted field names to values,

    def get_sweep(arg=None):
        return [{"data.image_size": size} for size in (32, 64, 128)]

Run i is `get_config(arg)` with dict i applied (`murajax.config_files.apply_overrides`, the
same as `--config.a.b=v` on the command line, which validates the result), trained in
`<workdir>/<run_name(dict i)>/`, e.g. `W/data.image_size=64/`: a normal run workdir, so
`experiments.evaluate` and `experiments.predict` work on it. Runs train in order with
`murajax.train.train_and_evaluate`, so rerunning a sweep resumes it: a finished run is only
evaluated again, an interrupted one resumes from its newest checkpoint. `sweep.json` (the
config, the runs and their overrides, seconds trained) is written before training, so that
the summary (`murajax.report.sweep`: sweep.csv, sweep.md, sweep_roc.png) can always be
rebuilt. The sweep folder must be new, empty or a sweep's (`workdir.check_may_write`), and
the sweep holds its lock (`murajax.workdir_lock`) throughout, each run its own workdir's.
"""

import dataclasses
import os
import re
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from murajax import config_files, errors, models, train, validation, workdir_lock
from murajax import workdir as workdir_lib
from murajax.config import Config, ConfigError
from murajax.config_files import SweepError, format_value

Overrides = Mapping[str, Any]
TrainFn = Callable[[Config, str], Any]

MAX_NAME_LENGTH = 120  # a run's folder name; longer ones are cut and get a hash
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]")


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of a sweep: its folder name, the fields it changes and its resolved config."""

    name: str
    overrides: dict[str, Any]
    config: Config


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A loaded sweep: its config spec (`path.py[:arg]`), base config and runs."""

    spec: str
    base: Config
    runs: list[Run]


# --------------------------------------------------------------------------- runs


def run_name(overrides: Overrides) -> str:
    """A stable, readable, filesystem-safe name for the run that applies `overrides`.

    `field=value` pairs in the dict's order, joined by commas
    (`optim.name=sgd,optim.learning_rate=0.01`); `base` for no overrides. Characters other
    than letters, digits and `._=,+-` become `_`; a name longer than `MAX_NAME_LENGTH` is
    cut and ends in a hash of the whole name, so that it stays unique.
    """
    if not overrides:
        return "base"
    name = ",".join(f"{key}={format_value(value)}" for key, value in overrides.items())
    name = _UNSAFE.sub("_", name)
    if len(name) > MAX_NAME_LENGTH:
        digest = f"{zlib.crc32(name.encode()):08x}"
        name = f"{name[: MAX_NAME_LENGTH - 9]}~{digest}"
    return name


def apply_overrides(config: Config, overrides: Overrides, *, run: str | None = None) -> Config:
    """`config_files.apply_overrides` (a validated copy with `overrides` applied) whose
    one-line `ConfigError` also names the run (`run_name(overrides)` by default)."""
    run = run if run is not None else run_name(overrides)
    try:
        return config_files.apply_overrides(config, overrides)
    except ConfigError as e:
        raise ConfigError(f"sweep run {run!r}: {e}") from None


def make_runs(base: Config, sweep: Sequence[Overrides]) -> list[Run]:
    """The runs of `sweep` (a list of override dicts) on `base`, each validated.

    Raises `SweepError` for an empty sweep, an entry that is not a dict and two runs with
    the same name, `ConfigError` for a bad override.
    """
    if isinstance(sweep, Mapping | str) or not isinstance(sweep, Sequence):
        raise SweepError(f"get_sweep() must return a list of dicts, got {type(sweep).__name__}")
    if not sweep:
        raise SweepError("get_sweep() returned no runs")
    runs: list[Run] = []
    seen: dict[str, int] = {}
    for index, overrides in enumerate(sweep):
        if not isinstance(overrides, Mapping):
            raise SweepError(
                f"sweep entry {index}: expected a dict of field -> value, got {overrides!r}"
            )
        name = run_name(overrides)
        if name in seen:
            raise SweepError(f"sweep entries {seen[name]} and {index} have the same name {name!r}")
        seen[name] = index
        runs.append(Run(name, dict(overrides), apply_overrides(base, overrides, run=name)))
    return runs


def load_sweep(spec: str) -> Sweep:
    """Loads `path.py[:arg]` and builds its runs from `get_config(arg)` and `get_sweep(arg)`
    (`murajax.config_files`: a missing file is `FileNotFoundError`, every other mistake a
    one-line `ConfigError`)."""
    path, arg = config_files.split_spec(spec)
    module = config_files.load_module(path)
    sweep = config_files.call(module, "get_sweep", arg, spec)  # first: is it a sweep at all?
    base = config_files.base_config(module, spec)
    return Sweep(spec, base, make_runs(base, sweep))


def parse_only(text: str, runs: Sequence[Run]) -> list[str]:
    """The run names in an `--only` value: names, or 1-based run numbers, separated by
    commas. Run names contain commas themselves, so consecutive pieces that together form a
    run's name are joined (the longest such name wins). Raises `SweepError` for a piece that
    is neither."""
    names = [run.name for run in runs]
    pieces = [p.strip() for p in text.split(",")] if text.strip() else []
    chosen: list[str] = []
    i = 0
    while i < len(pieces):
        for j in range(len(pieces), i, -1):
            candidate = ",".join(pieces[i:j])
            if candidate in names:
                chosen.append(candidate)
                i = j
                break
        else:
            piece = pieces[i]
            if not (piece.isdigit() and 1 <= int(piece) <= len(names)):
                raise SweepError(
                    f"no run named {piece!r} in this sweep; its runs:"
                    + "".join(f" ({k}) {n}" for k, n in enumerate(names, start=1))
                )
            chosen.append(names[int(piece) - 1])
            i += 1
    return chosen


def select_runs(runs: Sequence[Run], only: Sequence[str]) -> list[Run]:
    """The runs named in `only` (in the sweep's order); all of them if `only` is empty."""
    if not only:
        return list(runs)
    names = [run.name for run in runs]
    unknown = [name for name in only if name not in names]
    if unknown:
        raise SweepError(
            f"no run named {', '.join(map(repr, unknown))} in this sweep; its runs: "
            + ", ".join(names)
        )
    return [run for run in runs if run.name in only]


# --------------------------------------------------------------------------- running


def run_dir(workdir: str, run: Run | str) -> str:
    """`<workdir>/<run name>`: the run's own workdir."""
    return workdir_lib.sweep_run_dir(workdir, run if isinstance(run, str) else run.name)


def run_status(workdir: str, run: Run) -> str:
    """'new' (no checkpoint), 'partial' (resumes from a checkpoint) or 'finished' (trained to
    `train.steps`: only evaluated again)."""
    steps = workdir_lib.checkpoint_steps(run_dir(workdir, run))
    if not steps:
        return "new"
    return "finished" if steps[-1] >= run.config.train.steps else "partial"


def write_state(workdir: str, spec: str, runs: Sequence[Run], wall_s: Mapping[str, float]) -> str:
    """Writes `<workdir>/sweep.json`: the config spec, the runs and their overrides, and the
    seconds each run trained (`wall_s`). Returns its path."""
    state = {
        "config": spec,
        "runs": [{"name": r.name, "overrides": r.overrides} for r in runs],
        "wall_s": {name: round(float(s), 3) for name, s in wall_s.items()},
    }
    os.makedirs(workdir, exist_ok=True)
    return workdir_lib.write_json(os.path.join(workdir, workdir_lib.SWEEP_STATE_FILE), state)


def check_start_weights(workdir: str, run: Run) -> str | None:
    """The weights file a run starts from, fetched now: `model.weights="imagenet"` is
    downloaded into the cache (or fails with one `WeightsError` line), a path must exist.

    Only for a run that starts (no checkpoint yet): one that resumes takes its weights from
    its checkpoint. The sweep calls this for every run before training any, so that a run
    whose weights cannot be had stops the sweep before the others have spent their time.
    Returns the file's path (None: no weights, or the run resumes).
    """
    if run.config.model.weights is None or run_status(workdir, run) != "new":
        return None
    path = models.weights_file(run.config.model)
    if path is not None and not os.path.isfile(path):
        raise FileNotFoundError(
            f"sweep run {run.name!r}: model.weights={path!r}: no such file (expected a Keras"
            " .h5 weights file, or 'imagenet')"
        )
    return path


def run_sweep(
    sweep: Sweep,
    workdir: str,
    *,
    only: Sequence[str] = (),
    train_fn: TrainFn | None = None,
    log: Callable[[str], None] = print,
) -> list[Run]:
    """Trains and evaluates the runs of `sweep` (those named in `only`, or all) in order.

    Each run is `train_fn(config, <workdir>/<name>)`, `train.train_and_evaluate` by default,
    which resumes a run from its newest checkpoint and only evaluates a finished one; before
    any of them trains, every run is checked to run on this machine and its starting weights
    are fetched. A folder that is not a sweep's is refused (`WorkdirError`, nothing
    written), and one that another command is writing (`WorkdirInUse`). Seconds spent
    training (not re-evaluating a finished run) add up per run in `sweep.json`. A run that
    raises stops the sweep (rerun it to resume). Returns the runs that ran.
    """
    selected = select_runs(sweep.runs, only)
    what = f"--workdir={workdir}"
    workdir_lib.check_may_write(workdir, what, sweep=True)  # before the lock writes a file
    if train_fn is None:
        for run in selected:  # every run's batch fits the devices, before any compute
            validation.check_runnable(run.config)
        for run in selected:
            check_start_weights(workdir, run)
        train_fn = train.train_and_evaluate
    with workdir_lock.holding(workdir):
        workdir_lib.check_may_write(workdir, what, sweep=True)  # no one else writes it now
        _train_runs(sweep, workdir, selected, train_fn, log)
    return selected


def _train_runs(
    sweep: Sweep,
    workdir: str,
    selected: Sequence[Run],
    train_fn: TrainFn,
    log: Callable[[str], None],
) -> None:
    """`run_sweep`'s loop, with the sweep folder locked: `sweep.json`, then each run."""
    wall_s = dict(workdir_lib.read_sweep_state(workdir).get("wall_s", {}))
    write_state(workdir, sweep.spec, sweep.runs, wall_s)
    for index, run in enumerate(selected, start=1):
        status = run_status(workdir, run)
        note = {"new": "", "partial": " (resuming)", "finished": " (finished: evaluating only)"}
        log(f"[sweep] run {index}/{len(selected)} {run.name}{note[status]}")
        start = time.perf_counter()
        try:
            train_fn(run.config, run_dir(workdir, run))
        except errors.TrainingDiverged as e:
            raise errors.TrainingDiverged(f"run {run.name}: {e}") from None
        if status != "finished":
            wall_s[run.name] = wall_s.get(run.name, 0.0) + time.perf_counter() - start
            write_state(workdir, sweep.spec, sweep.runs, wall_s)
