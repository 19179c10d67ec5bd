"""The data-parallel table: the quickstart CNN's step with `train.parallelism` 'jit' on 1
device against 'jit' and 'pmap' on 2 fake CPU devices (a subprocess with
`--xla_force_host_platform_device_count=2`: a CPU's cores are then split between the two)."""

import json
import os
import subprocess
import sys
import time
from typing import Any

from experiments.configs import quickstart
from murajax import xla_flags

PARALLEL_SETTINGS = (("jit", 1), ("jit", 2), ("pmap", 2))


def train_step_throughput(
    image_size: int,
    batch_size: int,
    steps: int,
    parallelism: str = "jit",
    device_count: int | None = None,
) -> dict[str, Any]:
    """Images/s of the quickstart CNN's train step on random data (after compiling), as
    `train.parallelism` compiles it over the first `device_count` devices (default: all)."""
    import jax
    import numpy as np

    from experiments.bench.murajax_step import placed_step

    shape = (batch_size, image_size, image_size, 1)
    devices = jax.devices()[:device_count]
    dp, state = placed_step(quickstart.get_config(), shape, parallelism, devices)
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.random(shape, dtype=np.float32),
        "label": rng.integers(0, 2, batch_size).astype(np.int32),
        "group": rng.integers(0, 7, batch_size).astype(np.int32),  # MURA's body parts
    }
    for _ in range(3):  # compile, then warm up
        state, metrics = dp.step(state, dp.put_batch(batch))
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = dp.step(state, dp.put_batch(batch))  # as training: batch from host
    jax.block_until_ready(metrics)
    seconds = time.perf_counter() - start
    return {
        "image_size": image_size,
        "batch_size": batch_size,
        "steps": steps,
        "images_per_s": round(batch_size * steps / seconds, 1),
        "device": str(jax.devices()[0].platform),
        "parallelism": parallelism,
        "devices": len(devices),
    }


def data_parallel_throughput(image_size: int, batch_size: int, steps: int) -> list[dict]:
    """`train_step_throughput` for each of `PARALLEL_SETTINGS` (parallelism, devices), in one
    subprocess with 2 fake CPU devices (the device count is fixed when jax starts)."""
    flags = "--xla_force_host_platform_device_count=2"
    flags += " " + xla_flags.CPU_FLAGS
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags}
    code = (
        "import json; from experiments.bench import data_parallel as b; print('ROWS ' + "
        f"json.dumps([b.train_step_throughput({image_size}, {batch_size}, {steps}, p, n)"
        " for p, n in b.PARALLEL_SETTINGS]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=1200
    )
    if result.returncode != 0:
        raise RuntimeError(f"data-parallel benchmark failed:\n{result.stderr[-2000:]}")
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("ROWS ")]
    return json.loads(line.removeprefix("ROWS "))


def format_table(rows: list[dict]) -> str:
    """The data-parallel rows, each with its ratio to the first (jit on 1 device)."""
    base = rows[0]["images_per_s"]
    lines = []
    for row in rows:
        name = f"{row['parallelism']}, {row['devices']} device{'s' * (row['devices'] > 1)}"
        speed = row["images_per_s"]
        lines.append(f"  {name:<16} {speed:>8.1f} images/s ({speed / base:.2f}x)")
    return "\n".join(lines)
