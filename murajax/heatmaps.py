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

A CNN with hidden dense layers (`model.dense`), global max pooling or a flattening head has
no CAM in the strict sense; `cam` warns and returns Grad-CAM for it.

How the feature map is reached (`feature_split`):
- `murajax.models.CNN`: the model with `num_classes=None` computes the feature map and the
  same model with no conv blocks (`widths=()`) is exactly its head, sharing the parameters.
- any other model that follows the `num_classes=None` convention (VGG16, DenseNet-169, a
  user's module): the feature map is found among the submodule calls of the full model
  (`flax.linen.intercept_methods`): the last submodule output equal to the `num_classes=None`
  feature map (a backbone submodule), or else the first submodule input equal to it (a head
  submodule, such as `murajax.models.heads.ClassifierHead`), and it is perturbed there. A
  model whose feature map neither leaves nor enters a submodule is reported as such.
- `murajax.models.MultiView`: its encoder's feature map of each view; images (N, H, W, C) are
  taken as N one-view studies, so each map explains the prediction that its image alone gets.

CAM is known structurally for the CNN (average pooling, no dense layers) and for
`ClassifierHead` (GAP, dropout, one Dense: VGG16 and DenseNet-169 as murajax builds them); for
other models `cam_maps` checks numerically that the head behaves as GAP + linear.

Heatmaps come back as float arrays (N, H, W) in [0, 1] at the input's size (bilinear
upsampling), each divided by its own maximum; an all-zero map stays zero.
"""

import dataclasses
import functools
import os
import warnings
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from murajax.models.cnn import CNN
from murajax.models.heads import ClassifierHead
from murajax.models.multiview import MultiView

ABNORMAL = 1
"""The class index whose evidence the heatmaps show (label 1 = abnormal)."""

Variables = dict[str, Any]
# (variables, images, delta) -> (logits, feature map); the logits are computed from
# `feature map + delta`, so that the gradient with respect to delta at 0 is d logits / dF.
RunFn = Callable[[Variables, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


@dataclasses.dataclass(frozen=True)
class FeatureSplit:
    """A model cut at its feature map.

    Attributes:
      run: `(variables, images, delta) -> (logits, features)`; the logits are computed from
        `features + delta` (delta broadcasts, 0.0 leaves the model unchanged).
      description: where the cut is, in words (for messages).
      cam_weights: for a CNN whose head is global average pooling + the logits layer, a
        function `variables -> (K, classes)` kernel of that layer; None where not known
        structurally.
    """

    run: RunFn
    description: str
    cam_weights: Callable[[Variables], jax.Array] | None = None


# --------------------------------------------------------------------------- feature split


def _cnn_split(model: CNN) -> FeatureSplit:
    """The murajax CNN: its `num_classes=None` twin gives the features, `widths=()` the head."""
    backbone = model.clone(num_classes=None)
    head = model.clone(widths=())  # no conv blocks: pooling, dense layers and logits only

    def run(variables: Variables, images: jax.Array, delta: jax.Array) -> tuple[Any, Any]:
        features = backbone.apply(variables, images, train=False)
        logits = head.apply(variables, (features + delta).astype(features.dtype), train=False)
        return logits, features

    gap_linear = model.pooling == "avg" and not model.dense
    weights = (lambda v: v["params"]["logits"]["kernel"]) if gap_linear else None
    return FeatureSplit(run, "the CNN's last conv block (after max-pooling)", weights)


@dataclasses.dataclass(frozen=True)
class _Call:
    """One submodule method call seen while the model runs: its first argument and output."""

    path: tuple[str, ...]
    method: str
    occurrence: int  # how many earlier calls of the same (path, method) there were
    module_type: type
    first_arg: Any
    output: Any


def _module_calls(model: nn.Module, variables: Variables, images: jax.Array) -> list[_Call]:
    """Every submodule method call of `model.apply`, in the order the calls finish.

    Runs jitted (the calls are recorded while tracing); values that are not arrays are None.
    """
    seen: list[tuple] = []
    values: list[tuple] = []

    def record(next_fun: Callable, args: tuple, kwargs: dict, context: Any) -> Any:
        out = next_fun(*args, **kwargs)
        seen.append((tuple(context.module.path), context.method_name, type(context.module)))
        values.append((args[0] if args else None, out))
        return out

    def traced(variables: Variables, images: jax.Array) -> list[Any]:
        seen.clear()
        values.clear()
        with nn.intercept_methods(record):
            model.apply(variables, images, train=False)
        array = lambda v: v if isinstance(v, jax.Array) else None  # noqa: E731
        return [(array(a), array(o)) for a, o in values]

    outputs = jax.jit(traced)(variables, images)
    calls, counts = [], {}
    for (path, method, module_type), (first_arg, output) in zip(seen, outputs, strict=True):
        occurrence = counts.get((path, method), 0)
        counts[(path, method)] = occurrence + 1
        calls.append(_Call(path, method, occurrence, module_type, first_arg, output))
    return calls


def _equals(value: Any, reference: np.ndarray) -> bool:
    return (
        value is not None
        and value.shape == reference.shape
        and np.allclose(np.asarray(value, np.float32), reference, rtol=1e-4, atol=1e-5)
    )


def _find_site(calls: list[_Call], reference: np.ndarray) -> tuple[_Call, str] | None:
    """Where the feature map appears: the last submodule output equal to it, or else the
    first submodule input (e.g. a classification head's) equal to it."""
    outputs = [c for c in calls if c.path and _equals(c.output, reference)]
    if outputs:
        return outputs[-1], "output"
    inputs = [c for c in calls if c.path and _equals(c.first_arg, reference)]
    return (inputs[0], "input") if inputs else None


def _intercept_split(model: nn.Module, variables: Variables, images: jax.Array) -> FeatureSplit:
    """Cuts a model where its `num_classes=None` feature map leaves or enters a submodule."""
    if not hasattr(model, "num_classes"):
        raise ValueError(
            f"{type(model).__name__} has no `num_classes` attribute: heatmaps need a model "
            "that returns its feature map with num_classes=None"
        )
    backbone = model.clone(num_classes=None)
    features = jax.jit(lambda v, x: backbone.apply(v, x, train=False))
    reference = np.asarray(features(variables, images))
    if reference.ndim != 4:
        raise ValueError(
            f"{type(model).__name__}(num_classes=None) returns shape {reference.shape}, "
            "not an NHWC feature map"
        )
    found = _find_site(_module_calls(model, variables, images), reference)
    if found is None:
        raise ValueError(
            f"no submodule of {type(model).__name__} outputs or takes its num_classes=None "
            f"feature map (shape {reference.shape}): heatmaps cannot reach it"
        )
    site, where = found
    key = (site.path, site.method)

    def run(variables: Variables, images: jax.Array, delta: jax.Array) -> tuple[Any, Any]:
        captured: list[Any] = []
        count = [0]

        def hook(next_fun: Callable, args: tuple, kwargs: dict, context: Any) -> Any:
            if (tuple(context.module.path), context.method_name) != key:
                return next_fun(*args, **kwargs)
            count[0] += 1
            if count[0] - 1 != site.occurrence:
                return next_fun(*args, **kwargs)
            if where == "input":
                captured.append(args[0])
                args = ((args[0] + delta).astype(args[0].dtype), *args[1:])
                return next_fun(*args, **kwargs)
            out = next_fun(*args, **kwargs)
            captured.append(out)
            return (out + delta).astype(out.dtype)

        with nn.intercept_methods(hook):
            logits = model.apply(variables, images, train=False)
        return logits, captured[0]

    cam_weights = None
    if where == "input" and issubclass(site.module_type, ClassifierHead):
        cam_weights = functools.partial(_head_kernel, path=site.path)
    return FeatureSplit(run, f"the {where} of {'/'.join(site.path)}.{site.method}", cam_weights)


def _head_kernel(variables: Variables, *, path: tuple[str, ...]) -> jax.Array:
    """The logits kernel (K, classes) of the `ClassifierHead` at `path` (GAP + linear)."""
    params = variables["params"]
    for name in path:
        params = params[name]
    return params["logits"]["kernel"]


def _multiview_split(model: MultiView) -> FeatureSplit:
    """The multi-view study model: its shared encoder's feature map of each view. Images
    (N, H, W, C) are N one-view studies, so each map explains the prediction of its image."""

    def run(variables: Variables, images: jax.Array, delta: jax.Array) -> tuple[Any, Any]:
        studies = images[:, None]
        features = model.apply(variables, studies, train=False, method="encode")
        logits = model.apply(
            variables,
            (features + delta).astype(features.dtype),
            studies.shape[:2],
            train=False,
            method="classify",
        )
        return logits, features

    return FeatureSplit(run, "the multiview encoder's feature map of each view")


def feature_split(model: nn.Module, variables: Variables, images: Any) -> FeatureSplit:
    """Cuts `model` at its feature map (see the module docstring); `images` are a sample
    batch, used only to locate the feature map in a model that is not a murajax CNN."""
    if isinstance(model, CNN):
        return _cnn_split(model)
    if isinstance(model, MultiView):
        return _multiview_split(model)
    return _intercept_split(model, variables, jnp.asarray(images))


# --------------------------------------------------------------------------- maps


def _feature_gradients(
    split: FeatureSplit, variables: Variables, images: jax.Array, target: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(features, d logits[:, target] / d features, logits), each image's own gradient."""
    shape = jax.eval_shape(lambda: split.run(variables, images, jnp.float32(0.0))[1])
    delta = jnp.zeros(shape.shape, jnp.float32)

    def score(delta: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        logits, features = split.run(variables, images, delta)
        # Images are independent in eval mode, so the gradient of the sum is per image.
        return jnp.sum(logits[:, target].astype(jnp.float32)), (features, logits)

    grads, (features, logits) = jax.grad(score, has_aux=True)(delta)
    return features.astype(jnp.float32), grads, logits


def _gradcam_and_probs(
    split: FeatureSplit, variables: Variables, images: jax.Array, target: int
) -> tuple[jax.Array, jax.Array]:
    """Raw Grad-CAM maps (N, h, w) and the probabilities of `target` (N,)."""
    features, grads, logits = _feature_gradients(split, variables, images, target)
    alpha = jnp.mean(grads, axis=(1, 2))  # (N, K): global-average-pooled gradients
    maps = jax.nn.relu(jnp.einsum("nhwk,nk->nhw", features, alpha))
    return maps, jax.nn.softmax(logits.astype(jnp.float32))[:, target]


def gradcam_maps(
    model: nn.Module, variables: Variables, images: Any, *, target: int = ABNORMAL
) -> np.ndarray:
    """Raw Grad-CAM maps (N, h, w) at the feature map's resolution, >= 0, not normalised."""
    images = jnp.asarray(images)
    split = feature_split(model, variables, images)
    run = jax.jit(lambda v, x: _gradcam_and_probs(split, v, x, target)[0])
    return np.asarray(run(variables, images))


def _numerical_gap_linear_weights(
    split: FeatureSplit, variables: Variables, images: jax.Array, target: int
) -> jax.Array | None:
    """The head's linear weights (K,) if it behaves as GAP + linear on these inputs, else None.

    For GAP + linear, d logit / dF[i, j, k] = w[k] / (h w) for every image and position; a
    head with hidden nonlinear layers or max pooling changes its gradient with the input.
    The check runs on `images`, on zeros and on `2 * images`.
    """
    gradients = jax.jit(lambda v, x: _feature_gradients(split, v, x, target)[1])
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
    model: nn.Module, variables: Variables, images: Any, *, target: int = ABNORMAL
) -> np.ndarray | None:
    """Raw class activation maps (N, h, w), signed, or None where CAM is not defined.

    `logits[:, target] = mean_ij CAM[:, i, j] + bias` for a GAP + linear head. Defined for a
    CNN with average pooling and no hidden dense layers, and for other models whose head
    is found numerically to be GAP + linear (see `_numerical_gap_linear_weights`).
    """
    images = jnp.asarray(images)
    split = feature_split(model, variables, images)
    if split.cam_weights is not None:
        weights = split.cam_weights(variables)[:, target]
    elif isinstance(model, CNN):
        return None  # a dense, max-pooling or flattening head: no CAM
    else:
        weights = _numerical_gap_linear_weights(split, variables, images, target)
        if weights is None:
            return None

    @jax.jit
    def run(variables: Variables, images: jax.Array, weights: jax.Array) -> jax.Array:
        features = split.run(variables, images, jnp.float32(0.0))[1].astype(jnp.float32)
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


def make_gradcam_fn(
    model: nn.Module, variables: Variables, sample_images: Any, *, target: int = ABNORMAL
) -> Callable[[Variables, Any], tuple[np.ndarray, np.ndarray]]:
    """A `(variables, images) -> (heatmaps (N, H, W) in [0, 1], probabilities (N,))` function.

    For scoring many batches: the model is cut once (on `sample_images`) and compiled once
    per batch shape. The probabilities of `target` come from the same forward pass.
    """
    split = feature_split(model, variables, jnp.asarray(sample_images))
    run = jax.jit(lambda v, x: _gradcam_and_probs(split, v, x, target))

    def call(variables: Variables, images: Any) -> tuple[np.ndarray, np.ndarray]:
        images = jnp.asarray(images)
        maps, probs = run(variables, images)
        return normalize_maps(maps, images.shape[1:3]), np.asarray(probs)

    return call


def gradcam(
    model: nn.Module, variables: Variables, images: Any, *, target: int = ABNORMAL
) -> np.ndarray:
    """Grad-CAM heatmaps (N, H, W) in [0, 1] at the size of `images` (N, H, W, C).

    `variables` are the model's (`{'params': ..., 'batch_stats': ...}`); the model runs in
    eval mode. `target` is the class whose logit is explained (1 = abnormal).
    """
    return make_gradcam_fn(model, variables, images, target=target)(variables, images)[0]


def cam(
    model: nn.Module, variables: Variables, images: Any, *, target: int = ABNORMAL
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
