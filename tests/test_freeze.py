"""Freezing and fine-tuning: masks, frozen parameters and BatchNorm statistics that stay put,
and the backbone's learning-rate multiplier."""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from murajax import config as config_lib
from murajax import freeze, inference, models, optim, train, validation
from murajax import steps as step_lib
from murajax.config import ConfigError
from tests.trivial_mura import trivial_config
from tfds_mura.features import BODY_PARTS

SHAPE = (4, 16, 16, 1)


def _tiny_config(freeze_mode: str = "none", **optim_overrides) -> config_lib.Config:
    config = config_lib.Config()
    config.data.image_size = 16
    config.model.widths = (4, 8)
    config.model.batch_norm = True
    config.model.bn_momentum = 0.5  # statistics that visibly move in a few steps
    config.model.dense = (4,)
    config.model.dropout_rate = 0.0
    config.model.freeze = freeze_mode
    config.train.steps = 10
    for name, value in optim_overrides.items():
        setattr(config.optim, name, value)
    return validation.validate(config)


def _batch(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "image": jnp.asarray(rng.uniform(size=SHAPE), jnp.float32),
        "label": jnp.asarray(rng.integers(0, 2, SHAPE[0]), jnp.int32),
        "group": jnp.asarray(rng.integers(0, len(BODY_PARTS), SHAPE[0]), jnp.int32),
    }


def _setup(config: config_lib.Config, steps: int = 3, **step_kwargs):
    """Initial state and the state after `steps` real `step_lib.train_step`s."""
    model = models.create_from_config(config.model)
    spec = models.resolve(config.model)
    order = freeze.config_layer_order(config, spec, model)
    tx = freeze.make_train_optimizer(config, spec, order=order)
    state = step_lib.create_train_state(model, tx, jax.random.key(0), SHAPE)
    mask = None
    if config.model.freeze != "none":
        mask = freeze.batch_stats_mask(
            state.params, state.batch_stats, config.model.freeze, _spec("cnn"), order
        )
    step = jax.jit(
        functools.partial(
            step_lib.train_step,
            model=model,
            tx=tx,
            weight_table=jnp.ones((len(BODY_PARTS), 2), jnp.float32),
            label_smoothing=0.0,
            batch_stats_mask=mask,
            **{"l2_weight": 0.0, **step_kwargs},
        )
    )
    new = state
    for i in range(steps):
        new, metrics = step(new, _batch(i))
    return model, tx, state, new, metrics


def _abstract_params(name: str, size: int = 32, channels: int = 3):
    model = models.create(name)
    variables = jax.eval_shape(
        lambda: model.init(
            {"params": jax.random.key(0), "dropout": jax.random.key(1)},
            jnp.zeros((1, size, size, channels)),
        )
    )
    return model, variables["params"]


def _trainable_groups(mask) -> set[str]:
    return {g for g, sub in mask.items() if all(jax.tree.leaves(sub))}


def _spec(name: str) -> models.ModelSpec:
    return models.resolve(config_lib.ModelConfig(name=name))


def _custom_spec() -> models.ModelSpec:
    """The spec of a user's model "custom" with no head parameters (never registered)."""
    custom = config_lib.ModelConfig(name="custom")
    return dataclasses.replace(_spec("cnn"), config=custom, head=("head",))


def _frozen_groups(mask) -> set[str]:
    return {g for g, sub in mask.items() if not any(jax.tree.leaves(sub))}


# --------------------------------------------------------------------------- masks


def test_cnn_masks_for_each_mode():
    model = models.create("cnn", widths=(4, 8), batch_norm=True, dense=(4,))
    params = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, jnp.zeros(SHAPE)))[
        "params"
    ]
    order = freeze.layer_order(model, SHAPE)
    assert order == ["block1_conv1", "block1_bn1", "block2_conv1", "block2_bn1", "dense1", "logits"]
    # jit/eval_shape sort the keys: the model order has to come from layer_order.
    assert list(params) == sorted(order)

    none = freeze.trainable_mask(params, "none", _spec("cnn"))
    assert all(jax.tree.leaves(none))
    assert jax.tree.structure(none) == jax.tree.structure(params)

    backbone = freeze.trainable_mask(params, "backbone", _spec("cnn"))
    assert _trainable_groups(backbone) == {"dense1", "logits"}
    assert _frozen_groups(backbone) == {"block1_conv1", "block1_bn1", "block2_conv1", "block2_bn1"}

    up_to = freeze.trainable_mask(params, "up_to:block1", _spec("cnn"), order)
    assert _frozen_groups(up_to) == {"block1_conv1", "block1_bn1"}
    assert _trainable_groups(up_to) == {"block2_conv1", "block2_bn1", "dense1", "logits"}
    # "up_to:block2_conv" stops at the conv: its BatchNorm comes after it in the model.
    partial = freeze.trainable_mask(params, "up_to:block2_conv", _spec("cnn"), order)
    assert _frozen_groups(partial) == {"block1_conv1", "block1_bn1", "block2_conv1"}


def test_vgg16_masks():
    _, params = _abstract_params("vgg16")
    backbone = freeze.trainable_mask(params, "backbone", _spec("vgg16"))
    assert _trainable_groups(backbone) == {"head"}
    assert len(_frozen_groups(backbone)) == 13
    up_to = freeze.trainable_mask(params, "up_to:block3", _spec("vgg16"))
    frozen = _frozen_groups(up_to)
    blocks = ((1, 2), (2, 2), (3, 3))  # (block, convolutions)
    assert frozen == {f"block{b}_conv{i}" for b, n in blocks for i in range(1, n + 1)}
    assert _trainable_groups(up_to) == set(params) - frozen
    labels = freeze.param_labels(params, "up_to:block3", _spec("vgg16"), backbone_lr_multiplier=0.1)
    assert labels["block3_conv3"]["kernel"] == "frozen"
    assert labels["block4_conv1"]["kernel"] == "backbone"
    assert labels["head"]["logits"]["kernel"] == "trainable"


def test_densenet_up_to_follows_the_model_order_not_the_sorted_keys():
    model, params = _abstract_params("densenet169")
    order = freeze.layer_order(model, (1, 32, 32, 3))
    assert order[:2] == ["conv1_conv", "conv1_bn"] and order[-2:] == ["bn", "head"]
    frozen = _frozen_groups(
        freeze.trainable_mask(params, "up_to:conv2", _spec("densenet169"), order)
    )
    assert {"conv1_conv", "conv1_bn", "conv2_block6_2_conv"} <= frozen
    assert not any(g.startswith(("pool2", "conv3", "bn", "head")) for g in frozen)
    assert len(frozen) == 2 + 6 * 4  # conv1, and 6 conv blocks of 4 layers (0_bn .. 2_conv)
    backbone = freeze.trainable_mask(params, "backbone", _spec("densenet169"))
    assert _trainable_groups(backbone) == {"head"}


def test_a_prefix_that_matches_nothing_lists_valid_layers():
    _, params = _abstract_params("vgg16")
    with pytest.raises(ConfigError, match=r"no layer name starts with 'conv4'.*block1_conv1"):
        freeze.trainable_mask(params, "up_to:conv4", _spec("vgg16"))
    with pytest.raises(ConfigError, match="no head"):
        freeze.trainable_mask({"a": {"w": 0}}, "backbone", _custom_spec())


@pytest.mark.parametrize("bad", ["", "head", "up_to:", "up_to: ", "upto:block1", "Backbone"])
def test_config_rejects_a_bad_freeze(bad):
    config = config_lib.Config()
    config.model.freeze = bad
    with pytest.raises(ConfigError, match="config.model.freeze="):
        validation.validate(config)


@pytest.mark.parametrize("bad", [0.0, -0.1])
def test_config_rejects_a_bad_multiplier(bad):
    config = config_lib.Config()
    config.optim.backbone_lr_multiplier = bad
    with pytest.raises(ConfigError, match="config.optim.backbone_lr_multiplier="):
        validation.validate(config)


def test_config_accepts_good_values_and_round_trips():
    config = _tiny_config("up_to:block1", backbone_lr_multiplier=0.1)
    again = config_lib.from_dict(config_lib.to_dict(config))
    assert again.model.freeze == "up_to:block1" and again.optim.backbone_lr_multiplier == 0.1


# --------------------------------------------------------------------------- training steps


def _assert_all_changed(old_tree, new_tree, group: str) -> None:
    old, new = jax.tree.leaves(old_tree), jax.tree.leaves(new_tree)
    assert len(old) == len(new)
    for a, b in zip(old, new, strict=True):
        assert not np.array_equal(a, b), group


@pytest.mark.parametrize(
    "freeze_mode,frozen",
    [
        ("up_to:block1", {"block1_conv1", "block1_bn1"}),
        ("backbone", {"block1_conv1", "block1_bn1", "block2_conv1", "block2_bn1"}),
    ],
)
def test_frozen_params_and_batch_stats_are_bit_identical(freeze_mode, frozen):
    # AdamW's weight decay, an L2 penalty and clipping: none of them may touch frozen layers.
    config = _tiny_config(freeze_mode, name="adamw", weight_decay=0.1, grad_clip_norm=1.0)
    _, _, before, after, metrics = _setup(config, steps=3, l2_weight=1e-2)
    assert np.isfinite(float(metrics["loss"]))
    for group in before.params:
        if group in frozen:
            chex.assert_trees_all_equal(before.params[group], after.params[group])
        else:
            _assert_all_changed(before.params[group], after.params[group], group)
    for group in before.batch_stats:
        if group in frozen:
            chex.assert_trees_all_equal(before.batch_stats[group], after.batch_stats[group])
        else:
            _assert_all_changed(before.batch_stats[group], after.batch_stats[group], group)
    assert int(after.step) == 3


def test_without_freezing_the_optimizer_is_unchanged():
    config = _tiny_config()
    plain = optim.make_optimizer(config.optim, config.train.steps)
    ours = freeze.make_train_optimizer(config, models.resolve(config.model))
    params = {"w": jnp.ones((2, 2))}
    assert jax.tree.structure(plain.init(params)) == jax.tree.structure(ours.init(params))


def test_backbone_multiplier_scales_backbone_updates_exactly():
    plain_config = _tiny_config(name="sgd", momentum=0.0, learning_rate=0.1)
    config = _tiny_config(name="sgd", momentum=0.0, learning_rate=0.1, backbone_lr_multiplier=0.1)
    model = models.create_from_config(config.model)
    state = step_lib.create_train_state(model, optax.identity(), jax.random.key(0), SHAPE)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.37) + p, state.params)
    plain_tx = freeze.make_train_optimizer(plain_config, models.resolve(plain_config.model))
    tx = freeze.make_train_optimizer(config, models.resolve(config.model))
    plain, _ = plain_tx.update(grads, plain_tx.init(state.params), state.params)
    scaled, opt_state = tx.update(grads, tx.init(state.params), state.params)
    for group in state.params:
        factor = 1.0 if group in ("dense1", "logits") else 0.1
        expected = jax.tree.map(lambda u, f=factor: u * f, plain[group])
        chex.assert_trees_all_equal(scaled[group], expected)
    # The head's (injected) learning rate is what the trainer reports.
    assert float(optim.effective_learning_rate(opt_state)) == pytest.approx(0.1)

    # And through the real train step: parameter changes 0.1x in the backbone, equal in the head.
    _, _, start, plain_after, _ = _setup(plain_config, steps=1)
    _, _, start2, scaled_after, _ = _setup(config, steps=1)
    chex.assert_trees_all_equal(start.params, start2.params)
    for group in start.params:
        delta = jax.tree.map(lambda a, b: b - a, start.params[group], plain_after.params[group])
        ours = jax.tree.map(lambda a, b: b - a, start.params[group], scaled_after.params[group])
        if group in ("dense1", "logits"):
            chex.assert_trees_all_equal(ours, delta)
        else:
            scaled_delta = jax.tree.map(lambda d: 0.1 * d, delta)
            chex.assert_trees_all_close(ours, scaled_delta, rtol=1e-5, atol=1e-7)


def test_plateau_state_is_found_and_observed_through_multi_transform():
    config = _tiny_config(
        "up_to:block1",
        schedule="plateau",
        learning_rate=0.01,
        plateau_patience=1,
        decay_factor=0.5,
        backbone_lr_multiplier=0.1,
    )
    _, _, _, after, metrics = _setup(config, steps=1)
    assert float(metrics["learning_rate"]) == pytest.approx(0.01)
    opt_state = after.opt_state
    for loss in (1.0, 1.0):
        opt_state = optim.observe_holdout_loss(opt_state, loss, config.optim)
    assert optim.current_learning_rate(opt_state) == pytest.approx(0.005)


# --------------------------------------------------------------------------- end to end


def test_train_and_evaluate_with_a_frozen_block_checkpoints_and_reloads(data_dir, tmp_path):
    config = trivial_config(data_dir, steps=8, eval_every=4, checkpoint_every=4)
    config.model.batch_norm = True
    config.model.freeze = "up_to:block1"
    config.optim.schedule = "plateau"
    config.optim.backbone_lr_multiplier = 0.5
    config.eval.bootstrap_samples = 10
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(config, workdir)
    initial = step_lib.create_train_state(
        models.create_from_config(config.model),
        optax.identity(),
        jax.random.key(config.seed),
        (1, 16, 16, 1),
    )
    loaded = inference.load(workdir, checkpoint="latest")
    state = loaded.states[0]
    assert int(state.step) == 8
    for group in ("block1_conv1", "block1_bn1"):
        chex.assert_trees_all_equal(state.params[group], initial.params[group])
    chex.assert_trees_all_equal(state.batch_stats["block1_bn1"], initial.batch_stats["block1_bn1"])
    assert not np.array_equal(state.params["logits"]["kernel"], initial.params["logits"]["kernel"])
    assert not np.array_equal(
        state.batch_stats["block2_bn1"]["mean"], initial.batch_stats["block2_bn1"]["mean"]
    )
