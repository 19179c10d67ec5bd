"""A workdir: the names of its files, reading and writing them, and which checkpoint to use.

Every file and folder a run or a sweep writes is named here, once:

    W/.lock                         held by the command writing W (`murajax.workdir_lock`)
    W/config.json                   the resolved config (`read_config`); what marks W as a
                                    murajax run workdir (`is_run_config`)
    W/metrics.jsonl                 one JSON row per log step or evaluation (`murajax.writers`)
    W/tensorboard/                  TensorBoard event files
    W/checkpoints/<step>/           orbax checkpoints (`checkpoint_steps`; `murajax.checkpoint`)
    W/checkpoints_unreadable/       checkpoints that could not be read, set aside
    W/eval/<split>/metrics.json     an evaluation (`eval_dir`, `read_evaluations`), beside
                   predictions.csv, image_predictions.csv and the plots of `PLOT_FILES`
    W/report.md, W/report/*.png     the run's report
    S/sweep.json, sweep.csv, sweep.md, sweep_roc.png, S/<run name>/   a sweep of run workdirs

JSON goes through one cleaner, `json_safe`: NaN and infinities become null, so every JSON
file a workdir holds is standard JSON. Files are rewritten whole (`write_json`, `write_text`:
a temporary file beside them, renamed over them), so a reader or a killed writer never
leaves half of one. A folder that is not empty and is not a murajax workdir (or sweep folder)
is never written into (`check_may_write`). Which checkpoint(s) 'best', 'latest', a step or an
ensemble of K mean is decided by `select_steps`, from the metrics saved with each checkpoint
(`murajax.checkpoint` reads them; this module reads no orbax files).

Imports nothing from murajax but `config`, `errors` and `files`, so that any module may import
it.
"""

import csv
import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from murajax import config as config_lib
from murajax import files
from murajax.config import Config
from murajax.errors import WorkdirError

# --------------------------------------------------------------------------- layout

LOCK_FILE = ".lock"
CONFIG_FILE = "config.json"
METRICS_LOG = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
CHECKPOINTS_DIR = "checkpoints"
UNREADABLE_DIR = "checkpoints_unreadable"
EVAL_DIR = "eval"
METRICS_FILE = "metrics.json"
STUDY_PREDICTIONS_FILE = "predictions.csv"
IMAGE_PREDICTIONS_FILE = "image_predictions.csv"
PLOT_FILES = {
    "roc": "roc.png",
    "confusion_matrix": "confusion_matrix.png",
    "calibration": "calibration.png",
    "kappa_by_body_part": "kappa_by_body_part.png",
}
"""The plots of a binary evaluation grouped by body part (MURA's); see `plot_files`."""
REFERRAL_PLOT = "referral.png"  # with metrics.json's `triage` section (murajax.triage)
BROWSER_DIR = "browser"  # eval/<split>/browser/index.html (murajax.study_browser)
REPORT_FILE = "report.md"
REPORT_ASSETS_DIR = "report"  # the report's own images, next to report.md
EXAMPLES_FILE = "examples.png"
TRAINING_CURVES_FILE = "training_curves.png"
HEATMAPS_FILE = "heatmaps.png"
SWEEP_STATE_FILE = "sweep.json"
SWEEP_CSV = "sweep.csv"
SWEEP_MD = "sweep.md"
SWEEP_ROC = "sweep_roc.png"
SPLIT_ORDER = ("validation", "holdout")  # how evaluations are listed: these first, then others


def plot_files(group_feature: str | None, *, binary: bool = True) -> dict[str, str]:
    """The plot files of an evaluation in `eval/<split>/`, by name: ROC curves, the confusion
    matrix, calibration (binary datasets only) and kappa by group, named after the dataset's
    grouping feature (`kappa_by_body_part.png` for MURA; none without groups)."""
    names = {k: v for k, v in PLOT_FILES.items() if k != "kappa_by_body_part"}
    if not binary:
        del names["calibration"]
    if group_feature:
        names["kappa_by_group"] = f"kappa_by_{group_feature}.png"
    return names


def config_path(workdir: str) -> str:
    """`<workdir>/config.json`."""
    return os.path.join(workdir, CONFIG_FILE)


def checkpoints_dir(workdir: str) -> str:
    """`<workdir>/checkpoints`, absolute (orbax wants absolute paths)."""
    return os.path.abspath(os.path.join(workdir, CHECKPOINTS_DIR))


def eval_dir(workdir: str, split: str) -> str:
    """`<workdir>/eval/<split>`, where an evaluation of `split` writes its files."""
    return os.path.join(workdir, EVAL_DIR, split)


def eval_file(workdir: str, split: str, name: str = METRICS_FILE) -> str:
    """`<workdir>/eval/<split>/<name>`: by default the evaluation's metrics.json."""
    return os.path.join(eval_dir(workdir, split), name)


def report_asset(workdir: str, name: str) -> str:
    """`<workdir>/report/<name>`: an image of `report.md`."""
    return os.path.join(workdir, REPORT_ASSETS_DIR, name)


def sweep_run_dir(sweep_workdir: str, name: str) -> str:
    """`<sweep workdir>/<run name>`: a sweep run's own workdir."""
    return os.path.join(sweep_workdir, name)


# --------------------------------------------------------------------------- JSON


def json_safe(value: Any) -> Any:
    """`value` as standard JSON can hold it: NaN and infinities become null, tuples lists,
    numpy scalars Python numbers (in dicts and lists, recursively)."""
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_csv(path: str) -> list[dict[str, str]]:
    """The rows of a `predictions.csv` or `image_predictions.csv` as dicts of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_json(path: str) -> Any:
    """The JSON value in `path`; None if there is no such file."""
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def write_text(path: str, text: str) -> str:
    """Replaces `path` with `text` at once (`files.replacing`: a reader sees the old file or
    the new one, and a writer killed half-way leaves the old one); returns `path`."""
    with files.replacing(path) as part, open(part, "w") as f:
        f.write(text)
    return path


def write_json(path: str, value: Any) -> str:
    """Writes `json_safe(value)` to `path` (indented, one final newline) at once
    (`write_text`); returns `path`."""
    return write_text(path, json.dumps(json_safe(value), indent=2, allow_nan=False) + "\n")


def read_config(workdir: str) -> Config:
    """The `Config` a run wrote to `<workdir>/config.json`, its fields' types and ranges
    checked (`config.check_fields`); `WorkdirError` if the workdir or its config.json is
    missing or unreadable."""
    path = config_path(workdir)
    if not os.path.isdir(workdir):
        what = "is a file, not a folder" if os.path.exists(workdir) else "does not exist"
        raise WorkdirError(f"workdir {workdir} {what}: expected a training run's folder")
    if not os.path.isfile(path):
        raise WorkdirError(f"{workdir} has no {CONFIG_FILE}: is it a murajax workdir?")
    try:
        values = read_json(path)
    except (OSError, json.JSONDecodeError) as e:
        raise WorkdirError(f"{path} is not readable JSON: {str(e).splitlines()[0]}") from None
    if not is_run_config(values):
        raise WorkdirError(
            f"{path} is not a murajax config ({_keys(values)}): is {workdir} a murajax workdir?"
        )
    return config_lib.check_fields(config_lib.from_dict(values))


# --------------------------------------------------------------------------- whose folder

RUN_CONFIG_SECTIONS = ("data", "model", "train")
"""Sections every murajax `config.json` has (`dataclasses.asdict(Config)`)."""


def is_run_config(values: Any) -> bool:
    """Whether JSON `values` is a murajax run's `config.json`: an object whose keys are all
    `Config` fields, with the `RUN_CONFIG_SECTIONS` as objects (an older murajax's config,
    which lacks newer fields, counts; someone else's `config.json` does not)."""
    fields = {f.name for f in dataclasses.fields(Config)}
    return (
        isinstance(values, dict)
        and set(values) <= fields
        and all(isinstance(values.get(name), dict) for name in RUN_CONFIG_SECTIONS)
    )


def _keys(values: Any) -> str:
    if not isinstance(values, dict):
        return f"a JSON {type(values).__name__}, not an object"
    shown = sorted(values)[:6]
    more = ", ..." if len(values) > len(shown) else ""
    return f"keys {', '.join(shown) or '(none)'}{more}"


def is_bookkeeping(name: str) -> bool:
    """Whether a folder entry is murajax's own and says nothing about whose folder it is:
    the lock file, or a temporary file of a write that never finished (`files.replacing`)."""
    return name == LOCK_FILE or (name.startswith(".") and name.endswith(files.PART_SUFFIX))


def contents(folder: str) -> list[str]:
    """The entries of `folder` but `is_bookkeeping` ones, sorted; [] if it does not exist."""
    if not os.path.isdir(folder):
        return []
    return sorted(name for name in os.listdir(folder) if not is_bookkeeping(name))


def run_workdir_refusal(folder: str) -> str | None:
    """Why a run may not write into `folder`, or None: it does not exist, is empty (but for
    `is_bookkeeping` entries) or holds a murajax `config.json` (`is_run_config`)."""
    if os.path.lexists(folder) and not os.path.isdir(folder):
        return "it is a file, not a folder"
    if not contents(folder):
        return None
    path = config_path(folder)
    if not os.path.isfile(path):
        return f"it has no {CONFIG_FILE} ({_listing_of(contents(folder))})"
    try:
        values = read_json(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"its {CONFIG_FILE} is not readable JSON: {str(e).splitlines()[0]}"
    if not is_run_config(values):
        return f"its {CONFIG_FILE} is not a murajax config ({_keys(values)})"
    return None


def is_sweep_state(values: Any) -> bool:
    """Whether JSON `values` is a murajax `sweep.json` (`murajax.sweep.write_state`)."""
    return isinstance(values, dict) and isinstance(values.get("runs"), list)


def sweep_folder_refusal(folder: str) -> str | None:
    """Why a sweep may not write into `folder`, or None: it does not exist, is empty (but for
    `is_bookkeeping` entries), holds a murajax `sweep.json`, or run workdirs (an older sweep's
    folder, or runs put together by hand)."""
    if os.path.lexists(folder) and not os.path.isdir(folder):
        return "it is a file, not a folder"
    names = contents(folder)
    if not names:
        return None
    try:
        if is_sweep_state(read_json(os.path.join(folder, SWEEP_STATE_FILE))):
            return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"its {SWEEP_STATE_FILE} is not readable JSON: {str(e).splitlines()[0]}"
    runs = [n for n in names if os.path.isfile(config_path(os.path.join(folder, n)))]
    if any(run_workdir_refusal(os.path.join(folder, n)) is None for n in runs):
        return None
    return f"it has no {SWEEP_STATE_FILE} and no run workdir ({_listing_of(names)})"


def _listing_of(names: Sequence[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return f"it holds {shown}{', ...' if len(names) > limit else ''}"


def check_may_write(folder: str, what: str, *, sweep: bool = False) -> None:
    """Raises `WorkdirError` (one line, nothing touched) if `folder` is not empty and not a
    murajax run workdir (`run_workdir_refusal`), or with `sweep` not a sweep folder
    (`sweep_folder_refusal`): murajax never writes into someone else's folder. `what` names
    it for the user (e.g. `--workdir=W`)."""
    reason = sweep_folder_refusal(folder) if sweep else run_workdir_refusal(folder)
    if reason is not None:
        kind = "sweep folder" if sweep else "workdir"
        raise WorkdirError(
            f"{what} is not empty and is not a murajax {kind}: {reason}; nothing was written"
            f" there: use a new or empty folder"
        )


def checkpoint_steps(workdir: str) -> list[int]:
    """The steps of the finished checkpoints in `<workdir>/checkpoints/`, ascending (orbax
    writes a step into a temporary name and renames it to the step when it is complete)."""
    folder = os.path.join(workdir, CHECKPOINTS_DIR)
    if not os.path.isdir(folder):
        return []
    return sorted(int(name) for name in os.listdir(folder) if name.isdigit())


def in_split_order(splits: Iterable[str]) -> list[str]:
    """`splits` as reports list them: validation, holdout, then the others by name."""
    rank = {split: index for index, split in enumerate(SPLIT_ORDER)}
    return sorted(splits, key=lambda s: (rank.get(s, len(rank)), s))


def evaluated_splits(workdir: str) -> list[str]:
    """The splits with an `eval/<split>/metrics.json`, `in_split_order`."""
    root = os.path.join(workdir, EVAL_DIR)
    names = os.listdir(root) if os.path.isdir(root) else []
    return in_split_order(s for s in names if os.path.isfile(eval_file(workdir, s)))


def read_evaluations(workdir: str) -> dict[str, dict[str, Any]]:
    """The `eval/<split>/metrics.json` bodies of a workdir, in `evaluated_splits` order."""
    return {split: read_json(eval_file(workdir, split)) for split in evaluated_splits(workdir)}


def read_sweep_state(sweep_workdir: str) -> dict[str, Any]:
    """A sweep's `sweep.json` (`murajax.sweep.write_state`); empty if there is none."""
    return read_json(os.path.join(sweep_workdir, SWEEP_STATE_FILE)) or {}


def recorded_threshold(workdir: str, steps: Sequence[int]) -> float | None:
    """The threshold an evaluation of exactly the checkpoints `steps` chose on the holdout
    ('youden'), as its metrics.json records it, on the model's own (uncalibrated)
    probabilities; None if there is none."""
    for body in read_evaluations(workdir).values():
        used = body.get("steps", [body.get("step")])
        if body.get("threshold_method") == "youden" and list(used) == list(steps):
            calibrated = body.get("calibration", {})
            return float(calibrated.get("threshold_uncalibrated", body["threshold"]))
    return None


# --------------------------------------------------------------------------- writable folders


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


# --------------------------------------------------------------------------- checkpoint choice

CHECKPOINT_SELECTIONS = ("best", "latest")  # or a step number (`select_steps`)
BEST_METRIC = "holdout_kappa"
"""The metric a checkpoint is saved with and ranked by (its holdout study kappa)."""
CHECKPOINT_SELECTIONS: tuple[str, ...] = ("best", "latest")  # `eval.checkpoint`

StepMetrics = Mapping[int, Mapping[str, Any] | None]
"""`{step: the metrics saved with that checkpoint, or None if it was saved without}`."""


@dataclasses.dataclass(frozen=True)
class Selection:
    """The checkpoint steps to use and, where the request could not be met exactly, why."""

    steps: tuple[int, ...]
    note: str | None = None


def best_metric(metrics: Mapping[str, Any]) -> float:
    """A checkpoint's rank for "best": its holdout kappa; a missing or non-finite kappa
    (logged as null in metrics.jsonl) ranks below every number."""
    value = metrics.get(BEST_METRIC)
    if value is None or not math.isfinite(float(value)):
        return -math.inf
    return float(value)


def best_step(metrics_by_step: StepMetrics) -> int | None:
    """The best of the checkpoints saved with metrics (`best_metric`; ties go to the later
    step, as orbax's `best_step` and the checkpoints it keeps); None if none has metrics."""
    ranked = [step for step, metrics in metrics_by_step.items() if metrics is not None]
    if not ranked:
        return None
    return max(ranked, key=lambda step: (best_metric(metrics_by_step[step]), step))


def checkpoint_kappas(metrics_by_step: StepMetrics) -> dict[int, float]:
    """Holdout study kappa of each checkpoint saved with one (NaN kappas left out)."""
    kappas = {}
    for step, metrics in metrics_by_step.items():
        value = (metrics or {}).get(BEST_METRIC)
        if value is not None and math.isfinite(float(value)):
            kappas[int(step)] = float(value)
    return kappas


def rank_by_kappa(kappas: Mapping[int, float]) -> list[int]:
    """Steps from the highest holdout kappa down; ties go to the later step."""
    return sorted(kappas, key=lambda s: (-kappas[s], -s))


def select_steps(
    metrics_by_step: StepMetrics, checkpoint: str = "best", ensemble: int = 1
) -> Selection:
    """Which checkpoint(s) `checkpoint` ('best', 'latest' or a step) and `ensemble` mean.

    'best' is `best_step` (the latest if no checkpoint carries metrics, said in `note`).
    `ensemble` = K > 1 takes the K best checkpoints by holdout kappa (the MURA paper's final
    model averages 5); if fewer carry metrics it takes those and says so in `note`. Raises
    `WorkdirError` for a request that names no checkpoint there is.
    """
    available = sorted(int(s) for s in metrics_by_step)
    if not available:
        raise WorkdirError("no finished checkpoint to select from")
    if ensemble < 1:
        raise WorkdirError(f"ensemble={ensemble}: expected a number of checkpoints >= 1")
    if ensemble > 1:
        return _ensemble(metrics_by_step, available, checkpoint, ensemble)
    if checkpoint == "latest":
        return Selection((available[-1],))
    if checkpoint == "best":
        best = best_step(metrics_by_step)
        if best is None:
            return Selection(
                (available[-1],), "no checkpoint carries holdout metrics: using the latest"
            )
        return Selection((int(best),))
    try:
        step = int(checkpoint)
    except ValueError:
        raise WorkdirError(
            f"checkpoint={checkpoint!r}: expected 'best', 'latest' or a step number"
        ) from None
    if step not in available:
        raise WorkdirError(
            f"checkpoint {step} not found: available steps {_listing(available)}"
            " (or 'best', 'latest')"
        )
    return Selection((step,))


def _ensemble(
    metrics_by_step: StepMetrics, available: list[int], checkpoint: str, ensemble: int
) -> Selection:
    """`select_steps` for `ensemble` > 1: the best checkpoints by holdout kappa."""
    if checkpoint != "best":
        raise WorkdirError(
            f"ensemble={ensemble} takes the best checkpoints by holdout kappa: "
            f"leave checkpoint at 'best' (got {checkpoint!r})"
        )
    ranked = rank_by_kappa(checkpoint_kappas(metrics_by_step))
    if not ranked:
        latest = available[-1]
        return Selection(
            (latest,),
            f"no checkpoint carries holdout metrics: using the latest ({latest}), not an "
            f"ensemble of {ensemble}",
        )
    chosen = tuple(ranked[:ensemble])
    note = None
    if len(chosen) < ensemble:
        note = (
            f"only {len(chosen)} of the {len(available)} checkpoints carry holdout metrics "
            f"(steps {_listing(sorted(chosen))}): an ensemble of {len(chosen)}, not {ensemble}"
        )
    return Selection(chosen, note)


def _listing(steps: Sequence[int]) -> str:
    return ", ".join(str(s) for s in steps) if steps else "none"
