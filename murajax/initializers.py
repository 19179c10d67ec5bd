"""Parameter initialisers shared by the models: Glorot-uniform kernels and zero biases.

Glorot & Bengio (2010) draw a kernel of shape `(*receptive_field, in_channels, out_channels)`
from U[-limit, +limit] with

    limit = sqrt(6 / (fan_in + fan_out)),
    fan_in = receptive_field_size * in_channels,
    fan_out = receptive_field_size * out_channels,

where `receptive_field_size` is the product of the spatial dimensions (9 for a 3x3 conv, 1 for
a dense layer). The variance of that distribution is limit**2 / 3 = 2 / (fan_in + fan_out).
(The thesis that started this project gives 1/sqrt(n), which is PyTorch's `nn.Linear` default,
not Glorot's.) This is what `flax.linen.initializers.glorot_uniform()` and Keras's
`GlorotUniform` compute; `tests/test_init.py` checks that against `glorot_uniform_bound`.

`glorot_uniform` here returns exactly the values of `jax.nn.initializers.glorot_uniform()` for
the same key, but draws them as a flat vector and reshapes: XLA:CPU compiles the random-bit
generator for a 4-D conv kernel shape 3-10x slower than for a vector (seconds per new shape),
which dominated model initialisation (and the test suite) on CPU.
"""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

Initializer = jax.nn.initializers.Initializer


def glorot_fans(shape: Sequence[int]) -> tuple[int, int]:
    """(fan_in, fan_out) of a kernel shaped `(*receptive_field, in_channels, out_channels)`."""
    if len(shape) < 2:
        raise ValueError(f"a kernel has at least 2 dimensions (in, out); got shape {tuple(shape)}")
    receptive_field = math.prod(shape[:-2])
    return receptive_field * shape[-2], receptive_field * shape[-1]


def glorot_uniform_bound(shape: Sequence[int]) -> float:
    """The Glorot-uniform limit sqrt(6 / (fan_in + fan_out)) for a kernel of `shape`.

    >>> round(glorot_uniform_bound((3, 3, 1, 32)), 6)  # fan_in 9, fan_out 288
    0.142134
    """
    fan_in, fan_out = glorot_fans(shape)
    return math.sqrt(6.0 / (fan_in + fan_out))


def glorot_uniform(
    key: jax.Array, shape: Sequence[int], dtype: jnp.dtype = jnp.float32, out_sharding=None
) -> jax.Array:
    """Glorot-uniform kernel: U[-b, +b], b = `glorot_uniform_bound(shape)`.

    Bit-identical to `jax.nn.initializers.glorot_uniform()(key, shape, dtype)` (same random
    bits in the same row-major order, same arithmetic), but faster to compile on CPU.
    """
    if out_sharding is not None:  # a sharded draw: let JAX lay it out
        return _REFERENCE_GLOROT(key, shape, dtype, out_sharding=out_sharding)
    shape = tuple(int(d) for d in shape)
    fan_in, fan_out = glorot_fans(shape)
    variance = jnp.array(1.0 / ((fan_in + fan_out) / 2), dtype=dtype)
    flat = jax.random.uniform(key, (math.prod(shape),), dtype, -1)
    return (flat * jnp.sqrt(3 * variance)).reshape(shape)


_REFERENCE_GLOROT: Initializer = jax.nn.initializers.glorot_uniform()

kernel_init: Initializer = glorot_uniform
"""The kernel initialiser of every built-in model: Glorot-uniform."""

bias_init: Initializer = jax.nn.initializers.zeros
"""Biases start at zero."""
