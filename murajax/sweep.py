"""Sweeps: one base config, several runs that each change a few fields, and their summary.

A config file may define, beside `get_config(arg=None)`, `get_sweep(arg=None)`: a list of
dicts that map dotted field names to values,

    def get_sweep(arg=None):
        return [{"data.image_size": size} for size in (32, 64, 128)]

Run i is `get_config(arg)` with dict i applied (`apply_overrides`, which validates the
result), trained in `<workdir>/<run_name(dict i)>/`, e.g. `W/data.image_size=64/`: a normal
run workdir, so `experiments.evaluate` and `experiments.predict` work on it. Runs train in
order with `murajax.train.train_and_evaluate`, so rerunning a sweep resumes it: a finished
run is only evaluated again, an interrupted one resumes from its newest checkpoint.

The summary (`write_summary`, or `summarise` from the run folders alone) is of one split,
`validation` when the runs evaluated it, else the first split that they did evaluate:

    sweep.csv       one row per run: its name, each swept field, the checkpoint evaluated,
                    study kappa and AUROC with their CIs, accuracy, sensitivity, specificity,
                    studies, the best holdout kappa of its `metrics.jsonl`, wall time
    sweep.md        the same as a markdown table, with the config and the ROC plot
    sweep_roc.png   the runs' ROC curves (from `eval/<split>/predictions.csv`) overlaid
    sweep.json      the sweep itself (config, runs and their overrides, seconds trained),
                    written before training so that the summary can always be rebuilt
"""

import copy
import csv
import dataclasses
import importlib.util
import json
import math
import os
import re
import time
import typing
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from murajax import config as config_lib
from murajax import errors
from murajax.config import Config, ConfigError

Overrides = Mapping[str, Any]

SWEEP_JSON = "sweep.json"
SWEEP_CSV = "sweep.csv"
SWEEP_MD = "sweep.md"
SWEEP_ROC = "sweep_roc.png"
SUMMARY_SPLITS = ("validation", "holdout")  # preferred order of the summarised split
MAX_NAME_LENGTH = 120  # a run's folder name; longer ones are cut and get a hash
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]")
METRIC_COLUMNS = (
    "step",
    "kappa",
    "kappa_ci_low",
    "kappa_ci_high",
    "auroc",
    "auroc_ci_low",
    "auroc_ci_high",
    "accuracy",
    "sensitivity",
    "specificity",
    "n",
    "best_holdout_kappa",
    "best_holdout_step",
    "wall_s",
    "status",
)


class SweepError(ConfigError):
    """A sweep is malformed (no runs, duplicate names, an unknown run); one line."""


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of a sweep: its folder name, the fields it changes and its resolved config."""

    name: str
    overrides: dict[str, Any]
    config: Config


# --------------------------------------------------------------------------- names


def format_value(value: Any) -> str:
    """A value as it appears in a run name: `64`, `0.003`, `True`, `16-32-64` for tuples."""
    if isinstance(value, tuple | list):
        return "-".join(format_value(v) for v in value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


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


# --------------------------------------------------------------------------- overrides


def _field_type(owner: Any, field: str) -> Any:
    return typing.get_type_hints(type(owner))[field]


def _coerce(value: Any, annotation: Any) -> Any:
    """Lists become tuples for tuple fields (a sweep written as JSON, or by hand)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, type(int | None)):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _coerce(value, inner[0]) if value is not None and inner else value
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    return value


def set_field(config: Config, field: str, value: Any) -> None:
    """Sets the dotted `field` (`"seed"`, `"data.image_size"`) of `config` in place.

    Raises `ConfigError` for a field that does not exist or that names a whole section.
    """
    owner: Any = config
    parts = field.split(".")
    for depth, part in enumerate(parts):
        names = {f.name for f in dataclasses.fields(owner)}
        if part not in names:
            where = ".".join(parts[:depth]) or "config"
            valid = ", ".join(sorted(names))
            raise ConfigError(f"unknown config field {field!r}: {where} has no {part!r} ({valid})")
        if depth == len(parts) - 1:
            if dataclasses.is_dataclass(getattr(owner, part)):
                raise ConfigError(f"{field!r} is a config section: name one of its fields")
            setattr(owner, part, _coerce(value, _field_type(owner, part)))
            return
        owner = getattr(owner, part)
        if not dataclasses.is_dataclass(owner):
            raise ConfigError(
                f"unknown config field {field!r}: {'.'.join(parts[: depth + 1])} is not a section"
            )


def apply_overrides(config: Config, overrides: Overrides, *, run: str | None = None) -> Config:
    """A validated copy of `config` with `overrides` (`{"data.image_size": 64}`) applied.

    Raises a one-line `ConfigError` that names the run (`run_name(overrides)` by default)
    and the field: an unknown section or field, or a value `config.validate` rejects.
    """
    run = run if run is not None else run_name(overrides)
    result = copy.deepcopy(config)
    for field, value in overrides.items():
        if not isinstance(field, str) or not field:
            raise ConfigError(f"sweep run {run!r}: a field name must be a string, got {field!r}")
        try:
            set_field(result, field, value)
        except ConfigError as e:
            raise ConfigError(f"sweep run {run!r}: {e}") from None
    try:
        config_lib.validate(result)
    except ConfigError as e:
        raise ConfigError(f"sweep run {run!r}: {e}") from None
    return result


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


# --------------------------------------------------------------------------- loading


def split_spec(spec: str) -> tuple[str, str | None]:
    """`"path.py:arg"` -> `("path.py", "arg")`; the argument follows the first colon (as
    ml_collections' `DEFINE_config_file` reads it)."""
    path, sep, arg = spec.partition(":")
    return path, arg if sep else None


def load_module(path: str) -> Any:
    """Imports the Python file `path` as a fresh module (its own imports must resolve, e.g.
    `from experiments.configs import quickstart` from the repository root)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} not found")
    name = "murajax_sweep_config_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SweepError(f"{path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A loaded sweep: its config spec (`path.py[:arg]`), base config and runs."""

    spec: str
    base: Config
    runs: list[Run]


def load_sweep(spec: str) -> Sweep:
    """Loads `path.py[:arg]` and builds its runs from `get_config(arg)` and `get_sweep(arg)`.

    A variant that the file rejects (its `ValueError`) becomes a one-line `ConfigError`; a
    file without `get_sweep` a `SweepError`; a missing file `FileNotFoundError`.
    """
    path, arg = split_spec(spec)
    module = load_module(path)
    for function in ("get_config", "get_sweep"):
        if not callable(getattr(module, function, None)):
            raise SweepError(f"{path} defines no {function}(arg=None): it is not a sweep config")
    try:
        base = module.get_config(arg)
        sweep = module.get_sweep(arg)
    except ConfigError:
        raise
    except ValueError as e:
        message = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        if os.path.basename(path) not in message:
            message = f"{spec}: {message}"
        raise ConfigError(message) from None
    if not isinstance(base, Config):
        raise SweepError(f"{path}: get_config() returned {type(base).__name__}, not a Config")
    return Sweep(spec, base, make_runs(base, sweep))


# --------------------------------------------------------------------------- running


def run_dir(workdir: str, run: Run | str) -> str:
    """`<workdir>/<run name>`: the run's own workdir."""
    return os.path.join(workdir, run if isinstance(run, str) else run.name)


def checkpoint_steps(run_workdir: str) -> list[int]:
    """The steps of the checkpoints in `<run_workdir>/checkpoints/`, ascending."""
    root = os.path.join(run_workdir, "checkpoints")
    if not os.path.isdir(root):
        return []
    return sorted(int(n) for n in os.listdir(root) if n.isdigit())


def run_status(workdir: str, run: Run) -> str:
    """'new' (no checkpoint), 'partial' (resumes from a checkpoint) or 'finished' (trained to
    `train.steps`: only evaluated again)."""
    steps = checkpoint_steps(run_dir(workdir, run))
    if not steps:
        return "new"
    return "finished" if steps[-1] >= run.config.train.steps else "partial"


def read_state(workdir: str) -> dict[str, Any]:
    """`<workdir>/sweep.json` (empty if there is none)."""
    path = os.path.join(workdir, SWEEP_JSON)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def write_state(workdir: str, spec: str, runs: Sequence[Run], wall_s: Mapping[str, float]) -> str:
    """Writes `<workdir>/sweep.json`: the config spec, the runs and their overrides, and the
    seconds each run trained (`wall_s`). Returns its path."""
    from murajax import evaluation  # local: keeps loading a sweep light

    state = {
        "config": spec,
        "runs": [{"name": r.name, "overrides": evaluation.json_safe(r.overrides)} for r in runs],
        "wall_s": {name: round(float(s), 3) for name, s in wall_s.items()},
    }
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, SWEEP_JSON)
    with open(path, "w") as f:
        json.dump(state, f, indent=2)
        f.write("\n")
    return path


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
    from murajax import models  # local: jax only when training

    path = models.weights_file(run.config.model)
    if path is not None and not os.path.isfile(path):
        raise FileNotFoundError(
            f"sweep run {run.name!r}: model.weights={path!r}: no such file (expected a Keras"
            " .h5 weights file, or 'imagenet')"
        )
    return path


TrainFn = Callable[[Config, str], Any]


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
    which resumes a run from its newest checkpoint and only evaluates a finished one. Seconds
    spent training (not re-evaluating a finished run) add up per run in `sweep.json`. A run
    that raises stops the sweep (rerun it to resume). Returns the runs that ran.
    """
    selected = select_runs(sweep.runs, only)
    if train_fn is None:
        from murajax import models, parallel, train  # local: jax only when training

        for run in selected:  # every run's batch fits the devices, before any compute
            parallel.check_config(run.config)
            models.registry.check_weights_field(run.config.model)
        for run in selected:
            check_start_weights(workdir, run)
        train_fn = train.train_and_evaluate
    wall_s = dict(read_state(workdir).get("wall_s", {}))
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
    return selected


# --------------------------------------------------------------------------- summary


def summary_split(run_workdirs: Sequence[str]) -> str | None:
    """The split a summary is of: `validation` if any run evaluated it, else `holdout`,
    else the first other split found; None when no run has an evaluation yet."""
    found: list[str] = []
    for path in run_workdirs:
        root = os.path.join(path, "eval")
        if os.path.isdir(root):
            found += [s for s in sorted(os.listdir(root)) if s not in found]
    for split in SUMMARY_SPLITS:
        if split in found:
            return split
    return found[0] if found else None


def best_holdout(run_workdir: str) -> tuple[float | None, int | None]:
    """The best holdout study kappa in a run's `metrics.jsonl` and the step it came at."""
    from murajax import writers  # local: writers imports tensorboardX

    best: tuple[float | None, int | None] = (None, None)
    for row in writers.read_metrics(run_workdir):
        kappa = row.get("kappa")
        if row.get("split") != "holdout" or not isinstance(kappa, int | float):
            continue
        if math.isfinite(kappa) and (best[0] is None or kappa > best[0]):
            best = (float(kappa), int(row["step"]))
    return best


def _dotted(values: Mapping[str, Any], field: str) -> Any:
    for part in field.split("."):
        if not isinstance(values, Mapping) or part not in values:
            return None
        values = values[part]
    return values


def _read_json(path: str) -> Any:
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _pair(values: Any) -> tuple[Any, Any]:
    if isinstance(values, Sequence) and len(values) == 2:
        return values[0], values[1]
    return None, None


def summary_row(
    workdir: str,
    name: str,
    fields: Sequence[str],
    split: str | None,
    *,
    overrides: Overrides | None = None,
    wall_s: float | None = None,
) -> dict[str, Any]:
    """One run's row: its name, the value of each swept field (from its `config.json`, else
    its overrides), and its `eval/<split>/metrics.json` study scores (None where missing;
    `status` says why)."""
    path = run_dir(workdir, name)
    resolved = _read_json(os.path.join(path, "config.json")) or {}
    row: dict[str, Any] = {"name": name}
    for field in fields:
        value = _dotted(resolved, field)
        if value is None and overrides and field in overrides:
            value = overrides[field]
        row[field] = value
    row.update(dict.fromkeys(METRIC_COLUMNS))
    body = _read_json(os.path.join(path, "eval", split, "metrics.json")) if split else None
    if not os.path.isdir(path):
        row["status"] = "not run"
    elif body is None:
        row["status"] = "not evaluated"
    else:
        study = body.get("study", {})
        row["step"] = body.get("step")
        row["kappa"] = study.get("kappa")
        row["kappa_ci_low"], row["kappa_ci_high"] = _pair(study.get("kappa_ci"))
        row["auroc"] = study.get("auroc")
        row["auroc_ci_low"], row["auroc_ci_high"] = _pair(study.get("auroc_ci"))
        for key in ("accuracy", "sensitivity", "specificity", "n"):
            row[key] = study.get(key)
        steps = checkpoint_steps(path)
        target = resolved.get("train", {}).get("steps")
        finished = bool(steps) and target is not None and steps[-1] >= target
        row["status"] = "done" if finished else "partial"
    if os.path.isdir(path):
        row["best_holdout_kappa"], row["best_holdout_step"] = best_holdout(path)
    row["wall_s"] = round(wall_s, 1) if wall_s is not None else None
    return row


def discover_runs(workdir: str) -> list[dict[str, Any]]:
    """The runs of a sweep folder: from `sweep.json` if present, else every subfolder with a
    `config.json`, whose overrides are the fields in which the runs' configs differ."""
    state = read_state(workdir)
    if state.get("runs"):
        return [{"name": r["name"], "overrides": r.get("overrides", {})} for r in state["runs"]]
    names = sorted(
        n
        for n in (os.listdir(workdir) if os.path.isdir(workdir) else [])
        if os.path.isfile(os.path.join(workdir, n, "config.json"))
    )
    configs = {n: _flatten(_read_json(os.path.join(workdir, n, "config.json"))) for n in names}
    keys = sorted({k for c in configs.values() for k in c})
    differ = [k for k in keys if len({json.dumps(c.get(k)) for c in configs.values()}) > 1]
    return [{"name": n, "overrides": {k: configs[n].get(k) for k in differ}} for n in names]


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def summary_rows(
    workdir: str, runs: Sequence[Mapping[str, Any]], split: str | None = None
) -> tuple[str | None, list[dict[str, Any]]]:
    """`(split, rows)` for `runs` (dicts with `name` and `overrides`) in `workdir`. `split`
    None picks one with `summary_split`."""
    if split is None:
        split = summary_split([run_dir(workdir, r["name"]) for r in runs])
    fields: list[str] = []
    for r in runs:
        fields += [f for f in r["overrides"] if f not in fields]
    wall = read_state(workdir).get("wall_s", {})
    rows = [
        summary_row(
            workdir,
            r["name"],
            fields,
            split,
            overrides=r["overrides"],
            wall_s=wall.get(r["name"]),
        )
        for r in runs
    ]
    return split, rows


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, tuple | list):
        return format_value(value)
    return str(value)  # floats as repr: they read back exactly


def write_csv(path: str, rows: Sequence[Mapping[str, Any]]) -> str:
    """`rows` as CSV (the columns of the first row); None is an empty cell."""
    columns = list(rows[0]) if rows else ["name", *METRIC_COLUMNS]
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(columns)
        for row in rows:
            out.writerow([_csv_cell(row.get(c)) for c in columns])
    return path


def _score(value: Any, low: Any = None, high: Any = None) -> str:
    from murajax import report  # local: report imports plotting helpers

    return report.format_score(value, None if low is None else (low, high))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def markdown_rows(rows: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> tuple[list, list]:
    """`(header, rows)` of the summary table as text cells."""
    header = ["run", *fields, "checkpoint", "kappa [CI]", "AUROC [CI]", "accuracy"]
    header += ["best holdout kappa", "studies", "train time", "status"]
    cells = []
    for row in rows:
        wall = row.get("wall_s")
        cells.append(
            [
                row["name"],
                *(format_value(row.get(f)) for f in fields),
                "" if row.get("step") is None else row["step"],
                _score(row.get("kappa"), row.get("kappa_ci_low"), row.get("kappa_ci_high")),
                _score(row.get("auroc"), row.get("auroc_ci_low"), row.get("auroc_ci_high")),
                _score(row.get("accuracy")),
                _score(row.get("best_holdout_kappa")),
                "" if row.get("n") is None else row["n"],
                _duration(wall),
                row.get("status") or "",
            ]
        )
    return header, cells


def roc_inputs(
    workdir: str, names: Sequence[str], split: str | None
) -> dict[str, tuple[list[int], list[float]]]:
    """`{name: (labels, probs)}` from each run's `eval/<split>/predictions.csv` (if any)."""
    curves: dict[str, tuple[list[int], list[float]]] = {}
    if split is None:
        return curves
    for name in names:
        path = os.path.join(run_dir(workdir, name), "eval", split, "predictions.csv")
        if not os.path.isfile(path):
            continue
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        curves[name] = ([int(r["label"]) for r in rows], [float(r["prob"]) for r in rows])
    return curves


def write_summary(
    workdir: str,
    runs: Sequence[Mapping[str, Any]],
    *,
    spec: str | None = None,
    split: str | None = None,
) -> dict[str, Any]:
    """Writes `sweep.csv`, `sweep.md` and `sweep_roc.png` into `workdir` for `runs` (dicts
    with `name` and `overrides`). Returns `{"split", "rows", "table", and the paths}`."""
    from murajax import plots, report  # local: matplotlib only when summarising

    split, rows = summary_rows(workdir, runs, split)
    fields = [c for c in (rows[0] if rows else {}) if c != "name" and c not in METRIC_COLUMNS]
    csv_path = write_csv(os.path.join(workdir, SWEEP_CSV), rows)
    header, cells = markdown_rows(rows, fields)
    table = report.markdown_table(header, cells)
    curves = roc_inputs(workdir, [r["name"] for r in runs], split)
    roc_path = os.path.join(workdir, SWEEP_ROC)
    if curves:
        plots.overlaid_roc_curves(
            curves, roc_path, title=f"ROC per study, {split} ({len(curves)} runs)"
        )
    elif os.path.exists(roc_path):
        os.remove(roc_path)  # no evaluation left to draw: no stale plot
    linked = [[f"[{c[0]}](<{c[0]}/report.md>)", *c[1:]] for c in cells]
    lines = [
        f"# Sweep{f': `{spec}`' if spec else ''}",
        "",
        f"{len(rows)} runs in `{os.path.abspath(workdir)}`, each a run workdir named after the"
        " fields it changes. Scores are per study on the"
        f" **{split or 'no'}** split (the checkpoint that `eval.checkpoint` selects), with"
        " bootstrap confidence intervals; the best holdout kappa is the best of the periodic"
        " holdout evaluations during training (holdout: the patient-disjoint slice of train"
        " used for model selection). Train time counts only sweep invocations that trained.",
        "",
        report.markdown_table(header, linked),
        "",
    ]
    if curves:
        lines += [f"![ROC curves of the runs]({SWEEP_ROC})", ""]
    md_path = os.path.join(workdir, SWEEP_MD)
    with open(md_path, "w") as f:
        f.write("\n".join(lines))
    return {
        "split": split,
        "rows": rows,
        "table": table,
        "csv": csv_path,
        "md": md_path,
        "roc": roc_path if curves else None,
    }


def summarise(workdir: str, *, split: str | None = None) -> dict[str, Any]:
    """Rebuilds the summary of a sweep folder from its run folders alone (no training): the
    runs of its `sweep.json`, or every subfolder with a `config.json` (`discover_runs`)."""
    runs = discover_runs(workdir)
    if not runs:
        raise SweepError(f"{workdir} holds no sweep: no sweep.json and no run with config.json")
    return write_summary(workdir, runs, spec=read_state(workdir).get("config"), split=split)
