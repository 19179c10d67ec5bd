"""The CNN, the reshape max-pool and the model registry."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from murajax import config as config_lib
from murajax import models, validation
from murajax.models import registry
from murajax.models.layers import max_pool_2x2

TINY = dict(widths=(4, 8), dense=(8,), dropout_rate=0.5)
IMAGES = jax.random.uniform(jax.random.key(1), (2, 16, 16, 1))


@functools.partial(jax.jit, static_argnums=0)
def _init(model: nn.Module, x: jax.Array, key: jax.Array) -> dict:
    keys = jax.random.split(key)
    return model.init({"params": keys[0], "dropout": keys[1]}, x)


def init(model: nn.Module, x: jax.Array = IMAGES, seed: int = 0) -> dict:
    """Jitted once per model: faster than compiling each op eagerly on 2 CPU cores."""
    return _init(model, x, jax.random.key(seed))


def shapes(model: nn.Module, x: jax.Array = IMAGES) -> dict:
    """The variables' shapes and dtypes, without computing them (fast)."""
    keys = jax.random.split(jax.random.key(0))
    return jax.eval_shape(lambda: model.init({"params": keys[0], "dropout": keys[1]}, x))


# --------------------------------------------------------------------------- max-pool


def reference_pool(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")


@pytest.mark.parametrize("shape", [(2, 6, 8, 3), (1, 7, 5, 2), (1, 3, 3, 1)])
def test_max_pool_matches_nn_max_pool_values_and_gradients(shape):
    x = jax.random.normal(jax.random.key(0), shape)  # continuous: no tied maxima
    cotangent = jax.random.normal(
        jax.random.key(1), (shape[0], shape[1] // 2, shape[2] // 2, shape[3])
    )

    @jax.jit
    def values_and_grads(x):
        vjp = lambda f: jax.vjp(f, x)  # noqa: E731
        (ours, ours_vjp), (ref, ref_vjp) = vjp(max_pool_2x2), vjp(reference_pool)
        return ours, ref, ours_vjp(cotangent)[0], ref_vjp(cotangent)[0]

    out, ref, grad, ref_grad = values_and_grads(x)
    chex.assert_shape(out, cotangent.shape)
    chex.assert_trees_all_equal(out, ref)
    chex.assert_trees_all_equal(grad, ref_grad)


def test_max_pool_ties_keep_the_window_gradient():
    x = jnp.zeros((1, 2, 2, 1))  # one window, four tied maxima
    g_ours = jax.grad(lambda x: max_pool_2x2(x).sum())(x)
    g_ref = jax.grad(lambda x: reference_pool(x).sum())(x)
    chex.assert_trees_all_close(g_ours.sum(), g_ref.sum())  # same total, spread differently


# --------------------------------------------------------------------------- the CNN


@pytest.mark.parametrize("pooling, dense_in", [("avg", 8), ("max", 8), ("flatten", 4 * 4 * 8)])
def test_cnn_output_shapes(pooling, dense_in):
    model = models.create("cnn", num_classes=2, pooling=pooling, **TINY)
    chex.assert_shape(shapes(model)["params"]["dense1"]["kernel"], (dense_in, 8))
    variables = jax.tree.map(lambda s: jnp.full(s.shape, 0.01, s.dtype), shapes(model))
    logits = model.apply(variables, IMAGES)
    chex.assert_shape(logits, (2, 2))
    chex.assert_type(logits, jnp.float32)
    chex.assert_tree_all_finite(logits)


def test_cnn_layer_structure():
    model = models.create("cnn", widths=(4, 8), convs_per_block=2, dense=(8, 6))
    params = shapes(model)["params"]
    assert set(params) == {
        "block1_conv1",
        "block1_conv2",
        "block2_conv1",
        "block2_conv2",
        "dense1",
        "dense2",
        "logits",
    }
    chex.assert_shape(params["block1_conv1"]["kernel"], (3, 3, 1, 4))
    chex.assert_shape(params["block2_conv2"]["kernel"], (3, 3, 8, 8))
    chex.assert_shape(params["logits"]["kernel"], (6, 2))


def test_cnn_without_classes_returns_the_last_feature_map():
    model = models.create("cnn", num_classes=None, **TINY)
    variables = init(model)
    assert "logits" not in variables["params"] and "dense1" not in variables["params"]
    chex.assert_shape(model.apply(variables, IMAGES), (2, 4, 4, 8))
    x = jnp.ones((1, 17, 9, 1))  # odd sizes: floor, as VALID pooling
    chex.assert_shape(model.apply(init(model, x), x), (1, 4, 2, 8))


def test_batch_norm_stats_update_in_training_only():
    model = models.create("cnn", batch_norm=True, **TINY)
    variables = init(model)
    assert "bias" not in variables["params"]["block1_conv1"]  # BN's beta replaces it
    stats = variables["batch_stats"]
    chex.assert_shape(stats["block2_bn1"]["mean"], (8,))
    rngs = {"dropout": jax.random.key(2)}
    _, train_updates = model.apply(
        variables, IMAGES, train=True, rngs=rngs, mutable=["batch_stats"]
    )
    leaves_changed = jax.tree.map(
        lambda a, b: not np.allclose(a, b), stats, train_updates["batch_stats"]
    )
    assert all(jax.tree.leaves(leaves_changed))
    _, eval_updates = model.apply(variables, IMAGES, train=False, mutable=["batch_stats"])
    chex.assert_trees_all_equal(eval_updates["batch_stats"], stats)


def test_no_batch_norm_means_no_batch_stats():
    variables = shapes(models.create("cnn", batch_norm=False, **TINY))
    assert set(variables) == {"params"}
    assert "bias" in variables["params"]["block1_conv1"]


def test_bfloat16_computation_float32_params():
    f32 = models.create("cnn", **TINY)
    bf16 = models.create("cnn", dtype="bfloat16", **TINY)
    for leaf in jax.tree.leaves(shapes(bf16)):
        assert leaf.dtype == jnp.float32
    variables = init(f32)
    logits = bf16.apply(variables, IMAGES)
    chex.assert_type(logits, jnp.float32)
    chex.assert_trees_all_close(logits, f32.apply(variables, IMAGES), atol=0.05, rtol=0.05)
    assert not np.array_equal(logits, f32.apply(variables, IMAGES))  # it did compute in bf16
    features = models.create("cnn", num_classes=None, dtype="bfloat16", **TINY)
    chex.assert_type(features.apply(variables, IMAGES), jnp.bfloat16)


def test_dropout_only_in_training_and_deterministic_given_the_rng():
    model = models.create("cnn", **TINY)
    variables = init(model)
    apply = lambda seed: model.apply(  # noqa: E731
        variables, IMAGES, train=True, rngs={"dropout": jax.random.key(seed)}
    )
    eval_logits = model.apply(variables, IMAGES)
    chex.assert_trees_all_equal(eval_logits, model.apply(variables, IMAGES, train=False))
    chex.assert_trees_all_equal(apply(3), apply(3))
    assert not np.allclose(apply(3), apply(4))
    assert not np.allclose(apply(3), eval_logits)
    no_dropout = models.create("cnn", **{**TINY, "dropout_rate": 0.0})
    chex.assert_trees_all_close(
        no_dropout.apply(variables, IMAGES, train=True, rngs={"dropout": jax.random.key(3)}),
        eval_logits,
    )


def test_unknown_pooling_and_dtype_are_rejected():
    with pytest.raises(ValueError, match="pooling"):
        shapes(models.create("cnn", pooling="mean", **TINY))
    with pytest.raises(ValueError, match="dtype"):
        shapes(models.create("cnn", dtype="float16", **TINY))


# --------------------------------------------------------------------------- registry


def test_create_cnn_and_its_input_spec():
    model = models.create("cnn", num_classes=2, widths=[4], dense=[], dropout_rate=0.1)
    assert isinstance(model, models.CNN)
    assert model.widths == (4,) and model.dense == () and model.dropout_rate == 0.1
    assert models.input_spec("cnn") == ("unit", 1)
    assert "cnn" in models.registered_names()
    with pytest.raises(TypeError):
        models.create("cnn", weights="x.h5")
    with pytest.raises(ValueError, match="unknown model"):
        models.create("nope")


def test_create_from_config_passes_the_model_fields():
    model_config = config_lib.ModelConfig(
        widths=(4, 8),
        convs_per_block=2,
        batch_norm=True,
        pooling="flatten",
        dense=(8,),
        dropout_rate=0.25,
        dtype="bfloat16",
    )
    model = models.create_from_config(model_config)
    expected = models.CNN(
        num_classes=2,
        widths=(4, 8),
        convs_per_block=2,
        batch_norm=True,
        pooling="flatten",
        dense=(8,),
        dropout_rate=0.25,
        dtype="bfloat16",
    )
    assert model == expected
    with pytest.raises(ValueError, match="weights"):
        models.create_from_config(config_lib.ModelConfig(weights="vgg16.h5"))


class _Tiny(nn.Module):
    num_classes: int | None = 2

    @nn.compact
    def __call__(self, x, train=False):
        return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


@pytest.fixture
def clean_registry(monkeypatch):
    """Registrations made in a test disappear after it."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def test_registering_a_user_model_makes_configs_accept_it(clean_registry):
    config = config_lib.Config(model=config_lib.ModelConfig(name="my_tiny"))
    with pytest.raises(config_lib.ConfigError, match="model.name"):
        validation.validate(config)
    seen = {}

    @models.register("my_tiny", normalization="imagenet", channels=3)
    def my_tiny(num_classes=2, **kwargs):
        seen.update(kwargs)
        return _Tiny(num_classes=num_classes)

    assert validation.validate(config) is config
    assert "my_tiny" in models.registered_names()
    assert models.input_spec("my_tiny") == ("imagenet", 3)
    model = models.create_from_config(config.model)
    # Registered without config=: only the shared fields that build a module.
    assert isinstance(model, _Tiny) and seen == {"dtype": "float32", "conv_impl": "auto"}
    chex.assert_shape(jax.eval_shape(lambda: model.apply(init(model), IMAGES)), (2, 2))


def test_global_pooling_reduces_the_feature_map_as_named():
    features = models.create("cnn", num_classes=None, **TINY)
    variables = features.init(jax.random.key(0), IMAGES)
    fmap = features.apply(variables, IMAGES)
    for pooling, reduce in (("avg", jnp.mean), ("max", jnp.max)):
        model = models.create("cnn", num_classes=2, pooling=pooling, **TINY)
        head = model.init(jax.random.key(1), IMAGES)["params"]
        full = {"params": {**head, **variables["params"]}}
        pooled = reduce(fmap, axis=(1, 2))
        hidden = jax.nn.relu(pooled @ head["dense1"]["kernel"] + head["dense1"]["bias"])
        expected = hidden @ head["logits"]["kernel"] + head["logits"]["bias"]
        chex.assert_trees_all_close(model.apply(full, IMAGES), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("momentum", [0.9, 0.99])
def test_bn_momentum_sets_the_running_statistics_decay(momentum):
    model = models.create("cnn", batch_norm=True, bn_momentum=momentum, **TINY)
    variables = model.init(jax.random.key(0), IMAGES)
    _, updates = model.apply(
        variables, IMAGES, train=True, rngs={"dropout": jax.random.key(1)}, mutable=["batch_stats"]
    )
    old = variables["batch_stats"]["block1_bn1"]["mean"]
    new = updates["batch_stats"]["block1_bn1"]["mean"]
    pre_bn = jax.lax.conv_general_dilated(
        IMAGES,
        variables["params"]["block1_conv1"]["kernel"],
        (1, 1),
        "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    batch_mean = pre_bn.mean(axis=(0, 1, 2))
    chex.assert_trees_all_close(new, momentum * old + (1 - momentum) * batch_mean, rtol=1e-4)
