"""murajax.models.layers.max_pool_2x2 and murajax.ops.max_pool: flax's max-pool, values and
gradients, ties included."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from murajax.models.layers import max_pool_2x2
from murajax.ops import max_pool


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (2, 7, 9, 3), (1, 2, 2, 1)])
def test_max_pool_2x2_equals_flax_max_pool_with_ties(shape, dtype):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 3, shape), dtype)  # small integers: many tied maxima
    out_shape = (shape[0], shape[1] // 2, shape[2] // 2, shape[3])
    weights = jnp.asarray(rng.standard_normal(out_shape), jnp.float32)

    def reference(x):
        return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")

    def loss(pool):
        return lambda x: jnp.sum(pool(x).astype(jnp.float32) * weights)

    chex.assert_trees_all_equal(max_pool_2x2(x), reference(x))
    chex.assert_trees_all_equal(jax.grad(loss(max_pool_2x2))(x), jax.grad(loss(reference))(x))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_max_pool_2x2_orders_signs_zeros_and_infinities_as_flax(dtype):
    """bfloat16 pools on integer keys: negatives, -0.0 tied with +0.0, and infinities must
    still give flax's values and gradients (its first maximum in row-major order)."""
    rng = np.random.default_rng(1)
    choices = np.array([-np.inf, -2.5, -1.0, -0.0, 0.0, 1.0, 2.5, np.inf], np.float32)
    x = jnp.asarray(rng.choice(choices, (3, 8, 10, 4)), dtype)
    weights = jnp.asarray(rng.standard_normal((3, 4, 5, 4)), jnp.float32)

    def reference(x):
        return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")

    def loss(pool):
        return lambda x: jnp.sum(
            jnp.where(jnp.isinf(pool(x)), 0, pool(x)).astype(jnp.float32) * weights
        )

    chex.assert_trees_all_equal(max_pool_2x2(x), reference(x))
    chex.assert_trees_all_equal(jax.grad(loss(max_pool_2x2))(x), jax.grad(loss(reference))(x))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_max_pool_2x2_propagates_nan(dtype):
    x = jnp.zeros((1, 4, 4, 2), dtype).at[0, 1, 2, 1].set(jnp.nan).at[0, 0, 0, 0].set(-jnp.nan)
    pooled = np.asarray(max_pool_2x2(x), np.float32)
    assert np.isnan(pooled[0, 0, 1, 1]) and np.isnan(pooled[0, 0, 0, 0])
    assert np.isnan(pooled).sum() == 2


def test_max_pool_2x2_rejects_non_nhwc():
    with pytest.raises(ValueError, match="expects NHWC input"):
        max_pool_2x2(jnp.zeros((4, 4, 3)))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize(
    ("shape", "window", "stride"),
    [((2, 114, 114, 3), 3, 2), ((2, 9, 10, 3), 3, 2), ((1, 7, 7, 2), 2, 1), ((1, 5, 5, 1), 5, 3)],
)
def test_max_pool_equals_flax_max_pool_with_ties(shape, window, stride, dtype):
    """`ops.max_pool` (DenseNet's 3x3 stride-2 pooling, overlapping windows): flax's values
    and gradients, each window's gradient at its first maximum in row-major order; small
    integers make ties common and every gradient sum exact."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 3, shape), dtype)

    def reference(x):
        return nn.max_pool(x, (window, window), strides=(stride, stride), padding="VALID")

    weights = jnp.asarray(rng.integers(-3, 4, reference(x).shape), jnp.float32)

    def loss(pool):
        return lambda x: jnp.sum(pool(x).astype(jnp.float32) * weights)

    def pooled(x):
        return max_pool(x, window, stride)

    chex.assert_trees_all_equal(pooled(x), reference(x))
    chex.assert_trees_all_equal(jax.grad(loss(pooled))(x), jax.grad(loss(reference))(x))


def test_max_pool_rejects_a_window_that_does_not_fit():
    with pytest.raises(ValueError, match=r"a 3x3 window \(stride 2\) does not fit input"):
        max_pool(jnp.zeros((1, 2, 8, 1)), 3, 2)
    with pytest.raises(ValueError, match="expects NHWC input"):
        max_pool(jnp.zeros((4, 4, 3)), 3, 2)
