"""Integrated gradients and occlusion sensitivity on models whose answers are known."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from murajax import attribution_maps, attributions, models
from murajax.config import DataConfig, EvalConfig, ModelConfig
from murajax.errors import ConfigError
from murajax.models import MultiView


class TopLeft(nn.Module):
    """p(abnormal) depends on the top-left 8x8 square only: logits (0, 4 * mean - 2)."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        evidence = 4.0 * jnp.mean(x[:, :8, :8, :], axis=(1, 2, 3)) - 2.0
        return jnp.stack([jnp.zeros_like(evidence), evidence], axis=1)


def _images(n: int = 3, size: int = 24, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, size, size, 1)).astype(np.float32)


def test_attributions_fall_where_the_model_looks():
    model, images = TopLeft(), _images()
    ig = attributions.integrated_gradients(model, {}, images, steps=16)
    occ = attributions.occlusion(model, {}, images, patch=4, stride=4)
    assert ig.shape == occ.shape == (3, 24, 24)
    assert np.abs(ig[:, 8:, :]).max() == 0 and np.abs(ig[:, :, 8:]).max() == 0
    assert (ig[:, :8, :8] > 0).all()  # brighter pixels raise p(abnormal)
    assert np.abs(occ[:, 8:, :]).max() < 1e-6 and np.abs(occ[:, :, 8:]).max() < 1e-6
    assert (occ[:, :8, :8] > 0).all()  # hiding them lowers it


def test_integrated_gradients_are_complete_on_a_real_model():
    model = models.create("cnn", num_classes=2, widths=(4, 8), dense=(8,), conv_impl="xla")
    images = _images(2, 16, seed=1)
    variables = model.init(jax.random.key(0), images)
    score = attributions.target_probability(model, variables, 1)
    ig = attributions.integrated_gradients(model, variables, images, steps=128)
    expected = np.asarray(score(images)) - np.asarray(score(np.zeros_like(images)))
    np.testing.assert_allclose(
        ig.sum(axis=(1, 2)), expected, atol=2e-3 + 0.02 * np.abs(expected).max()
    )


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="steps=0"):
        attributions.integrated_gradients(TopLeft(), {}, _images(), steps=0)
    with pytest.raises(ValueError, match="patch=0"):
        attributions.occlusion(TopLeft(), {}, _images(), patch=0)


# --------------------------------------------------------------------------- the dispatcher


def test_batching_does_not_change_the_maps():
    model = models.create("cnn", num_classes=2, widths=(4,), dense=(), conv_impl="xla")
    images = _images(3, 12, seed=2)
    variables = model.init(jax.random.key(0), images)
    run = functools.partial(attributions.integrated_gradients, model, variables, images, steps=5)
    np.testing.assert_allclose(run(batch=1), run(batch=16), rtol=1e-4, atol=1e-6)
    occ = functools.partial(attributions.occlusion, model, variables, images, patch=4, stride=3)
    np.testing.assert_allclose(occ(chunk=5), occ(chunk=64), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("num_classes", [2, 3])
def test_every_method_gives_normalised_maps_at_the_input_size(num_classes):
    model = models.create("cnn", num_classes=num_classes, widths=(4, 8), dense=(8,))
    images = _images(2, 16, seed=3)
    variables = jax.jit(model.init)(jax.random.key(3), images)
    settings = EvalConfig(ig_steps=4, ig_baseline="mean", occlusion_patch=4, occlusion_stride=4)
    for method in attribution_maps.METHODS:
        fn = attribution_maps.make_attribution_fn(
            model, variables, method, settings, num_classes=num_classes
        )
        maps = fn(images)
        assert maps.shape == (2, 16, 16) and maps.dtype == np.float32, method
        assert maps.min() >= 0.0 and all(m.max() in (0.0, pytest.approx(1.0)) for m in maps)
        np.testing.assert_array_equal(fn(images), maps)  # the cached compiled function


def test_a_study_model_is_explained_view_by_view():
    model = MultiView(encoder=models.create("cnn", num_classes=None, widths=(4,), dense=()))
    images = _images(2, 16, seed=4)
    variables = jax.jit(model.init)(jax.random.key(0), images[:, None])
    settings = EvalConfig(ig_steps=2, occlusion_patch=8, occlusion_stride=8)
    for method in attribution_maps.METHODS:
        fn = attribution_maps.make_attribution_fn(model, variables, method, settings, num_classes=2)
        assert fn(images).shape == (2, 16, 16)


def test_methods_and_baselines_are_checked_and_black_is_normalised():
    assert attribution_maps.parse_methods("ig, occlusion,ig") == ("ig", "occlusion")
    with pytest.raises(ConfigError, match="unknown attribution method 'lime': expected one of"):
        attribution_maps.check_methods(["gradcam", "lime"])
    with pytest.raises(ConfigError, match="no attribution method"):
        attribution_maps.parse_methods(" , ")
    spec = models.resolve(ModelConfig(name="densenet169"))  # ImageNet-normalised RGB
    black = attribution_maps.black_value(DataConfig(), spec)
    np.testing.assert_allclose(black, -np.array([0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225])
    assert attribution_maps.black_value(DataConfig(normalization="unit"), spec).tolist() == [0] * 3
