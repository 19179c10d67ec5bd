"""Where the model looks: class activation maps (CAM) and Grad-CAM, overlaid on radiographs.

Both maps live on a model's *feature map*: the output of its convolutional backbone, the
tensor that `models.create(name, num_classes=None)` returns (Keras's `include_top=False`).

- CAM (Zhou et al. 2016, the maps of the MURA paper) is defined for a head that is global
  average pooling followed by one linear layer: `CAM(i, j) = sum_k w[k, abnormal] F[i, j, k]`,
  so that the abnormal logit is the spatial mean of the CAM plus a bias.
- Grad-CAM (Selvaraju et al. 2017) works for any head: each channel k is weighted by the
  spatial mean of d(abnormal logit) / dF[i, j, k], and `ReLU(sum_k alpha_k F[:, :, k])` is
  the map. For a GAP + linear head `alpha_k = w[k, abnormal] / (h w)`, so Grad-CAM equals CAM
  up to scale (and the two normalised heatmaps are equal).

How the feature map is reached: every murajax model marks it, once, with
`murajax.models.layers.mark_features(self, x)` (the CNN after its last conv block, VGG16 after
block5_pool, DenseNet-169 after its final BN and ReLU; a `MultiView`'s encoder marks each
view's). The mark stores the map in the "intermediates" collection (`Module.sow`) and adds a
zero "perturbations" variable to it (`Module.perturb`): the gradient of the logits with
respect to that variable is their gradient with respect to the feature map. A user's own
module gets heatmaps by marking its feature map the same way; one that marks none is
reported in one line. Images (N, H, W, C) are taken as N one-view studies by a `MultiView`,
so each map explains the prediction that its image alone gets.

CAM needs a GAP + linear head: `cam_maps` recognises one by its gradient, which is then the
same at every position of every image (`w / (h w)`); a CNN with hidden dense layers
(`model.dense`), global max pooling or a flattening head has no CAM, and `cam` warns and
returns Grad-CAM for it.

Heatmaps come back as float arrays (N, H, W) in [0, 1] at the input's size (bilinear
upsampling), each divided by its own maximum; an all-zero map stays zero.
"""

import functools
import os
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from murajax.models.layers import FEATURES
from murajax.models.multiview import MultiView

ABNORMAL = 1
"""The class index whose evidence the heatmaps of a binary model show (label 1 = abnormal)."""

PREDICTED = None
"""`target=PREDICTED`: each image's map explains its most probable class (multi-class)."""

Target = int | None


def target_class(num_classes: int) -> Target:
    """The class a model's heatmaps explain: class 1 (MURA's abnormal) for two classes, each
    image's predicted class for more (`PREDICTED`)."""
    return ABNORMAL if num_classes == 2 else PREDICTED


def _target_logits(logits: jax.Array, target: Target) -> jax.Array:
    """The logit (or probability) of `target` per image (N,); of each image's most probable
    class for `PREDICTED`."""
    if target is not None:
        return logits[:, target]
    picked = jnp.argmax(logits, axis=-1)[:, None]
    return jnp.take_along_axis(logits, picked, axis=1)[:, 0]


PERTURBATIONS = "perturbations"  # the collections that `mark_features` writes
INTERMEDIATES = "intermediates"

Variables = dict[str, Any]
Path = tuple[str, ...]


# --------------------------------------------------------------------------- the marked map


def _model_inputs(model: nn.Module, images: jax.Array) -> jax.Array:
    """What `model.apply` takes for images (N, H, W, C): N one-view studies for a MultiView."""
    return images[:, None] if isinstance(model, MultiView) else images


def _marks(tree: Mapping[str, Any], path: Path = ()) -> list[Path]:
    """The module paths of the `FEATURES` entries in a collection (nested mappings whose
    leaves are the marks; a submodule may itself be named "features")."""
    found = []
    for name, value in tree.items():
        if isinstance(value, Mapping):
            found += _marks(value, (*path, name))
        elif name == FEATURES:
            found.append(path)
    return found


def _at(tree: Any, path: Path) -> Any:
    """The `FEATURES` entry of a collection at module `path`."""
    for name in path:
        tree = tree[name]
    return tree[FEATURES]


def _perturbation_shapes(model: nn.Module, variables: Variables, inputs: jax.Array) -> Any:
    """The shapes of the zero "perturbations" that `model`'s marks add (no compute)."""
    state = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=False, mutable=[PERTURBATIONS])[1], variables, inputs
    )
    return state.get(PERTURBATIONS, {})


def _site(model: nn.Module, perturbations: Any) -> Path:
    """The one module path in `perturbations` that holds a mark; a one-line `ValueError`
    naming the model where there is none or more than one."""
    found = _marks(perturbations)
    name = type(model).__name__
    if not found:
        raise ValueError(
            f"{name} marks no feature map: no submodule of it, nor the model itself, calls"
            " `x = murajax.models.layers.mark_features(self, x)` on its last convolutional"
            " feature map, which heatmaps need"
        )
    if len(found) > 1:
        where = ", ".join("/".join(path) or "the model itself" for path in found)
        raise ValueError(f"{name} marks {len(found)} feature maps ({where}): heatmaps need one")
    return found[0]


def feature_site(model: nn.Module, variables: Variables, images: Any) -> Path:
    """The module path where `model` marks its feature map (() for the model itself).

    `images` are a sample batch (only their shape is used). Raises a one-line `ValueError`
    unless the model marks exactly one feature map (see `layers.mark_features`).
    """
    inputs = _model_inputs(model, jnp.asarray(images))
    return _site(model, _perturbation_shapes(model, variables, inputs))


def _features_and_gradients(
    model: nn.Module, variables: Variables, images: jax.Array, target: Target
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(features F, d logits[:, target] / dF, logits) in eval mode, F and its gradient in
    float32 (N, h, w, K), each image's own gradient."""
    inputs = _model_inputs(model, images)
    shapes = _perturbation_shapes(model, variables, inputs)
    site = _site(model, shapes)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def score(perturbations: Any) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        logits, state = model.apply(
            {**variables, PERTURBATIONS: perturbations},
            inputs,
            train=False,
            mutable=[INTERMEDIATES],
        )
        (features,) = _at(state[INTERMEDIATES], site)
        # Images are independent in eval mode, so the gradient of the sum is per image.
        return jnp.sum(_target_logits(logits, target).astype(jnp.float32)), (features, logits)

    grads, (features, logits) = jax.grad(score, has_aux=True)(zeros)
    return features.astype(jnp.float32), _at(grads, site).astype(jnp.float32), logits


# --------------------------------------------------------------------------- maps


def _gradcam_and_probs(
    model: nn.Module, variables: Variables, images: jax.Array, target: Target
) -> tuple[jax.Array, jax.Array]:
    """Raw Grad-CAM maps (N, h, w) and the probabilities of `target` (N,) (of each image's
    predicted class for `PREDICTED`)."""
    features, grads, logits = _features_and_gradients(model, variables, images, target)
    alpha = jnp.mean(grads, axis=(1, 2))  # (N, K): global-average-pooled gradients
    maps = jax.nn.relu(jnp.einsum("nhwk,nk->nhw", features, alpha))
    return maps, _target_logits(jax.nn.softmax(logits.astype(jnp.float32)), target)


def gradcam_and_probs(
    model: nn.Module, variables: Variables, images: jax.Array, target: Target = ABNORMAL
) -> tuple[jax.Array, jax.Array]:
    """Raw Grad-CAM maps (N, h, w) and the probabilities of `target` (N,), traceable (for a
    caller's own `jax.jit`, as `murajax.attribution_maps` does)."""
    return _gradcam_and_probs(model, variables, images, target)


def gradcam_maps(
    model: nn.Module, variables: Variables, images: Any, *, target: Target = ABNORMAL
) -> np.ndarray:
    """Raw Grad-CAM maps (N, h, w) at the feature map's resolution, >= 0, not normalised."""
    images = jnp.asarray(images)
    run = jax.jit(lambda v, x: _gradcam_and_probs(model, v, x, target)[0])
    return np.asarray(run(variables, images))


def _gap_linear_weights(
    model: nn.Module, variables: Variables, images: jax.Array, target: Target
) -> jax.Array | None:
    """The head's linear weights (K,) if it behaves as GAP + linear on these inputs, else None.

    For GAP + linear, d logit / dF[i, j, k] = w[k] / (h w) for every image and position; a
    head with hidden nonlinear layers, max pooling or flattening changes its gradient with the
    position or the input. The check runs on `images`, on zeros and on `2 * images`.
    """
    gradients = jax.jit(lambda v, x: _features_and_gradients(model, v, x, target)[1])
    reference = None
    for probe in (images, jnp.zeros_like(images), 2.0 * images):
        grads = np.asarray(gradients(variables, probe))
        first = grads[:1, :1, :1]
        if reference is None:
            reference = first
        tolerance = 1e-6 * (np.max(np.abs(reference)) + 1e-12)
        if not np.allclose(grads, reference, rtol=1e-4, atol=tolerance):
            return None
    h, w = grads.shape[1:3]
    return jnp.asarray(reference.reshape(-1) * h * w)


def cam_maps(
    model: nn.Module, variables: Variables, images: Any, *, target: Target = ABNORMAL
) -> np.ndarray | None:
    """Raw class activation maps (N, h, w), signed, or None where CAM is not defined.

    `logits[:, target] = mean_ij CAM[:, i, j] + bias` for a GAP + linear head, the heads for
    which CAM is defined (recognised by their gradient: `_gap_linear_weights`).
    """
    images = jnp.asarray(images)
    weights = _gap_linear_weights(model, variables, images, target)
    if weights is None:
        return None

    @jax.jit
    def run(variables: Variables, images: jax.Array, weights: jax.Array) -> jax.Array:
        features = _features_and_gradients(model, variables, images, target)[0]
        return jnp.einsum("nhwk,k->nhw", features, weights)

    return np.asarray(run(variables, images, weights))


@functools.partial(jax.jit, static_argnums=1)
def _normalize(maps: jax.Array, size: tuple[int, int]) -> jax.Array:
    maps = jax.nn.relu(maps.astype(jnp.float32))
    maps = jnp.clip(jax.image.resize(maps, (maps.shape[0], *size), method="bilinear"), 0.0)
    peak = jnp.max(maps, axis=(1, 2), keepdims=True)
    return jnp.where(peak > 0, maps / jnp.where(peak > 0, peak, 1.0), 0.0)


def normalize_maps(maps: Any, size: tuple[int, int]) -> np.ndarray:
    """ReLU, bilinear upsampling to `size` = (H, W), then each map divided by its maximum."""
    return np.asarray(_normalize(jnp.asarray(maps), tuple(int(s) for s in size)))


def normalized(maps: jax.Array, size: tuple[int, int]) -> jax.Array:
    """`normalize_maps` on traced arrays (inside a caller's `jax.jit`)."""
    return _normalize(maps, tuple(int(s) for s in size))


def make_gradcam_fn(
    model: nn.Module, variables: Variables, sample_images: Any, *, target: Target = ABNORMAL
) -> Callable[[Variables, Any], tuple[np.ndarray, np.ndarray]]:
    """A `(variables, images) -> (heatmaps (N, H, W) in [0, 1], probabilities (N,))` function.

    For scoring many batches: compiled once per batch shape. `sample_images` are checked to
    reach a marked feature map (`feature_site`) before any batch. The probabilities of
    `target` come from the same forward pass.
    """
    feature_site(model, variables, sample_images)
    run = jax.jit(lambda v, x: _gradcam_and_probs(model, v, x, target))

    def call(variables: Variables, images: Any) -> tuple[np.ndarray, np.ndarray]:
        images = jnp.asarray(images)
        maps, probs = run(variables, images)
        return normalize_maps(maps, images.shape[1:3]), np.asarray(probs)

    return call


def gradcam(
    model: nn.Module, variables: Variables, images: Any, *, target: Target = ABNORMAL
) -> np.ndarray:
    """Grad-CAM heatmaps (N, H, W) in [0, 1] at the size of `images` (N, H, W, C).

    `variables` are the model's (`{'params': ..., 'batch_stats': ...}`); the model runs in
    eval mode. `target` is the class whose logit is explained (1 = abnormal), or
    `PREDICTED`: each image's most probable class (`target_class`).
    """
    return make_gradcam_fn(model, variables, images, target=target)(variables, images)[0]


def cam(
    model: nn.Module, variables: Variables, images: Any, *, target: Target = ABNORMAL
) -> np.ndarray:
    """Class activation maps (N, H, W) in [0, 1] (positive evidence for `target`).

    Where CAM is not defined (a head that is not global average pooling + one linear layer,
    such as the CNN with hidden dense layers) this warns and returns `gradcam`.
    """
    images = jnp.asarray(images)
    maps = cam_maps(model, variables, images, target=target)
    if maps is None:
        warnings.warn(
            f"CAM is not defined for {type(model).__name__}'s head (it is not global average "
            "pooling + one linear layer); showing Grad-CAM instead",
            stacklevel=2,
        )
        return gradcam(model, variables, images, target=target)
    return normalize_maps(maps, images.shape[1:3])


# --------------------------------------------------------------------------- overlays


def _gray_unit(image: Any) -> np.ndarray:
    """An (H, W) float image in [0, 1] from uint8 [0, 255] or float [0, 1], (H, W[, 1|3])."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 3:
        image = image.mean(axis=-1) if image.dtype != np.uint8 else image.mean(axis=-1) / 255.0
        return np.clip(image.astype(np.float32), 0.0, 1.0)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim != 2:
        raise ValueError(f"expected an (H, W), (H, W, 1) or (H, W, 3) image, got {image.shape}")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    return np.clip(image.astype(np.float32), 0.0, 1.0)


def _resize_map(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an (h, w) map to `size` = (H, W); kept in [0, 1]."""
    if heatmap.shape == size:
        return heatmap
    pil = Image.fromarray(heatmap.astype(np.float32), mode="F")
    resized = pil.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized, np.float32), 0.0, 1.0)


def overlay(image: Any, heatmap: Any, *, alpha: float = 0.4, colormap: str = "jet") -> np.ndarray:
    """Blends a heatmap over a grayscale radiograph: uint8 RGB (H, W, 3).

    `image` is uint8 in [0, 255] or float in [0, 1], (H, W), (H, W, 1) or (H, W, 3);
    `heatmap` is (h, w) in [0, 1] (resized to the image if needed). Each pixel is
    `(1 - alpha) * gray + alpha * colormap(heat)` (matplotlib's 'jet' by default).
    """
    from matplotlib import colormaps  # local: matplotlib is slow to import

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha}: expected a number in [0, 1]")
    gray = _gray_unit(image)
    heat = np.clip(np.asarray(heatmap, np.float32), 0.0, 1.0)
    if heat.ndim != 2:
        raise ValueError(f"expected an (H, W) heatmap, got shape {heat.shape}")
    heat = _resize_map(heat, gray.shape)
    colours = colormaps[colormap](heat)[..., :3].astype(np.float32)
    blended = (1.0 - alpha) * gray[..., None] + alpha * colours
    return np.round(np.clip(blended, 0.0, 1.0) * 255.0).astype(np.uint8)


def save_overlay(path: str, image: Any, heatmap: Any, *, alpha: float = 0.4) -> str:
    """Writes `overlay(image, heatmap)` as a PNG at `path` (parent folders created)."""
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    Image.fromarray(overlay(image, heatmap, alpha=alpha), mode="RGB").save(path, format="PNG")
    return path
