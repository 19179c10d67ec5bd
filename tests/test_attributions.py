"""Integrated gradients and occlusion sensitivity on models whose answers are known."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from murajax import attributions, models


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
