"""The pure steps: one optimiser step, one evaluation step, and their state.

    create_train_state(model, tx, key, input_shape) -> TrainState
    train_step(state, batch, *, model, tx, ...) -> (state, metrics)     jittable, pmappable
    eval_step(state, batch, *, model) -> {'prob', 'loss'}
    ensemble_eval_step(states, batch, *, model) -> {'prob', 'loss'}    mean of the members
    make_eval_fn(model, members) -> jitted (states, batch) -> {'prob', 'loss'}

Steps are pure functions of their inputs, so data parallelism (`murajax.parallel`) only
changes how they are compiled, never what they compute, and evaluation (`murajax.evaluation`)
is handed an `eval_fn` rather than a trainer.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from murajax import losses, nonfinite, optim
from murajax.config import ModelConfig
from murajax.models import ModelSpec, pretrained_variables
from murajax.models.layers import with_bn_axis

Batch = dict[str, Any]
Metrics = dict[str, jax.Array]
EvalFn = Callable[[Any, Batch], dict[str, jax.Array]]


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training; a pytree that orbax saves as it is."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    key: jax.Array  # typed PRNG key; step randomness is fold_in(key, step)


def variables(params: Any, batch_stats: Any) -> dict[str, Any]:
    """The Flax variables dict of a model: `params`, and `batch_stats` if it has any."""
    return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def state_variables(state: TrainState) -> dict[str, Any]:
    """`variables` of a train state."""
    return variables(state.params, state.batch_stats)


def model_kwargs(batch: Batch) -> dict[str, Any]:
    """The keyword inputs a model takes besides the images: a study batch's `view_mask`
    (which of its (B, V) views are real) for study-level models such as "multiview"."""
    return {"view_mask": batch["view_mask"]} if "view_mask" in batch else {}


def create_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    key: jax.Array,
    input_shape: tuple,
    model_config: ModelConfig | ModelSpec | None = None,
) -> TrainState:
    """Initialises parameters (Glorot-uniform kernels, zero biases) from `key`.

    With `model_config.weights` set (a `ModelConfig`, or the `ModelSpec` of one), the
    backbone then comes from that Keras file (`models.pretrained_variables`); the head stays
    as initialised.
    """
    fields = model_config.config if isinstance(model_config, ModelSpec) else model_config
    pretrained = fields is not None and fields.weights is not None

    # One jitted function, so one compilation rather than one per op, for the key split, the
    # model's init and (unless a Keras file replaces the backbone first) the optimiser's init:
    # the same values as eagerly. DenseNet-169's eager init took 75 s on 2 CPU cores, jitted
    # 20 s; VGG16's eager optimiser init alone compiled for 1 s.
    @jax.jit
    def init(key: jax.Array) -> tuple[Any, Any, jax.Array]:
        init_key, dropout_key, train_key = jax.random.split(key, 3)
        initial = model.init(
            {"params": init_key, "dropout": dropout_key}, jnp.zeros(input_shape, jnp.float32)
        )
        opt_state = None if pretrained else tx.init(initial["params"])
        return initial, opt_state, train_key

    initial, opt_state, train_key = init(key)
    if pretrained:
        initial = pretrained_variables(model_config, initial)
        opt_state = jax.jit(tx.init)(initial["params"])
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=initial["params"],
        batch_stats=initial.get("batch_stats", {}),
        opt_state=opt_state,
        key=train_key,
    )


def train_step(
    state: TrainState,
    batch: Batch,
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    weight_table: jax.Array,
    label_smoothing: float,
    l2_weight: float,
    batch_stats_mask: Any = None,
    skip_nonfinite: bool = False,
    axis_name: str | None = None,
) -> tuple[TrainState, Metrics]:
    """One optimiser step on `batch` ({'image', 'label', 'group'}); pure and jittable.

    `weight_table[group, label]` is each example's loss weight (class weighting).
    `batch_stats_mask` (`freeze.batch_stats_mask`: a pytree like `batch_stats` of Python
    bools) keeps the running statistics where it is False (frozen BatchNorm layers) as they
    were; None updates them all.

    The metric `nonfinite` is 0 for a good step, else the `murajax.nonfinite` bits of what
    was not finite (loss, gradients, updated parameters); `skip_nonfinite` then keeps the
    params, batch statistics and optimiser state as they were (the step still counts).

    `axis_name`: inside `jax.pmap` over that axis (`murajax.parallel`), `batch` is one
    device's equal share: the gradients, running statistics and metrics are averaged over the
    axis (the loss is a mean over equal shares, so the average is the global batch's loss);
    each device draws its own dropout masks; BatchNorm normalises with the whole batch's
    statistics (`models.layers.with_bn_axis`).
    """
    dropout_key = jax.random.fold_in(state.key, state.step)
    if axis_name is not None:
        dropout_key = jax.random.fold_in(dropout_key, jax.lax.axis_index(axis_name))
        model = with_bn_axis(model, axis_name)

    def loss_fn(params: Any) -> tuple[jax.Array, tuple[Any, jax.Array]]:
        logits, updates = model.apply(
            variables(params, state.batch_stats),
            batch["image"],
            **model_kwargs(batch),
            train=True,
            rngs={"dropout": dropout_key},
            mutable=["batch_stats"] if state.batch_stats else [],
        )
        loss = losses.cross_entropy_loss(
            logits,
            batch["label"],
            class_weights=weight_table,
            groups=batch["group"],
            label_smoothing=label_smoothing,
        )
        if l2_weight:
            loss = loss + l2_weight * losses.l2_penalty(params)
        return loss, (updates.get("batch_stats", state.batch_stats), logits)

    (loss, (batch_stats, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    if axis_name is not None:
        grads, batch_stats, loss, accuracy = jax.lax.pmean(
            (grads, batch_stats, loss, accuracy), axis_name
        )
    if batch_stats_mask is not None and state.batch_stats:
        batch_stats = jax.tree.map(
            lambda keep_new, new, old: new if keep_new else old,
            batch_stats_mask,
            batch_stats,
            state.batch_stats,
        )
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    check = nonfinite.check_step(loss, grads, params)  # nonfinite bits and grad_norm, one pass
    code = check.code
    if skip_nonfinite:
        params, batch_stats, opt_state = nonfinite.keep_if(
            code == 0,
            (params, batch_stats, opt_state),
            (state.params, state.batch_stats, state.opt_state),
        )
    metrics = {
        "loss": loss,
        "accuracy": accuracy,
        "grad_norm": check.grad_norm,
        "learning_rate": optim.effective_learning_rate(opt_state),
        nonfinite.CODE_KEY: code,
    }
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        batch_stats=batch_stats,
        opt_state=opt_state,
    )
    return new_state, metrics


def reported_probabilities(probs: jax.Array) -> jax.Array:
    """What evaluation keeps of (B, K) class probabilities: for two classes the probability
    of class 1 (B,) (MURA's abnormal), as binary scores and files use it; else all (B, K)."""
    return probs[:, 1] if probs.shape[-1] == 2 else probs


def _probabilities(state: TrainState, batch: Batch, model: nn.Module) -> jax.Array:
    """The model's (B, K) class probabilities for `batch`, in float32, in inference mode."""
    logits = model.apply(state_variables(state), batch["image"], **model_kwargs(batch), train=False)
    return jax.nn.softmax(logits.astype(jnp.float32))


def eval_step(state: TrainState, batch: Batch, *, model: nn.Module) -> dict[str, jax.Array]:
    """Class probabilities (`reported_probabilities`: MURA's abnormality probability) and
    unweighted cross-entropy of each image (of each study, for a study batch); pure."""
    logits = model.apply(
        state_variables(state), batch["image"], **model_kwargs(batch), train=False
    ).astype(jnp.float32)
    return {
        "prob": reported_probabilities(jax.nn.softmax(logits)),
        "loss": optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]),
    }


def ensemble_eval_step(
    states: Sequence[TrainState], batch: Batch, *, model: nn.Module
) -> dict[str, jax.Array]:
    """`eval_step` for an ensemble: the abnormal probability is the mean of the members'
    probabilities, the loss the cross-entropy of that mean; pure."""
    mean = jnp.mean(jnp.stack([_probabilities(s, batch, model) for s in states]), axis=0)
    label = jnp.asarray(batch["label"], jnp.int32)
    picked = jnp.take_along_axis(mean, label[:, None], axis=1)[:, 0]
    return {"prob": reported_probabilities(mean), "loss": -jnp.log(jnp.clip(picked, 1e-12, 1.0))}


def make_eval_fn(model: nn.Module, members: int = 1) -> EvalFn:
    """A jitted `(states, batch) -> {'prob', 'loss'}` over a tuple of `members` states.

    One member: exactly `eval_step` (so re-evaluating a checkpoint reproduces the training
    run's numbers); several: `ensemble_eval_step`, one data pass for all members.
    """
    if members == 1:
        step = make_state_eval_fn(model)
        return lambda states, batch: step(states[0], batch)
    return jax.jit(functools.partial(ensemble_eval_step, model=model))


def make_state_eval_fn(model: nn.Module) -> EvalFn:
    """A jitted `eval_step` of one state: `(state, batch) -> {'prob', 'loss'}`."""
    return jax.jit(functools.partial(eval_step, model=model))
