"""Non-finite steps: found on device inside the step, acted on where the host reads metrics.

Inside the jitted step (`steps.train_step`), `check_step` folds three checks into one
int32 metric, `nonfinite` (0: a good step): bit 1 the loss, bit 2 the gradients, bit 4 the
parameters after the update (an overflow of finite gradients), and gives the gradients'
global norm (the `grad_norm` metric) from the same pass over the leaves. With
`train.on_nonfinite='skip'` the step then keeps the old params, batch statistics and
optimiser state (`keep_if`, a select like `optax.apply_if_finite`'s).

`check_step` reads each (gradient, updated parameter) pair of leaves in one variadic
reduction (sum of squares, gradient finite, parameter finite). Per-leaf `jnp.all(isfinite)`
and `optax.global_norm` were ~4,600 small XLA:CPU thunks for DenseNet-169's 508 leaves
(~9 per leaf): XLA:CPU's TreeReductionRewriter turns every single-output reduction over
more than 32 elements into a reduce-window and a reduce, neither fused with the `x * x` or
`isfinite` feeding it, while a variadic reduction is left alone and fused with its inputs:
one thunk per leaf. The bits are exactly those of the per-leaf checks (`all_finite`); the
norm differs from `optax.global_norm`'s only by float rounding (one float32 accumulation
per leaf instead of XLA's tree of 32-element partial sums).

The host sees the codes only where the loop already reads metrics (logging, evaluation,
checkpoints): `Watch.check` goes through the steps it has not seen yet, in order, and
returns the first reason to stop: a bad step ('stop'), or `max_skipped` bad steps in a row
('skip'). `train_row` averages a log window over its good steps and counts the skipped
ones, so nothing non-finite reaches `metrics.jsonl`.
"""

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

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


class StepCheck(NamedTuple):
    """What `check_step` finds of one step, on device."""

    code: jax.Array  # the `nonfinite` metric: int32 LOSS | GRADIENTS | PARAMETERS bits
    grad_norm: jax.Array  # the gradients' global L2 norm (at least float32)


class _LeafCheck(NamedTuple):
    """The partial results of one leaf, or of one (gradient, parameter) pair of leaves:
    scalars that `check_step` combines over all of them."""

    grad_sq: jax.Array  # sum of the gradients' squared magnitudes
    grads_finite: jax.Array
    params_finite: jax.Array


def _is_inexact(x: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _is_real_float(x: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.floating)


def _accumulator(x: jax.Array) -> jax.Array:
    """`x` in the dtype its squares are summed in: its own, at least float32."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _pair_check(grad: jax.Array, param: jax.Array) -> _LeafCheck:
    """A gradient leaf and its parameter leaf (same shape, real floats) in one variadic
    reduction: one fused loop, where separate reductions were several thunks each."""
    g = _accumulator(grad)
    init = (jnp.zeros((), g.dtype), jnp.array(True), jnp.array(True))

    def combine(a: tuple, b: tuple) -> tuple:
        return a[0] + b[0], jnp.logical_and(a[1], b[1]), jnp.logical_and(a[2], b[2])

    operands = (g * g, jnp.isfinite(g), jnp.isfinite(param))
    return _LeafCheck(*jax.lax.reduce(operands, init, combine, tuple(range(g.ndim))))


def _grad_check(grad: jax.Array) -> _LeafCheck:
    """A gradient leaf without a pairable parameter leaf, reduced on its own."""
    g = _accumulator(grad)
    sq = jnp.sum(jnp.real(g * jnp.conj(g))) if jnp.iscomplexobj(g) else jnp.sum(g * g)
    return _LeafCheck(sq, jnp.all(jnp.isfinite(g)), jnp.array(True))


def _param_check(param: jax.Array) -> _LeafCheck:
    """A parameter leaf without a pairable gradient leaf, reduced on its own."""
    return _LeafCheck(jnp.zeros((), jnp.float32), jnp.array(True), jnp.all(jnp.isfinite(param)))


def _leaf_checks(grads: Any, new_params: Any) -> list[_LeafCheck]:
    """`_LeafCheck`s covering every inexact leaf of both trees: one per pair of the i-th
    leaves of each when all pairs share a shape and are real floats (always so for a
    model's gradients and parameters), else one per leaf. Pairing only saves passes over
    memory: the results are combined over all leaves, so which leaves pair is immaterial."""
    grad_leaves = [x for x in jax.tree.leaves(grads) if _is_inexact(x)]
    param_leaves = [x for x in jax.tree.leaves(new_params) if _is_inexact(x)]
    pairable = len(grad_leaves) == len(param_leaves) and all(
        jnp.shape(g) == jnp.shape(p) and _is_real_float(g) and _is_real_float(p)
        for g, p in zip(grad_leaves, param_leaves, strict=True)
    )
    if pairable:
        return [_pair_check(g, p) for g, p in zip(grad_leaves, param_leaves, strict=True)]
    return [_grad_check(g) for g in grad_leaves] + [_param_check(p) for p in param_leaves]


def check_step(loss: jax.Array, grads: Any, new_params: Any) -> StepCheck:
    """The `nonfinite` code and the gradients' global norm of one step; jittable.

    The code's bits are those of `jnp.isfinite(loss)`, `all_finite(grads)` and
    `all_finite(new_params)`; the norm is `optax.global_norm(grads)` up to float rounding.
    Each pair of (gradient, updated parameter) leaves is read once (see the module
    docstring for why that matters on CPU).
    """
    checks = _leaf_checks(grads, new_params)
    if checks:
        grad_sq = jnp.sum(jnp.stack([jnp.asarray(c.grad_sq) for c in checks]))
        grads_ok = jnp.all(jnp.stack([c.grads_finite for c in checks]))
        params_ok = jnp.all(jnp.stack([c.params_finite for c in checks]))
    else:
        grad_sq, grads_ok, params_ok = jnp.zeros((), jnp.float32), True, True
    bits = [(jnp.isfinite(loss), LOSS), (grads_ok, GRADIENTS), (params_ok, PARAMETERS)]
    code = sum(jnp.where(ok, 0, bit) for ok, bit in bits).astype(jnp.int32)
    return StepCheck(code=code, grad_norm=jnp.sqrt(grad_sq))


def nonfinite_code(loss: jax.Array, grads: Any, new_params: Any) -> jax.Array:
    """The `nonfinite` metric: LOSS | GRADIENTS | PARAMETERS bits of what is not finite."""
    return check_step(loss, grads, new_params).code


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
