"""Attributions beyond Grad-CAM: integrated gradients and occlusion sensitivity.

    ig = integrated_gradients(model, variables, images, target=1, steps=32)   # (N, H, W)
    occ = occlusion(model, variables, images, target=1, patch=16, stride=8)    # (N, H, W)

Both explain the probability of class `target` (MURA's abnormal) for the model's inputs
(N, H, W, C), as `model.apply(variables, x, train=False)` takes them (normalised), and return
one signed map per image at the input's size; `heatmaps.normalize_maps` turns them into
overlays (their positive part, each divided by its maximum).

- Integrated gradients (Sundararajan et al. 2017): the input minus a baseline (`baseline`,
  a constant image: black by default) times the mean gradient along the straight path from
  the baseline to the input (`steps` midpoints), summed over channels. Its sum over pixels
  is p(input) - p(baseline) (completeness), up to the Riemann sum's error.
- Occlusion sensitivity (Zeiler and Fergus 2014): a `patch` x `patch` square of `fill` slides
  with `stride`; each pixel's value is the mean drop of the probability over the squares that
  cover it. All placements of a batch run as one jitted call, in chunks of `chunk` images.
"""

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Score = Callable[[jax.Array], jax.Array]


def target_probability(model: nn.Module, variables: Any, target: int) -> Score:
    """x (N, H, W, C) -> the probability of class `target` per image (N,), inference mode."""

    def score(x: jax.Array) -> jax.Array:
        logits = model.apply(variables, x, train=False).astype(jnp.float32)
        return jax.nn.softmax(logits)[:, target]

    return score


@functools.partial(jax.jit, static_argnames=("score", "steps"))
def _integrated_gradients(score: Score, images: jax.Array, baseline: jax.Array, steps: int):
    gradient = jax.grad(lambda x: jnp.sum(score(x)))
    delta = images - baseline

    def add(total: jax.Array, alpha: jax.Array) -> tuple[jax.Array, None]:
        return total + gradient(baseline + alpha * delta), None

    alphas = (jnp.arange(steps, dtype=jnp.float32) + 0.5) / steps
    total, _ = jax.lax.scan(add, jnp.zeros_like(images), alphas)
    return jnp.sum(delta * total / steps, axis=-1)


def integrated_gradients(
    model: nn.Module,
    variables: Any,
    images: Any,
    *,
    target: int = 1,
    baseline: float = 0.0,
    steps: int = 32,
) -> np.ndarray:
    """Integrated gradients of p(target) per pixel (N, H, W) (module docstring)."""
    if steps < 1:
        raise ValueError(f"steps={steps}: expected at least 1")
    images = jnp.asarray(images, jnp.float32)
    score = target_probability(model, variables, target)
    base = jnp.full_like(images, baseline)
    return np.asarray(_integrated_gradients(score, images, base, steps))


def _placements(size: int, patch: int, stride: int) -> list[int]:
    """Top (or left) edges of the squares along one side, the last flush with the edge."""
    starts = list(range(0, max(size - patch, 0) + 1, stride))
    if starts[-1] != max(size - patch, 0):
        starts.append(max(size - patch, 0))
    return starts


def occlusion(
    model: nn.Module,
    variables: Any,
    images: Any,
    *,
    target: int = 1,
    patch: int = 16,
    stride: int = 8,
    fill: float = 0.0,
    chunk: int = 64,
) -> np.ndarray:
    """Occlusion sensitivity of p(target) per pixel (N, H, W) (module docstring)."""
    if patch < 1 or stride < 1:
        raise ValueError(f"patch={patch}, stride={stride}: expected positive integers")
    images = jnp.asarray(images, jnp.float32)
    n, height, width, _ = images.shape
    score = jax.jit(target_probability(model, variables, target))
    corners = [
        (r, c)
        for r in _placements(height, patch, stride)
        for c in _placements(width, patch, stride)
    ]
    masks = np.ones((len(corners), height, width, 1), np.float32)
    for k, (r, c) in enumerate(corners):
        masks[k, r : r + patch, c : c + patch] = 0.0
    masks = jnp.asarray(masks)
    base = score(images)  # (N,)
    drops = []
    for i in range(n):
        occluded = images[i] * masks + fill * (1.0 - masks)  # (P, H, W, C)
        parts = [score(occluded[s : s + chunk]) for s in range(0, len(corners), chunk)]
        drops.append(base[i] - jnp.concatenate(parts))
    drops = jnp.stack(drops)  # (N, P)
    covered = 1.0 - masks[..., 0]  # (P, H, W): 1 where square k covers the pixel
    total = jnp.einsum("np,phw->nhw", drops, covered)
    return np.asarray(total / jnp.maximum(covered.sum(axis=0), 1.0))
