"""Attributions beyond Grad-CAM: integrated gradients and occlusion sensitivity.

    ig = integrated_gradients(model, variables, images, target=1, steps=32)   # (N, H, W)
    occ = occlusion(model, variables, images, target=1, patch=32, stride=32)  # (N, H, W)

Both explain the probability of class `target` (MURA's abnormal; `PREDICTED`: each image's
most probable class, fixed at the image itself) for the model's inputs (N, H, W, C), as the
evaluation pipeline gives them (normalised; a `MultiView` takes them as one-view studies),
and return one signed map per image at the input's size; `heatmaps.normalize_maps` turns
them into overlays (their positive part, each divided by its maximum).

- Integrated gradients (Sundararajan et al. 2017): the input minus a baseline (`baseline`,
  an image, or anything that broadcasts to the inputs: a per-channel constant such as the
  normalised value of a black pixel) times the mean gradient along the straight path from
  the baseline to the input (`steps` midpoints), summed over channels. Its sum over pixels
  is p(input) - p(baseline) (completeness), up to the Riemann sum's error. The path points
  of several images and steps go through the model together, `batch` at a time.
- Occlusion sensitivity (Zeiler and Fergus 2014): a `patch` x `patch` square of `fill`
  (broadcast like `baseline`) slides with `stride`; each pixel's value is the mean drop of
  the probability over the squares that cover it. All (image, placement) pairs run as one
  jitted loop, `batch` occluded images per forward pass.

`ig_maps` and `occlusion_maps` are the traceable computations (for a caller's own `jax.jit`,
as `murajax.attribution_maps` does); `integrated_gradients` and `occlusion` compile and run
them once.
"""

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from murajax.models.multiview import MultiView

PREDICTED = None
"""`target=PREDICTED`: each image's most probable class (as `heatmaps.PREDICTED`)."""

Target = int | jax.Array | None
Score = Callable[[jax.Array], jax.Array]


def model_inputs(model: nn.Module, images: jax.Array) -> jax.Array:
    """What `model.apply` takes for images (N, H, W, C): N one-view studies for a MultiView."""
    return images[:, None] if isinstance(model, MultiView) else images


def probabilities(model: nn.Module, variables: Any, images: jax.Array) -> jax.Array:
    """The class probabilities (N, K) of images (N, H, W, C), inference mode, float32."""
    logits = model.apply(variables, model_inputs(model, images), train=False)
    return jax.nn.softmax(logits.astype(jnp.float32))


def pick(probs: jax.Array, target: Target) -> jax.Array:
    """The probability (N,) of `target`: a class index, one index per image (N,), or
    `PREDICTED` (each row's largest)."""
    if target is None:
        return jnp.max(probs, axis=-1)
    target = jnp.asarray(target)
    if target.ndim == 0:
        return probs[:, target]
    return jnp.take_along_axis(probs, target[:, None].astype(jnp.int32), axis=1)[:, 0]


def resolve_target(probs: jax.Array, target: Target) -> jax.Array:
    """One class index per image (N,): `target` broadcast, or each row's argmax for
    `PREDICTED`."""
    if target is None:
        return jnp.argmax(probs, axis=-1).astype(jnp.int32)
    return jnp.broadcast_to(jnp.asarray(target, jnp.int32), probs.shape[:1])


def target_probability(model: nn.Module, variables: Any, target: int) -> Score:
    """x (N, H, W, C) -> the probability of class `target` per image (N,), inference mode."""

    def score(x: jax.Array) -> jax.Array:
        return pick(probabilities(model, variables, x), target)

    return score


def check_settings(**settings: int) -> None:
    """A one-line `ValueError` naming the first setting (steps, patch, stride, batch) < 1."""
    for name, value in settings.items():
        if int(value) < 1:
            raise ValueError(f"{name}={value}: expected a positive integer")


# --------------------------------------------------------------------------- integrated gradients


def ig_maps(
    model: nn.Module,
    variables: Any,
    images: jax.Array,
    baseline: Any,
    target: Target = 1,
    *,
    steps: int = 32,
    batch: int = 16,
) -> jax.Array:
    """Integrated gradients (N, H, W) of p(target), traceable (module docstring).

    `batch` path points (of `batch // N` steps of every image, at least one step) go through
    the model per gradient; steps are padded to a whole number of those with weight 0.
    """
    n = images.shape[0]
    baseline = jnp.broadcast_to(jnp.asarray(baseline, images.dtype), images.shape)
    delta = images - baseline
    targets = resolve_target(probabilities(model, variables, images), target)
    per_call = max(1, min(steps, batch // max(n, 1)))
    calls = -(-steps // per_call)
    alphas = (jnp.arange(calls * per_call, dtype=jnp.float32) + 0.5) / steps
    weights = (jnp.arange(calls * per_call) < steps).astype(jnp.float32)
    tiled = jnp.tile(targets, per_call)

    def total_probability(x: jax.Array) -> jax.Array:
        return jnp.sum(pick(probabilities(model, variables, x), tiled))

    gradient = jax.grad(total_probability)

    def add(total: jax.Array, chunk: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, None]:
        alpha, weight = chunk
        scale = alpha[:, None, None, None, None]
        points = (baseline[None] + scale * delta[None]).reshape(-1, *images.shape[1:])
        grads = gradient(points).reshape(per_call, *images.shape)
        return total + jnp.einsum("k,knhwc->nhwc", weight, grads), None

    chunks = (alphas.reshape(calls, per_call), weights.reshape(calls, per_call))
    total, _ = jax.lax.scan(add, jnp.zeros_like(images), chunks)
    return jnp.sum(delta * total / steps, axis=-1)


def integrated_gradients(
    model: nn.Module,
    variables: Any,
    images: Any,
    *,
    target: Target = 1,
    baseline: Any = 0.0,
    steps: int = 32,
    batch: int = 16,
) -> np.ndarray:
    """Integrated gradients of p(target) per pixel (N, H, W) (module docstring)."""
    check_settings(steps=steps, batch=batch)
    run = jax.jit(functools.partial(ig_maps, model, steps=steps, batch=batch))
    images = jnp.asarray(images, jnp.float32)
    return np.asarray(run(variables, images, jnp.asarray(baseline, jnp.float32), target))


# --------------------------------------------------------------------------- occlusion


def placements(size: int, patch: int, stride: int) -> list[int]:
    """Top (or left) edges of the squares along one side, the last flush with the edge."""
    last = max(size - patch, 0)
    starts = list(range(0, last + 1, stride))
    if starts[-1] != last:
        starts.append(last)
    return starts


def occlusion_masks(height: int, width: int, patch: int, stride: int) -> np.ndarray:
    """float32 (P, H, W): 1 inside placement k's square, 0 elsewhere (row-major corners)."""
    corners = [
        (r, c) for r in placements(height, patch, stride) for c in placements(width, patch, stride)
    ]
    covered = np.zeros((len(corners), height, width), np.float32)
    for k, (r, c) in enumerate(corners):
        covered[k, r : r + patch, c : c + patch] = 1.0
    return covered


def occlusion_maps(
    model: nn.Module,
    variables: Any,
    images: jax.Array,
    fill: Any,
    target: Target = 1,
    *,
    patch: int = 32,
    stride: int = 32,
    batch: int = 32,
) -> jax.Array:
    """Occlusion sensitivity (N, H, W) of p(target), traceable (module docstring): the
    N x P occluded images go through the model `batch` at a time in one `lax.map`."""
    n, height, width, _ = images.shape
    covered = jnp.asarray(occlusion_masks(height, width, patch, stride))  # (P, H, W)
    count = covered.shape[0]
    fill = jnp.broadcast_to(jnp.asarray(fill, images.dtype), images.shape)
    probs = probabilities(model, variables, images)
    targets = resolve_target(probs, target)
    base = pick(probs, targets)
    pairs = n * count
    padded = -(-pairs // batch) * batch
    index = jnp.arange(padded) % pairs  # padding repeats real pairs; dropped below
    image_index, mask_index = index // count, index % count

    def score(chunk: tuple[jax.Array, jax.Array]) -> jax.Array:
        which, where = chunk
        hole = covered[where][..., None]  # (B, H, W, 1)
        occluded = images[which] * (1.0 - hole) + fill[which] * hole
        return pick(probabilities(model, variables, occluded), targets[which])

    chunks = (image_index.reshape(-1, batch), mask_index.reshape(-1, batch))
    scores = jax.lax.map(score, chunks).reshape(-1)[:pairs].reshape(n, count)
    drops = base[:, None] - scores  # (N, P)
    total = jnp.einsum("np,phw->nhw", drops, covered)
    return total / jnp.maximum(covered.sum(axis=0), 1.0)


def occlusion(
    model: nn.Module,
    variables: Any,
    images: Any,
    *,
    target: Target = 1,
    patch: int = 32,
    stride: int = 32,
    fill: Any = 0.0,
    chunk: int = 32,
) -> np.ndarray:
    """Occlusion sensitivity of p(target) per pixel (N, H, W) (module docstring); `chunk`
    occluded images per forward pass."""
    check_settings(patch=patch, stride=stride, chunk=chunk)
    run = jax.jit(functools.partial(occlusion_maps, model, patch=patch, stride=stride, batch=chunk))
    images = jnp.asarray(images, jnp.float32)
    return np.asarray(run(variables, images, jnp.asarray(fill, jnp.float32), target))
