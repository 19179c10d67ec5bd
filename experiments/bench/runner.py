"""Runs the benchmark: one process per measurement, in round-robin order, and the tables.

`run_train_steps` measures, for each workload and dtype in turn, murajax's step and then each
peer's (so that a slow drift of the machine spreads over every framework alike);
`run_matmul` the matmul peak; `run_pipeline` the input pipeline; `machine_info` says where.
Each measurement runs in a process of its own, with this process's environment (`XLA_FLAGS`
included: `experiments/__init__.py` sets the YNN flag before jax is imported), so that no two
frameworks share a thread pool: murajax's in `python -m experiments.bench.worker JOB`, as
murajax's programs run, the peers' in `python experiments/bench/peer.py JOB`, which imports
nothing of murajax (nor its malloc settings).
"""

import dataclasses
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from experiments.bench import peer, workloads
from experiments.bench.arch import PEER_MODELS
from experiments.bench.peer import FRAMEWORKS, RESULT_PREFIX
from experiments.bench.workloads import Workload

DEFAULT_PEERS = ("keras-tf", "keras-jax", "torch-eager", "torch-compile")
"""The peers measured unless `--only` says otherwise ('keras-tf-xla' is on request)."""

TIMEOUT_S = 1800  # a single measurement (DenseNet-169 under torch.compile compiles for long)


QUIET_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "2",  # TensorFlow's C++ start-up lines
    # A cold first step in every process: JAX's persistent compilation cache (which
    # `experiments.main` turns on) would otherwise make `compile_s` a cache read.
    "JAX_ENABLE_COMPILATION_CACHE": "false",
}


class WorkerError(RuntimeError):
    """A measurement process failed; the message is its last line of error output."""


def log(message: str) -> None:
    """A progress line on stderr."""
    print(f"[benchmark {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_job(job: dict[str, Any], timeout: float = TIMEOUT_S, env: dict | None = None) -> Any:
    """Runs `job` in a process of its own and returns its result: a peer's train step in
    `python experiments/bench/peer.py` (which imports nothing of murajax), anything else in
    `python -m experiments.bench.worker`.

    Raises `WorkerError` (with the process's last error line) if it fails or times out.
    """
    if job.get("kind") == "train_step" and FRAMEWORKS[job["framework"]]["kind"] != "murajax":
        command = [sys.executable, peer.SCRIPT, json.dumps(job)]
    else:
        command = [sys.executable, "-m", "experiments.bench.worker", json.dumps(job)]
    env = {**os.environ, **QUIET_ENV, **(env or {})}
    try:
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise WorkerError(f"timed out after {timeout:.0f} s") from e
    lines = [x for x in result.stdout.splitlines() if x.startswith(RESULT_PREFIX)]
    if result.returncode != 0 or not lines:
        errors = [x for x in result.stderr.strip().splitlines() if x.strip()]
        reason = errors[-1] if errors else f"exit status {result.returncode}"
        raise WorkerError(reason[:300])
    return json.loads(lines[-1].removeprefix(RESULT_PREFIX))


# --------------------------------------------------------------------------- frameworks


def torch_available() -> bool:
    """Whether `torch` is importable (the optional `bench` extra)."""
    return importlib.util.find_spec("torch") is not None


def missing_package(framework: str) -> str | None:
    """The package `framework` needs that is not installed here, if any."""
    kind = FRAMEWORKS[framework]
    needs = {"keras": ["keras"], "torch": ["torch"]}.get(kind["kind"], [])
    if kind.get("backend") == "tensorflow":
        needs.append("tensorflow")
    if kind["kind"] == "torch" and not torch_available():
        return "torch"
    return next((p for p in needs if importlib.util.find_spec(p) is None), None)


def frameworks(only: Sequence[str] | None = None, notes: list[str] | None = None) -> list[str]:
    """The frameworks to measure, murajax's first: 'murajax' and 'murajax-xla' (its
    `model.conv_impl='xla'`), then `DEFAULT_PEERS`, or `only` in that order. A peer whose
    package (torch, keras, tensorflow) is not importable is left out, with a line in `notes`."""
    default = ["murajax", "murajax-xla", *DEFAULT_PEERS]
    if only:
        unknown = [f for f in only if f not in FRAMEWORKS]
        if unknown:
            raise ValueError(f"unknown framework(s) {unknown}: expected some of {list(FRAMEWORKS)}")
        chosen = [f for f in FRAMEWORKS if f in only]
    else:
        chosen = default
    kept = []
    for framework in chosen:
        missing = missing_package(framework)
        if missing is None:
            kept.append(framework)
        elif notes is not None:
            hint = " (pip install -c constraints.txt -e '.[bench]')" if missing == "torch" else ""
            notes.append(f"{missing} is not importable: {framework} skipped{hint}")
    return kept


def has_peer(framework: str, workload: Workload) -> bool:
    """Whether `framework` has a version of `workload`'s model (murajax has them all; the
    peers have the CNN, VGG16 and DenseNet-169, not the multi-view study model)."""
    if FRAMEWORKS[framework]["kind"] == "murajax":
        return True
    return workload.config().model.name in PEER_MODELS


# --------------------------------------------------------------------------- train steps


def _base_row(framework: str, workload: Workload, dtype: str) -> dict[str, Any]:
    row = {
        "framework": framework,
        "model": workload.model,
        "workload": workload.key,
        "image_size": workload.image_size,
        "batch_size": workload.batch_size,
        "dtype": dtype,
    }
    if workload.views > 1:
        row["views"] = workload.views
    return row


def train_step_job(
    framework: str,
    workload: Workload,
    dtype: str,
    min_seconds: float,
    min_steps: int = 5,
    warmup_steps: int = 2,
) -> dict[str, Any]:
    """The job (for `run_job`) of one train-step row: murajax's carry the workload, the
    peers' its `workloads.peer_spec` (plain data: their process imports no murajax)."""
    job: dict[str, Any] = {
        "kind": "train_step",
        "framework": framework,
        "dtype": dtype,
        "min_seconds": min_seconds,
        "min_steps": min_steps,
        "warmup_steps": warmup_steps,
    }
    if FRAMEWORKS[framework]["kind"] == "murajax":
        job["workload"] = dataclasses.asdict(workload)
    else:
        job["spec"] = workloads.peer_spec(workload)
    return job


def run_train_steps(
    selected: Sequence[Workload],
    dtypes: Sequence[str],
    chosen: Sequence[str],
    *,
    min_seconds: float,
    min_steps: int = 5,
    warmup_steps: int = 2,
    timeout: float = TIMEOUT_S,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Train-step rows of every (workload, dtype), each measured by `chosen` frameworks in
    turn (round robin: murajax's row, then its peers', then the next workload/dtype).

    A failed measurement gives a row with `images_per_s` None and its `error`; `on_row` is
    called with each row as it comes.
    """
    jobs = [
        (workload, dtype, framework)
        for workload in selected
        for dtype in dtypes
        for framework in chosen
        if has_peer(framework, workload)
    ]
    rows = []
    for i, (workload, dtype, framework) in enumerate(jobs, start=1):
        name = f"{framework} {workload.model}@{workload.image_size} b{workload.batch_size} {dtype}"
        log(f"{i}/{len(jobs)} {name} ...")
        row = _base_row(framework, workload, dtype)
        job = train_step_job(framework, workload, dtype, min_seconds, min_steps, warmup_steps)
        start = time.perf_counter()
        try:
            row.update(run_job(job, timeout))
            log(
                f"{i}/{len(jobs)} {name}: {row['images_per_s']:.1f} images/s "
                f"(step {row['step_s']:.3f} s, first step {row['compile_s']:.1f} s, "
                f"{row['steps']} steps; {time.perf_counter() - start:.0f} s in all)"
            )
        except WorkerError as e:
            row.update(images_per_s=None, error=str(e))
            log(f"{i}/{len(jobs)} {name}: FAILED: {e}")
        row["min_seconds"] = min_seconds
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


def run_matmul(size: int | None = None, seconds: float = 1.5) -> dict[str, float]:
    """The matmul peak (GFLOP/s, float32 and bfloat16 -> float32) in a murajax process
    (`size` None: the worker's choice for its device)."""
    log("matmul peak (float32 and bfloat16) ...")
    result = run_job({"kind": "matmul", "size": size, "seconds": seconds})
    log(f"matmul peak: {result}")
    return result


# --------------------------------------------------------------------------- input pipeline


@dataclasses.dataclass(frozen=True)
class PipelineSpec:
    """One input-pipeline measurement: the pipeline of the train step `feeds` (a workload
    key: its augmentation, normalization and channels) at that step's image size, on
    `dataset` (PNGs re-encoded at `long_side` px when set, `data.cache` when set)."""

    feeds: str
    long_side: int | None = None
    cache: str | None = None


def pipeline_specs(quick: bool, cache: str | None = None) -> list[PipelineSpec]:
    """The pipelines to time: for the steps at 128 px (workload C) and, unless `quick`, the
    quickstart's (64 px) and VGG16's at 224; each on the dataset's own PNGs and on PNGs
    re-encoded at 512 px (MURA's size), and with `data.cache` = `cache` if given."""
    keys = ["C"] if quick else ["quickstart", "C", "A224"]
    specs = []
    for key in keys:
        specs += [PipelineSpec(key), PipelineSpec(key, long_side=512)]
        if cache:
            specs.append(PipelineSpec(key, cache=cache))
    return specs


def run_pipeline(
    specs: Sequence[PipelineSpec],
    *,
    dataset: str = "mura_synthetic",
    data_dir: str | None = None,
    workers: Sequence[int] = (0, os.cpu_count() or 1),
    num_batches: int = 40,
    batch_size: int = 32,
    feeds: Callable[[str], Workload] = workloads.by_key,
    timeout: float = TIMEOUT_S,
) -> list[dict[str, Any]]:
    """Input-pipeline rows `{'source', 'image_size', 'workers', 'images_per_s', ...}` for
    each spec and worker count (`murajax.data.benchmark.data_throughput` in a worker)."""
    rows = []
    for spec in specs:
        workload = feeds(spec.feeds)
        source = dataset
        if spec.long_side:
            source += f"@{spec.long_side}px"
        if spec.cache:
            source += f"+cache={spec.cache}"
        job = {
            "kind": "pipeline",
            "feeds": dataclasses.asdict(workload),
            "dataset": dataset,
            "data_dir": data_dir,
            "image_size": workload.image_size,
            "workers": sorted(set(workers)),
            "num_batches": num_batches,
            "batch_size": batch_size,
            "long_side": spec.long_side,
            "cache": spec.cache,
        }
        common = {
            "source": source,
            "image_size": workload.image_size,
            "channels": workload.channels,
            "feeds": f"{workload.model}@{workload.image_size} b{workload.batch_size}",
            "feeds_model": workload.model,
            "feeds_image_size": workload.image_size,
            "feeds_batch": workload.batch_size,
        }
        log(f"input pipeline {source} at {workload.image_size} px, workers {job['workers']} ...")
        try:
            for r in run_job(job, timeout):
                rows.append(
                    {
                        **common,
                        "workers": r["num_workers"],
                        "images_per_s": r["images_per_s"],
                        "startup_s": r["startup_s"],
                        "batch_size": r["batch_size"],
                        "batches": r["batches"],
                        "read_threads": r.get("read_threads"),
                    }
                )
                log(f"  {r['num_workers']} workers: {r['images_per_s']:.1f} images/s")
        except WorkerError as e:
            log(f"input pipeline {source}: FAILED: {e}")
            for w in job["workers"]:
                rows.append({**common, "workers": w, "images_per_s": None, "error": str(e)})
    return rows


# --------------------------------------------------------------------------- machine


def _version(package: str, *alternatives: str) -> str | None:
    for name in (package, *alternatives):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The CPU's vector-extension flags that matter here (AVX-512, its BF16 and VNNI)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return sorted(f for f in flags if f.startswith(("avx512", "amx", "avx2")))
    except OSError:
        pass
    return []


def machine_info() -> dict[str, Any]:
    """Where and with what the figures were measured."""
    return {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": _version("jax"),
        "jaxlib": _version("jaxlib"),
        "flax": _version("flax"),
        "keras": _version("keras"),
        "tensorflow": _version("tensorflow", "tensorflow-cpu", "tensorflow_cpu"),
        "torch": _version("torch"),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
    }
