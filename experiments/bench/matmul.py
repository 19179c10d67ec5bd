"""The machine's matmul peak, measured by jax (what each row's GFLOP/s is a fraction of)."""

import functools
import statistics
import time

import jax
import jax.numpy as jnp


def matmul_gflops(size: int | None = None, seconds: float = 1.5) -> dict[str, float]:
    """GFLOP/s of a jitted `size`^3 matmul: float32, and bfloat16 x bfloat16 with float32
    results (`preferred_element_type`), each the median of repeated calls over `seconds`.
    `size` None: 2048 on a CPU, 8192 on an accelerator (a GPU needs more to reach its peak)."""
    if size is None:
        size = 2048 if jax.devices()[0].platform == "cpu" else 8192
    key_a, key_b = jax.random.split(jax.random.key(0))
    a = jax.random.normal(key_a, (size, size), jnp.float32)
    b = jax.random.normal(key_b, (size, size), jnp.float32)
    matmuls = {
        "float32": (jax.jit(jnp.matmul), a, b),
        "bfloat16": (
            jax.jit(functools.partial(jnp.matmul, preferred_element_type=jnp.float32)),
            a.astype(jnp.bfloat16),
            b.astype(jnp.bfloat16),
        ),
    }
    result = {}
    for name, (fn, x, y) in matmuls.items():
        fn(x, y).block_until_ready()  # compile
        times: list[float] = []
        while sum(times) < seconds or len(times) < 5:
            start = time.perf_counter()
            fn(x, y).block_until_ready()
            times.append(time.perf_counter() - start)
        result[name] = round(2 * size**3 / statistics.median(times) / 1e9, 1)
    return result
