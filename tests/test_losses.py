"""Cross-entropy (its gradient is softmax(z) - y), MURA class weights (per group: MURA's body
parts), L2 penalty."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from murajax import losses, models

LOGITS = jax.random.normal(jax.random.key(0), (6, 2)) * 2.0
LABELS = jnp.array([0, 1, 1, 0, 1, 0])
GROUPS = jnp.array([0, 6, 3, 3, 0, 6])  # MURA's body parts: 7 groups
MASK = jnp.array([1.0, 1.0, 1.0, 1.0, 0.0, 0.0])


# --------------------------------------------------------------------------- class weights


def test_class_weights_formula():
    w_normal, w_abnormal = losses.class_weights(num_normal=300, num_abnormal=100)
    assert w_abnormal == pytest.approx(300 / 400)  # w_A = N / (A + N)
    assert w_normal == pytest.approx(100 / 400)  # w_N = A / (A + N)
    assert 300 * w_normal == pytest.approx(100 * w_abnormal)  # classes balance
    assert losses.class_weights(5, 5) == (0.5, 0.5)
    with pytest.raises(ValueError):
        losses.class_weights(0, 0)
    with pytest.raises(ValueError):
        losses.class_weights(-1, 3)


def test_count_classes():
    np.testing.assert_array_equal(losses.count_classes(LABELS), [3, 3])
    counts = losses.count_classes(LABELS, GROUPS, num_groups=7)
    chex.assert_shape(counts, (7, 2))
    expected = np.zeros((7, 2), int)
    expected[0] = [1, 1]
    expected[3] = [1, 1]
    expected[6] = [1, 1]
    np.testing.assert_array_equal(counts, expected)


def test_group_table():
    counts = np.array([[30, 10], [5, 15], [8, 8], [3, 0], [0, 0], [1, 99], [40, 20]])
    table = losses.group_class_weights(counts)
    chex.assert_shape(table, (7, 2))
    for b in (0, 1, 2, 5, 6):
        np.testing.assert_allclose(table[b], losses.class_weights(*counts[b]), rtol=1e-6)
    global_weights = losses.class_weights(*counts.sum(axis=0))
    np.testing.assert_allclose(table[3], global_weights, rtol=1e-6)  # a class is missing
    np.testing.assert_allclose(table[4], global_weights, rtol=1e-6)  # no examples
    with pytest.raises(ValueError):
        losses.group_class_weights(np.ones((7, 1)))  # one class
    with pytest.raises(ValueError):
        losses.group_class_weights(np.ones(7))  # not (groups, classes)


def test_class_weight_table_modes():
    labels = np.array([0, 0, 0, 1])
    parts = np.array([0, 0, 1, 1])
    counts = losses.count_classes(labels, parts, num_groups=7)
    np.testing.assert_array_equal(losses.class_weight_table("none", counts), np.ones((7, 2)))
    glob = losses.class_weight_table("global", counts)
    np.testing.assert_allclose(glob, np.tile([0.25, 0.75], (7, 1)))
    table = losses.class_weight_table("group", counts)
    np.testing.assert_allclose(table[0], [0.25, 0.75])  # part 0 lacks abnormals: global
    np.testing.assert_allclose(table[1], [0.5, 0.5])
    # "body_part" is MURA's name for "group".
    np.testing.assert_array_equal(losses.class_weight_table("body_part", counts), table)
    with pytest.raises(ValueError):
        losses.class_weight_table("bogus", counts)


def test_example_weights_index_by_label_and_group():
    table = jnp.arange(14, dtype=jnp.float32).reshape(7, 2)
    w = losses.example_weights(LABELS, table, GROUPS, MASK)
    expected = table[GROUPS, LABELS] * MASK
    chex.assert_trees_all_close(w, expected)
    chex.assert_trees_all_close(
        losses.example_weights(LABELS, jnp.array([0.3, 0.7])),
        jnp.where(LABELS == 1, 0.7, 0.3),
    )
    chex.assert_trees_all_equal(losses.example_weights(LABELS), jnp.ones(6))
    with pytest.raises(ValueError, match="needs groups"):
        losses.example_weights(LABELS, table)


# --------------------------------------------------------------------------- cross-entropy


def test_per_example_loss_value():
    log_p = jax.nn.log_softmax(LOGITS)
    expected = -log_p[jnp.arange(6), LABELS]
    chex.assert_trees_all_close(losses.softmax_cross_entropy(LOGITS, LABELS), expected)
    chex.assert_trees_all_close(
        losses.softmax_cross_entropy(LOGITS.astype(jnp.bfloat16), LABELS), expected, atol=0.05
    )


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_per_example_gradient_is_softmax_minus_target(smoothing):
    targets = optax.smooth_labels(jax.nn.one_hot(LABELS, 2), smoothing)
    # jacobian[i, j] = d loss_i / d logits_j: softmax(z_i) - y_i on the diagonal, 0 elsewhere.
    jacobian = jax.jacrev(lambda z: losses.softmax_cross_entropy(z, LABELS, smoothing))(LOGITS)
    chex.assert_shape(jacobian, (6, 6, 2))
    eye = jnp.eye(6)[:, :, None]
    expected = eye * (jax.nn.softmax(LOGITS) - targets)[:, None, :]
    chex.assert_trees_all_close(jacobian, expected, atol=1e-6)


def test_label_smoothing_targets():
    smoothed = losses.softmax_cross_entropy(LOGITS, LABELS, label_smoothing=0.2)
    targets = 0.8 * jax.nn.one_hot(LABELS, 2) + 0.1
    expected = -jnp.sum(targets * jax.nn.log_softmax(LOGITS), axis=-1)
    chex.assert_trees_all_close(smoothed, expected, atol=1e-6)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_weighted_mean_loss_and_its_gradient(smoothing):
    table = jnp.asarray(losses.group_class_weights(np.arange(1, 15).reshape(7, 2)))
    kwargs = dict(class_weights=table, groups=GROUPS, mask=MASK)
    w = table[GROUPS, LABELS] * MASK
    per_example = losses.softmax_cross_entropy(LOGITS, LABELS, smoothing)
    loss = losses.cross_entropy_loss(LOGITS, LABELS, label_smoothing=smoothing, **kwargs)
    chex.assert_shape(loss, ())
    chex.assert_trees_all_close(loss, jnp.sum(w * per_example) / jnp.sum(MASK), atol=1e-6)

    grad = jax.grad(
        lambda z: losses.cross_entropy_loss(z, LABELS, label_smoothing=smoothing, **kwargs)
    )(LOGITS)
    targets = optax.smooth_labels(jax.nn.one_hot(LABELS, 2), smoothing)
    expected = w[:, None] * (jax.nn.softmax(LOGITS) - targets) / jnp.sum(MASK)
    chex.assert_trees_all_close(grad, expected, atol=1e-6)
    chex.assert_trees_all_equal(grad[4:], jnp.zeros((2, 2)))  # padding has no gradient


def test_unweighted_loss_is_the_plain_mean_and_padding_does_not_count():
    plain = losses.cross_entropy_loss(LOGITS, LABELS)
    chex.assert_trees_all_close(plain, jnp.mean(losses.softmax_cross_entropy(LOGITS, LABELS)))
    masked = losses.cross_entropy_loss(LOGITS, LABELS, mask=MASK)
    chex.assert_trees_all_close(masked, losses.cross_entropy_loss(LOGITS[:4], LABELS[:4]))
    empty = losses.cross_entropy_loss(LOGITS, LABELS, mask=jnp.zeros(6))
    chex.assert_trees_all_equal(empty, jnp.float32(0.0))


def test_global_class_weights_in_the_loss():
    weights = jnp.array([0.25, 0.75])
    loss = losses.cross_entropy_loss(LOGITS, LABELS, class_weights=weights)
    per_example = losses.softmax_cross_entropy(LOGITS, LABELS)
    chex.assert_trees_all_close(loss, jnp.mean(weights[LABELS] * per_example))
    jitted = jax.jit(lambda z: losses.cross_entropy_loss(z, LABELS, class_weights=weights))
    chex.assert_trees_all_close(jitted(LOGITS), loss)


# --------------------------------------------------------------------------- L2


def test_l2_penalty_sums_squares_of_kernels_only():
    params = {
        "conv": {"kernel": jnp.full((3, 3, 1, 2), 2.0), "bias": jnp.ones(2)},
        "bn": {"scale": jnp.ones(2), "bias": jnp.ones(2)},
        "nested": {"dense": {"kernel": jnp.array([[1.0, -3.0]])}},
    }
    chex.assert_trees_all_close(losses.l2_penalty(params), jnp.float32(18 * 4.0 + 10.0))
    chex.assert_trees_all_equal(losses.l2_penalty({"b": {"bias": jnp.ones(3)}}), 0.0)
    grads = jax.grad(losses.l2_penalty)(params)
    chex.assert_trees_all_close(grads["conv"]["kernel"], 2 * params["conv"]["kernel"])
    chex.assert_trees_all_equal(grads["conv"]["bias"], jnp.zeros(2))


def test_l2_penalty_on_cnn_params():
    model = models.create("cnn", widths=(4, 8), dense=(8,), batch_norm=True)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
    params = jax.tree.map(lambda s: jnp.linspace(-1.0, 2.0, s.size).reshape(s.shape), shapes)
    expected = sum(
        float(jnp.sum(params[k]["kernel"] ** 2))
        for k in ("block1_conv1", "block2_conv1", "dense1", "logits")
    )
    np.testing.assert_allclose(float(losses.l2_penalty(params)), expected, rtol=1e-6)
