"""murajax.models.layers.max_pool_2x2: flax's max-pool, values and gradients, ties included."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from murajax.models.layers import max_pool_2x2


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


def test_max_pool_2x2_rejects_non_nhwc():
    with pytest.raises(ValueError, match="expects NHWC input"):
        max_pool_2x2(jnp.zeros((4, 4, 3)))
