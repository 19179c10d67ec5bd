"""make_optimizer: optimisers, schedules, clipping and the holdout-driven plateau."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from murajax import optim
from murajax.config import OptimConfig

PARAMS = {
    "conv": {"kernel": jnp.linspace(-1.0, 1.0, 12).reshape(2, 2, 1, 3), "bias": jnp.ones(3)},
    "dense": {"kernel": jnp.linspace(0.5, -0.5, 6).reshape(3, 2), "bias": jnp.zeros(2)},
}


def grads_at(step: int) -> dict:
    keys = jax.random.split(jax.random.key(step), 4)
    leaves, treedef = jax.tree.flatten(PARAMS)
    return jax.tree.unflatten(
        treedef, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
    )


def run(tx: optax.GradientTransformation, steps: int = 3) -> tuple[dict, optax.OptState]:
    params, state = PARAMS, tx.init(PARAMS)
    update = jax.jit(tx.update)
    for step in range(steps):
        updates, state = update(grads_at(step), state, params)
        params = optax.apply_updates(params, updates)
    return params, state


def kernels_only(params):
    return jax.tree.map(lambda p: p.ndim >= 2, params)


CASES = {
    "sgd": (
        OptimConfig(name="sgd", learning_rate=0.1, momentum=0.8, nesterov=True),
        optax.sgd(0.1, momentum=0.8, nesterov=True),
    ),
    "sgd_plain": (
        OptimConfig(name="sgd", learning_rate=0.1, momentum=0.0),
        optax.sgd(0.1),
    ),
    "rmsprop": (
        OptimConfig(name="rmsprop", learning_rate=0.01, decay=0.8, eps=1e-6, momentum=0.5),
        optax.rmsprop(0.01, decay=0.8, eps=1e-6, momentum=0.5),
    ),
    "adam": (
        OptimConfig(name="adam", learning_rate=0.01, b1=0.8, b2=0.99, eps=1e-7),
        optax.adam(0.01, b1=0.8, b2=0.99, eps=1e-7),
    ),
    "adamw": (
        OptimConfig(name="adamw", learning_rate=0.01, b1=0.8, b2=0.99, eps=1e-7, weight_decay=0.1),
        optax.adamw(0.01, b1=0.8, b2=0.99, eps=1e-7, weight_decay=0.1, mask=kernels_only),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_optimizer_matches_direct_optax(case):
    config, reference = CASES[case]
    ours, state = run(optim.make_optimizer(config, total_steps=100))
    theirs, _ = run(reference)
    chex.assert_trees_all_close(ours, theirs, rtol=1e-6, atol=1e-7)  # hyper-params as arrays: ulps
    assert optim.current_learning_rate(state) == pytest.approx(config.learning_rate)


def test_adamw_decays_kernels_not_biases():
    config = OptimConfig(name="adamw", learning_rate=0.1, weight_decay=0.5)
    tx = optim.make_optimizer(config, total_steps=10)
    zero_grads = jax.tree.map(jnp.zeros_like, PARAMS)
    updates, _ = tx.update(zero_grads, tx.init(PARAMS), PARAMS)
    chex.assert_trees_all_close(updates["dense"]["kernel"], -0.1 * 0.5 * PARAMS["dense"]["kernel"])
    chex.assert_trees_all_equal(updates["conv"]["bias"], jnp.zeros(3))


def schedule_values(config: OptimConfig, total_steps: int, steps: list[int]) -> list[float]:
    schedule = optim.make_schedule(config, total_steps)
    return [float(schedule(s)) for s in steps]


def test_constant_schedule():
    config = OptimConfig(learning_rate=0.01, schedule="constant")
    np.testing.assert_allclose(schedule_values(config, 100, [0, 50, 99]), [0.01] * 3)


def test_warmup_cosine_schedule():
    config = OptimConfig(
        learning_rate=0.1, schedule="warmup_cosine", warmup_steps=10, min_learning_rate=0.001
    )
    values = schedule_values(config, 110, [0, 5, 10, 60, 110, 200])
    middle = 0.001 + (0.1 - 0.001) * 0.5  # half-way through the cosine
    np.testing.assert_allclose(values, [0.0, 0.05, 0.1, middle, 0.001, 0.001], rtol=1e-5)
    no_warmup = OptimConfig(learning_rate=0.1, schedule="warmup_cosine", warmup_steps=0)
    np.testing.assert_allclose(schedule_values(no_warmup, 100, [0, 100]), [0.1, 0.0], atol=1e-7)


def test_step_schedule():
    config = OptimConfig(learning_rate=0.1, schedule="step", decay_every=10, decay_factor=0.5)
    values = schedule_values(config, 100, [0, 9, 10, 19, 20, 35])
    np.testing.assert_allclose(values, [0.1, 0.1, 0.05, 0.05, 0.025, 0.0125], rtol=1e-6)
    floored = OptimConfig(
        learning_rate=0.1,
        schedule="step",
        decay_every=10,
        decay_factor=0.1,
        min_learning_rate=0.005,
    )
    np.testing.assert_allclose(schedule_values(floored, 100, [10, 20, 90]), [0.01, 0.005, 0.005])


def test_learning_rate_in_the_state_follows_the_schedule():
    config = OptimConfig(
        name="sgd", learning_rate=0.1, schedule="step", decay_every=2, decay_factor=0.5
    )
    tx = optim.make_optimizer(config, total_steps=10)
    state = tx.init(PARAMS)
    assert optim.current_learning_rate(state) == pytest.approx(0.1)
    seen = []
    for step in range(5):
        _, state = tx.update(grads_at(step), state, PARAMS)
        seen.append(optim.current_learning_rate(state))  # the rate the update just used
    np.testing.assert_allclose(seen, [0.1, 0.1, 0.05, 0.05, 0.025], rtol=1e-6)
    rate = jax.jit(optim.effective_learning_rate)(state)
    chex.assert_trees_all_close(rate, jnp.float32(0.025))


def test_gradient_clipping():
    big = jax.tree.map(lambda p: jnp.full_like(p, 10.0), PARAMS)
    norm = float(optax.global_norm(big))
    for clip, expected_norm in [(1.0, 1.0), (None, norm)]:
        config = OptimConfig(name="sgd", learning_rate=1.0, momentum=0.0, grad_clip_norm=clip)
        tx = optim.make_optimizer(config, total_steps=10)
        updates, _ = tx.update(big, tx.init(PARAMS), PARAMS)
        np.testing.assert_allclose(float(optax.global_norm(updates)), expected_norm, rtol=1e-5)
    small = jax.tree.map(lambda p: jnp.full_like(p, 0.01), PARAMS)
    config = OptimConfig(name="sgd", learning_rate=1.0, momentum=0.0, grad_clip_norm=1.0)
    tx = optim.make_optimizer(config, total_steps=10)
    updates, _ = tx.update(small, tx.init(PARAMS), PARAMS)
    chex.assert_trees_all_close(updates, jax.tree.map(jnp.negative, small))  # below: untouched


# --------------------------------------------------------------------------- plateau


PLATEAU = OptimConfig(
    name="sgd",
    learning_rate=0.1,
    momentum=0.0,
    schedule="plateau",
    decay_factor=0.1,
    plateau_patience=2,
)


def sgd_step_size(tx: optax.GradientTransformation, state: optax.OptState) -> float:
    ones = jax.tree.map(jnp.ones_like, PARAMS)
    updates, _ = tx.update(ones, state, PARAMS)
    return -float(updates["dense"]["bias"][0])


def test_plateau_reduces_after_patience_non_improving_evaluations():
    tx = optim.make_optimizer(PLATEAU, total_steps=100)
    state = tx.init(PARAMS)
    # losses:   first, better, worse (1), equal (2: reduce), better, tiny gain (1), worse (2)
    losses = [1.0, 0.8, 0.9, 0.8, 0.5, 0.49999, 0.7]
    expected = [0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.001]
    seen, step_sizes = [], []
    for loss in losses:
        state = optim.observe_holdout_loss(state, loss, PLATEAU)
        seen.append(optim.current_learning_rate(state))
        step_sizes.append(sgd_step_size(tx, state))
    np.testing.assert_allclose(seen, expected, rtol=1e-5)
    np.testing.assert_allclose(step_sizes, expected, rtol=1e-5)  # the updates are scaled


def test_plateau_state_survives_training_steps_and_jit():
    tx = optim.make_optimizer(PLATEAU, total_steps=100)
    state = tx.init(PARAMS)
    observe = jax.jit(lambda state, loss: optim.observe_holdout_loss(state, loss, PLATEAU))
    for loss in (1.0, 1.0, 1.0):
        state = observe(state, loss)
    assert optim.current_learning_rate(state) == pytest.approx(0.01)
    for step in range(3):
        _, state = jax.jit(tx.update)(grads_at(step), state, PARAMS)
    assert optim.current_learning_rate(state) == pytest.approx(0.01)


def test_plateau_respects_min_learning_rate():
    config = OptimConfig(
        name="adam",
        learning_rate=0.1,
        schedule="plateau",
        decay_factor=0.1,
        plateau_patience=1,
        min_learning_rate=0.005,
    )
    tx = optim.make_optimizer(config, total_steps=100)
    state = tx.init(PARAMS)
    for _ in range(5):
        state = optim.observe_holdout_loss(state, 1.0, config)
    assert optim.current_learning_rate(state) == pytest.approx(0.005)


def test_plateau_update_low_level():
    state = optim.scale_by_plateau().init(PARAMS)
    scales = []
    for loss in (2.0, 3.0, 3.0, 3.0):
        state, scale = optim.plateau_update(state, loss, factor=0.5, patience=3)
        scales.append(float(scale))
    assert scales == [1.0, 1.0, 1.0, 0.5]
    assert float(state.best_value) == 2.0 and int(state.plateau_count) == 0


def test_observe_holdout_loss_is_a_no_op_without_plateau():
    config = OptimConfig(name="adam", schedule="constant")
    tx = optim.make_optimizer(config, total_steps=10)
    state = tx.init(PARAMS)
    assert optim.observe_holdout_loss(state, 1.0, config) is state


def test_replicated_plateau_state():
    tx = optim.make_optimizer(PLATEAU, total_steps=100)
    state = jax.tree.map(lambda x: jnp.stack([x, x]), tx.init(PARAMS))  # as pmap replicates
    for loss in (1.0, 1.0, 1.0):
        state = optim.observe_holdout_loss(state, loss, PLATEAU)
    plateau = [
        s
        for s in jax.tree.leaves(state, is_leaf=lambda s: isinstance(s, optim.PlateauState))
        if isinstance(s, optim.PlateauState)
    ][0]
    np.testing.assert_allclose(plateau.scale, [0.1, 0.1], rtol=1e-6)
    assert optim.current_learning_rate(state) == pytest.approx(0.01)
