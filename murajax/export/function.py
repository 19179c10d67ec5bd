"""The function a model package holds: uint8 images in, probabilities and logits out.

    inference = build(loaded)                    # a restored workdir (`murajax.inference`)
    prob, logits = inference.fn(images)          # images uint8 (B, S, S, 1)
    prob, logits = inference.fn(images, mask)    # a study model: (B, V, S, S, 1), (B, V) bool

Everything between the square 8-bit grayscale image and the model's answer is inside `fn`:
the normalisation (`data.normalization`, or the model's own) as the same 256-entry lookup
table the eval pipeline uses (so the model sees the very same floats), the gray plane
repeated to RGB for a model that wants 3 channels, the model in inference mode (BatchNorm's
running statistics, no dropout), and the softmax in float32. An ensemble's probability is
the mean of its members' (as `steps.ensemble_eval_step`), and its `logits` the log of that
mean (whose softmax is the mean again); one model's `logits` are its own.

The model is rebuilt with XLA's convolutions and BatchNorm (`conv_impl='xla'`): murajax's
oneDNN calls are custom calls that `jax.export` cannot serialize and ONNX does not know; and
in float32, so that a model trained in bfloat16 exports to runtimes without bfloat16 kernels.
The weights are constants of `fn`.
"""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from murajax import inference as inference_lib
from murajax.config import DataConfig
from murajax.data import pipeline, preprocess
from murajax.models import ModelSpec

INPUT_NAMES = ("images", "view_mask")
OUTPUT_NAMES = ("prob", "logits")
EXPORT_DTYPE = "float32"
EXPORT_CONV_IMPL = "xla"


@dataclasses.dataclass(frozen=True)
class Inference:
    """A model as one pure function of its uint8 inputs, with what a package says of them."""

    fn: Callable[..., tuple[jax.Array, jax.Array]]
    image_size: int
    channels: int  # the channels the model itself takes (the input is always 1: gray)
    normalization: str
    study_level: bool  # inputs (B, V, S, S, 1) images and a (B, V) view mask
    num_classes: int

    def input_specs(self) -> list[jax.ShapeDtypeStruct]:
        """The inputs' shapes with a symbolic batch `B` (and a symbolic view count `V`)."""
        batch, views = jax.export.symbolic_shape("B, V")
        image = (self.image_size, self.image_size, 1)
        if self.study_level:
            return [
                jax.ShapeDtypeStruct((batch, views, *image), jnp.uint8),
                jax.ShapeDtypeStruct((batch, views), jnp.bool_),
            ]
        return [jax.ShapeDtypeStruct((batch, *image), jnp.uint8)]

    def input_names(self) -> tuple[str, ...]:
        """`images`, and `view_mask` for a study model."""
        return INPUT_NAMES[: 2 if self.study_level else 1]

    def output_shapes(self) -> dict[str, list[str | int]]:
        """Each output's shape: `prob` (B,) for two classes (class 1's), else (B, K)."""
        prob: list[str | int] = ["B"] if self.num_classes == 2 else ["B", self.num_classes]
        return {"prob": prob, "logits": ["B", self.num_classes]}


def lookup_table(normalization: str, channels: int) -> np.ndarray:
    """float32 (256, channels): the normalised value of each uint8 gray level, computed as
    `preprocess.normalize` computes it for uint8 images (bit for bit the same floats)."""
    scale, offset = preprocess.normalization_affine(normalization, channels)
    return (np.arange(256)[:, None] / 255.0 * scale + offset).astype(np.float32)


def normalize(images: jax.Array, normalization: str, channels: int) -> jax.Array:
    """uint8 (..., S, S, 1) -> float32 (..., S, S, channels), as `preprocess.normalize`."""
    if normalization == "standardize":
        x = images.astype(jnp.float32) / 255.0
        mean = x.mean(axis=(-3, -2, -1), keepdims=True)
        std = x.std(axis=(-3, -2, -1), keepdims=True)
        x = (x - mean) / jnp.maximum(std, 1e-3)
        return jnp.broadcast_to(x, (*x.shape[:-1], channels)) if channels != 1 else x
    table = jnp.asarray(lookup_table(normalization, channels))
    return jnp.take(table, images[..., 0].astype(jnp.int32), axis=0)


def build(loaded: inference_lib.Loaded) -> Inference:
    """The package's function of a restored workdir (`inference.load`), all members in it."""
    members = [loaded.variables(m) for m in range(len(loaded.states))]
    return make(loaded.spec, loaded.config.data, members)


def make(spec: ModelSpec, data_config: DataConfig, members: Sequence[Any]) -> Inference:
    """The package's function of model `spec` with the variables of each ensemble member
    (one or more), preprocessing as `data_config` says."""
    prep = pipeline.preprocess_spec(data_config, spec)
    model = spec.build(dtype=EXPORT_DTYPE, conv_impl=EXPORT_CONV_IMPL)
    weights = [_float32(v) for v in members]

    def logits_of(variables: Any, images: jax.Array, kwargs: dict[str, Any]) -> jax.Array:
        return model.apply(variables, images, **kwargs, train=False).astype(jnp.float32)

    def fn(images: jax.Array, view_mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        x = normalize(images, prep.normalization, prep.channels)
        kwargs = {"view_mask": view_mask} if spec.study_level else {}
        logits = [logits_of(v, x, kwargs) for v in weights]
        if len(logits) == 1:
            out_logits = logits[0]
            probs = jax.nn.softmax(out_logits)
        else:
            probs = jnp.mean(jnp.stack([jax.nn.softmax(z) for z in logits]), axis=0)
            out_logits = jnp.log(probs)
        prob = probs[:, 1] if probs.shape[-1] == 2 else probs
        return prob, out_logits

    return Inference(
        fn=fn,
        image_size=prep.image_size,
        channels=prep.channels,
        normalization=prep.normalization,
        study_level=spec.study_level,
        num_classes=spec.num_classes,
    )


def _float32(variables: Any) -> Any:
    """The variables with every floating leaf in float32 (the package computes in float32)."""
    return jax.tree.map(
        lambda v: np.asarray(v, np.float32) if jnp.issubdtype(v.dtype, jnp.floating) else v,
        variables,
    )
