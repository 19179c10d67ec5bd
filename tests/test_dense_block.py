"""The memory-efficient dense block (`models.dense_block`) against DenseNet's layers
differentiated one by one: the same loss, gradients and running statistics, in float32 and
bfloat16, in less memory."""

import chex
import jax
import jax.numpy as jnp
import pytest

from murajax.models import densenet
from murajax.models.densenet import DenseNet

X = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))


def _layers_only(self, x, count, name, train):
    return self._dense_block_layers(x, count, name, train)


def _train_loss(model, variables, layer_by_layer: bool):
    """jitted params -> ((loss, batch_stats), grads) of a training step of `model`."""

    def loss(params):
        outputs, updates = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            X,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": jax.random.key(2)},
        )
        return jnp.sum(outputs.astype(jnp.float32) ** 2), updates["batch_stats"]

    def run(params):
        return jax.value_and_grad(loss, has_aux=True)(params)

    if not layer_by_layer:
        return jax.jit(run)
    patched = pytest.MonkeyPatch()

    def traced_with_layers(params):
        with patched.context() as m:
            m.setattr(DenseNet, "_dense_block", _layers_only)
            return run(params)

    return jax.jit(traced_with_layers)


@pytest.fixture(scope="module")
def small_densenet():
    model = DenseNet(blocks=(2, 3), num_classes=2, dropout_rate=0.0)
    return model, model.init(jax.random.key(1), X)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_same_loss_gradients_and_statistics_as_the_layers(small_densenet, dtype):
    model, variables = small_densenet
    model = model.clone(dtype=dtype)
    (loss, stats), grads = _train_loss(model, variables, False)(variables["params"])
    (loss_ref, stats_ref), grads_ref = _train_loss(model, variables, True)(variables["params"])
    chex.assert_trees_all_close(loss, loss_ref, rtol=1e-6)
    chex.assert_trees_all_close(stats, stats_ref, rtol=1e-6, atol=1e-7)
    tolerance = 1e-5 if dtype == "float32" else 2e-2
    chex.assert_trees_all_close(grads, grads_ref, rtol=tolerance, atol=tolerance)
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), stats, variables["batch_stats"])
    assert all(jax.tree.leaves(changed))  # every running average moved


def test_the_block_keeps_less_for_the_backward_pass(small_densenet):
    model, variables = small_densenet
    model = model.clone(blocks=(12,))

    def temp_bytes(layer_by_layer: bool) -> int:
        step = _train_loss(model, model.init(jax.random.key(1), X), layer_by_layer)
        compiled = step.lower(model.init(jax.random.key(1), X)["params"]).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    assert temp_bytes(False) < 0.8 * temp_bytes(True)


def test_inference_does_not_take_the_training_block(small_densenet, monkeypatch):
    model, variables = small_densenet
    calls = []
    monkeypatch.setattr(densenet, "dense_block", lambda *a, **k: calls.append(1))
    model.apply(variables, X, train=False)
    assert calls == []
