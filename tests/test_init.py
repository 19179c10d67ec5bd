"""Glorot-uniform kernels (the true bound) and zero biases, through explicit key plumbing."""

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from murajax import initializers, models
from murajax.initializers import glorot_uniform_bound

X = jnp.zeros((1, 8, 8, 1))


MODEL = models.create("cnn", widths=(16, 32), dense=(32,), pooling="avg")
_init = jax.jit(MODEL.init)  # compiled once: faster than eager op-by-op on 2 CPU cores


def init_cnn(seed: int, dropout_seed: int = 1) -> dict:
    rngs = {"params": jax.random.key(seed), "dropout": jax.random.key(dropout_seed)}
    return _init(rngs, X)["params"]


def test_glorot_bound_formula():
    # 3x3 conv, 16 -> 32 channels: fan_in = 9 * 16, fan_out = 9 * 32.
    assert glorot_uniform_bound((3, 3, 16, 32)) == pytest.approx(math.sqrt(6 / (144 + 288)))
    assert glorot_uniform_bound((64, 10)) == pytest.approx(math.sqrt(6 / 74))
    assert initializers.glorot_fans((5, 3, 2, 7)) == (30, 105)
    # Not PyTorch's Linear default 1/sqrt(fan_in) (what the thesis states).
    assert glorot_uniform_bound((64, 10)) != pytest.approx(1 / math.sqrt(64))
    with pytest.raises(ValueError):
        glorot_uniform_bound((10,))


@pytest.mark.parametrize("shape", [(3, 3, 16, 32), (256, 64)])
def test_library_glorot_is_bit_identical_to_jax(shape):
    key = jax.random.key(7)
    reference = jax.nn.initializers.glorot_uniform()(key, shape, jnp.float32)
    chex.assert_trees_all_equal(initializers.glorot_uniform(key, shape), reference)


@pytest.mark.parametrize("shape", [(3, 3, 16, 32), (256, 64)])
def test_flax_glorot_uniform_matches_the_bound(shape):
    w = initializers.kernel_init(jax.random.key(0), shape, jnp.float32)
    bound = glorot_uniform_bound(shape)
    assert float(jnp.max(jnp.abs(w))) <= bound
    assert float(jnp.max(jnp.abs(w))) > 0.99 * bound  # fills the interval
    np.testing.assert_allclose(float(jnp.var(w)), bound**2 / 3, rtol=0.05)
    np.testing.assert_allclose(float(jnp.mean(w)), 0.0, atol=0.02 * bound)


def test_cnn_kernels_are_glorot_uniform_and_biases_zero():
    params = init_cnn(0)
    kernels = {
        "/".join(str(getattr(k, "key", k)) for k in path): leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
        if path[-1].key == "kernel"
    }
    assert len(kernels) == 4
    for name, kernel in kernels.items():
        bound = glorot_uniform_bound(kernel.shape)
        assert float(jnp.max(jnp.abs(kernel))) <= bound, name
    # The spread, not just the bound: variance of U[-b, b] is b^2 / 3.
    for name in ("block2_conv1/kernel", "dense1/kernel"):
        kernel = kernels[name]
        bound = glorot_uniform_bound(kernel.shape)
        np.testing.assert_allclose(float(jnp.var(kernel)), bound**2 / 3, rtol=0.15)
    biases = [
        leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
        if path[-1].key == "bias"
    ]
    assert len(biases) == 4
    for bias in biases:
        chex.assert_trees_all_equal(bias, jnp.zeros_like(bias))


def test_batch_norm_starts_as_identity():
    model = models.create("cnn", widths=(4,), dense=(), batch_norm=True)
    variables = model.init({"params": jax.random.key(0)}, X)
    bn = variables["params"]["block1_bn1"]
    chex.assert_trees_all_equal(bn, {"scale": jnp.ones(4), "bias": jnp.zeros(4)})


def test_same_key_same_params_different_key_different_params():
    chex.assert_trees_all_equal(init_cnn(0), init_cnn(0))
    chex.assert_trees_all_equal(init_cnn(0, dropout_seed=1), init_cnn(0, dropout_seed=2))
    different = jax.tree.map(lambda a, b: not np.array_equal(a, b), init_cnn(0), init_cnn(1))
    kernels_differ = [
        d for p, d in jax.tree_util.tree_flatten_with_path(different)[0] if p[-1].key == "kernel"
    ]
    assert all(kernels_differ)


def test_dense_layer_uses_the_library_initialisers():
    layer = nn.Dense(64, kernel_init=initializers.kernel_init, bias_init=initializers.bias_init)
    params = layer.init(jax.random.key(0), jnp.zeros((1, 256)))["params"]
    bound = glorot_uniform_bound((256, 64))
    assert float(jnp.max(jnp.abs(params["kernel"]))) <= bound
    np.testing.assert_allclose(float(jnp.var(params["kernel"])), bound**2 / 3, rtol=0.1)
    chex.assert_trees_all_equal(params["bias"], jnp.zeros(64))
