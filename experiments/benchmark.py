"""Throughput figures: `python -m experiments.benchmark [--json=FILE]`.

Prints (and optionally saves as JSON) two tables, each with a peer measured in the same run:

- input pipeline: images/s through read + PNG decode + resize + flip/rotate + batch, at 128
  and 224 px, in the main process and with 2 grain workers;
- train step: images/s of the quickstart CNN's jitted train step on this machine's devices;
- data parallelism: the same step with `train.parallelism` 'jit' on 1 device against 'jit'
  and 'pmap' on 2 fake CPU devices (a subprocess with
  `--xla_force_host_platform_device_count=2`: a CPU's cores are then split between the two).
"""

import functools
import json
import os
import subprocess
import sys
import time

from absl import app, flags, logging

from experiments.configs import quickstart
from murajax.data import benchmark as data_benchmark

_JSON = flags.DEFINE_string("json", None, "Also write the figures to this JSON file.")
_DATASET = flags.DEFINE_string("dataset", "mura_synthetic", "TFDS dataset to read.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir (default: TFDS's).")
_STEPS = flags.DEFINE_integer("steps", 30, "Timed train steps per setting.")


def train_step_throughput(
    image_size: int,
    batch_size: int,
    steps: int,
    parallelism: str = "jit",
    device_count: int | None = None,
) -> dict[str, float]:
    """Images/s of the quickstart CNN's train step on random data (after compiling), as
    `train.parallelism` compiles it over the first `device_count` devices (default: all)."""
    import jax
    import numpy as np

    from murajax import models, optim, parallel, train

    config = quickstart.get_config()
    model = models.create_from_config(config.model)
    tx = optim.make_optimizer(config.optim, config.train.steps)
    shape = (batch_size, image_size, image_size, 1)
    state = train.create_train_state(model, tx, jax.random.key(0), shape)
    step_fn = functools.partial(
        train.train_step,
        model=model,
        tx=tx,
        weight_table=np.ones((7, 2), np.float32),
        label_smoothing=0.0,
        l2_weight=0.0,
    )
    devices = jax.devices()[:device_count]
    dp = parallel.data_parallel(step_fn, parallelism, parallel.make_mesh(devices))
    state = dp.put_state(state)
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.random(shape, dtype=np.float32),
        "label": rng.integers(0, 2, batch_size).astype(np.int32),
        "body_part": rng.integers(0, 7, batch_size).astype(np.int32),
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


PARALLEL_SETTINGS = (("jit", 1), ("jit", 2), ("pmap", 2))


def data_parallel_throughput(image_size: int, batch_size: int, steps: int) -> list[dict]:
    """`train_step_throughput` for each of `PARALLEL_SETTINGS` (parallelism, devices), in one
    subprocess with 2 fake CPU devices (the device count is fixed when jax starts)."""
    flags = "--xla_force_host_platform_device_count=2"
    flags += " --xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags}
    code = (
        "import json; from experiments import benchmark as b; print('ROWS ' + json.dumps("
        f"[b.train_step_throughput({image_size}, {batch_size}, {steps}, p, n)"
        " for p, n in b.PARALLEL_SETTINGS]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=1200
    )
    if result.returncode != 0:
        raise RuntimeError(f"data-parallel benchmark failed:\n{result.stderr[-2000:]}")
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("ROWS ")]
    return json.loads(line.removeprefix("ROWS "))


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)  # TFDS and XLA log every open at INFO
    print(f"input pipeline on {_DATASET.value} (decode + resize + flip/rotate + batch 32):")
    data_rows = data_benchmark.data_throughput(_DATASET.value, _DATA_DIR.value)
    print(data_benchmark.format_table(data_rows))
    by_key = {(r["image_size"], r["num_workers"]): r["images_per_s"] for r in data_rows}
    for size in (128, 224):
        if (size, 0) in by_key and (size, 2) in by_key:
            ratio = by_key[(size, 2)] / by_key[(size, 0)]
            print(f"  {size} px: 2 workers / main process = {ratio:.2f}x")

    print("train step, quickstart CNN (batch 32):")
    step_rows = [train_step_throughput(size, 32, _STEPS.value) for size in (64, 128)]
    for row in step_rows:
        size, speed = row["image_size"], row["images_per_s"]
        print(f"  {size:>4} px: {speed:>8.1f} images/s ({row['device']})")

    print("data parallelism, quickstart CNN (64 px, global batch 32, 2 fake CPU devices):")
    parallel_rows = data_parallel_throughput(64, 32, _STEPS.value)
    base = parallel_rows[0]["images_per_s"]
    for row in parallel_rows:
        name = f"{row['parallelism']}, {row['devices']} device{'s' * (row['devices'] > 1)}"
        speed = row["images_per_s"]
        print(f"  {name:<16} {speed:>8.1f} images/s ({speed / base:.2f}x)")
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            figures = {
                "data_pipeline": data_rows,
                "train_step": step_rows,
                "data_parallel": parallel_rows,
            }
            json.dump(figures, f, indent=2)
        print(f"wrote {_JSON.value}")


if __name__ == "__main__":
    app.run(main)
