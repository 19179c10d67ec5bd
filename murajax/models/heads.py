"""The classification head that murajax puts on a pretrained backbone's feature map."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from murajax.models.layers import dense


class ClassifierHead(nn.Module):
    """Global average pooling, dropout, then Dense(num_classes) logits (float32).

    A new head, not Keras's ImageNet top (VGG16's fc1/fc2/predictions, DenseNet's
    predictions): pretrained weights never fill it. Kept in one submodule ("head") so that the
    backbone's parameters are everything else.

    Attributes:
      num_classes: size of the logits.
      dropout_rate: dropout on the pooled features (the "dropout" rng in training).
      dtype: computation dtype; parameters stay float32.
    """

    num_classes: int = 2
    dropout_rate: float = 0.5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Maps an NHWC feature map to float32 logits (N, num_classes)."""
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dropout(self.dropout_rate, deterministic=not train, name="dropout")(x)
        x = dense(self.num_classes, dtype=self.dtype, name="logits")(x)
        return x.astype(jnp.float32)
