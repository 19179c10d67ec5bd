"""Orbax checkpoints of everything a bit-exact restart needs.

Each `checkpoints/<step>/` holds the train state (params, batch statistics, optimiser and
schedule state, PRNG key, step), the grain iterator state and a small JSON of metadata. The
manager keeps the latest few checkpoints and the best ones by holdout study kappa.

Torn and unreadable checkpoints. orbax (0.12.8, on a local or POSIX file system) writes
step N into `checkpoints/N.orbax-checkpoint-tmp`, writes `commit_success.txt` last and then
renames the folder to `checkpoints/N`; the manager lists only such finalised folders, so a
save that was killed part-way is never restored (and orbax removes its folder when step N
is saved again). `restore_latest` removes such leftovers with a note, and when the newest
checkpoint cannot be read (a file truncated, deleted or garbled afterwards) it falls back to
the one before, and so on, moving each unreadable one to `checkpoints_unreadable/` with one
warning line (the resumed run then saves those steps afresh); if none can be restored it
raises `CheckpointError`, moving nothing. Only the workdir's one writer does any of this (it
holds the workdir's lock, `murajax.workdir_lock`), so a save still in flight in another run
is never taken for a torn one, nor deleted by this run's retention.
"""

import json
import logging
import os
import shutil
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

from murajax import errors, parallel
from murajax import workdir as workdir_lib
from murajax.workdir import Selection, best_metric

TMP_SUFFIX = ocp.path.step.TMP_DIR_SUFFIX


class CheckpointError(errors.WorkdirError):
    """A workdir holds checkpoints but none of them can be restored (a user error: the
    commands report it as one line, exit status 2)."""


class _PeriodicSaveNote(logging.Filter):
    """Drops orbax's warning that a checkpoint was saved without metrics: the periodic
    (`train.checkpoint_every`) checkpoints have none by design, and it came at every one."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "did not provide metrics" not in record.getMessage()


_PERIODIC_SAVE_NOTE = _PeriodicSaveNote()


def make_manager(workdir: str, *, keep_latest: int, keep_best: int = 1) -> ocp.CheckpointManager:
    """A manager over `workdir/checkpoints` that keeps the latest and the best checkpoints.

    Kept: the `keep_latest` newest checkpoints and the `keep_best` with the highest
    `holdout_kappa` among those saved with metrics (`best_metric`); the rest are deleted at
    each save. (orbax's `BestN` keeps every checkpoint while there are at most `keep_best`
    of them.) A checkpoint whose metrics file cannot be parsed (orbax reads them all here)
    is moved to `checkpoints_unreadable/` with a warning.
    """
    preservation = policies.AnyPreservationPolicy(
        [
            policies.LatestN(n=keep_latest),
            policies.BestN(
                get_metric_fn=best_metric,
                reverse=False,
                n=keep_best,
                keep_checkpoints_without_metrics=False,
            ),
        ]
    )
    options = ocp.CheckpointManagerOptions(
        preservation_policy=preservation,
        best_fn=best_metric,
        best_mode="max",
        enable_async_checkpointing=False,
        create=True,
    )
    logging.getLogger("absl").addFilter(_PERIODIC_SAVE_NOTE)  # once: filters are a set
    directory = workdir_lib.checkpoints_dir(workdir)
    for step, file in _steps_with_unreadable_metrics(directory).items():
        moved = _set_aside(directory, step)
        _warn(f"checkpoint {directory}/{step} has an unreadable {file}; moved to {moved}")
    _sync("murajax_make_manager")  # every process sees the folder as process 0 left it
    return ocp.CheckpointManager(directory, options=options)


def save(
    manager: ocp.CheckpointManager,
    step: int,
    state: Any,
    data_iterator: Any,
    meta: dict[str, Any],
    metrics: dict[str, float] | None = None,
) -> None:
    """Saves the train state, the data iterator's position and `meta` at `step`.

    Every process calls it; `state` is host-local (see `murajax.parallel`) and the same on
    every process (with several processes it is saved as global replicated arrays).
    """
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(_global(state)),
        data=grain.checkpoint.CheckpointSave(data_iterator),
        meta=ocp.args.JsonSave(meta),
    )
    manager.save(step, args=args, metrics=metrics, force=True)
    manager.wait_until_finished()


def restore(
    manager: ocp.CheckpointManager, step: int, abstract_state: Any, data_iterator: Any | None
) -> tuple[Any, dict[str, Any]]:
    """Restores the state at `step` (shaped like `abstract_state`) and the iterator in place.

    Returns the restored state and its metadata. With `data_iterator=None` only the state and
    metadata are read (evaluation needs no iterator). The state comes back host-local, like
    `abstract_state`, also with several processes.
    """
    items: dict[str, Any] = {
        "state": ocp.args.StandardRestore(_global(abstract_state)),
        "meta": ocp.args.JsonRestore(),
    }
    if data_iterator is not None:
        items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    state = restored["state"]
    if jax.process_count() > 1:
        state = parallel.unreplicate(state)
    return state, dict(restored["meta"])


def restore_latest(
    manager: ocp.CheckpointManager, abstract_state: Any, data_iterator: Any | None
) -> tuple[Any, int] | None:
    """The newest checkpoint that can be restored, as `(state, step)`; None if there is none.

    Restores like `restore` (the iterator in place). Torn saves (`N.orbax-checkpoint-tmp`,
    never listed by orbax) are removed with a note. A checkpoint that fails to restore is
    skipped for the one before; once one restores, each skipped one is moved to
    `checkpoints_unreadable/` with one warning line naming it and why. If every checkpoint
    fails, `CheckpointError` names them and nothing is moved.
    """
    directory = str(manager.directory)
    for name in _torn_saves(directory):
        _note(f"removing {directory}/{name}: a checkpoint interrupted while being written")
        if jax.process_index() == 0:
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
    failures: list[tuple[int, str]] = []
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            state, _ = restore(manager, step, abstract_state, data_iterator)
        except Exception as error:  # noqa: BLE001 (any failure to read means unreadable)
            failures.append((step, failure_reason(error)))
            continue
        for bad, reason in failures:
            moved = _set_aside(directory, bad)
            _warn(
                f"checkpoint {directory}/{bad} cannot be restored ({reason}); moved to {moved},"
                f" falling back to checkpoint {step}"
            )
        _sync("murajax_restore_latest")
        manager.reload()
        return state, step
    if failures:
        listed = "; ".join(f"{step}: {reason}" for step, reason in failures)
        raise CheckpointError(
            f"no checkpoint in {directory} can be restored ({listed}); move that folder"
            " away to train afresh, or use a new --workdir"
        )
    return None


def _torn_saves(directory: str) -> list[str]:
    """Names of the step folders in `directory` whose save never finished."""
    if not os.path.isdir(directory):
        return []
    return sorted(
        name
        for name in os.listdir(directory)
        if TMP_SUFFIX in name and name.split(TMP_SUFFIX)[0].isdigit()
    )


# The JSON files orbax reads of every step when a manager opens the folder: one that does not
# parse stops it there, before any step could be chosen.
_STEP_JSON_FILES = (os.path.join("metrics", "metrics"), "_CHECKPOINT_METADATA")


def _steps_with_unreadable_metrics(directory: str) -> dict[int, str]:
    """`{step: the file}` of the finalised steps in `directory` whose metrics or checkpoint
    metadata JSON does not parse."""
    if not os.path.isdir(directory):
        return {}
    bad = {}
    for name in sorted(os.listdir(directory)):
        for file in _STEP_JSON_FILES:
            path = os.path.join(directory, name, file)
            if not name.isdigit() or not os.path.isfile(path):
                continue
            try:
                with open(path) as f:
                    json.load(f)
            except (ValueError, UnicodeDecodeError):
                bad[int(name)] = file
                break
            except OSError:  # deleted meanwhile (a concurrent save's retention): not ours
                continue
    return dict(sorted(bad.items()))


def _set_aside(directory: str, step: int) -> str:
    """Moves `directory/<step>` to `<workdir>/checkpoints_unreadable/<step>[.k]` (process 0;
    every process returns the destination) and returns that path."""
    target_dir = os.path.join(os.path.dirname(directory), workdir_lib.UNREADABLE_DIR)
    target, k = os.path.join(target_dir, str(step)), 0
    while os.path.exists(target):
        k += 1
        target = os.path.join(target_dir, f"{step}.{k}")
    if jax.process_index() == 0:
        os.makedirs(target_dir, exist_ok=True)
        shutil.move(os.path.join(directory, str(step)), target)
    return target


def failure_reason(error: BaseException, limit: int = 300) -> str:
    """Why a restore failed, as one line: the root cause's type and first message line (a
    TensorStore read error says which file and what is wrong with it; orbax's wrapper only
    that an array could not be read)."""
    seen = {id(error)}
    while (cause := error.__cause__ or error.__context__) is not None and id(cause) not in seen:
        seen.add(id(cause))
        error = cause
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else ""
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _warn(message: str) -> None:
    """One `[murajax] warning:` line on stdout, from process 0 only."""
    _note(f"warning: {message}")


def _note(message: str) -> None:
    """One `[murajax]` line on stdout, from process 0 only."""
    if jax.process_index() == 0:
        print(f"[murajax] {message}")


def _sync(name: str) -> None:
    """A barrier across processes (after process 0 moved folders); nothing with one."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def _global(state: Any) -> Any:
    """With several processes, host-local arrays as global replicated ones (orbax saves and
    restores only those across processes); unchanged with one process."""
    if jax.process_count() == 1:
        return state
    return parallel.replicate(state, parallel.make_mesh())


def open_read_only(workdir: str) -> ocp.CheckpointManager:
    """A read-only manager over `<workdir>/checkpoints`, for evaluating a run (which may
    still be training beside it): it neither creates folders nor deletes checkpoints.
    Raises `WorkdirError` if there is no finished checkpoint."""
    directory = workdir_lib.checkpoints_dir(workdir)
    if not os.path.isdir(directory):
        raise errors.WorkdirError(
            f"{workdir} has no {workdir_lib.CHECKPOINTS_DIR}/ folder: nothing to evaluate"
        )
    unreadable = _steps_with_unreadable_metrics(directory)
    if unreadable:
        listed = ", ".join(f"{directory}/{step}/{file}" for step, file in unreadable.items())
        raise errors.WorkdirError(
            f"unreadable checkpoint files: {listed}; move those step folders out of "
            f"{directory} to evaluate the others (training on this workdir sets them aside)"
        )
    options = ocp.CheckpointManagerOptions(
        read_only=True, create=False, enable_async_checkpointing=False
    )
    manager = ocp.CheckpointManager(directory, options=options)
    if not manager.all_steps():
        manager.close()
        raise errors.WorkdirError(f"{directory} holds no finished checkpoint")
    return manager


def step_metrics(manager: ocp.CheckpointManager) -> dict[int, dict[str, Any] | None]:
    """`{step: the metrics saved with it, or None}` for every finished checkpoint."""
    return {int(step): manager.metrics(step) for step in manager.all_steps()}


def select(
    manager: ocp.CheckpointManager, checkpoint: str = "best", ensemble: int = 1
) -> Selection:
    """The checkpoint(s) of `manager` that `checkpoint` and `ensemble` mean
    (`workdir.select_steps`, the one place that decides)."""
    return workdir_lib.select_steps(step_metrics(manager), checkpoint, ensemble)


def select_step(manager: ocp.CheckpointManager, which: str) -> int | None:
    """The step of checkpoint `which` ('best', 'latest' or a step; see `select`); None if
    there is no checkpoint."""
    if not manager.all_steps():
        return None
    return select(manager, which).steps[0]
