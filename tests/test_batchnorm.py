"""`BatchNormReLU` against Flax's `nn.BatchNorm` followed by `nn.relu`: the same variables, and
values, running averages and gradients equal to float rounding."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from murajax.models.batchnorm import BatchNormReLU, bn_relu

MOMENTUM, EPSILON = 0.9, 1e-3


def _flax(x, train):
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=MOMENTUM,
        epsilon=EPSILON,
        dtype=x.dtype,
        param_dtype=jnp.float32,
    )


def _variables(channels: int) -> dict:
    return {
        "params": {
            "scale": jnp.linspace(0.5, 2.0, channels),
            "bias": jnp.linspace(-1, 1, channels),
        },
        "batch_stats": {"mean": jnp.full(channels, 0.3), "var": jnp.full(channels, 1.7)},
    }


def _loss_and_grads(apply, variables, x, weights):
    def loss(params, x):
        y, updates = apply({"params": params, "batch_stats": variables["batch_stats"]}, x)
        return jnp.sum(y.astype(jnp.float32) * weights), updates

    return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(variables["params"], x)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_training_values_and_gradients_match_flax(dtype):
    x = (jax.random.normal(jax.random.key(0), (4, 5, 6, 16)) * 3 + 1).astype(dtype)
    x = x.at[0, 0, 0, :].set(0)  # some exact zeros before the ReLU's edge
    weights = jax.random.normal(jax.random.key(1), x.shape)
    variables = _variables(16)

    def flax_apply(v, x):
        y, updates = _flax(x, True).apply(v, x, mutable=["batch_stats"])
        return nn.relu(y), updates

    def ours_apply(v, x):
        return BatchNormReLU(MOMENTUM, EPSILON, dtype).apply(v, x, True, mutable=["batch_stats"])

    (loss_ref, stats_ref), grads_ref = jax.jit(_loss_and_grads, static_argnums=0)(
        flax_apply, variables, x, weights
    )
    (loss, stats), grads = jax.jit(_loss_and_grads, static_argnums=0)(
        ours_apply, variables, x, weights
    )
    chex.assert_trees_all_close(stats, stats_ref, rtol=1e-6)  # the running averages are Flax's
    # The statistics are summed in another order; in bfloat16 XLA may also drop Flax's
    # float32 -> bfloat16 -> float32 round trip inside a fusion.
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-6 if dtype == "float32" else 1e-3)
    tolerance = 1e-5 if dtype == "float32" else 1e-2
    chex.assert_trees_all_close(grads, grads_ref, atol=tolerance, rtol=tolerance)


def test_inference_uses_the_running_averages_as_flax():
    x = jax.random.normal(jax.random.key(2), (3, 4, 4, 8))
    variables = _variables(8)
    ours = BatchNormReLU(MOMENTUM, EPSILON).apply(variables, x, False)
    reference = nn.relu(_flax(x, False).apply(variables, x))
    np.testing.assert_array_equal(ours, reference)


def test_variables_are_flax_batch_norm_variables():
    x = jnp.ones((2, 3, 3, 5))
    ours = jax.tree.map(jnp.shape, BatchNormReLU().init(jax.random.key(0), x, True))
    reference = jax.tree.map(jnp.shape, _flax(x, True).init(jax.random.key(0), x))
    assert ours == reference


def test_gradient_with_respect_to_input_is_numerically_right():
    x = jax.random.normal(jax.random.key(3), (2, 3, 3, 4), jnp.float32)
    scale, bias = jnp.array([1.0, 0.5, 2.0, 1.5]), jnp.array([0.1, -0.2, 0.3, 0.0])
    jax.test_util.check_grads(
        lambda x, s, b: bn_relu(x, s, b, EPSILON)[0], (x, scale, bias), order=1, modes=["rev"]
    )
