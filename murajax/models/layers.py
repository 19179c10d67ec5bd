"""Small building blocks shared by the models."""

import jax


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max-pooling with stride 2 over NHWC `x`, written as a reshape and a max.

    Same values as `flax.linen.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")`: an odd
    height or width drops its last row or column (floor). Gradients are the same wherever each
    window's maximum is unique; where a window holds tied maxima, `nn.max_pool` (select-and-
    scatter) sends the whole gradient to one of them and this splits it evenly among them. On
    XLA:CPU this form is 1.3-1.5x faster than `reduce_window` (see DESIGN.md), and it is no
    slower elsewhere.
    """
    if x.ndim != 4:
        raise ValueError(f"max_pool_2x2 expects NHWC input, got shape {x.shape}")
    n, h, w, c = x.shape
    h2, w2 = h // 2, w // 2
    x = x[:, : 2 * h2, : 2 * w2, :]
    return x.reshape(n, h2, 2, w2, 2, c).max(axis=(2, 4))
