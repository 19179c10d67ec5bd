"""VGG16 (Simonyan & Zisserman 2014), layer for layer as `keras.applications.VGG16`.

    block1: conv3x3(64) x2,  2x2 max-pool      block4: conv3x3(512) x3, 2x2 max-pool
    block2: conv3x3(128) x2, 2x2 max-pool      block5: conv3x3(512) x3, 2x2 max-pool
    block3: conv3x3(256) x3, 2x2 max-pool

Every convolution is 'SAME', with bias and ReLU, named as in Keras (`block1_conv1` ...
`block5_conv3`), so that `murajax.models.load_keras_weights("vgg16", path)` fills it from
Keras's ImageNet file. The backbone has 14,714,688 parameters, Keras's `count_params()` with
`include_top=False`. Keras's weights expect 'caffe' inputs (BGR, minus the ImageNet mean, in
[0, 255]): the registry tells the input pipeline so.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from murajax import config as config_lib
from murajax.models.heads import ClassifierHead
from murajax.models.layers import as_dtype, conv3x3, mark_features
from murajax.models.registry import register

VGG16_BLOCKS: tuple[tuple[int, int], ...] = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
"""(width, convolutions) of VGG16's five blocks."""


class VGG16(nn.Module):
    """VGG16's convolutional backbone, and optionally a new classification head.

    Attributes:
      num_classes: size of the logits; None returns the backbone's feature map (NHWC, after
        block5_pool, in the computation dtype): Keras's `include_top=False, pooling=None`.
        That map is marked for heatmaps (`layers.mark_features`).
      dropout_rate: dropout in the head, before the logits.
      dtype: computation dtype ("float32", "bfloat16"); parameters stay float32.
      conv_impl: CPU convolution kernels ("auto", "xla", "onednn"; see `murajax.ops`).
    """

    num_classes: int | None = 2
    dropout_rate: float = 0.5
    dtype: Any = "float32"
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Maps NHWC images (3 channels, 'caffe'-normalised) to logits or the feature map."""
        dtype = as_dtype(self.dtype)
        x = jnp.asarray(x, dtype)
        for block, (width, convs) in enumerate(VGG16_BLOCKS, start=1):
            for i in range(1, convs + 1):
                x = conv3x3(
                    width,
                    dtype=dtype,
                    name=f"block{block}_conv{i}",
                    relu=True,  # Keras's Conv2D(activation="relu"), fused
                    # and the block's MaxPooling2D((2, 2), strides=(2, 2)), 'valid', fused
                    pool=i == convs,
                    conv_impl=self.conv_impl,
                )(x)
        x = mark_features(self, x)
        if self.num_classes is None:
            return x
        return ClassifierHead(self.num_classes, self.dropout_rate, dtype, name="head")(x, train)


@dataclasses.dataclass
class VGG16Config:
    """The "vgg16" model's own config fields (`config.model.<field>`; see `VGG16`)."""

    dropout_rate: float = 0.5  # in the head, before the logits

    def check(self) -> None:
        """Raises a one-line `ConfigError` for a field out of its range."""
        config_lib.check_range("model.dropout_rate", self.dropout_rate, 0.0, 1.0, closed=False)


@register("vgg16", config=VGG16Config, normalization="caffe", channels=3, keras_weights=True)
def vgg16(
    num_classes: int | None = 2,
    *,
    dropout_rate: float = 0.5,
    dtype: Any = "float32",
    conv_impl: str = "auto",
) -> VGG16:
    """VGG16 for 3-channel 'caffe' inputs. The module holds no weights: Keras's go into its
    variables through `murajax.models.load_keras_weights` (the backbone) or
    `pretrained_variables` (backbone + new head; what the trainer does for `model.weights`)."""
    return VGG16(
        num_classes=num_classes, dropout_rate=dropout_rate, dtype=dtype, conv_impl=conv_impl
    )
