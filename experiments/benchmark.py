"""Is murajax the fastest way to train this? `python -m experiments.benchmark [--json=FILE]
[--quick]` measures it in one run, on this machine.

- Train steps of murajax's real models through the real step (`murajax.train.train_step`
  placed by `murajax.parallel.data_parallel(..., 'jit', make_mesh())`), float32 and bfloat16:
  workload C (a 4-block CNN at 128 px, batch 32), the quickstart CNN (64 px), VGG16 at 128 (A)
  and 224, DenseNet-169 at 224 and the multi-view study model; `--quick` runs C and A only.
- Peers in the same run, interleaved with murajax (murajax's row, then each peer's, then the
  next row), same architecture, batch, input, loss and Adam, each in its own process: Keras 3
  on TensorFlow and on JAX (float32 and 'mixed_bfloat16'), and PyTorch eager and
  `torch.compile` (channels_last; bfloat16 by autocast) when torch is importable (the
  optional `bench` extra). 'murajax-xla' (`model.conv_impl='xla'`) appears next to 'murajax'
  when murajax has that field.
- The matmul peak of this machine (float32, and bfloat16 with float32 results; the better of
  a measurement before and one after the train steps), so that each row's GFLOP/s (XLA's
  cost analysis for murajax, an analytic count for the peers) is also a fraction of the peak.
- The input pipeline alone (decode + resize + augment + batch) on `mura_synthetic` and on its
  PNGs re-encoded at 512 px, in the main process and with one worker per core, against the
  train step each one feeds.
- The data-parallel table (not with `--quick`): 'jit' on 1 device against 'jit' and 'pmap' on
  2 fake CPU devices.

Timings are medians of single steps timed over at least `--min_seconds` after a compile step
and a warm-up step. Progress goes to stderr, the tables to stdout, and with `--json=FILE`
`{"machine", "matmul_gflops", "train_step", "input_pipeline", "settings", "data_parallel"}`
to FILE (rewritten after every row, so an interrupted run keeps what it measured).
"""

import dataclasses
import json
import os
import time
from typing import Any

from absl import app, flags, logging

from experiments import cli
from experiments.bench import data_parallel, runner, table, workloads

_JSON = flags.DEFINE_string("json", None, "Also write the figures to this JSON file.")
_QUICK = flags.DEFINE_bool(
    "quick",
    False,
    "Workloads C and A only, float32 and bfloat16, every available peer, the input pipeline "
    "at 128 px only, shorter timing windows (--min_seconds 3, --min_steps 3).",
)
_MIN_SECONDS = flags.DEFINE_float(
    "min_seconds", None, "Timed seconds per row, at least (default 10; 3 with --quick)."
)
_MIN_STEPS = flags.DEFINE_integer(
    "min_steps", None, "Timed steps per row, at least (default 5; 3 with --quick)."
)
_WARMUP_STEPS = flags.DEFINE_integer(
    "warmup_steps", 2, "Untimed steps per row, the compile step included."
)
_ONLY = flags.DEFINE_list(
    "only",
    None,
    "Frameworks to measure (default: murajax, murajax-xla if it exists, keras-tf, keras-jax, "
    "torch-eager, torch-compile); also keras-tf-xla.",
)
_MODELS = flags.DEFINE_list(
    "models", None, "Workloads to measure: C, quickstart, A, A224, densenet169, multiview."
)
_DTYPES = flags.DEFINE_list("dtypes", list(workloads.DTYPES), "Computation dtypes.")
_PIPELINE = flags.DEFINE_bool("pipeline", True, "Time the input pipeline.")
_CACHE = flags.DEFINE_string(
    "cache", "memory", "Also time the pipeline with this `data.cache` (when murajax has it)."
)
_DATA_PARALLEL = flags.DEFINE_bool(
    "data_parallel", None, "The data-parallel table (default: unless --quick)."
)
_DATASET = flags.DEFINE_string("dataset", "mura_synthetic", "TFDS dataset the pipeline reads.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir (default: TFDS's).")
_IMAGE_SIZE = flags.DEFINE_integer(
    "image_size", None, "Override every workload's image size (e.g. VGG16 at 320)."
)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Override every workload's batch size.")
_MATMUL_SIZE = flags.DEFINE_integer(
    "matmul_size", None, "Side of the matmul-peak matrices (default: 2048 on CPU, 8192 on GPU)."
)
_STEPS = flags.DEFINE_integer("steps", 30, "Timed steps per data-parallel setting.")


def _has_data_cache() -> bool:
    from murajax.config import DataConfig

    return hasattr(DataConfig(), "cache")


def goal_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's goals for workloads C and A as ratios: murajax over Keras on TF in float32;
    in bfloat16 over Keras's mixed_bfloat16 and over Keras's float32."""
    lines = []
    for model in ("cnn_c", "vgg16"):
        checks = [
            ("float32 vs keras-tf float32", "float32", "float32", 1.0),
            ("bfloat16 vs keras-tf mixed_bfloat16", "bfloat16", "bfloat16", 1.0),
            ("bfloat16 vs keras-tf float32", "bfloat16", "float32", 1.5),
        ]
        sizes = sorted({r["image_size"] for r in rows if r["model"] == model})
        for size in sizes[:1]:  # the workloads: C at 128, A (VGG16) at 128
            sized = [r for r in rows if r["image_size"] == size]
            for label, dtype, versus_dtype, goal in checks:
                value = table.ratio(sized, model, "murajax", "keras-tf", dtype, versus_dtype)
                if value is not None:
                    verdict = "met" if value >= goal else "not met"
                    lines.append(
                        f"  {model}@{size} murajax {label}: {value:.2f}x "
                        f"(goal >= {goal:.1f}x: {verdict})"
                    )
    return lines


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)  # TFDS and XLA log every open at INFO
    started = time.perf_counter()
    quick = _QUICK.value
    min_seconds = _MIN_SECONDS.value if _MIN_SECONDS.value is not None else (3.0 if quick else 10.0)
    min_steps = _MIN_STEPS.value if _MIN_STEPS.value is not None else (3 if quick else 5)
    notes: list[str] = []
    overrides = {"image_size": _IMAGE_SIZE.value, "batch_size": _BATCH_SIZE.value}
    overrides = {k: v for k, v in overrides.items() if v is not None}

    def workload(key: str) -> workloads.Workload:
        return dataclasses.replace(workloads.by_key(key), **overrides)

    bad_dtypes = [d for d in _DTYPES.value if d not in workloads.DTYPES]
    if bad_dtypes:
        cli.fail(f"--dtypes: unknown {', '.join(bad_dtypes)}: expected {workloads.DTYPES}")
    try:
        selected = [workload(w.key) for w in workloads.select(quick, _MODELS.value)]
        chosen = runner.frameworks(_ONLY.value, notes)
    except ValueError as e:
        cli.fail(str(e))
    for note in notes:
        runner.log(note)
    settings = {
        "quick": quick,
        "min_seconds": min_seconds,
        "min_steps": min_steps,
        "warmup_steps": _WARMUP_STEPS.value,
        "frameworks": chosen,
        "workloads": [dataclasses.asdict(w) for w in selected],
        "dtypes": _DTYPES.value,
        "notes": notes,
    }
    figures: dict[str, Any] = {
        "machine": runner.machine_info(),
        "matmul_gflops": {},
        "train_step": [],
        "input_pipeline": [],
        "settings": settings,
    }

    def save() -> None:
        if _JSON.value:
            with open(_JSON.value, "w") as f:
                json.dump(figures, f, indent=2)

    figures["matmul_gflops"] = runner.run_matmul(_MATMUL_SIZE.value)
    save()
    measured: list[dict[str, Any]] = []

    def on_row(row: dict[str, Any]) -> None:
        measured.append(row)
        figures["train_step"] = table.add_ratios(measured, figures["matmul_gflops"])
        save()

    runner.run_train_steps(
        selected,
        _DTYPES.value,
        chosen,
        min_seconds=min_seconds,
        min_steps=min_steps,
        warmup_steps=_WARMUP_STEPS.value,
        on_row=on_row,
    )
    if _PIPELINE.value:
        cache = _CACHE.value if _CACHE.value and _has_data_cache() else None
        specs = runner.pipeline_specs(quick, cache)
        pipeline_rows = runner.run_pipeline(
            specs, dataset=_DATASET.value, data_dir=_DATA_DIR.value, feeds=workload
        )
        figures["input_pipeline"] = table.add_step_ratios(pipeline_rows, figures["train_step"])
        save()
    if _DATA_PARALLEL.value if _DATA_PARALLEL.value is not None else not quick:
        runner.log("data parallelism (quickstart CNN, 64 px, batch 32, 2 fake CPU devices) ...")
        figures["data_parallel"] = data_parallel.data_parallel_throughput(64, 32, _STEPS.value)
        save()
    # The peak again at the end (a busy machine may have held the first back): keep the best.
    again = runner.run_matmul(_MATMUL_SIZE.value)
    settings["matmul_runs"] = [figures["matmul_gflops"], again]
    figures["matmul_gflops"] = {
        k: max(v, again.get(k, 0.0)) for k, v in figures["matmul_gflops"].items()
    }
    figures["train_step"] = table.add_ratios(measured, figures["matmul_gflops"])
    settings["wall_s"] = round(time.perf_counter() - started, 1)
    save()

    machine = figures["machine"]
    print(
        f"machine: {machine['cpu']}, {machine['cores']} cores, jax {machine['jax']}, "
        f"keras {machine['keras']}, tensorflow {machine['tensorflow']}, torch {machine['torch']}"
        f"; {machine['date']}; XLA_FLAGS={machine['XLA_FLAGS'] or '(none)'}"
    )
    peak = figures["matmul_gflops"]
    print(
        f"matmul peak: float32 {peak['float32']:.0f} GFLOP/s, "
        f"bfloat16 (float32 results) {peak['bfloat16']:.0f} GFLOP/s"
    )
    print(
        f"\ntrain step (median of >= {min_seconds:g} s and >= {min_steps} steps after "
        f"{_WARMUP_STEPS.value} untimed; 'of peak' = GFLOP/s over the matmul peak of the "
        "row's dtype, which a busy machine can push past 100%; 'vs best peer' = images/s over "
        "the fastest non-murajax framework of the same model, size, batch and dtype):"
    )
    print(table.format_train_table(figures["train_step"]))
    goals = goal_lines(figures["train_step"])
    if goals:
        print("\nissue 9's goals:")
        print("\n".join(goals))
    if figures["input_pipeline"]:
        print(
            f"\ninput pipeline on {_DATASET.value} (decode + resize + augment + batch 32; "
            f"{os.cpu_count()} workers = one per core):"
        )
        print(table.format_pipeline_table(figures["input_pipeline"]))
    if "data_parallel" in figures:
        print("\ndata parallelism, quickstart CNN (64 px, global batch 32, 2 fake CPU devices):")
        print(data_parallel.format_table(figures["data_parallel"]))
    for note in notes:
        print(f"note: {note}")
    print(f"\n(benchmark took {settings['wall_s']:.0f} s)")
    if _JSON.value:
        print(f"wrote {_JSON.value}")


if __name__ == "__main__":
    app.run(main)
