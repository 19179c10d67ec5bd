"""The multi-view study model: one shared encoder over every view of a study, pooled into one
study prediction (the thesis's proposed extension: a network that sees all views at once).

    images (B, V, H, W, C), view_mask (B, V) bool
      -> encoder on all B*V views: any registered image model built with num_classes=None
      -> per-view spatial pooling, `pooling`: "avg", "max" or "flatten"         (B, V, D)
      -> view pooling over the real views, `view_pooling`:                      (B, D)
           "mean", "max", or "attention" (gated attention, Ilse et al. 2018)
      -> dropout, Dense(num_classes) logits (float32)                            (B, 2)

Views whose `view_mask` is False (padding) never reach the study's features: a study's
logits do not depend on how many padded views its batch carries, nor on what they hold. In
training the input pipeline pads a study by repeating its own views (`murajax.data.studies`),
so that BatchNorm's batch statistics see only real radiographs.

Parameters: `encoder` (the backbone's variables, so `model.weights` loads a Keras file into
it) and `head` (the attention pooling, if any, and the logits), so that
`model.freeze='backbone'` freezes the encoder and trains the pooling and the logits.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from murajax import config as config_lib
from murajax.models import registry
from murajax.models.layers import CNN_POOLINGS, as_dtype, dense, global_pool

VIEW_POOLINGS: tuple[str, ...] = ("mean", "max", "attention")
"""How `pool_views` pools a study's view features into one (`model.view_pooling`)."""

ENCODER = "encoder"
"""The name of `MultiView`'s encoder submodule: its variables' key, where a Keras file loads
(`keras_weights.pretrained_variables`) and what `model.freeze='backbone'` freezes."""


def pool_views(
    features: jax.Array, view_mask: jax.Array, method: str, scores: jax.Array | None = None
) -> jax.Array:
    """Pools (B, V, D) view features over the views where `view_mask` (B, V) is True.

    "mean": the mean of the real views; "max": their elementwise max; "attention": the sum of
    the real views weighted by softmax(`scores` (B, V)) over the real views. A study with no
    real view (a padding row) pools to zeros (mean, max) or to the plain mean (attention),
    never to NaN.
    """
    mask = view_mask.astype(bool)[..., None]  # (B, V, 1)
    if method == "mean":
        count = jnp.maximum(jnp.sum(mask, axis=1), 1)
        return jnp.sum(jnp.where(mask, features, 0), axis=1) / count.astype(features.dtype)
    if method == "max":
        lowest = jnp.finfo(features.dtype).min
        pooled = jnp.max(jnp.where(mask, features, lowest), axis=1)
        return jnp.where(jnp.any(mask, axis=1), pooled, 0)
    if method == "attention":
        if scores is None:
            raise ValueError("view pooling 'attention' needs scores")
        weights = attention_weights(scores, view_mask)
        return jnp.einsum("bv,bvd->bd", weights.astype(features.dtype), features)
    raise ValueError(f"unknown view pooling {method!r}: expected one of {VIEW_POOLINGS}")


def attention_weights(scores: jax.Array, view_mask: jax.Array) -> jax.Array:
    """softmax of (B, V) `scores` over the real views (float32); padded views weigh 0."""
    scores = scores.astype(jnp.float32)
    mask = view_mask.astype(bool)
    any_real = jnp.any(mask, axis=1, keepdims=True)
    mask = jnp.where(any_real, mask, True)  # a padding row: uniform, not NaN
    weights = jax.nn.softmax(jnp.where(mask, scores, -jnp.inf), axis=1)
    return jnp.where(mask, weights, 0.0)


class MultiViewHead(nn.Module):
    """View pooling, dropout and the logits of a study, from (B, V, D) view features."""

    num_classes: int = 2
    view_pooling: str = "mean"
    attention_dim: int = 128
    dropout_rate: float = 0.5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: jax.Array, view_mask: jax.Array, train: bool = False):
        """Maps view features (B, V, D) and `view_mask` (B, V) to float32 logits (B, C)."""
        scores = None
        if self.view_pooling == "attention":
            # Gated attention: w^T (tanh(V h) * sigmoid(U h)) per view.
            hidden = nn.tanh(
                dense(self.attention_dim, dtype=self.dtype, name="attention_V")(features)
            )
            gate = nn.sigmoid(
                dense(self.attention_dim, dtype=self.dtype, name="attention_U")(features)
            )
            scores = dense(1, dtype=self.dtype, name="attention_w")(hidden * gate)[..., 0]
            self.sow("intermediates", "attention", attention_weights(scores, view_mask))
        x = pool_views(features, view_mask, self.view_pooling, scores)
        x = nn.Dropout(self.dropout_rate, deterministic=not train, name="dropout")(x)
        x = dense(self.num_classes, dtype=self.dtype, name="logits")(x)
        return x.astype(jnp.float32)


class MultiView(nn.Module):
    """A study model: a shared `encoder` over every view, pooled into one prediction.

    Attributes:
      encoder: an image model that maps NHWC images to a feature map (a registered model
        built with `num_classes=None`) and takes `train=`. Its mark on that map
        (`layers.mark_features`) is what heatmaps explain, view by view; its BatchNorm
        layers, if any, take `bn_axis_name` from `layers.with_bn_axis` under pmap.
      num_classes: size of the logits.
      pooling: per-view spatial pooling of the encoder's feature map: "avg", "max", "flatten".
      view_pooling: "mean", "max" or "attention" over the real views of a study.
      attention_dim: hidden width of the gated attention.
      dropout_rate: dropout on the pooled study features.
      dtype: computation dtype of the head; parameters stay float32.
    """

    encoder: nn.Module
    num_classes: int = 2
    pooling: str = "avg"
    view_pooling: str = "mean"
    attention_dim: int = 128
    dropout_rate: float = 0.5
    dtype: Any = "float32"

    def setup(self) -> None:
        self.head = MultiViewHead(
            num_classes=self.num_classes,
            view_pooling=self.view_pooling,
            attention_dim=self.attention_dim,
            dropout_rate=self.dropout_rate,
            dtype=as_dtype(self.dtype),
        )

    def __call__(
        self, images: jax.Array, view_mask: jax.Array | None = None, train: bool = False
    ) -> jax.Array:
        """Maps study images (B, V, H, W, C) and `view_mask` (B, V; None: all real) to
        float32 logits (B, num_classes)."""
        return self.classify(self.encode(images, train), images.shape[:2], view_mask, train)

    def encode(self, images: jax.Array, train: bool = False) -> jax.Array:
        """The encoder's feature maps (B * V, h, w, K) of study images (B, V, H, W, C)."""
        if images.ndim != 5:
            raise ValueError(
                f"multiview takes study batches (B, V, H, W, C), got shape {images.shape}"
            )
        return self.encoder(images.reshape(-1, *images.shape[2:]), train=train)

    def classify(
        self,
        feature_maps: jax.Array,
        studies: tuple[int, int],
        view_mask: jax.Array | None = None,
        train: bool = False,
    ) -> jax.Array:
        """Study logits (B, num_classes) from the views' feature maps (B * V, h, w, K);
        `studies` is (B, V)."""
        batch, views = studies
        if view_mask is None:
            view_mask = jnp.ones((batch, views), bool)
        features = global_pool(feature_maps, self.pooling).reshape(batch, views, -1)
        return self.head(features, view_mask, train)


@dataclasses.dataclass
class MultiViewConfig:
    """The "multiview" model's own config fields (`config.model.<field>`; see `MultiView`).

    It also takes its backbone's fields (a multiview on the "cnn" takes `widths` and the
    rest of `CNNConfig`); a name both have (`pooling`, `dropout_rate`) is the multiview's,
    and the factory hands its `dropout_rate` to the backbone too."""

    backbone: str = "cnn"  # the shared per-view encoder: a registered image model
    pooling: str = "avg"  # per-view spatial pooling of the encoder's map: "avg", "max", "flatten"
    view_pooling: str = "mean"  # the views into one study: "mean", "max" or "attention"
    attention_dim: int = 128  # hidden width of the gated attention pooling
    dropout_rate: float = 0.5  # on the pooled study features

    def check(self) -> None:
        """Raises a one-line `ConfigError` for a field out of its range or choices (the
        backbone's name: `murajax.models.check_config`)."""
        config_lib.check_choice("model.pooling", self.pooling, CNN_POOLINGS)
        config_lib.check_choice("model.view_pooling", self.view_pooling, VIEW_POOLINGS)
        config_lib.check_at_least("model.attention_dim", self.attention_dim, 1)
        config_lib.check_range("model.dropout_rate", self.dropout_rate, 0.0, 1.0, closed=False)


@registry.register("multiview", config=MultiViewConfig, study_level=True)
def multiview(
    num_classes: int | None = 2,
    *,
    backbone: str = "cnn",
    pooling: str = "avg",
    view_pooling: str = "mean",
    attention_dim: int = 128,
    dropout_rate: float = 0.5,
    dtype: Any = "float32",
    **backbone_fields: Any,
) -> MultiView:
    """A `MultiView` over the registered image model `backbone`, built with
    `num_classes=None` and those of `backbone_fields` (e.g. `widths` for the "cnn",
    `conv_impl` for "vgg16"/"densenet169") and `dropout_rate`/`dtype` that its factory takes.
    A Keras file for the backbone loads into the "encoder" variables (`pretrained_variables`)."""
    if num_classes is None:
        raise ValueError("multiview always has a head: num_classes must be set")
    if registry.is_study_model(backbone):
        raise ValueError(f"backbone {backbone!r} is a study model: expected an image model")
    encoder = registry.create_with_fields(
        backbone, None, {**backbone_fields, "dropout_rate": dropout_rate, "dtype": dtype}
    )
    return MultiView(
        encoder=encoder,
        num_classes=num_classes,
        pooling=pooling,
        view_pooling=view_pooling,
        attention_dim=attention_dim,
        dropout_rate=dropout_rate,
        dtype=dtype,
    )
