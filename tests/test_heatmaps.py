"""Heatmaps: Grad-CAM finds a planted bright patch, CAM = Grad-CAM for GAP + linear, overlays."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from murajax import heatmaps
from murajax.models import CNN, max_pool_2x2
from murajax.models.heads import ClassifierHead
from murajax.models.layers import mark_features

SIZE = 16
PATCH = (slice(2, 6), slice(10, 14))  # rows 2-5, columns 10-13


def _init(model: nn.Module, seed: int, images: jax.Array) -> dict:
    """The model's variables (jitted init: much faster than eager on CPU)."""
    return jax.jit(model.init)(jax.random.key(seed), images)


def _patch_image(level: float = 0.2, patch: float = 1.0) -> np.ndarray:
    image = np.full((SIZE, SIZE, 1), level, np.float32)
    image[PATCH[0], PATCH[1], 0] = patch
    return image


def _patch_mask() -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), bool)
    mask[PATCH] = True
    return mask


def _hand_set_cnn() -> tuple[CNN, dict]:
    """abnormal logit = mean(maxpool(relu(x - 0.5))): only pixels brighter than 0.5 count."""
    model = CNN(widths=(1,), dense=(), pooling="avg")
    variables = _init(model, 0, jnp.zeros((1, SIZE, SIZE, 1)))
    kernel = np.zeros((3, 3, 1, 1), np.float32)
    kernel[1, 1] = 1.0
    params = {
        "block1_conv1": {"kernel": jnp.asarray(kernel), "bias": jnp.asarray([-0.5])},
        "logits": {"kernel": jnp.asarray([[-1.0, 1.0]]), "bias": jnp.zeros(2)},
    }
    assert jax.tree.structure(params) == jax.tree.structure(dict(variables["params"]))
    return model, {"params": params}


def test_gradcam_shapes_and_range():
    model = CNN(widths=(4, 8), dense=(8,))
    images = jax.random.uniform(jax.random.key(1), (3, SIZE, 12, 1))
    variables = _init(model, 0, images)
    maps = heatmaps.gradcam(model, variables, images)
    assert maps.shape == (3, SIZE, 12)
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    assert all(m.max() in (0.0, pytest.approx(1.0)) for m in maps)


def test_gradcam_finds_the_bright_patch_of_a_hand_set_model():
    model, variables = _hand_set_cnn()
    images = _patch_image()[None]
    heat = heatmaps.gradcam(model, variables, images)[0]
    mask = _patch_mask()
    assert heat[mask].mean() > 0.7
    assert heat[~mask].mean() < 0.05
    assert mask[np.unravel_index(np.argmax(heat), heat.shape)]


def _patch_batch(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy dark images; abnormal ones (label 1) have a bright 4x4 patch somewhere."""
    images = rng.normal(0.3, 0.1, (n, SIZE, SIZE, 1)).astype(np.float32)
    labels = rng.integers(0, 2, n)
    for k in np.flatnonzero(labels):
        r, c = rng.integers(0, SIZE - 4, 2)
        images[k, r : r + 4, c : c + 4] = 0.9
    return np.clip(images, 0, 1), labels


def test_gradcam_finds_the_patch_after_training():
    """A CNN with a hidden dense layer (no CAM) learns 'bright patch = abnormal'."""
    model = CNN(widths=(4, 8), dense=(8,), dropout_rate=0.0)
    rng = np.random.default_rng(0)
    variables = _init(model, 0, jnp.zeros((1, SIZE, SIZE, 1)))
    tx = optax.adam(1e-2)

    @jax.jit
    def step(params, opt_state, images, labels):
        def loss_fn(p):
            logits = model.apply({"params": p}, images)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state

    params = variables["params"]
    opt_state = tx.init(params)
    for _ in range(150):
        params, opt_state = step(params, opt_state, *_patch_batch(rng, 32))
    images = _patch_image(0.3, 0.9)[None]
    probs = jax.nn.softmax(model.apply({"params": params}, images))[:, 1]
    assert float(probs[0]) > 0.9
    heat = heatmaps.gradcam(model, {"params": params}, images)[0]
    mask = _patch_mask()
    assert heat[mask].mean() > 3 * heat[~mask].mean()
    rows, cols = np.indices(heat.shape)
    centroid = np.array([(rows * heat).sum(), (cols * heat).sum()]) / heat.sum()
    assert np.linalg.norm(centroid - [3.5, 11.5]) < 3.0  # the patch's centre


def test_cam_equals_gradcam_up_to_scale_for_gap_linear():
    model = CNN(widths=(4, 6), dense=(), pooling="avg")
    images = jax.random.uniform(jax.random.key(3), (2, SIZE, SIZE, 1))
    variables = _init(model, 2, images)
    raw_cam = heatmaps.cam_maps(model, variables, images)
    raw_grad = heatmaps.gradcam_maps(model, variables, images)
    h, w = raw_cam.shape[1:]
    # Grad-CAM's weights are w / (h w); Grad-CAM keeps the positive part.
    np.testing.assert_allclose(raw_grad, np.maximum(raw_cam, 0) / (h * w), rtol=1e-4, atol=1e-7)
    # The abnormal logit is the CAM's spatial mean plus the bias.
    logits = model.apply(variables, images)
    bias = variables["params"]["logits"]["bias"][1]
    np.testing.assert_allclose(raw_cam.mean(axis=(1, 2)) + bias, logits[:, 1], rtol=1e-4)
    np.testing.assert_allclose(
        heatmaps.cam(model, variables, images),
        heatmaps.gradcam(model, variables, images),
        atol=1e-5,
    )


def test_cam_falls_back_to_gradcam_with_hidden_dense_layers():
    model = CNN(widths=(4,), dense=(8,))
    images = jax.random.uniform(jax.random.key(4), (2, SIZE, SIZE, 1))
    variables = _init(model, 5, images)
    assert heatmaps.cam_maps(model, variables, images) is None
    with pytest.warns(UserWarning, match="CAM is not defined"):
        maps = heatmaps.cam(model, variables, images)
    np.testing.assert_allclose(maps, heatmaps.gradcam(model, variables, images))


class _Backbone(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.relu(nn.Conv(4, (3, 3), name="conv1")(x))
        x = max_pool_2x2(x)
        return mark_features(self, nn.relu(nn.Conv(5, (3, 3), name="conv2")(x)))


class _GenericNet(nn.Module):
    """A user's model with the num_classes=None convention and a backbone submodule that
    marks its feature map."""

    num_classes: int | None = 2
    hidden: int = 0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        features = _Backbone(name="backbone")(x)
        if self.num_classes is None:
            return features
        x = features.mean(axis=(1, 2))
        if self.hidden:
            x = nn.relu(nn.Dense(self.hidden, name="hidden")(x))
        return nn.Dense(self.num_classes, name="head")(x)


def test_generic_model_through_its_mark():
    model = _GenericNet()
    images = jax.random.uniform(jax.random.key(6), (2, SIZE, SIZE, 1))
    variables = _init(model, 7, images)
    features = jax.jit(model.clone(num_classes=None).apply)(variables, images)
    kernel = variables["params"]["head"]["kernel"][:, 1]
    expected = np.einsum("nhwk,k->nhw", features, kernel)
    np.testing.assert_allclose(heatmaps.cam_maps(model, variables, images), expected, rtol=1e-4)
    h, w = features.shape[1:3]
    np.testing.assert_allclose(
        heatmaps.gradcam_maps(model, variables, images),
        np.maximum(expected, 0) / (h * w),
        rtol=1e-4,
        atol=1e-7,
    )
    hidden = _GenericNet(hidden=8)
    variables = _init(hidden, 8, images)
    assert heatmaps.cam_maps(hidden, variables, images) is None


class _HeadNet(nn.Module):
    """Features made inline, then murajax's ClassifierHead (as VGG16 and DenseNet-169)."""

    num_classes: int | None = 2

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = max_pool_2x2(nn.relu(nn.Conv(4, (3, 3), name="conv")(x)))
        x = mark_features(self, x)
        if self.num_classes is None:
            return x
        return ClassifierHead(self.num_classes, 0.5, name="head")(x, train)


def test_feature_map_entering_a_classifier_head():
    model = _HeadNet()
    images = jax.random.uniform(jax.random.key(11), (2, SIZE, SIZE, 1))
    variables = _init(model, 12, images)
    assert heatmaps.feature_site(model, variables, images) == ()  # marked before the head
    raw_cam = heatmaps.cam_maps(model, variables, images)
    assert raw_cam is not None  # CAM is defined: the head is GAP + linear
    raw_grad = heatmaps.gradcam_maps(model, variables, images)
    h, w = raw_cam.shape[1:]
    np.testing.assert_allclose(raw_grad, np.maximum(raw_cam, 0) / (h * w), rtol=1e-4, atol=1e-7)


class _NoSubmoduleFeatures(nn.Module):
    num_classes: int | None = 2

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = jnp.tanh(nn.Conv(3, (3, 3))(x))  # a feature map that nothing marks
        if self.num_classes is None:
            return x
        return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))


def test_model_whose_feature_map_cannot_be_reached_is_reported():
    model = _NoSubmoduleFeatures()
    images = jnp.ones((1, 8, 8, 1))
    variables = _init(model, 0, images)
    with pytest.raises(ValueError, match="no submodule"):
        heatmaps.gradcam(model, variables, images)


def test_make_gradcam_fn_matches_gradcam_and_gives_probabilities():
    model = CNN(widths=(4,), dense=(8,))
    images = jax.random.uniform(jax.random.key(9), (2, SIZE, SIZE, 1))
    variables = _init(model, 10, images)
    maps, probs = heatmaps.make_gradcam_fn(model, variables, images)(variables, images)
    np.testing.assert_allclose(maps, heatmaps.gradcam(model, variables, images), atol=1e-5)
    expected = jax.nn.softmax(model.apply(variables, images))[:, 1]
    np.testing.assert_allclose(probs, expected, rtol=1e-5)


def test_overlay_blends_gray_and_jet():
    gray = np.full((6, 8), 100, np.uint8)
    heat = np.zeros((3, 4), np.float32)
    heat[0, 0] = 1.0
    out = heatmaps.overlay(gray, heat)
    assert out.shape == (6, 8, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(heatmaps.overlay(gray, heat, alpha=0.0), np.full((6, 8, 3), 100))
    full = heatmaps.overlay(gray[:, :, None], np.ones((6, 8)), alpha=1.0)
    np.testing.assert_array_equal(full[0, 0], [128, 0, 0])  # jet(1.0) is dark red
    low = heatmaps.overlay(gray.astype(np.float32) / 255, np.zeros((6, 8)), alpha=1.0)
    np.testing.assert_array_equal(low[0, 0], [0, 0, 128])  # jet(0.0) is dark blue
    with pytest.raises(ValueError, match="alpha"):
        heatmaps.overlay(gray, heat, alpha=2.0)


def test_save_overlay_writes_an_rgb_png(tmp_path):
    path = heatmaps.save_overlay(str(tmp_path / "a" / "b.png"), np.zeros((5, 7)), np.ones((5, 7)))
    with Image.open(path) as image:
        assert image.mode == "RGB" and image.size == (7, 5)
