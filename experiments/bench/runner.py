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

from experiments.bench import peer, schedule, workloads
from experiments.bench.arch import PEER_MODELS
from experiments.bench.peer import FRAMEWORKS, RESULT_PREFIX
from experiments.bench.timing import READY_LINE, TIMES_PREFIX
from experiments.bench.workloads import Workload
from murajax import allocator

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
    if _is_peer(job):
        return [sys.executable, peer.SCRIPT, json.dumps(job)]
    return [sys.executable, "-m", "experiments.bench.worker", json.dumps(job)]


def _is_peer(job: dict[str, Any]) -> bool:
    return job.get("kind") == "train_step" and FRAMEWORKS[job["framework"]]["kind"] != "murajax"


def _environment(job: dict[str, Any], extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of `job`'s process: this one's, quietened, plus `extra`. A peer's goes
    without the malloc murajax preloads (`murajax.allocator`): it runs as its users run it."""
    env = {**os.environ, **QUIET_ENV, **(extra or {})}
    return allocator.without_preload(env) if _is_peer(job) else env


def _last_error_line(stderr: str, returncode: int | None) -> str:
    errors = [x for x in stderr.strip().splitlines() if x.strip()]
    return (errors[-1] if errors else f"exit status {returncode}")[:300]


def run_job(job: dict[str, Any], timeout: float = TIMEOUT_S, env: dict | None = None) -> Any:
    """Runs `job` in a process of its own (`_command`, `spawn`) and returns its result.

    Raises `WorkerError` (with the process's last error line) if it fails or times out,
    `Interrupted` if a signal stopped the benchmark meanwhile.
    """
    process = spawn(
        _command(job),
        env=_environment(job, env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
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


class TimedOut(WorkerError):
    """A measurement process did not answer within the time it was given."""


class TurnTaker:
    """A train-step measurement process that takes the steps it is told to
    (`timing.time_steps` with `turns`): making one starts the process; `wait_ready` returns
    the first step's seconds once it has taken it (compile included); each `stretch` runs a
    few steps (timed, or warm-up); `finish` ends it and returns its row. Its stderr goes to a
    temporary file (a pipe could fill and stall it); its stdout is read by a thread, line by
    line. A failure kills it and raises `WorkerError` (`TimedOut` when it took longer than
    allowed; `Interrupted` when a signal stopped the benchmark)."""

    def __init__(self, job: dict[str, Any], timeout: float = TIMEOUT_S) -> None:
        self.timeout = timeout
        self._stderr = tempfile.TemporaryFile("w+")
        try:
            self._process = spawn(
                _command({**job, "turns": True}),
                env=_environment(job),
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

    def _fail(self, why: str, error_type: type[WorkerError] = WorkerError) -> Exception:
        """Ends the process; the error to raise: `Interrupted` if a signal killed it."""
        end(self._process)
        self._stderr.seek(0)
        error = _last_error_line(self._stderr.read(), self._process.returncode)
        self._stderr.close()
        if _stop_signal is not None:
            return Interrupted(_stop_signal)
        return error_type(f"{why}: {error}" if why else error)

    def _expect(self, prefix: str, timeout: float | None = None) -> str:
        """The process's next stdout line that starts with `prefix` (others are ignored),
        within `timeout` seconds (default: the process's)."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise self._fail(f"timed out after {timeout:.0f} s", TimedOut) from None
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

    def wait_ready(self, timeout: float | None = None) -> tuple[float, list[float]]:
        """The first step's seconds (compile included) and the warm-up steps', once the
        process has taken them (0 and none if its `READY` line does not say)."""
        said = self._expect(READY_LINE, timeout).strip()
        ready = json.loads(said) if said else {}
        return float(ready.get("compile_s", 0.0)), list(ready.get("warmup_s", []))

    def stretch(self, turn: schedule.Turn) -> list[float]:
        """Seconds of each step of one stretch (`turn`)."""
        self._send(turn.command())
        return json.loads(self._expect(TIMES_PREFIX))

    def finish(self, first_step_only: bool = False) -> dict[str, Any]:
        """Ends the turns; the process's row (`first_step_only`: no step was timed, the row
        is the first step's)."""
        if first_step_only:
            self._send({"stop": True, "first_step_only": True})
        self._process.stdin.close()
        result = json.loads(self._expect(RESULT_PREFIX))
        self._process.wait(timeout=self.timeout)
        end(self._process)
        self._stderr.close()
        return result

    def kill(self) -> None:
        """Stops the process (after a failure elsewhere, or a signal)."""
        end(self._process)
        if not self._stderr.closed:
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
    peers those of `arch.PEER_MODELS`: the multi-view study model only in Keras)."""
    kind = FRAMEWORKS[framework]["kind"]
    if kind == "murajax":
        return True
    return workload.config().model.name in PEER_MODELS[kind]


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


def is_murajax(framework: str) -> bool:
    """Whether `framework` is murajax itself (measured in full), not a peer (budgeted)."""
    return FRAMEWORKS[framework]["kind"] == "murajax"


class _Measurement:
    """One framework's process in a row (`TurnTaker`), the seconds the runner has waited on
    it (`spent_s`: its start, first step, warm-up and turns) and, for a peer, its budget
    (`schedule.peer_budget`), within which it takes the steps that fit."""

    def __init__(
        self,
        framework: str,
        workload: Workload,
        dtype: str,
        timing: schedule.Timing,
        timeout: float,
    ) -> None:
        self.framework, self.workload, self.dtype = framework, workload, dtype
        self.timing, self.timeout = timing, timeout
        self.label = _label(framework, workload, dtype)
        self.row = _base_row(framework, workload, dtype)
        self.taker: TurnTaker | None = None
        self.budget: schedule.Budget | None = None
        self.spent_s = 0.0
        self.compile_s: float | None = None
        self.step_times: list[float] = []  # every step after the first (warm-up included)
        self.warmup = self.timed = self.turns = 0
        self.cut = False

    @property
    def alive(self) -> bool:
        """Whether its process is running and has taken its first step."""
        return self.taker is not None and self.compile_s is not None

    def left_s(self) -> float:
        """Seconds left of its budget (infinite without one)."""
        return math.inf if self.budget is None else self.budget.seconds - self.spent_s

    def step_estimate_s(self) -> float:
        """Its step's seconds so far: the median of the steps after the first, else the
        first step's (compile included: an upper bound)."""
        if self.step_times:
            return statistics.median(self.step_times)
        return self.compile_s or 0.0

    def planned_s(self, rounds_left: int) -> float:
        """Its seconds in the row once it has taken `rounds_left` more full turns (none once
        its process has ended)."""
        if not self.alive:
            return self.spent_s
        return self.spent_s + self.timing.turns_s(self.step_estimate_s(), rounds_left)

    def committed_s(self, rounds_left: int) -> float:
        """Its seconds in the row so far and to come: a peer's whole budget while it runs,
        murajax's planned turns."""
        if self.alive and self.budget is not None:
            return max(self.budget.seconds, self.spent_s)
        return self.planned_s(rounds_left)

    def _waiting(self, call: Callable[[], Any]) -> Any:
        start = time.monotonic()
        try:
            return call()
        finally:
            self.spent_s += time.monotonic() - start

    def _failed(self, error: WorkerError) -> None:
        self.row.update(images_per_s=None, error=str(error))
        log(f"{self.label}: FAILED: {error}")
        self.kill()

    def start(self, progress: str | None = None) -> None:
        """Starts its process and waits for the first step (within the budget), then takes
        the warm-up steps that fit. A failure or a budget overrun is in its row. `progress`
        ('3/12'): it runs alone, the row's `progress`-th of the run."""
        budget = f" (budget {self.budget.seconds:.0f} s: {self.budget.why})" if self.budget else ""
        if self.budget is not None and self.budget.skip:
            self.row.update(
                images_per_s=None,
                cut_short=True,
                note=f"not measured: the run's time limit left it {self.budget.seconds:.0f} s",
            )
            log(f"{self.label}: skipped: {self.budget.seconds:.0f} s left it by the time limit")
            return
        if progress:
            log(f"{progress} {self.label}{budget} ...")
        else:
            log(f"{self.label}: compiling and warming up{budget} ...")
        job = train_step_job(
            self.framework,
            self.workload,
            self.dtype,
            self.timing.turn_seconds,
            self.timing.turn_steps,
            self.timing.warmup_steps,
        )
        wait = min(self.timeout, self.left_s())
        if self.budget is not None:
            job["deadline"] = time.time() + self.left_s()  # its warm-up steps fit before it
        try:
            self.taker = self._waiting(lambda: TurnTaker(job, self.timeout))
            self.compile_s, warmup_s = self._waiting(lambda: self.taker.wait_ready(wait))
        except TimedOut as e:
            if wait >= self.timeout:
                self._failed(e)
                return
            self.kill()
            self.row.update(images_per_s=None)
            self._note()
            log(f"{self.label}: stopped: not ready within its {wait:.0f} s budget")
            return
        except WorkerError as e:
            self._failed(e)
            return
        self.step_times += warmup_s
        self.warmup = len(warmup_s)

    def take_turn(self, rounds_left: int) -> float | None:
        """Times its stretch of this round (the planned turn, or what fits its budget);
        images/s of the stretch, or None when it took no turn (or failed)."""
        if not self.alive:
            return None
        if self.budget is None:
            turn = schedule.Turn(self.timing.turn_seconds, self.timing.turn_steps)
        else:
            turn = schedule.next_turn(
                self.left_s(),
                self.step_estimate_s(),
                rounds_left,
                self.timing,
                known=bool(self.step_times),
            )
        if turn is None:
            self.cut = True
            return None
        self.cut |= turn.cut
        try:
            times = self._waiting(lambda: self.taker.stretch(turn))
        except WorkerError as e:
            self._failed(e)
            return None
        self.step_times += times
        self.timed += len(times)
        self.turns += 1
        return self.workload.images_per_step / statistics.median(times)

    def finish(self) -> dict[str, Any]:
        """Ends its process; its row (with a note when its budget cut it short)."""
        if self.alive:
            try:
                self.row.update(self._waiting(lambda: self.taker.finish(self.timed == 0)))
            except WorkerError as e:
                self._failed(e)
            self.taker = None
        self.row["rounds"] = self.timing.rounds
        self.row["spent_s"] = round(self.spent_s, 1)
        if self.budget is not None:
            self.row["budget_s"] = self.budget.seconds
            self._note()
        return self.row

    def _note(self) -> None:
        if self.budget is None or self.row.get("error") or self.row.get("note"):
            return
        note = schedule.cut_note(
            self.budget,
            first_step=self.compile_s is not None,
            warmup_steps=self.warmup,
            warmup_wanted=max(0, self.timing.warmup_steps - 1),
            timed_steps=self.timed,
            turns=self.turns,
            rounds=self.timing.rounds,
            cut=self.cut,
        )
        if note:
            self.row["cut_short"] = True
            self.row["note"] = note

    def kill(self) -> None:
        """Stops its process, if it runs."""
        if self.taker is not None:
            self.taker.kill()
            self.taker = None


@dataclasses.dataclass(frozen=True)
class Budgets:
    """How the peers' budgets are set (`schedule.peer_budget`): `cap_s` and `floor_s`, and
    the run's time limit over its rows (`clock`, None: no limit)."""

    cap_s: float = math.inf
    floor_s: float = 0.0
    clock: schedule.RunClock | None = None


def _murajax_reference_s(measurements: Sequence[_Measurement], rounds_left: int) -> float | None:
    """The slowest of the row's murajax processes that took a first step: its seconds so far
    plus its planned turns (`rounds_left` of them while it runs); None if there is none."""
    times = [
        m.planned_s(rounds_left)
        for m in measurements
        if is_murajax(m.framework) and m.compile_s is not None
    ]
    return max(times) if times else None


def _measure_row(
    frameworks_: Sequence[str],
    workload: Workload,
    dtype: str,
    timing: schedule.Timing,
    *,
    together: bool,
    budgets: Budgets | None,
    share_s: float | None,
    timeout: float,
    on_row: Callable[[dict[str, Any]], None],
    first: int = 1,
    total: int | None = None,
) -> None:
    """Measures one (workload, dtype), calling `on_row` with each framework's row.
    `together`: every framework's process takes its first step and warm-up (one at a time,
    the others waiting), then in each of `timing.rounds` rounds each times a stretch, in an
    order that rotates every round; else one process after another, all its turns in a row.
    murajax's processes come first and take every planned step; each peer's gets a budget
    when it starts (`schedule.peer_budget` with `budgets`, None: no budget; `share_s`: the
    row's share of the run's time limit, None: no limit) and takes the steps that fit.
    `first` and `total`: the row's first framework's place among the run's `total` (for
    progress lines)."""
    measurements = [_Measurement(f, workload, dtype, timing, timeout) for f in frameworks_]
    rounds_left = timing.rounds if together else 0  # when the peers start

    def start(index: int, progress: str | None = None) -> None:
        m = measurements[index]
        if budgets is not None and not is_murajax(m.framework):
            earlier, later = measurements[:index], measurements[index:]
            committed = sum(o.committed_s(rounds_left) for o in earlier)
            m.budget = schedule.peer_budget(
                cap_s=budgets.cap_s,
                floor_s=schedule.model_floor_s(workload.model, budgets.floor_s),
                murajax_s=_murajax_reference_s(earlier, rounds_left),
                share_left_s=None if share_s is None else share_s - committed,
                peers_left=sum(1 for o in later if not is_murajax(o.framework)),
            )
        m.start(progress)

    def take_rounds(group: Sequence[_Measurement]) -> None:
        for r in range(timing.rounds):
            order = [m for m in group if m.alive]
            order = order[r % len(order) :] + order[: r % len(order)] if order else []
            speeds = []
            for m in order:
                speed = m.take_turn(timing.rounds - r)
                speeds.append(f"{m.framework} {'-' if speed is None else f'{speed:.1f}'}")
            if together:
                log(f"round {r + 1}/{timing.rounds} (images/s): {', '.join(speeds)}")

    try:
        if together:
            for index in range(len(measurements)):
                start(index)
            take_rounds(measurements)
            for m in measurements:
                on_row(m.finish())
        else:
            for index, m in enumerate(measurements):
                start(index, f"{first + index}/{total or len(measurements)}")
                take_rounds([m])
                on_row(m.finish())
    finally:
        for m in measurements:
            m.kill()


def _log_row(row: dict[str, Any]) -> None:
    """A row's one progress line."""
    name = (
        f"{row['framework']} {row['model']}@{row['image_size']} b{row['batch_size']} {row['dtype']}"
    )
    if row.get("images_per_s"):
        line = (
            f"{name}: {row['images_per_s']:.1f} images/s (step {row['step_s']:.3f} s, first "
            f"step {row['compile_s']:.1f} s, {row['steps']} timed steps; "
            f"{row['spent_s']:.0f} s in all)"
        )
    elif row.get("error"):
        line = f"{name}: FAILED: {row['error']}"
    else:
        line = f"{name}: not measured"
    if row.get("note"):
        line = f"{line}; {row['note']}" if row.get("images_per_s") else f"{name}: {row['note']}"
    log(line)


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
    budgets: Budgets | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Train-step rows of every (workload, dtype), measured by each of `chosen` frameworks
    that has the model, in `rounds` interleaved rounds (`_measure_row`: all the row's
    processes are alive at once), or with `rounds=1` one process after another. The peers'
    processes take the steps that fit their budgets (`budgets`; None: every step), with a
    `note` in their row when cut short.

    A failed measurement gives a row with `images_per_s` None and its `error`; `on_row` is
    called with each row as it comes.
    """
    timing = schedule.Timing(rounds, min_seconds, min_steps, warmup_steps)
    groups = [
        (workload, dtype, [f for f in chosen if has_peer(f, workload)])
        for workload in selected
        for dtype in dtypes
    ]
    total = sum(len(group) for _, _, group in groups)
    rows: list[dict[str, Any]] = []
    for index, (workload, dtype, group) in enumerate(groups):
        together = rounds > 1 and len(group) > 1
        clock = budgets.clock if budgets is not None else None
        share = clock.share_s(index) if clock is not None else None
        first = len(rows) + 1
        log(
            f"{first}-{first + len(group) - 1}/{total}: {workload.model}@{workload.image_size} "
            f"b{workload.batch_size} {dtype}"
            + (f", {rounds} rounds" if together else "")
            + (f" (share of the time limit: {share:.0f} s)" if share is not None else "")
            + " ..."
        )

        def emit(row: dict[str, Any]) -> None:
            _log_row(row)
            row["min_seconds"] = min_seconds
            rows.append(row)
            if on_row is not None:
                on_row(row)

        _measure_row(
            group,
            workload,
            dtype,
            timing,
            together=together,
            budgets=budgets,
            share_s=share,
            timeout=timeout,
            on_row=emit,
            first=first,
            total=total,
        )
        if clock is not None:
            log(clock.progress(index + 1))
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
        "malloc": allocator.malloc_in_use(),
    }
