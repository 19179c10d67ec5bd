"""One entry point for every attribution method: the maps that predict, the report and the
study browser draw.

    fn = make_attribution_fn(model, variables, "ig", config.eval, num_classes=2,
                             black=black_value(config.data, spec))
    maps = fn(images)   # float32 (N, H, W) in [0, 1]

Methods (`METHODS`): "gradcam" (`murajax.heatmaps`), "ig" (integrated gradients) and
"occlusion" (`murajax.attributions`), with `eval.ig_steps`, `eval.ig_baseline`,
`eval.occlusion_patch` and `eval.occlusion_stride`. Images are the model's inputs exactly as
the evaluation pipeline gives them (normalised; a MultiView takes them as one-view studies).
Each map is its method's positive evidence for class 1 (abnormal) of a binary model, or for
each image's predicted class of more classes (`heatmaps.target_class`), at the input's size,
divided by its own maximum (`heatmaps.normalize_maps`; an all-zero map stays zero).

Baselines (`eval.ig_baseline`, also occlusion's fill): "black" is a black radiograph as the
pipeline normalises it. The normalisation is not a property of the model alone (the config's
`data.normalization` may override the model's), so the caller passes that value as `black`
(`black_value(data_config, spec)`; the default 0.0 is black for 'unit' inputs and for
'standardize'). "mean" is each image's own mean per channel (a flat grey image).
"""

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from murajax import attributions, heatmaps
from murajax.config import ATTRIBUTION_METHODS, IG_BASELINES, DataConfig, EvalConfig
from murajax.data import ModelInputs, pipeline, preprocess
from murajax.errors import ConfigError

METHODS: tuple[str, ...] = ATTRIBUTION_METHODS
"""The attribution methods, in the order they are drawn."""

BASELINES: tuple[str, ...] = IG_BASELINES
"""`eval.ig_baseline`: "black" (a black image, normalised) or "mean" (each image's mean)."""

DEFAULT_METHODS: tuple[str, ...] = ("gradcam",)
"""What `predict --heatmaps` draws without `--attribution`."""

TITLES = {"gradcam": "Grad-CAM", "ig": "Integrated gradients", "occlusion": "Occlusion"}
"""How each method is named in figures and reports."""

IG_BATCH = 16  # path points per gradient: DenseNet-169's CPU throughput flattens out there
OCCLUSION_BATCH = 32  # occluded images per forward pass

AttributionFn = Callable[[Any], np.ndarray]


def check_methods(methods: Sequence[str]) -> tuple[str, ...]:
    """`methods` as a tuple, or a one-line `ConfigError` naming the first unknown one (and
    `METHODS`), or an empty selection."""
    methods = tuple(m.strip() for m in methods)
    for method in methods:
        if method not in METHODS:
            raise ConfigError(
                f"unknown attribution method {method!r}: expected one of {', '.join(METHODS)}"
            )
    if not methods:
        raise ConfigError(f"no attribution method chosen: expected some of {', '.join(METHODS)}")
    return methods


def parse_methods(text: str) -> tuple[str, ...]:
    """`"gradcam,ig"` -> ("gradcam", "ig"), checked (`check_methods`); duplicates dropped."""
    return check_methods(tuple(dict.fromkeys(m.strip() for m in text.split(",") if m.strip())))


def black_value(data_config: DataConfig, model: ModelInputs) -> np.ndarray:
    """The normalised value (C,) of a black pixel for `model`'s inputs under `data_config`
    (`data.normalization`, else the model's own); 0 for 'standardize' (a flat image)."""
    spec = pipeline.preprocess_spec(data_config, model)
    black = np.zeros((1, 1, 1), np.uint8)
    return np.asarray(preprocess.normalize(black, spec.normalization, spec.channels))[0, 0]


def baseline_of(images: jax.Array, name: str, black: Any) -> jax.Array:
    """IG's baseline / occlusion's fill for `images` (N, H, W, C), broadcastable to them:
    `black` ("black") or each image's mean per channel ("mean")."""
    if name == "black":
        return jnp.asarray(black, images.dtype)
    if name == "mean":
        return jnp.mean(images, axis=(1, 2), keepdims=True)
    raise ConfigError(f"config.eval.ig_baseline={name!r} is invalid: expected one of {BASELINES}")


def raw_maps(
    model: nn.Module,
    method: str,
    eval_config: EvalConfig,
    *,
    target: heatmaps.Target,
    black: Any = 0.0,
) -> Callable[[Any, jax.Array], jax.Array]:
    """A traceable `(variables, images) -> maps (N, h, w)` of `method`, before
    normalisation (Grad-CAM at the feature map's resolution, the others at the input's)."""
    e = eval_config
    if method == "gradcam":
        return lambda v, x: heatmaps.gradcam_and_probs(model, v, x, target)[0]
    if method == "ig":
        attributions.check_settings(ig_steps=e.ig_steps)
        return lambda v, x: attributions.ig_maps(
            model,
            v,
            x,
            baseline_of(x, e.ig_baseline, black),
            target,
            steps=e.ig_steps,
            batch=IG_BATCH,
        )
    if method == "occlusion":
        attributions.check_settings(
            occlusion_patch=e.occlusion_patch, occlusion_stride=e.occlusion_stride
        )
        return lambda v, x: attributions.occlusion_maps(
            model,
            v,
            x,
            baseline_of(x, e.ig_baseline, black),
            target,
            patch=e.occlusion_patch,
            stride=e.occlusion_stride,
            batch=OCCLUSION_BATCH,
        )
    check_methods([method])
    raise AssertionError(method)  # unreachable: check_methods raised


def make_variables_fn(
    model: nn.Module,
    method: str,
    eval_config: EvalConfig,
    *,
    num_classes: int,
    black: Any = 0.0,
) -> Callable[[Any, Any], np.ndarray]:
    """A jitted `(variables, images) -> maps` (as `make_attribution_fn`'s) that takes the
    variables as an argument: one compilation for many variables of one model (the sanity
    check's randomised models)."""
    check_methods([method])
    compute = raw_maps(
        model, method, eval_config, target=heatmaps.target_class(num_classes), black=black
    )

    @jax.jit
    def run(variables: Any, images: jax.Array) -> jax.Array:
        return heatmaps.normalized(compute(variables, images), images.shape[1:3])

    def call(variables: Any, images: Any) -> np.ndarray:
        return np.asarray(run(variables, jnp.asarray(images, jnp.float32)), np.float32)

    return call


def make_attribution_fn(
    model: nn.Module,
    variables: Any,
    method: str,
    eval_config: EvalConfig,
    *,
    num_classes: int,
    black: Any = 0.0,
) -> AttributionFn:
    """`images (N, H, W, C) -> maps float32 (N, H, W)` in [0, 1] of `method` (module
    docstring): batched, jitted, compiled once per input shape. `black` is the normalised
    value of a black pixel (`black_value`), for `eval.ig_baseline="black"`."""
    run = make_variables_fn(model, method, eval_config, num_classes=num_classes, black=black)
    checked: list[tuple[int, ...]] = []

    def call(images: Any) -> np.ndarray:
        images = np.asarray(images, np.float32)
        if method == "gradcam" and not checked:
            heatmaps.feature_site(model, variables, images)  # one line if none is marked
            checked.append(images.shape)
        return run(variables, images)

    return call
