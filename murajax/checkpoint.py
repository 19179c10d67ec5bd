"""Orbax checkpoints of everything a bit-exact restart needs.

Each `checkpoints/<step>/` holds the train state (params, batch statistics, optimiser and
schedule state, PRNG key, step), the grain iterator state and a small JSON of metadata. The
manager keeps the latest few checkpoints and the best ones by holdout study kappa.
"""

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from murajax import parallel

BEST_METRIC = "holdout_kappa"


def make_manager(workdir: str, *, keep_latest: int, keep_best: int = 1) -> ocp.CheckpointManager:
    """A manager over `workdir/checkpoints` that keeps the latest and the best checkpoints.

    "Best" is the highest `holdout_kappa` among checkpoints saved with metrics. (orbax's
    `BestN` keeps every checkpoint while there are at most `keep_best` of them.)
    """
    preservation = policies.AnyPreservationPolicy(
        [
            policies.LatestN(n=keep_latest),
            policies.BestN(
                get_metric_fn=lambda m: m[BEST_METRIC],
                reverse=False,
                n=keep_best,
                keep_checkpoints_without_metrics=False,
            ),
        ]
    )
    options = ocp.CheckpointManagerOptions(
        preservation_policy=preservation,
        best_fn=lambda m: m[BEST_METRIC],
        best_mode="max",
        enable_async_checkpointing=False,
        create=True,
    )
    directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
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


def _global(state: Any) -> Any:
    """With several processes, host-local arrays as global replicated ones (orbax saves and
    restores only those across processes); unchanged with one process."""
    if jax.process_count() == 1:
        return state
    return parallel.replicate(state, parallel.make_mesh())


def select_step(manager: ocp.CheckpointManager, which: str) -> int | None:
    """The step of checkpoint `which`: 'latest', 'best' (falls back to latest) or a number."""
    if which == "latest":
        return manager.latest_step()
    if which == "best":
        best = manager.best_step()
        return best if best is not None else manager.latest_step()
    try:
        step = int(which)
    except ValueError:
        raise ValueError(f"checkpoint={which!r}: expected 'best', 'latest' or a step") from None
    if step not in manager.all_steps():
        raise ValueError(f"checkpoint {step} not found: available steps {manager.all_steps()}")
    return step
