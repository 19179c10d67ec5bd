"""Non-finite steps: found on device inside the step, acted on where the host reads metrics.

Inside the jitted step (`train.train_step`), `nonfinite_code` folds three checks into one
int32 metric, `nonfinite` (0: a good step): bit 1 the loss, bit 2 the gradients, bit 4 the
parameters after the update (an overflow of finite gradients). With
`train.on_nonfinite='skip'` the step then keeps the old params, batch statistics and
optimiser state (`keep_if`, a select like `optax.apply_if_finite`'s).

The host sees the codes only where the loop already reads metrics (logging, evaluation,
checkpoints): `Watch.check` goes through the steps it has not seen yet, in order, and
returns the first reason to stop: a bad step ('stop'), or `max_skipped` bad steps in a row
('skip'). `train_row` averages a log window over its good steps and counts the skipped
ones, so nothing non-finite reaches `metrics.jsonl`.
"""

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

LOSS, GRADIENTS, PARAMETERS = 1, 2, 4
CODE_KEY = "nonfinite"
ON_NONFINITE: tuple[str, ...] = ("stop", "skip")  # `train.on_nonfinite`: end the run, or skip
_NAMES = ((LOSS, "loss"), (GRADIENTS, "gradients"), (PARAMETERS, "updated parameters"))

HostRow = tuple[int, dict[str, float]]  # (step, that step's metrics as Python floats)


def all_finite(tree: Any) -> jax.Array:
    """True where every element of every (inexact) leaf of `tree` is finite; on device."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    if not leaves:
        return jnp.array(True)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def nonfinite_code(loss: jax.Array, grads: Any, new_params: Any) -> jax.Array:
    """The `nonfinite` metric: LOSS | GRADIENTS | PARAMETERS bits of what is not finite."""
    bits = [(jnp.isfinite(loss), LOSS), (all_finite(grads), GRADIENTS)]
    bits.append((all_finite(new_params), PARAMETERS))
    return sum(jnp.where(ok, 0, bit) for ok, bit in bits).astype(jnp.int32)


def keep_if(good: jax.Array, new: Any, old: Any) -> Any:
    """`new` where `good` (a scalar bool), else `old`, leaf by leaf; for a skipped step."""
    return jax.tree.map(lambda n, o: jnp.where(good, n, o), new, old)


def describe(code: int) -> str:
    """'loss', 'loss and gradients', ... for a `nonfinite` code."""
    names = [name for bit, name in _NAMES if code & bit]
    return " and ".join(names) if len(names) < 3 else f"{names[0]}, {names[1]} and {names[2]}"


def host_rows(pending: Sequence[tuple[int, dict[str, Any]]]) -> list[HostRow]:
    """`(step, metrics)` pairs of device scalars as `(step, {name: float})`, fetched from
    the devices in one transfer."""
    fetched = jax.device_get([metrics for _, metrics in pending])
    steps = [step for step, _ in pending]
    return [
        (int(step), {k: float(np.asarray(v)) for k, v in metrics.items()})
        for step, metrics in zip(steps, fetched, strict=True)
    ]


def _code(row: dict[str, float]) -> int:
    return int(row.get(CODE_KEY, 0))


def train_row(rows: Sequence[HostRow], *, count_skipped: bool) -> dict[str, float]:
    """One `metrics.jsonl` train row for a log window: each metric's float32 mean over the
    window's good steps (NaN if there are none: written as null), and with `count_skipped`
    the number of skipped steps as `skipped`."""
    good = [m for _, m in rows if not _code(m)]
    names = [k for k in rows[0][1] if k != CODE_KEY]
    row = {
        k: float(np.mean(np.asarray([m[k] for m in good], np.float32))) if good else math.nan
        for k in names
    }
    if count_skipped:
        row["skipped"] = len(rows) - len(good)
    return row


@dataclasses.dataclass(frozen=True)
class Divergence:
    """Why training must stop: the step, its `nonfinite` code, and how many bad steps
    in a row it ends ('skip' mode; 1 for 'stop')."""

    step: int
    code: int
    in_a_row: int


@dataclasses.dataclass
class Watch:
    """The host's view of the steps' `nonfinite` codes (see the module docstring)."""

    skip: bool  # train.on_nonfinite == 'skip'
    max_skipped: int
    in_a_row: int = 0  # bad steps in a row up to `checked`
    checked: int = 0  # the last step looked at

    def check(self, rows: Sequence[HostRow]) -> Divergence | None:
        """Looks at the rows after `checked`, in order; the first reason to stop, if any."""
        for step, metrics in rows:
            if step <= self.checked:
                continue
            self.checked = step
            code = _code(metrics)
            self.in_a_row = self.in_a_row + 1 if code else 0
            if code and (not self.skip or self.in_a_row >= self.max_skipped):
                return Divergence(step, code, self.in_a_row)
        return None

    def to_json(self) -> dict[str, int]:
        """What a checkpoint keeps of it, so that a resumed run counts on."""
        return {"in_a_row": self.in_a_row, "checked": self.checked}

    def restore(self, saved: dict[str, Any] | None) -> None:
        """Continues from `to_json`'s output (nothing: from scratch)."""
        if saved:
            self.in_a_row, self.checked = int(saved["in_a_row"]), int(saved["checked"])


def rows_to_json(rows: Sequence[HostRow]) -> list[dict[str, Any]]:
    """Host rows for a checkpoint's JSON metadata (non-finite values as null)."""
    return [
        {"step": s, "metrics": {k: v if math.isfinite(v) else None for k, v in m.items()}}
        for s, m in rows
    ]


def rows_from_json(saved: Sequence[dict[str, Any]] | None) -> list[HostRow]:
    """The inverse of `rows_to_json` (null back to NaN): the same floats, bit for bit."""
    return [
        (int(r["step"]), {k: math.nan if v is None else float(v) for k, v in r["metrics"].items()})
        for r in saved or []
    ]
