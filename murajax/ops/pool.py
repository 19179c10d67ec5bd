"""2x2 max-pooling (stride 2) over NHWC arrays, with the gradient of `flax.linen.max_pool`.

    y = max_pool_2x2(x)

has the values and gradients of `nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")`: an
odd height or width drops its last row or column, and each window's gradient goes to its first
maximum in row-major order (select-and-scatter's choice where maxima tie).

It is written as a reshape with a custom VJP because XLA:CPU runs `reduce_window` and its
select-and-scatter several times slower. The forward pass also records which of the four
corners won (`uint8`, a quarter of the input's size); the backward pass is then one fused
broadcast-and-select that reads only quarter-size arrays and writes the input gradient once.
`unpool_2x2` is that backward pass, shared with `conv.conv2d_relu_max_pool`.
"""

import jax
import jax.numpy as jnp


def _corners(x: jax.Array) -> list[jax.Array]:
    """The four corners of each 2x2 window of NHWC `x` (even height and width), row-major."""
    n, h, w, c = x.shape
    x6 = x.reshape(n, h // 2, 2, w // 2, 2, c)
    return [x6[:, :, row, :, column] for row in (0, 1) for column in (0, 1)]


def pool_with_argmax(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(window maxima, index 0-3 of each window's first maximum) of NHWC `x` with even height
    and width; the indices are `uint8`."""
    corners = _corners(x)
    maxima = jnp.maximum(jnp.maximum(corners[0], corners[1]), jnp.maximum(corners[2], corners[3]))
    winner = jnp.full(maxima.shape, 3, jnp.uint8)
    for index in (2, 1, 0):  # the earliest equal corner wins
        winner = jnp.where(corners[index] == maxima, jnp.uint8(index), winner)
    return maxima, winner


def unpool_2x2(g: jax.Array, winner: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """The gradient of 2x2 max-pooling: each window's `g` at its `winner` corner, zero at the
    other three, as an array of the pooled input's `shape` (zero in a dropped odd row/column)."""
    n, h2, w2, c = g.shape
    corner_ids = jnp.arange(2, dtype=jnp.uint8)[:, None] * 2 + jnp.arange(2, dtype=jnp.uint8)
    taken = winner[:, :, None, :, None, :] == corner_ids.reshape(1, 1, 2, 1, 2, 1)
    grad = jnp.where(taken, g[:, :, None, :, None, :], jnp.zeros((), g.dtype))
    grad = grad.reshape(n, 2 * h2, 2 * w2, c)
    rows, columns = shape[1] - 2 * h2, shape[2] - 2 * w2
    if rows or columns:
        grad = jnp.pad(grad, ((0, 0), (0, rows), (0, columns), (0, 0)))
    return grad


def crop_even(x: jax.Array) -> jax.Array:
    """NHWC `x` without its last row and column where the height or width is odd."""
    _, h, w, _ = x.shape
    return x[:, : 2 * (h // 2), : 2 * (w // 2), :]


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max-pooling with stride 2 over NHWC `x` (see the module docstring)."""
    if x.ndim != 4:
        raise ValueError(f"max_pool_2x2 expects NHWC input, got shape {x.shape}")
    return _max_pool_even(crop_even(x))


@jax.custom_vjp
def _max_pool_even(x: jax.Array) -> jax.Array:
    return pool_with_argmax(x)[0]


def _max_pool_even_fwd(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    maxima, winner = pool_with_argmax(x)
    return maxima, winner


def _max_pool_even_bwd(winner: jax.Array, g: jax.Array) -> tuple[jax.Array]:
    n, h2, w2, c = g.shape
    return (unpool_2x2(g, winner, (n, 2 * h2, 2 * w2, c)),)


_max_pool_even.defvjp(_max_pool_even_fwd, _max_pool_even_bwd)
