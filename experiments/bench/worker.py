"""One murajax measurement in its own process: `python -m experiments.bench.worker JOB`.

JOB is a JSON object; its "kind" is "train_step" (murajax's, with "framework" 'murajax' or
'murajax-xla', "workload", "dtype" and the timing settings), "matmul" or "pipeline". The
result is printed as one line `RESULT {...}` on stdout; anything else printed is left alone.
The runner (`experiments.bench.runner`) starts one such process per measurement (and one
`peer.py` process per peer measurement) so that no two frameworks' thread pools or allocators
share a process, and so that `peak_memory_mb` is the peak of that measurement alone. Being
`experiments`, it runs as murajax's programs do (`experiments/__init__.py`).

This module imports no framework at import time: grain's worker processes re-import it.
"""

import dataclasses
import json
import os
import sys
from typing import Any

from experiments.bench.peer import FRAMEWORKS, RESULT_PREFIX, TIMING_KEYS


def _workload(spec: str | dict[str, Any]) -> Any:
    """A `Workload` from its key, or from its fields (a dict, e.g. a test's tiny variant)."""
    from experiments.bench import workloads

    if isinstance(spec, str):
        return workloads.by_key(spec)
    return workloads.Workload(**spec)


def train_step(job: dict[str, Any]) -> dict[str, Any]:
    """Measures murajax's train-step row: `job['framework']` ('murajax', 'murajax-xla',
    'murajax-direct') on `job['workload']` in `job['dtype']`."""
    from experiments.bench import murajax_step

    workload = _workload(job["workload"])
    settings = FRAMEWORKS[job["framework"]]
    if settings["kind"] != "murajax":
        raise ValueError(f"{job['framework']!r} runs in experiments/bench/peer.py, not here")
    timing = {k: job[k] for k in TIMING_KEYS if k in job}
    return murajax_step.measure(workload, job["dtype"], settings["conv_impl"], **timing)


def pipeline(job: dict[str, Any]) -> list[dict[str, Any]]:
    """Input-pipeline rows: `murajax.data.benchmark.data_throughput` with the data config,
    normalization and channels of the train step `job['feeds']` (a workload key or fields), on
    `job['dataset']` at `job['image_size']`, for each of `job['workers']`; PNGs re-encoded
    at `job['long_side']` px when given; `data.cache` = `job['cache']` when given."""
    from murajax import models
    from murajax.data import benchmark as data_benchmark

    workload = _workload(job["feeds"])
    config = workload.config()
    data_config = dataclasses.replace(
        config.data, dataset=job["dataset"], data_dir=job.get("data_dir")
    )
    if job.get("cache"):
        data_config = dataclasses.replace(data_config, cache=job["cache"])
    normalization = data_config.normalization or models.input_spec(config.model)[0]
    return data_benchmark.data_throughput(
        job["dataset"],
        job.get("data_dir"),
        image_sizes=(job["image_size"],),
        num_workers=tuple(job["workers"]),
        batch_size=job.get("batch_size", 32),
        num_batches=job.get("num_batches", 40),
        normalization=normalization,
        channels=workload.channels,
        data_config=data_config,
        long_side=job.get("long_side"),
    )


def run(job: dict[str, Any]) -> Any:
    """The result of `job` (see the module docstring)."""
    if job["kind"] == "train_step":
        return train_step(job)
    if job["kind"] == "matmul":
        from experiments.bench import matmul

        return matmul.matmul_gflops(job.get("size"), job.get("seconds", 1.5))
    if job["kind"] == "pipeline":
        return pipeline(job)
    raise ValueError(f"unknown job kind {job['kind']!r}")


def main(argv: list[str]) -> None:
    """Runs the JSON job in `argv[1]` and prints its result as one `RESULT` line."""
    if len(argv) != 2:
        raise SystemExit("usage: python -m experiments.bench.worker '{\"kind\": ...}'")
    result = run(json.loads(argv[1]))
    sys.stdout.flush()
    print(RESULT_PREFIX + json.dumps(result), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from absl import app  # grain's workers need absl flags parsed (DESIGN.md)

    app.run(main)
