"""Optimisers from `OptimConfig`: optax SGD, RMSProp, Adam, AdamW, their schedules, clipping.

`make_optimizer(config, total_steps)` builds

    chain(clip_by_global_norm(grad_clip_norm),      # only if grad_clip_norm is set
          inject_hyperparams(<optimiser>)(learning_rate=<schedule>, ...),
          scale_by_plateau())                       # only for schedule="plateau"

The optimiser sits inside `optax.inject_hyperparams`, so its hyper-parameters live in the
optimiser state: `current_learning_rate(opt_state)` reads the learning rate for logging
(`effective_learning_rate` inside jit).

Reduce-on-plateau (the MURA paper: learning rate / 10 whenever the holdout loss stops
improving) is driven by evaluations, not by train steps, so it is split in two:

* `scale_by_plateau()` is the last element of the chain. Its state is optax's
  `ReduceLROnPlateauState` (best loss, evaluations without improvement, current `scale`, ...)
  and its update multiplies every update by `scale`, leaving the state alone. The state is
  part of the optimiser state, so it is checkpointed and restored with it.
* After each holdout evaluation the trainer calls

      opt_state = observe_holdout_loss(opt_state, holdout_loss, config.optim)

  which runs `optax.contrib.reduce_on_plateau`'s logic on that state (`plateau_update`):
  after `plateau_patience` evaluations in a row without a relative improvement of
  `PLATEAU_RTOL`, `scale` is multiplied by `decay_factor` (never below
  `min_learning_rate / learning_rate`) and the count restarts. For any other schedule it
  returns `opt_state` unchanged, so the trainer can call it unconditionally.

Scaling the updates is the same as scaling the learning rate for SGD, Adam and AdamW (whose
updates are the learning rate times a function of the gradients); for RMSProp with momentum
it also scales the momentum already accumulated, as PyTorch's and Keras's RMSProp do.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax.contrib import ReduceLROnPlateauState

from murajax.config import OptimConfig

OPTIMIZERS: tuple[str, ...] = ("sgd", "rmsprop", "adam", "adamw")
SCHEDULES: tuple[str, ...] = ("constant", "warmup_cosine", "step", "plateau")

PLATEAU_RTOL = 1e-4
"""A holdout loss improves on the best so far if it is below (1 - PLATEAU_RTOL) * best."""

PlateauState = ReduceLROnPlateauState


# --------------------------------------------------------------------------- schedules


def make_schedule(config: OptimConfig, total_steps: int) -> optax.Schedule:
    """The learning rate as a function of the step, for `config.schedule`.

    - "constant" and "plateau": `learning_rate` (plateau scales it through `scale_by_plateau`).
    - "warmup_cosine": linear from 0 to `learning_rate` over `warmup_steps`, then a cosine
      down to `min_learning_rate` at `total_steps`.
    - "step": `learning_rate * decay_factor ** (step // decay_every)`, floored at
      `min_learning_rate` if that is > 0.

    `warmup_steps` applies to "warmup_cosine" only.
    """
    lr = config.learning_rate
    if config.schedule in ("constant", "plateau"):
        return optax.constant_schedule(lr)
    if config.schedule == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=lr,
            warmup_steps=config.warmup_steps,
            decay_steps=max(total_steps, config.warmup_steps + 1),
            end_value=config.min_learning_rate,
        )
    if config.schedule == "step":
        return optax.exponential_decay(
            init_value=lr,
            transition_steps=config.decay_every,
            decay_rate=config.decay_factor,
            staircase=True,
            end_value=config.min_learning_rate or None,
        )
    raise ValueError(f"unknown schedule {config.schedule!r}: expected one of {SCHEDULES}")


# --------------------------------------------------------------------------- plateau


def scale_by_plateau() -> optax.GradientTransformation:
    """Multiplies updates by the plateau `scale` held in its (`PlateauState`) state.

    The state only changes through `plateau_update` / `observe_holdout_loss`.
    """

    def init_fn(params: optax.Params) -> PlateauState:
        return PlateauState(
            best_value=jnp.asarray(jnp.inf, jnp.float32),
            plateau_count=jnp.asarray(0, jnp.int32),
            scale=jnp.asarray(1.0, jnp.float32),
            cooldown_count=jnp.asarray(0, jnp.int32),
            count=jnp.asarray(0, jnp.int32),
            avg_value=jnp.asarray(0.0, jnp.float32),
        )

    def update_fn(
        updates: optax.Updates, state: PlateauState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, PlateauState]:
        del params
        updates = jax.tree.map(lambda u: (state.scale * u).astype(u.dtype), updates)
        return updates, state

    return optax.GradientTransformation(init_fn, update_fn)


def plateau_update(
    state: PlateauState,
    holdout_loss: float | jax.Array,
    *,
    factor: float,
    patience: int,
    min_scale: float = 0.0,
    rtol: float = PLATEAU_RTOL,
) -> tuple[PlateauState, jax.Array]:
    """One holdout evaluation's step of reduce-on-plateau: returns (new state, new scale).

    Uses `optax.contrib.reduce_on_plateau` (one value per step, no cooldown): the loss
    improves if below (1 - rtol) * best; after `patience` evaluations in a row that do not,
    scale *= factor (not below `min_scale`). Pure and jittable.
    """
    rule = optax.contrib.reduce_on_plateau(
        factor=factor, patience=patience, rtol=rtol, min_scale=min_scale, accumulation_size=1
    )
    _, new_state = rule.update({}, state, value=jnp.asarray(holdout_loss, jnp.float32))
    return new_state, new_state.scale


def _is_plateau_state(x: Any) -> bool:
    return isinstance(x, PlateauState)


def observe_holdout_loss(
    opt_state: optax.OptState, holdout_loss: float | jax.Array, config: OptimConfig
) -> optax.OptState:
    """Feeds a holdout loss to the plateau schedule inside `opt_state`; returns the new state.

    Call after each holdout evaluation. A no-op unless `config.schedule == "plateau"`. A state
    replicated over devices (pmap: a leading device axis) is updated on every replica alike.
    """
    if config.schedule != "plateau":
        return opt_state
    update = lambda s: plateau_update(  # noqa: E731
        s,
        holdout_loss,
        factor=config.decay_factor,
        patience=config.plateau_patience,
        min_scale=min(1.0, config.min_learning_rate / config.learning_rate),
    )[0]

    def step(state: Any) -> Any:
        if not _is_plateau_state(state):
            return state
        return jax.vmap(update)(state) if jnp.ndim(state.scale) else update(state)

    return jax.tree.map(step, opt_state, is_leaf=_is_plateau_state)


# --------------------------------------------------------------------------- optimisers


def _decay_kernels_only(params: optax.Params) -> Any:
    """AdamW's weight-decay mask: matrices and conv kernels (ndim >= 2), not biases or BN."""
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def make_base_optimizer(
    config: OptimConfig, learning_rate: float | optax.Schedule
) -> optax.GradientTransformation:
    """`config.name`'s optax optimiser, its hyper-parameters injected into its state."""
    momentum = config.momentum or None  # 0: no momentum trace at all
    if config.name == "sgd":
        return optax.inject_hyperparams(optax.sgd, static_args=("nesterov",))(
            learning_rate=learning_rate, momentum=momentum, nesterov=config.nesterov
        )
    if config.name == "rmsprop":
        return optax.inject_hyperparams(optax.rmsprop, static_args=("nesterov",))(
            learning_rate=learning_rate,
            decay=config.decay,
            eps=config.eps,
            momentum=momentum,
            nesterov=config.nesterov,
        )
    if config.name == "adam":
        return optax.inject_hyperparams(optax.adam)(
            learning_rate=learning_rate, b1=config.b1, b2=config.b2, eps=config.eps
        )
    if config.name == "adamw":
        return optax.inject_hyperparams(optax.adamw, static_args=("mask",))(
            learning_rate=learning_rate,
            b1=config.b1,
            b2=config.b2,
            eps=config.eps,
            weight_decay=config.weight_decay,
            mask=_decay_kernels_only,
        )
    raise ValueError(f"unknown optimizer {config.name!r}: expected one of {OPTIMIZERS}")


def make_optimizer(
    config: OptimConfig, total_steps: int, param_labels: Any = None
) -> optax.GradientTransformation:
    """The whole optimiser for `config`: clipping, optimiser with schedule, plateau scale.

    `total_steps` (the training length) is the cosine schedule's horizon. See the module
    docstring for how the trainer drives the "plateau" schedule.

    `param_labels` (a pytree of labels like the params, or a function of the params giving
    one; see `murajax.freeze.param_labels`) freezes and scales parts of the model: the
    optimiser becomes

        chain(zero "frozen" gradients, clip_by_global_norm,   # only if grad_clip_norm is set
              multi_transform({"trainable": <optimiser>,
                               "backbone": chain(<optimiser>, scale(backbone_lr_multiplier)),
                               "frozen": set_to_zero()}, param_labels),
              scale_by_plateau())                            # only for schedule="plateau"

    so frozen parameters get no update (nor weight decay) and do not count towards the
    clipping norm. Both optimiser copies inject the same (head) learning rate, which is what
    `effective_learning_rate` reports.
    """
    base = make_base_optimizer(config, make_schedule(config, total_steps))
    parts = []
    if param_labels is not None:
        if config.grad_clip_norm is not None:
            parts.append(
                optax.multi_transform(
                    {
                        "frozen": optax.set_to_zero(),
                        "trainable": optax.identity(),
                        "backbone": optax.identity(),
                    },
                    param_labels,
                )
            )
            parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
        base = optax.multi_transform(
            {
                "trainable": base,
                "backbone": optax.chain(base, optax.scale(config.backbone_lr_multiplier)),
                "frozen": optax.set_to_zero(),
            },
            param_labels,
        )
    elif config.grad_clip_norm is not None:
        parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
    parts.append(base)
    if config.schedule == "plateau":
        parts.append(scale_by_plateau())
    return optax.chain(*parts)


# --------------------------------------------------------------------------- inspection


class _Found(NamedTuple):
    learning_rate: jax.Array | None
    scale: jax.Array


def _find(opt_state: optax.OptState) -> _Found:
    is_state = lambda x: (
        _is_plateau_state(x)
        or isinstance(  # noqa: E731
            x, optax.InjectHyperparamsState | optax.InjectStatefulHyperparamsState
        )
    )
    lr, scale = None, jnp.ones((), jnp.float32)
    for state in jax.tree.leaves(opt_state, is_leaf=is_state):
        if _is_plateau_state(state):
            scale = state.scale
        elif is_state(state) and "learning_rate" in state.hyperparams and lr is None:
            lr = state.hyperparams["learning_rate"]
    return _Found(lr, scale)


def effective_learning_rate(opt_state: optax.OptState) -> jax.Array:
    """The effective learning rate (injected rate x plateau scale) as an array; jittable.

    The injected rate is that of the most recent update (before any update: of the first).
    """
    found = _find(opt_state)
    if found.learning_rate is None:
        raise ValueError("opt_state has no injected learning_rate (not from make_optimizer?)")
    return found.learning_rate * found.scale


def current_learning_rate(opt_state: optax.OptState) -> float:
    """`effective_learning_rate(opt_state)` as a float (of the first replica, if replicated)."""
    return float(np.asarray(effective_learning_rate(opt_state)).reshape(-1)[0])
