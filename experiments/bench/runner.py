"""Runs the benchmark: one process per measurement, in round-robin order, and the tables.

`run_train_steps` measures, for each workload and dtype in turn, murajax's step and each
peer's in interleaved rounds: every framework's process of the row compiles and warms up (one
at a time), then they take turns timing short stretches of steps, round after round, so that
the slow and fast spells of a shared machine fall on every framework alike (with `rounds=1`,
one process at a time, each timing its steps in one stretch);
`run_matmul` the matmul peak; `run_pipeline` the input pipeline; `machine_info` says where.
Each measurement runs in a process of its own, with this process's environment (`XLA_FLAGS`
included: `experiments/__init__.py` sets the YNN flag before jax is imported), so that no two
frameworks share a thread pool: murajax's in `python -m experiments.bench.worker JOB`, as
murajax's programs run, the peers' in `python experiments/bench/peer.py JOB`, which imports
nothing of murajax (nor its malloc settings).

The measurement processes die with the benchmark. Each starts in a process group of its own
(`spawn`), with `PR_SET_PDEATHSIG` on Linux, so that it is killed if the benchmark is
(SIGKILL included). Within `stopping_on_signals()`, SIGTERM, SIGINT or SIGHUP kill every
measurement process's group at once and make the measurement in flight raise `Interrupted`
(never a half-written file: the handler itself raises nothing).
"""

import contextlib
import dataclasses
import datetime
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from experiments.bench import peer, workloads
from experiments.bench.arch import PEER_MODELS
from experiments.bench.peer import FRAMEWORKS, RESULT_PREFIX
from experiments.bench.timing import READY_LINE, TIMES_PREFIX
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


class Interrupted(Exception):
    """A signal stopped the benchmark (`stopping_on_signals`); its measurement processes have
    been killed. `exit_status` is what a shell expects (128 + the signal)."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum
        self.exit_status = 128 + signum


def log(message: str) -> None:
    """A progress line on stderr."""
    print(f"[benchmark {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- child processes

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

# Run by `python -I -S -c` before the measurement's own command (which it `exec`s, keeping
# the pid and the setting): the kernel sends SIGKILL to it when the benchmark dies.
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    f"ctypes.CDLL(None).prctl({PR_SET_PDEATHSIG}, signal.SIGKILL)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    os._exit(1)  # the benchmark died before the setting took\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)

_live: set[subprocess.Popen] = set()  # the measurement processes running now
_stop_signal: int | None = None  # the signal that stopped the benchmark, if one did


def dying_with_parent(command: Sequence[str]) -> list[str]:
    """`command` started so that it is killed when this process dies (Linux:
    `PR_SET_PDEATHSIG`, set by a small Python launcher that then `exec`s it); unchanged
    elsewhere."""
    if not sys.platform.startswith("linux"):
        return list(command)
    launcher = [sys.executable, "-I", "-S", "-c", _DIE_WITH_PARENT, str(os.getpid())]
    return launcher + list(command)


def spawn(command: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen:
    """Starts a measurement process: in a process group of its own (so that ending it ends
    whatever it started), killed if the benchmark dies (`dying_with_parent`), and known to
    `stopping_on_signals`. Raises `Interrupted` if the benchmark is stopping."""
    stop_requested()
    process = subprocess.Popen(dying_with_parent(command), process_group=0, **popen_kwargs)
    _live.add(process)
    if _stop_signal is not None:  # (a signal between the check and here)
        end(process)
        stop_requested()
    return process


def end(process: subprocess.Popen) -> None:
    """Kills `process`'s group (it and whatever it started, if still running) and reaps it."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    _live.discard(process)


def stop_signal() -> int | None:
    """The signal that stopped the benchmark (`stopping_on_signals`), or None."""
    return _stop_signal


def stop_requested() -> None:
    """Raises `Interrupted` once a signal has stopped the benchmark."""
    if _stop_signal is not None:
        raise Interrupted(_stop_signal)


def _child_pids() -> list[int]:
    """This process's children (Linux's /proc; [] elsewhere): also those started without
    `spawn`, such as the data-parallel table's."""
    me, children = os.getpid(), []
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == me:  # fields after "(comm)"
                children.append(int(name))
    return children


def _stop(signum: int, frame: Any) -> None:
    """The handler of `STOP_SIGNALS`: records the signal and kills every measurement
    process (its whole group) and any other child; raises nothing, so that no file is left
    half-written: the measurement waiting on a killed process raises `Interrupted`."""
    del frame
    global _stop_signal
    if _stop_signal is None:
        _stop_signal = signum
    for process in list(_live):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
    for pid in _child_pids():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def stopping_on_signals() -> Iterator[None]:
    """Within it, SIGTERM, SIGINT and SIGHUP stop the benchmark (`_stop`; `stop_signal()`
    says which); the previous handlers are back afterwards."""
    global _stop_signal
    _stop_signal = None
    previous = {signum: signal.signal(signum, _stop) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# --------------------------------------------------------------------------- measurements


def _command(job: dict[str, Any]) -> list[str]:
    """A peer's train step runs in `python experiments/bench/peer.py` (which imports nothing
    of murajax), anything else in `python -m experiments.bench.worker`."""
    if job.get("kind") == "train_step" and FRAMEWORKS[job["framework"]]["kind"] != "murajax":
        return [sys.executable, peer.SCRIPT, json.dumps(job)]
    return [sys.executable, "-m", "experiments.bench.worker", json.dumps(job)]


def _last_error_line(stderr: str, returncode: int | None) -> str:
    errors = [x for x in stderr.strip().splitlines() if x.strip()]
    return (errors[-1] if errors else f"exit status {returncode}")[:300]


def run_job(job: dict[str, Any], timeout: float = TIMEOUT_S, env: dict | None = None) -> Any:
    """Runs `job` in a process of its own (`_command`, `spawn`) and returns its result.

    Raises `WorkerError` (with the process's last error line) if it fails or times out,
    `Interrupted` if a signal stopped the benchmark meanwhile.
    """
    env = {**os.environ, **QUIET_ENV, **(env or {})}
    process = spawn(
        _command(job), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise WorkerError(f"timed out after {timeout:.0f} s") from None
    finally:
        end(process)
    stop_requested()  # killed by the handler: not a failure of the measurement
    lines = [x for x in stdout.splitlines() if x.startswith(RESULT_PREFIX)]
    if process.returncode != 0 or not lines:
        raise WorkerError(_last_error_line(stderr, process.returncode))
    return json.loads(lines[-1].removeprefix(RESULT_PREFIX))


class TurnTaker:
    """A train-step measurement process that times its steps when told (`timing.time_steps`
    with `turns`): making one starts the process; `wait_ready` returns once it has compiled
    and warmed up; each `stretch` times a few steps; `finish` ends it and returns its row. Its
    stderr goes to a temporary file (a pipe could fill and stall it); its stdout is read by a
    thread, line by line. A failure kills it and raises `WorkerError` (`Interrupted` when a
    signal stopped the benchmark)."""

    def __init__(self, job: dict[str, Any], timeout: float = TIMEOUT_S) -> None:
        self.timeout = timeout
        self._stderr = tempfile.TemporaryFile("w+")
        try:
            self._process = spawn(
                _command({**job, "turns": True}),
                env={**os.environ, **QUIET_ENV},
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                text=True,
                bufsize=1,
            )
        except BaseException:
            self._stderr.close()
            raise
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self._process.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)  # end of output

    def _fail(self, why: str) -> WorkerError | Interrupted:
        """Ends the process; the error to raise: `Interrupted` if a signal killed it."""
        end(self._process)
        self._stderr.seek(0)
        error = _last_error_line(self._stderr.read(), self._process.returncode)
        self._stderr.close()
        if _stop_signal is not None:
            return Interrupted(_stop_signal)
        return WorkerError(f"{why}: {error}" if why else error)

    def _expect(self, prefix: str) -> str:
        """The process's next stdout line that starts with `prefix` (others are ignored)."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise self._fail(f"timed out after {self.timeout:.0f} s") from None
            if line is None:
                raise self._fail("")
            if line.startswith(prefix):
                return line.removeprefix(prefix)

    def _send(self, command: dict[str, Any]) -> None:
        try:
            self._process.stdin.write(json.dumps(command) + "\n")
            self._process.stdin.flush()
        except OSError:
            raise self._fail("") from None

    def wait_ready(self) -> None:
        """Returns once the process has compiled and warmed up its step."""
        self._expect(READY_LINE)

    def stretch(self, min_seconds: float, min_steps: int) -> list[float]:
        """Seconds of each step of one timed stretch (at least `min_seconds` and
        `min_steps`)."""
        self._send({"min_seconds": min_seconds, "min_steps": min_steps})
        return json.loads(self._expect(TIMES_PREFIX))

    def finish(self) -> dict[str, Any]:
        """Ends the turns; the process's row."""
        self._process.stdin.close()
        result = json.loads(self._expect(RESULT_PREFIX))
        self._process.wait(timeout=self.timeout)
        end(self._process)
        self._stderr.close()
        return result

    def kill(self) -> None:
        """Stops the process (after a failure elsewhere, or a signal)."""
        end(self._process)
        self._stderr.close()


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


def _label(framework: str, workload: Workload, dtype: str) -> str:
    return f"{framework} {workload.model}@{workload.image_size} b{workload.batch_size} {dtype}"


def _measure_alone(
    framework: str, workload: Workload, dtype: str, progress: str, *, timeout: float, **timing: Any
) -> dict[str, Any]:
    """One framework's row, its process timing its steps in one stretch (`rounds=1`)."""
    name = _label(framework, workload, dtype)
    log(f"{progress} {name} ...")
    row = _base_row(framework, workload, dtype)
    start = time.perf_counter()
    try:
        row.update(run_job(train_step_job(framework, workload, dtype, **timing), timeout))
        log(
            f"{progress} {name}: {row['images_per_s']:.1f} images/s "
            f"(step {row['step_s']:.3f} s, first step {row['compile_s']:.1f} s, "
            f"{row['steps']} steps; {time.perf_counter() - start:.0f} s in all)"
        )
    except WorkerError as e:
        row.update(images_per_s=None, error=str(e))
        log(f"{progress} {name}: FAILED: {e}")
    return row


def _measure_in_turns(
    frameworks_: Sequence[str],
    workload: Workload,
    dtype: str,
    *,
    rounds: int,
    min_seconds: float,
    min_steps: int,
    warmup_steps: int,
    timeout: float,
) -> list[dict[str, Any]]:
    """The rows of one (workload, dtype), its frameworks' processes taking turns: each
    compiles and warms up (one at a time, while the others wait), then in each of `rounds`
    rounds each times a stretch of at least `min_seconds / rounds` seconds and
    `ceil(min_steps / rounds)` steps, in an order that rotates every round."""
    rows = {f: _base_row(f, workload, dtype) for f in frameworks_}
    turn_seconds = min_seconds / rounds
    turn_steps = max(1, math.ceil(min_steps / rounds))
    takers: dict[str, TurnTaker] = {}

    def failed(framework: str, error: WorkerError) -> None:
        rows[framework].update(images_per_s=None, error=str(error))
        log(f"{_label(framework, workload, dtype)}: FAILED: {error}")
        takers.pop(framework, None)

    try:
        for framework in frameworks_:
            log(f"{_label(framework, workload, dtype)}: compiling and warming up ...")
            job = train_step_job(framework, workload, dtype, turn_seconds, turn_steps, warmup_steps)
            try:
                takers[framework] = TurnTaker(job, timeout)
                takers[framework].wait_ready()
            except WorkerError as e:
                failed(framework, e)
        for r in range(rounds):
            order = list(takers)
            order = order[r % len(order) :] + order[: r % len(order)] if order else []
            speeds = []
            for framework in order:
                try:
                    times = takers[framework].stretch(turn_seconds, turn_steps)
                except WorkerError as e:
                    failed(framework, e)
                    continue
                speed = workload.images_per_step / statistics.median(times)
                speeds.append(f"{framework} {speed:.1f}")
            log(f"round {r + 1}/{rounds} (images/s): {', '.join(speeds)}")
        for framework, taker in list(takers.items()):
            try:
                rows[framework].update(taker.finish())
            except WorkerError as e:
                failed(framework, e)
    finally:
        for taker in takers.values():
            taker.kill()
    for framework in frameworks_:
        rows[framework]["rounds"] = rounds
    return [rows[f] for f in frameworks_]


def run_train_steps(
    selected: Sequence[Workload],
    dtypes: Sequence[str],
    chosen: Sequence[str],
    *,
    min_seconds: float,
    min_steps: int = 5,
    warmup_steps: int = 2,
    rounds: int = 1,
    timeout: float = TIMEOUT_S,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Train-step rows of every (workload, dtype), measured by each of `chosen` frameworks
    that has the model, in `rounds` interleaved rounds (`_measure_in_turns`: all the row's
    processes are alive at once), or with `rounds=1` one process after another.

    A failed measurement gives a row with `images_per_s` None and its `error`; `on_row` is
    called with each row as it comes.
    """
    groups = [
        (workload, dtype, [f for f in chosen if has_peer(f, workload)])
        for workload in selected
        for dtype in dtypes
    ]
    total = sum(len(group) for _, _, group in groups)
    rows: list[dict[str, Any]] = []
    timing = {"min_seconds": min_seconds, "min_steps": min_steps, "warmup_steps": warmup_steps}

    def emit(row: dict[str, Any]) -> None:
        row["min_seconds"] = min_seconds
        rows.append(row)
        if on_row is not None:
            on_row(row)

    for workload, dtype, group in groups:
        if rounds > 1 and len(group) > 1:
            log(f"{len(rows) + 1}-{len(rows) + len(group)}/{total}: {rounds} rounds ...")
            for row in _measure_in_turns(
                group, workload, dtype, rounds=rounds, timeout=timeout, **timing
            ):
                emit(row)
            continue
        for framework in group:
            progress = f"{len(rows) + 1}/{total}"
            emit(_measure_alone(framework, workload, dtype, progress, timeout=timeout, **timing))
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
