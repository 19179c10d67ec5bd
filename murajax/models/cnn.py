"""The thesis's ab-initio CNN: VGG-style conv blocks, then pooling, dense layers and logits.

    [conv3x3 'SAME' (+ BatchNorm) + ReLU] x convs_per_block, 2x2 max-pool   (one block per width)
    global average ("avg") or max ("max") pooling, or flatten ("flatten")
    [Dense + ReLU + Dropout] per entry of `dense`
    Dense(num_classes) -> logits (softmax belongs to the loss)

Kernels are Glorot-uniform and biases zero (`murajax.initializers`). Parameters are float32;
`dtype` sets the computation dtype ("bfloat16" halves activation memory). Logits come back as
float32 whatever the computation dtype.
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from murajax import config as config_lib
from murajax.models.layers import (
    CNN_POOLINGS,
    as_dtype,
    conv3x3,
    dense,
    global_pool,
    mark_features,
    max_pool_2x2,
)
from murajax.models.registry import register


class CNN(nn.Module):
    """A configurable plain CNN (see the module docstring).

    Attributes:
      num_classes: size of the logits; None returns the feature map after the last block
        (NHWC, in the computation dtype), as Keras's `include_top=False` does. That map is
        marked for heatmaps (`layers.mark_features`) either way.
      widths: output channels of each block's convolutions; one block per entry.
      convs_per_block: 3x3 convolutions before each 2x2 max-pool.
      batch_norm: BatchNorm (epsilon 1e-3, as Keras) after each convolution,
        which then has no bias. Running statistics live in the "batch_stats" collection.
      bn_momentum: decay of BatchNorm's running statistics (Keras's 0.99 by default; 0.9
        lets a short run's statistics catch up with its weights).
      pooling: "avg" (global average pooling), "max" (global max pooling: suits small
        local findings such as a fracture line) or "flatten".
      dense: widths of the hidden dense layers, each followed by ReLU and dropout.
      dropout_rate: dropout after each hidden dense layer (uses the "dropout" rng in training).
      dtype: computation dtype; parameters stay float32.
      conv_impl: CPU convolution kernels ("auto", "xla", "onednn", "onednn-direct"; see
        `murajax.ops`).
      bn_axis_name: the mapped axis (`jax.pmap`) over which BatchNorm averages its batch
        statistics in training, so that it normalises with the whole global batch's
        (`layers.with_bn_axis` sets it); None: this device's batch.
    """

    num_classes: int | None = 2
    widths: Sequence[int] = (32, 64, 128)
    convs_per_block: int = 1
    batch_norm: bool = False
    bn_momentum: float = 0.99
    pooling: str = "avg"
    dense: Sequence[int] = (128,)
    dropout_rate: float = 0.5
    dtype: Any = "float32"
    conv_impl: str = "auto"
    bn_axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Maps NHWC images to logits (float32), or to the last feature map if no classes."""
        if self.pooling not in CNN_POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}: expected one of {CNN_POOLINGS}")
        dtype = as_dtype(self.dtype)
        x = jnp.asarray(x, dtype)
        for block, width in enumerate(self.widths, start=1):
            for i in range(1, self.convs_per_block + 1):
                x = conv3x3(
                    width,
                    dtype=dtype,
                    name=f"block{block}_conv{i}",
                    use_bias=not self.batch_norm,
                    relu=not self.batch_norm,  # without BatchNorm the ReLU fuses into the conv
                    pool=not self.batch_norm and i == self.convs_per_block,  # and the pooling
                    conv_impl=self.conv_impl,
                )(x)
                if self.batch_norm:
                    x = nn.BatchNorm(
                        use_running_average=not train,
                        momentum=self.bn_momentum,
                        epsilon=1e-3,
                        dtype=dtype,
                        param_dtype=jnp.float32,
                        axis_name=self.bn_axis_name,
                        name=f"block{block}_bn{i}",
                    )(x)
                    x = nn.relu(x)
            if self.batch_norm:
                x = max_pool_2x2(x)
        x = mark_features(self, x)
        if self.num_classes is None:
            return x

        x = global_pool(x, self.pooling)
        for i, width in enumerate(self.dense, start=1):
            x = dense(width, dtype=dtype, name=f"dense{i}")(x)
            x = nn.relu(x)
            x = nn.Dropout(self.dropout_rate, deterministic=not train, name=f"dropout{i}")(x)
        x = dense(self.num_classes, dtype=dtype, name="logits")(x)
        return x.astype(jnp.float32)


@dataclasses.dataclass
class CNNConfig:
    """The "cnn" model's own config fields (`config.model.<field>`; see `CNN`)."""

    # Blocks of `convs_per_block` 3x3 conv + ReLU (+BN) + 2x2 max-pool, one per width.
    widths: tuple[int, ...] = (32, 64, 128)
    convs_per_block: int = 1
    batch_norm: bool = False
    bn_momentum: float = 0.99  # running-statistics decay (Keras: 0.99; short runs: 0.9)
    pooling: str = "avg"  # global "avg" or "max" pooling, or "flatten"
    dense: tuple[int, ...] = (128,)  # hidden dense layers, each ReLU + dropout
    dropout_rate: float = 0.5

    def check(self) -> None:
        """Raises a one-line `ConfigError` naming the first field out of its range."""
        if not self.widths:
            raise config_lib.invalid("model.widths", self.widths, "at least one block width")
        for i, width in enumerate(self.widths):
            config_lib.check_positive(f"model.widths[{i}]", width)
        for i, width in enumerate(self.dense):
            config_lib.check_positive(f"model.dense[{i}]", width)
        config_lib.check_at_least("model.convs_per_block", self.convs_per_block, 1)
        config_lib.check_range("model.bn_momentum", self.bn_momentum, 0.0, 1.0, closed=False)
        config_lib.check_choice("model.pooling", self.pooling, CNN_POOLINGS)
        config_lib.check_range("model.dropout_rate", self.dropout_rate, 0.0, 1.0, closed=False)


@register("cnn", config=CNNConfig, normalization="unit", channels=1, head=("dense*", "logits"))
def cnn(
    num_classes: int | None = 2,
    *,
    widths: Sequence[int] = (32, 64, 128),
    convs_per_block: int = 1,
    batch_norm: bool = False,
    bn_momentum: float = 0.99,
    pooling: str = "avg",
    dense: Sequence[int] = (128,),
    dropout_rate: float = 0.5,
    dtype: Any = "float32",
    conv_impl: str = "auto",
) -> CNN:
    """The thesis's CNN from scratch, for single-channel images in [0, 1] ("unit")."""
    return CNN(
        num_classes=num_classes,
        widths=tuple(widths),
        convs_per_block=convs_per_block,
        batch_norm=batch_norm,
        bn_momentum=bn_momentum,
        pooling=pooling,
        dense=tuple(dense),
        dropout_rate=dropout_rate,
        dtype=dtype,
        conv_impl=conv_impl,
    )
