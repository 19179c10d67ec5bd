"""Throughput figures: `python -m experiments.benchmark [--json=FILE]`.

Prints (and optionally saves as JSON) two tables, each with a peer measured in the same run:

- input pipeline: images/s through read + PNG decode + resize + flip/rotate + batch, at 128
  and 224 px, in the main process and with 2 grain workers;
- train step: images/s of the quickstart CNN's jitted train step on this machine's devices.
"""

import functools
import json
import time

from absl import app, flags, logging

from experiments.configs import quickstart
from murajax.data import benchmark as data_benchmark

_JSON = flags.DEFINE_string("json", None, "Also write the figures to this JSON file.")
_DATASET = flags.DEFINE_string("dataset", "mura_synthetic", "TFDS dataset to read.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir (default: TFDS's).")
_STEPS = flags.DEFINE_integer("steps", 30, "Timed train steps per setting.")


def train_step_throughput(image_size: int, batch_size: int, steps: int) -> dict[str, float]:
    """Images/s of the quickstart CNN's jitted train step on random data (after compiling)."""
    import jax
    import numpy as np

    from murajax import models, optim, train

    config = quickstart.get_config()
    model = models.create_from_config(config.model)
    tx = optim.make_optimizer(config.optim, config.train.steps)
    shape = (batch_size, image_size, image_size, 1)
    state = train.create_train_state(model, tx, jax.random.key(0), shape)
    step = jax.jit(
        functools.partial(
            train.train_step,
            model=model,
            tx=tx,
            weight_table=np.ones((7, 2), np.float32),
            label_smoothing=0.0,
            l2_weight=0.0,
        ),
        donate_argnums=0,
    )
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.random(shape, dtype=np.float32),
        "label": rng.integers(0, 2, batch_size).astype(np.int32),
        "body_part": rng.integers(0, 7, batch_size).astype(np.int32),
    }
    state, metrics = step(state, batch)  # compile
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    seconds = time.perf_counter() - start
    return {
        "image_size": image_size,
        "batch_size": batch_size,
        "steps": steps,
        "images_per_s": round(batch_size * steps / seconds, 1),
        "device": str(jax.devices()[0].platform),
    }


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
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump({"data_pipeline": data_rows, "train_step": step_rows}, f, indent=2)
        print(f"wrote {_JSON.value}")


if __name__ == "__main__":
    app.run(main)
