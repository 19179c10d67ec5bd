"""`python -m experiments.benchmark --inference`: how fast a model scores images, per engine.

For each workload (the quickstart CNN at 64 px and DenseNet-169 at 224, the MURA paper's
model; `--quick`: the CNN only; `--models=` picks) and batch size (1 and 32), in one process
and in turns (each round visits the engines in a rotated order, so a slow spell of a shared
machine falls on all alike):

- `murajax`: murajax's jitted eval step (`steps.make_eval_fn`, oneDNN convolutions where
  they run) on the normalised float32 batch the pipeline gives it;
- `stablehlo`: the package's `model.stablehlo`, run by the package runtime (jax);
- `onnxruntime`: the package's `model.onnx`, run by the package runtime (onnxruntime,
  its default threads);
- `keras-tf`: the same network in Keras 3 on TensorFlow, `predict_on_batch` (Keras's
  fastest call for one batch; `predict` adds a tf.data pipeline per call).

Every engine scores the same random images with random weights (speed does not depend on
them). Each figure is images/s from the median of single calls timed over the engine's
stretches after two warm-up calls; `ratio_to_murajax` is the engine's images/s over
murajax's.
"""

import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from experiments.bench import keras_peer, workloads

BATCH_SIZES: tuple[int, ...] = (1, 32)
WORKLOADS: tuple[str, ...] = ("quickstart", "densenet169")
QUICK_WORKLOADS: tuple[str, ...] = ("quickstart",)
ENGINES: tuple[str, ...] = ("murajax", "stablehlo", "onnxruntime", "keras-tf")

Call = Callable[[], Any]


def _murajax_engine(spec: Any, variables: Any, data_config: Any) -> Callable[[np.ndarray], Call]:
    """murajax's eval step on the pipeline's float32 inputs of uint8 `images`."""
    import jax

    from murajax import steps
    from murajax.data import preprocess

    model = spec.build()
    state = steps.TrainState(
        step=np.int32(0),
        params=variables["params"],
        batch_stats=variables.get("batch_stats", {}),
        opt_state=None,
        key=jax.random.key(0),
    )
    eval_fn = steps.make_eval_fn(model)
    prep = data_config.normalization or spec.normalization

    def bind(images: np.ndarray) -> Call:
        floats = preprocess.normalize(images, prep, spec.channels)
        batch = {"image": floats, "label": np.zeros(len(images), np.int32)}
        return lambda: jax.block_until_ready(eval_fn((state,), batch)["prob"])

    return bind


def _artifact_engines(spec: Any, variables: Any, data_config: Any, folder: str) -> dict:
    """The package runtime's StableHLO and ONNX models of `spec` with `variables`."""
    from murajax.export import function, runtime, stablehlo
    from murajax.export import onnx as onnx_lib

    inference = function.make(spec, data_config, [variables])
    engines: dict[str, Callable[[np.ndarray], Call]] = {}
    data, facts = stablehlo.serialize(inference)
    path = os.path.join(folder, "model.stablehlo")
    with open(path, "wb") as f:
        f.write(data)
    run_hlo = runtime._stablehlo_runner(path, facts)
    engines["stablehlo"] = lambda images: lambda: np.asarray(run_hlo([images])[0])
    if onnx_lib.available():
        started = time.perf_counter()
        data, _ = onnx_lib.serialize(inference)
        print(f"[inference] {spec.name}: ONNX conversion {time.perf_counter() - started:.0f} s")
        path = os.path.join(folder, "model.onnx")
        with open(path, "wb") as f:
            f.write(data)
        run_onnx = runtime._onnx_runner(path)
        engines["onnxruntime"] = lambda images: lambda: run_onnx([images])[0]
    return engines


def _keras_engine(workload: workloads.Workload) -> Callable[[np.ndarray], Call] | None:
    """Keras 3 on TensorFlow's `predict_on_batch` of the same network (None without it)."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    try:
        import keras
    except ImportError:
        return None
    if keras.backend.backend() != "tensorflow":
        return None
    model = keras_peer.build_model(workloads.peer_spec(workload))

    def bind(images: np.ndarray) -> Call:
        floats = np.repeat(images.astype(np.float32) / 255.0, workload.channels, axis=-1)
        return lambda: np.asarray(model.predict_on_batch(floats))

    return bind


def _engines(workload: workloads.Workload, folder: str) -> dict[str, Callable]:
    """Every available engine of `workload`, by name, in `ENGINES` order."""
    import jax

    from murajax import models

    config = workload.config("float32")
    spec = models.resolve(config.model, num_classes=2)
    shape = spec.input_shape(workload.image_size, 1)
    variables = jax.jit(spec.build().init)(jax.random.key(0), np.zeros(shape, np.float32))
    config.data.image_size = workload.image_size
    found = {"murajax": _murajax_engine(spec, variables, config.data)}
    found.update(_artifact_engines(spec, variables, config.data, folder))
    keras_engine = _keras_engine(workload)
    if keras_engine is not None:
        found["keras-tf"] = keras_engine
    return {name: found[name] for name in ENGINES if name in found}


def _time(call: Call, seconds: float, min_calls: int = 3) -> list[float]:
    times: list[float] = []
    while sum(times) < seconds or len(times) < min_calls:
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def measure_batch(calls: dict[str, Call], min_seconds: float, rounds: int) -> dict[str, float]:
    """{engine: median seconds per call}, the engines timed in turns over `rounds` rounds."""
    for call in calls.values():  # compile and warm up
        call()
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name] += _time(calls[name], min_seconds / rounds)
    return {name: statistics.median(t) for name, t in times.items()}


def run(
    keys: Sequence[str] | None,
    quick: bool,
    min_seconds: float,
    rounds: int,
    batch_sizes: Sequence[int] = BATCH_SIZES,
) -> list[dict[str, Any]]:
    """The rows of the inference table (see the module docstring)."""
    rows = []
    for key in keys or (QUICK_WORKLOADS if quick else WORKLOADS):
        workload = workloads.by_key(key)
        with tempfile.TemporaryDirectory() as folder:
            engines = _engines(workload, folder)
            for batch in batch_sizes:
                rng = np.random.default_rng(batch)
                size = workload.image_size
                images = rng.integers(0, 256, (batch, size, size, 1), dtype=np.uint8)
                calls = {name: bind(images) for name, bind in engines.items()}
                medians = measure_batch(calls, min_seconds, rounds)
                base = batch / medians["murajax"]
                for name, seconds in medians.items():
                    rows.append(
                        {
                            "workload": workload.key,
                            "model": workload.model,
                            "image_size": size,
                            "batch_size": batch,
                            "engine": name,
                            "ms_per_batch": round(seconds * 1e3, 3),
                            "images_per_s": round(batch / seconds, 1),
                            "ratio_to_murajax": round(batch / seconds / base, 2),
                        }
                    )
                print(table(rows[-len(medians) :]), flush=True)
    return rows


def table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    head = "| model | px | batch | engine | ms/batch | images/s | x murajax |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['image_size']} | {r['batch_size']} | {r['engine']} |"
            f" {r['ms_per_batch']:.2f} | {r['images_per_s']:.1f} | {r['ratio_to_murajax']:.2f} |"
        )
    return "\n".join(lines)
