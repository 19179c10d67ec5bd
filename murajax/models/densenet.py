"""DenseNet-169 (Huang et al. 2017), layer for layer as `keras.applications.DenseNet169`.

    zero-pad 3, conv7x7/2 (64) "conv1_conv", BN "conv1_bn", ReLU, zero-pad 1, max-pool 3x3/2
    dense block "conv2" (6 blocks), transition "pool2"
    dense block "conv3" (12 blocks), transition "pool3"
    dense block "conv4" (32 blocks), transition "pool4"
    dense block "conv5" (32 blocks), BN "bn", ReLU          <- the feature map (1664 channels)

A block `convK_blockI` is BN `_0_bn`, ReLU, conv1x1(128) `_1_conv`, BN `_1_bn`, ReLU,
conv3x3(32) `_2_conv`, and concatenates its 32 new channels to its input. A transition
`poolK` is BN `_bn`, ReLU, conv1x1 `_conv` halving the channels, 2x2 average pooling.
Convolutions have no bias; BatchNorm has Keras's epsilon 1.001e-5 and momentum 0.99.

Flax names cannot hold '/': Keras 2 calls the stem 'conv1/conv' and 'conv1/bn', Keras 3 and
murajax 'conv1_conv' and 'conv1_bn'; `load_keras_weights` reads both. The backbone has
12,642,880 variables (12,484,480 parameters and 158,400 BatchNorm statistics), Keras's
`count_params()` with `include_top=False`. Keras's weights expect 'imagenet' inputs.
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from murajax import config as config_lib
from murajax.models.batchnorm import BatchNormReLU, BatchNormVariables
from murajax.models.dense_block import GROWTH_RATE, LayerParams, dense_block
from murajax.models.heads import ClassifierHead
from murajax.models.layers import Conv, KernelVariable, as_dtype, mark_features
from murajax.models.registry import register
from murajax.ops import graph_style, max_pool

DENSENET169_BLOCKS: tuple[int, ...] = (6, 12, 32, 32)
"""Building blocks in DenseNet-169's four dense blocks."""

BN_EPSILON = 1.001e-5
BN_MOMENTUM = 0.99


def avg_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 average pooling with stride 2 over NHWC `x` ('valid': odd sizes drop the last row
    or column), as a reshape and a mean, like `layers.max_pool_2x2`."""
    n, h, w, c = x.shape
    h2, w2 = h // 2, w // 2
    x = x[:, : 2 * h2, : 2 * w2, :]
    return x.reshape(n, h2, 2, w2, 2, c).mean(axis=(2, 4))


class DenseNet(nn.Module):
    """A Keras-layout DenseNet backbone, and optionally a new classification head.

    Attributes:
      blocks: building blocks per dense block; (6, 12, 32, 32) is DenseNet-169.
      num_classes: size of the logits; None returns the backbone's feature map (NHWC, after
        the final BN and ReLU, in the computation dtype): Keras's `include_top=False,
        pooling=None`. That map is marked for heatmaps (`layers.mark_features`).
      dropout_rate: dropout in the head, before the logits.
      dtype: computation dtype ("float32", "bfloat16"); parameters and BatchNorm statistics
        stay float32.
      conv_impl: CPU convolution kernels ("auto", "xla", "onednn", "onednn-direct"; see
        `murajax.ops`).
      bn_axis_name: the mapped axis (`jax.pmap`) over which BatchNorm averages its batch
        statistics in training (`layers.with_bn_axis` sets it); None: this device's.
    """

    blocks: Sequence[int] = DENSENET169_BLOCKS
    num_classes: int | None = 2
    dropout_rate: float = 0.5
    dtype: Any = "float32"
    conv_impl: str = "auto"
    bn_axis_name: str | None = None

    def _conv(self, x: jax.Array, features: int, size: int, name: str, **kw: Any) -> jax.Array:
        return Conv(
            features,
            (size, size),
            use_bias=False,
            dtype=as_dtype(self.dtype),
            conv_impl=self.conv_impl,
            name=name,
            **kw,
        )(x)

    def _bn_relu(self, x: jax.Array, name: str, train: bool) -> jax.Array:
        if self.bn_axis_name is None:
            return BatchNormReLU(
                momentum=BN_MOMENTUM,
                epsilon=BN_EPSILON,
                dtype=as_dtype(self.dtype),
                impl=self.conv_impl,
                name=name,
            )(x, train)
        x = nn.BatchNorm(
            use_running_average=not train,
            momentum=BN_MOMENTUM,
            epsilon=BN_EPSILON,
            dtype=as_dtype(self.dtype),
            param_dtype=jnp.float32,
            axis_name=self.bn_axis_name,
            name=name,
        )(x)
        return nn.relu(x)

    def _conv_block(self, x: jax.Array, name: str, train: bool) -> jax.Array:
        """Keras's `conv_block` without its concatenation: the block's 32 new channels."""
        y = self._bn_relu(x, f"{name}_0_bn", train)
        y = self._conv(y, 4 * GROWTH_RATE, 1, f"{name}_1_conv")
        y = self._bn_relu(y, f"{name}_1_bn", train)
        return self._conv(y, GROWTH_RATE, 3, f"{name}_2_conv", padding="SAME")

    def _dense_block(self, x: jax.Array, count: int, name: str, train: bool) -> jax.Array:
        """`count` conv blocks, each seeing all channels before it (Keras's `dense_block`).
        Training with this device's batch statistics runs `models.dense_block` (the
        memory-efficient block); inference and statistics over a `pmap` axis run the layers."""
        if train and self.bn_axis_name is None:
            return self._memory_efficient_dense_block(x, count, name)
        return self._dense_block_layers(x, count, name, train)

    def _memory_efficient_dense_block(self, x: jax.Array, count: int, name: str) -> jax.Array:
        """`models.dense_block.dense_block` on the variables `_dense_block_layers` has."""
        channels = x.shape[-1]
        params, norms = [], []
        for i in range(count):
            layer, width = f"{name}_block{i + 1}", channels + i * GROWTH_RATE
            bn0 = BatchNormVariables(width, BN_MOMENTUM, name=f"{layer}_0_bn")
            kernel1 = KernelVariable((1, 1, width, 4 * GROWTH_RATE), name=f"{layer}_1_conv")()
            bn1 = BatchNormVariables(4 * GROWTH_RATE, BN_MOMENTUM, name=f"{layer}_1_bn")
            kernel2 = KernelVariable((3, 3, 4 * GROWTH_RATE, GROWTH_RATE), name=f"{layer}_2_conv")()
            params.append(LayerParams(*bn0(), kernel1, *bn1(), kernel2))
            norms.append((bn0, bn1))
        x = jnp.asarray(x, as_dtype(self.dtype))
        features, stats = dense_block(x, params, epsilon=BN_EPSILON, conv_impl=self.conv_impl)
        for (bn0, bn1), s in zip(norms, stats, strict=True):
            bn0.update(s.mean0, s.var0)
            bn1.update(s.mean1, s.var1)
        return features

    def _dense_block_layers(self, x: jax.Array, count: int, name: str, train: bool) -> jax.Array:
        """`count` conv blocks, each seeing all channels before it (Keras's `dense_block`).

        Keras concatenates after every block; here every block writes its channels into one
        buffer of the final width and reads the prefix before them. Same values, but the
        backward pass of 32 chained concatenations made XLA's compile time grow with the
        square of the depth (DenseNet-169's train step took minutes to compile on CPU).
        """
        if not train and graph_style.tracing_for_onnx():  # no in-place update in ONNX
            for i in range(count):
                y = self._conv_block(x, f"{name}_block{i + 1}", train)
                x = jnp.concatenate([x, y], axis=-1)
            return x
        channels = x.shape[-1]
        features = jnp.zeros((*x.shape[:-1], channels + count * GROWTH_RATE), x.dtype)
        features = features.at[..., :channels].set(x)
        for i in range(count):
            start = channels + i * GROWTH_RATE
            y = self._conv_block(features[..., :start], f"{name}_block{i + 1}", train)
            features = features.at[..., start : start + GROWTH_RATE].set(y)
        return features

    def _transition(self, x: jax.Array, name: str, train: bool) -> jax.Array:
        x = self._bn_relu(x, f"{name}_bn", train)
        x = self._conv(x, x.shape[-1] // 2, 1, f"{name}_conv")
        return avg_pool_2x2(x)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Maps NHWC images (3 channels, 'imagenet'-normalised) to logits or the feature map."""
        dtype = as_dtype(self.dtype)
        x = jnp.asarray(x, dtype)
        x = jnp.pad(x, ((0, 0), (3, 3), (3, 3), (0, 0)))
        x = self._conv(x, 64, 7, "conv1_conv", strides=(2, 2), padding="VALID")
        x = self._bn_relu(x, "conv1_bn", train)
        x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        x = max_pool(x, 3, 2)  # Keras's "pool1"
        for stage, count in enumerate(self.blocks, start=2):
            x = self._dense_block(x, count, f"conv{stage}", train)
            if stage < len(self.blocks) + 1:
                x = self._transition(x, f"pool{stage}", train)
        x = mark_features(self, self._bn_relu(x, "bn", train))
        if self.num_classes is None:
            return x
        return ClassifierHead(self.num_classes, self.dropout_rate, dtype, name="head")(x, train)


@dataclasses.dataclass
class DenseNet169Config:
    """The "densenet169" model's own config fields (`config.model.<field>`; see `DenseNet`)."""

    dropout_rate: float = 0.5  # in the head, before the logits

    def check(self) -> None:
        """Raises a one-line `ConfigError` for a field out of its range."""
        config_lib.check_range("model.dropout_rate", self.dropout_rate, 0.0, 1.0, closed=False)


@register(
    "densenet169",
    config=DenseNet169Config,
    normalization="imagenet",
    channels=3,
    keras_weights=True,
)
def densenet169(
    num_classes: int | None = 2,
    *,
    dropout_rate: float = 0.5,
    dtype: Any = "float32",
    conv_impl: str = "auto",
) -> DenseNet:
    """DenseNet-169 for 3-channel 'imagenet' inputs (the MURA paper's model). The module
    holds no weights: Keras's go into its variables through `murajax.models.load_keras_weights`
    (the backbone) or `pretrained_variables` (backbone + new head; what the trainer does for
    `model.weights`)."""
    return DenseNet(
        blocks=DENSENET169_BLOCKS,
        num_classes=num_classes,
        dropout_rate=dropout_rate,
        dtype=dtype,
        conv_impl=conv_impl,
    )
