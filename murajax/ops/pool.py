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

import functools

import jax
import jax.numpy as jnp


def _corners(x: jax.Array) -> list[jax.Array]:
    """The four corners of each 2x2 window of NHWC `x` (even height and width), row-major."""
    n, h, w, c = x.shape
    x6 = x.reshape(n, h // 2, 2, w // 2, 2, c)
    return [x6[:, :, row, :, column] for row in (0, 1) for column in (0, 1)]


def _first_maximum(parts: list[jax.Array]) -> tuple[jax.Array, jax.Array]:
    """(elementwise maximum of `parts`, uint8 index of the first part that holds it)."""
    maxima = functools.reduce(jnp.maximum, parts)
    winner = jnp.full(maxima.shape, len(parts) - 1, jnp.uint8)
    for index in reversed(range(len(parts) - 1)):  # the earliest equal part wins
        winner = jnp.where(parts[index] == maxima, jnp.uint8(index), winner)
    return maxima, winner


def pool_with_argmax(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(window maxima, index 0-3 of each window's first maximum) of NHWC `x` with even height
    and width; the indices are `uint8`."""
    return _first_maximum(_corners(x))


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
    # The maxima only: inference (and an exported model) never builds the winners.
    return functools.reduce(jnp.maximum, _corners(x))


def _max_pool_even_fwd(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    maxima, winner = pool_with_argmax(x)
    return maxima, winner


def _max_pool_even_bwd(winner: jax.Array, g: jax.Array) -> tuple[jax.Array]:
    n, h2, w2, c = g.shape
    return (unpool_2x2(g, winner, (n, 2 * h2, 2 * w2, c)),)


_max_pool_even.defvjp(_max_pool_even_fwd, _max_pool_even_bwd)


def _windows(x: jax.Array, window: int, stride: int) -> list[jax.Array]:
    """The `window` x `window` elements of each VALID window (stride `stride`) of NHWC `x`, as
    strided slices in row-major order, each of the pooled output's shape."""
    _, h, w, _ = x.shape
    out_h, out_w = (h - window) // stride + 1, (w - window) // stride + 1
    return [
        x[:, i : i + stride * (out_h - 1) + 1 : stride, j : j + stride * (out_w - 1) + 1 : stride]
        for i in range(window)
        for j in range(window)
    ]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _max_pool(x: jax.Array, window: int, stride: int) -> jax.Array:
    return functools.reduce(jnp.maximum, _windows(x, window, stride))


def _max_pool_fwd(x, window, stride):
    # In float32: XLA:CPU converts each bfloat16 slice to float32 in a pass of its own (4% of
    # DenseNet-169's bfloat16 step); converted once, the slices fuse. Maxima are exact.
    maxima, winner = _first_maximum(_windows(x.astype(jnp.float32), window, stride))
    return maxima.astype(x.dtype), (winner, x.shape)


def _max_pool_bwd(window, stride, residuals, g):
    winner, shape = residuals
    out_h, out_w = g.shape[1:3]
    dtype = g.dtype
    g = g.astype(jnp.float32)  # XLA:CPU's bfloat16 version of this sum ran 7x slower
    zero = jnp.zeros((), g.dtype)
    grad = jnp.zeros(shape, g.dtype)
    for index in range(window * window):
        i, j = divmod(index, window)
        part = jnp.where(winner == index, g, zero)
        # The window element `index` of output (r, c) is input (i + stride r, j + stride c).
        padding = (
            (0, 0, 0),
            (i, shape[1] - i - stride * (out_h - 1) - 1, stride - 1),
            (j, shape[2] - j - stride * (out_w - 1) - 1, stride - 1),
            (0, 0, 0),
        )
        grad = grad + jax.lax.pad(part, zero, padding)
    return (grad.astype(dtype),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(x: jax.Array, window: int, stride: int) -> jax.Array:
    """Max-pooling of NHWC `x` over `window` x `window` windows with stride `stride` ("VALID"):
    the values and gradients of `nn.max_pool(x, (window, window), (stride, stride))`, each
    window's gradient going to its first maximum in row-major order.

    As strided slices instead of XLA's `reduce_window`: XLA:CPU's reduce-window and its
    gradient (select-and-scatter) took 55 ms of DenseNet-169's train step for its one 3x3
    pooling (224 px, batch 8), these about a tenth of that.
    """
    if x.ndim != 4:
        raise ValueError(f"max_pool expects NHWC input, got shape {x.shape}")
    if window < 1 or stride < 1 or window > 16 or min(x.shape[1:3]) < window:
        raise ValueError(
            f"max_pool: a {window}x{window} window (stride {stride}) does not fit input {x.shape}"
        )
    return _max_pool(x, window, stride)
