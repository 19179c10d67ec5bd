"""The hardening check of issue 19: murajax given bad inputs, as a user gives them.

    .venv/bin/python tests/hardening_check.py [--only=NAME,...] [--list]     (or `make hardening`)

Kept apart from the pytest suite (its name does not start with `test_`, so pytest does not
collect it): each probe runs the real commands (`python -m experiments.main`, `evaluate`,
`predict`, `results`, `benchmark`) or a small Python snippet against the library, in a fresh
process with a timeout and a memory cap, on tiny configs (`quickstart.py:smoke` on
`mura_synthetic/tiny`) in temporary folders. There is one probe (or a few) per numbered
finding of issue 19 (`1_...` to `15_...`) and more for other bad inputs. The oneDNN probes
also run under `ONEDNN_MAX_CPU_ISA=AVX2` (`...@avx2`), the instruction set of a common cloud
CPU, where bfloat16 has no oneDNN kernels and must fall back to XLA with one warning.

A probe passes when murajax behaves as the issue requires: a user mistake is one `error:`
line and exit status 2 with nothing saved lost; native code gives XLA's answer (or a Python
or FFI error naming the shapes); a fallback says so in one warning. A traceback, a death by
a signal (SIGSEGV, SIGFPE, SIGABRT), a hang (the timeout) or memory past the cap fails it.
Prints one line per probe, `PASS name: what was tried -> what happened` or `FAIL name: ...
(expected ...)`, then a summary; exits 0 only if every probe selected passed.
"""

import argparse
import contextlib
import dataclasses
import fnmatch
import functools
import hashlib
import http.server
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
QUICKSTART = "experiments/configs/quickstart.py"
VGG16 = "experiments/configs/vgg16.py"
RESULT_MARK = "HARDENING-RESULT:"
FALLBACK = "using XLA's CPU convolution"
RSS_CAP_MB = 4096  # a probe's process is killed past this (a shared machine's memory)
IMPLS = ("auto", "onednn", "onednn-direct")

Result = tuple[bool, str]


# --------------------------------------------------------------------------- processes


@dataclasses.dataclass
class Outcome:
    """How a probe's process ended."""

    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    max_rss_mb: float
    timed_out: bool = False
    over_memory: bool = False


def _rss_mb(pid: int) -> float:
    """The resident memory of process `pid` now (Linux's /proc), 0 if unknown."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    return 0.0


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def run(args: Sequence[str], env: dict[str, str], timeout: float = 300) -> Outcome:
    """Runs `args` in the repository root in a session of its own (a timeout or the memory cap
    kills it and whatever it started); its output captured, its peak memory measured."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.monotonic()
        process = subprocess.Popen(
            list(args), cwd=ROOT, env=env, stdout=out, stderr=err, start_new_session=True
        )
        timed_out = over_memory = False
        peak = 0.0
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, _rss_mb(process.pid))
            if time.monotonic() - start > timeout:
                timed_out = True
                _kill_group(process.pid)
            elif peak > RSS_CAP_MB:
                over_memory = True
                _kill_group(process.pid)
            time.sleep(0.05)
        process.returncode = os.waitstatus_to_exitcode(status)
        _kill_group(process.pid)  # anything it left behind
        out.seek(0)
        err.seek(0)
        return Outcome(
            returncode=process.returncode,
            stdout=out.read(),
            stderr=err.read(),
            seconds=time.monotonic() - start,
            max_rss_mb=max(peak, usage.ru_maxrss / 1024),
            timed_out=timed_out,
            over_memory=over_memory,
        )


def error_lines(outcome: Outcome) -> list[str]:
    """The lines of stderr that start with `error:`."""
    return [line for line in outcome.stderr.splitlines() if line.startswith("error:")]


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def exception_line(stderr: str) -> str:
    """The last `SomeError: message` line of a traceback (JAX's notes after it skipped)."""
    found = re.findall(r"^[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)\b.*$", stderr, re.M)
    return found[-1] if found else last_line(stderr)


def shorten(text: str, limit: int = 220) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def how_it_ended(outcome: Outcome) -> str:
    """'exit 2: error: ...', 'killed by SIGSEGV', 'a traceback ending ...', 'timed out ...'."""
    if outcome.timed_out:
        return f"still running after {outcome.seconds:.0f} s (a hang): killed"
    if outcome.over_memory:
        return f"killed at {outcome.max_rss_mb:.0f} MB resident (the cap is {RSS_CAP_MB} MB)"
    code = outcome.returncode
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"
    if "Traceback (most recent call last)" in outcome.stderr:
        return f"exit {code} with a traceback: {shorten(exception_line(outcome.stderr))!r}"
    errors = error_lines(outcome)
    return f"exit {code}" + (f": {shorten(errors[-1])}" if errors else "")


def crashed(outcome: Outcome) -> bool:
    """A hang, a signal, the memory cap or a traceback: what no probe accepts."""
    return (
        outcome.timed_out
        or outcome.over_memory
        or (outcome.returncode or 0) < 0
        or "Traceback (most recent call last)" in outcome.stderr
    )


def user_error(outcome: Outcome, *needles: str, status: int = 2) -> Result:
    """Passes when the command failed as a user mistake must: exit `status`, one `error:` line
    (the last line of stderr) holding each of `needles`, no traceback."""
    errors = error_lines(outcome)
    ok = (
        not crashed(outcome)
        and outcome.returncode == status
        and len(errors) == 1
        and last_line(outcome.stderr) == errors[0]
        and all(needle in errors[0] for needle in needles)
    )
    return ok, how_it_ended(outcome)


def succeeded(outcome: Outcome) -> Result:
    """Passes when the command finished with status 0 and no traceback."""
    return outcome.returncode == 0 and not crashed(outcome), how_it_ended(outcome)


def all_of(*results: Result) -> Result:
    """Passes when each of `results` does; the detail of the first that fails, else all."""
    for ok, detail in results:
        if not ok:
            return False, detail
    return True, "; ".join(detail for _, detail in results)


def each(results: Sequence[Result], what: str) -> Result:
    """Passes when each of `results` does (a few commands tried alike): the first failure's
    detail, else `what` and the first one's detail as an example."""
    for ok, detail in results:
        if not ok:
            return False, detail
    return True, f"{what}, e.g. {results[0][1]}"


def excerpt(text: str, needle: str, width: int = 70) -> str:
    """The part of `text` around `needle` ('...' where cut)."""
    at = text.find(needle)
    if at < 0:
        return shorten(text)
    start, end = max(0, at - width), at + len(needle) + width
    return ("..." if start else "") + text[start:end] + ("..." if end < len(text) else "")


# --------------------------------------------------------------------------- files


def snapshot(folder: Path) -> dict[str, str]:
    """Every file and folder under `folder`: relative path -> sha256 of its bytes ('' for a
    folder), to tell that a command changed nothing."""
    found = {}
    for path in sorted(folder.rglob("*")):
        name = str(path.relative_to(folder))
        found[name] = "" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """The paths added, removed or changed between two `snapshot`s."""
    return sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))


def gray_png(path: Path, size: tuple[int, int] = (40, 30), level: int = 120) -> Path:
    """A small 8-bit grayscale PNG."""
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size, level, np.uint8)).save(path)
    return path


def png_header_only(width: int, height: int, bit_depth: int = 16) -> bytes:
    """A grayscale PNG that declares width x height pixels and holds one row of them."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    row = b"\x00" + bytes(width * bit_depth // 8)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row, 9))
        + chunk(b"IEND", b"")
    )


# VGG16's 3x3 convolutions as Keras names them: (layer, input channels, output channels).
VGG16_CONVS = [
    ("block1_conv1", 3, 64),
    ("block1_conv2", 64, 64),
    ("block2_conv1", 64, 128),
    ("block2_conv2", 128, 128),
    *((f"block3_conv{i}", 128 if i == 1 else 256, 256) for i in (1, 2, 3)),
    *((f"block4_conv{i}", 256 if i == 1 else 512, 512) for i in (1, 2, 3)),
    *((f"block5_conv{i}", 512, 512) for i in (1, 2, 3)),
]


def vgg16_h5(path: Path, make_first_layer: Callable) -> Path:
    """A legacy Keras `.h5` weights file of VGG16's backbone (`include_top=False`), every
    weight the right shape and zero (chunks never written: a few KB on disk), but for the
    first layer's `kernel:0` and `bias:0`, which `make_first_layer(group)` creates."""
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [name.encode() for name, _, _ in VGG16_CONVS]
        for name, inputs, outputs in VGG16_CONVS:
            layer = f.create_group(name)
            layer.attrs["weight_names"] = [f"{name}/kernel:0".encode(), f"{name}/bias:0".encode()]
            group = layer.create_group(name)
            if name == VGG16_CONVS[0][0]:
                make_first_layer(group)
                continue
            shape = (3, 3, inputs, outputs)
            group.create_dataset("kernel:0", shape=shape, dtype="f4", chunks=shape)
            group.create_dataset("bias:0", shape=(outputs,), dtype="f4", chunks=(outputs,))
    return path


def cpu_flags() -> set[str]:
    """The flags of /proc/cpuinfo."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def has_avx512_core() -> bool:
    """Whether oneDNN 3.2 has bfloat16 convolutions on this CPU (AVX-512 F, BW, VL, DQ)."""
    return {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= cpu_flags()


# --------------------------------------------------------------------------- shared set-up


class Context:
    """What the probes share: a temporary folder, the environment of their commands (murajax's
    cache and a compilation cache in it), TFDS data in it and, built once on demand, a
    trained smoke workdir that probes copy before they touch it."""

    def __init__(self, root: Path):
        self.root = root
        self.data_dir = root / "tfds"
        env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
        env.update(
            MURAJAX_CACHE=str(root / "murajax_cache"),
            MURAJAX_COMPILATION_CACHE=str(root / "jax_compilation_cache"),
            NO_PROXY="127.0.0.1,localhost",
            no_proxy="127.0.0.1,localhost",
        )
        self.env = env
        self._trained: Path | None = None
        self._trained_failure: str | None = None
        self._count = 0

    def folder(self, name: str) -> Path:
        """A new empty folder for one probe."""
        self._count += 1
        path = self.root / f"{self._count:03d}_{name}"
        path.mkdir()
        return path

    def environment(self, **changes: str | None) -> dict[str, str]:
        """The commands' environment with `changes` (None removes a variable)."""
        env = dict(self.env)
        for name, value in changes.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        return env

    def smoke(self, config: str = QUICKSTART) -> list[str]:
        """The flags of a smoke run: `config:smoke` on mura_synthetic/tiny in our data_dir."""
        return [
            f"--config={config}:smoke",
            f"--config.data.data_dir={self.data_dir}",
            "--config.train.progress=false",
        ]

    def main(self, workdir: Path, *flags: str, timeout: float = 400, **env: str) -> Outcome:
        """`python -m experiments.main` of the quickstart smoke config into `workdir`."""
        args = [PYTHON, "-m", "experiments.main", *self.smoke(), f"--workdir={workdir}", *flags]
        return run(args, self.environment(**env), timeout)

    def command(self, module: str, *flags: str, timeout: float = 300, **env: str) -> Outcome:
        """`python -m experiments.<module> flags...`."""
        return run(
            [PYTHON, "-m", f"experiments.{module}", *flags], self.environment(**env), timeout
        )

    def python(self, code: str, timeout: float = 300, **env: str | None) -> Outcome:
        """`python -c code` in the repository root."""
        return run([PYTHON, "-c", textwrap.dedent(code)], self.environment(**env), timeout)

    def trained_copy(self, name: str) -> Path:
        """A copy of a finished smoke run (20 steps, checkpoints 10 and 20, evaluated),
        trained the first time it is asked for. Raises RuntimeError if training failed."""
        if self._trained is None and self._trained_failure is None:
            workdir = self.root / "trained"
            outcome = self.main(workdir)
            if outcome.returncode == 0 and not crashed(outcome):
                self._trained = workdir
            else:
                self._trained_failure = how_it_ended(outcome)
        if self._trained is None:
            raise RuntimeError(f"training the shared smoke workdir failed: {self._trained_failure}")
        copy = self.folder(name) / "workdir"
        shutil.copytree(self._trained, copy)
        return copy


# --------------------------------------------------------------------------- oneDNN snippets

SNIPPET_PRELUDE = f"""
import json, warnings
import jax, jax.numpy as jnp, numpy as np
from murajax import ops
warnings.simplefilter("always")
_caught = []
warnings.showwarning = lambda message, *args, **kwargs: _caught.append(str(message))
failures = []
IMPLS = {IMPLS!r}

def check(ok, what):
    if not ok:
        failures.append(what)

def done(**extra):
    fallbacks = [w for w in _caught if {FALLBACK!r} in w]
    print({RESULT_MARK!r} + json.dumps(dict(failures=failures, fallbacks=fallbacks, **extra)))
"""
ONEDNN_LOADS = """
check(ops.onednn_status() is None, f"the oneDNN extension does not load: {ops.onednn_status()}")
"""


def onednn_env(isa: str | None) -> dict[str, str | None]:
    """`ONEDNN_MAX_CPU_ISA` for a probe: the CPU's own (None) or a cap such as 'AVX2'."""
    return {"ONEDNN_MAX_CPU_ISA": isa}


def snippet_result(outcome: Outcome) -> dict | None:
    """The JSON the snippet's `done()` printed, or None."""
    for line in outcome.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            return json.loads(line.removeprefix(RESULT_MARK))
    return None


def fallbacks_as_expected(fallbacks: list[str], isa: str | None, bfloat16: bool | None) -> Result:
    """Where oneDNN has no bfloat16 kernels (AVX2, or a CPU without AVX-512) and bfloat16
    convolutions ran (`bfloat16`), one warning naming bfloat16; else none. `bfloat16=None`:
    bfloat16 arrays that may never reach a convolution (empty, refused): none, or that one."""
    shown = f"fallback warnings: {[shorten(w, 120) for w in fallbacks]}"
    lacks_bfloat16 = isa == "AVX2" or not has_avx512_core()
    one_naming_bfloat16 = len(fallbacks) == 1 and "bfloat16" in fallbacks[0]
    if bfloat16 is None:
        return not fallbacks or (lacks_bfloat16 and one_naming_bfloat16), shown
    if bfloat16 and lacks_bfloat16:
        return one_naming_bfloat16, shown
    return not fallbacks, shown


def onednn_snippet(
    ctx: Context,
    isa: str | None,
    code: str,
    *,
    bfloat16: bool | None,
    timeout: float = 300,
    **env: str,
) -> tuple[Result, dict | None]:
    """Runs `SNIPPET_PRELUDE + code` under `isa`: fails on a crash, a missing result or any
    `check` that failed; then the fallback warnings must be as expected. Returns the verdict
    and the snippet's result (for probe-specific checks)."""
    code = SNIPPET_PRELUDE + ONEDNN_LOADS + textwrap.dedent(code)
    outcome = ctx.python(code, timeout, **onednn_env(isa), **env)
    result = snippet_result(outcome)
    if crashed(outcome) or outcome.returncode != 0 or result is None:
        return (False, how_it_ended(outcome)), result
    if result["failures"]:
        shown = "; ".join(shorten(f, 160) for f in result["failures"][:3])
        return (False, f"{len(result['failures'])} wrong: {shown}"), result
    return fallbacks_as_expected(result["fallbacks"], isa, bfloat16), result


# --------------------------------------------------------------------------- 1: bfloat16


def short_run(*extra: str) -> list[str]:
    """Flags of a 4-step smoke run (one checkpoint, one holdout evaluation)."""
    return [
        "--config.train.steps=4",
        "--config.train.log_every=2",
        "--config.train.eval_every=4",
        "--config.train.checkpoint_every=4",
        *extra,
    ]


def bfloat16_training(ctx: Context, isa: str | None) -> Result:
    workdir = ctx.folder("bfloat16") / "run"
    outcome = ctx.main(workdir, *short_run("--config.model.dtype=bfloat16"), **onednn_env(isa))
    warnings = [line for line in outcome.stderr.splitlines() if FALLBACK in line]
    trained = (workdir / "eval" / "validation" / "metrics.json").is_file()
    return all_of(
        succeeded(outcome),
        (trained, "evaluated" if trained else "no eval/validation/metrics.json"),
        fallbacks_as_expected(warnings, isa, bfloat16=True),
    )


def bfloat16_benchmark_row(ctx: Context) -> Result:
    out = ctx.folder("bench_bf16") / "bench.json"
    outcome = ctx.command(
        "benchmark",
        "--models=C",
        "--image_size=16",
        "--batch_size=4",
        "--only=murajax",
        "--dtypes=bfloat16",
        "--min_seconds=0.5",
        "--min_steps=2",
        "--rounds=1",
        "--warmup_steps=1",
        "--matmul_size=128",
        "--nopipeline",
        "--nodata_parallel",
        f"--json={out}",
        **onednn_env("AVX2"),
    )
    ok, detail = succeeded(outcome)
    if not ok:
        return ok, detail
    rows = json.loads(out.read_text())["train_step"] if out.is_file() else []
    speeds = [row.get("images_per_s") for row in rows]
    ok = "FAILED" not in outcome.stderr and len(rows) == 1 and (speeds[0] or 0) > 0
    return ok, f"bfloat16 row: {speeds} images/s" + (
        ", FAILED" if "FAILED" in outcome.stderr else ""
    )


# --------------------------------------------------------------------------- 2-7: the extension

EMPTY_ARRAYS = """
def loss(x, k, b, impl, pooled):
    if pooled:
        y = ops.conv2d_relu_max_pool(x, k, b, impl=impl)
    else:
        y = ops.conv2d(x, k, b, relu=True, impl=impl)
    return jnp.sum(y.astype(jnp.float32))

cases = 0
for dtype in (jnp.float32, jnp.bfloat16):
    for shape in [(0, 8, 8, 64), (2, 0, 8, 64), (2, 8, 0, 64)]:
        x = jnp.ones(shape, dtype)
        k = jnp.full((3, 3, 64, 64), 0.01, dtype)
        b = jnp.ones((64,), dtype)
        for pooled in (False, True):
            want = jax.grad(loss, argnums=(0, 1, 2))(x, k, b, "xla", pooled)
            for impl in IMPLS:
                got = jax.grad(loss, argnums=(0, 1, 2))(x, k, b, impl, pooled)
                cases += 1
                same = all(
                    g.shape == w.shape
                    and np.array_equal(np.asarray(g, np.float32), np.asarray(w, np.float32))
                    for g, w in zip(got, want)
                )
                check(same, f"{jnp.dtype(dtype).name} {shape} pooled={pooled} {impl}: not XLA's")
done(cases=cases)
"""


def empty_batches(ctx: Context, isa: str | None) -> Result:
    (ok, detail), result = onednn_snippet(ctx, isa, EMPTY_ARRAYS, bfloat16=None)
    return ok, f"{result and result.get('cases')} gradients as XLA's; {detail}" if ok else detail


FAILED_ALLOCATION = """
import resource

def pooled(x, w):
    return ops.conv2d_relu_max_pool(x, w, impl="onednn")

small = jax.jit(pooled)
small_x, small_w = jnp.ones((1, 16, 16, 1)), jnp.full((3, 3, 1, 64), 0.1)
expected = np.asarray(small(small_x, small_w))
# The convolution's 1 GiB full-size output is the extension's own buffer.
big_x, big_w = jnp.ones((1, 256, 256, 1)), jnp.full((3, 3, 1, 4096), 0.1)
big = jax.jit(pooled).lower(big_x, big_w).compile()
size = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + (700 << 20), resource.RLIM_INFINITY))
message = None
try:
    big(big_x, big_w).block_until_ready()
except Exception as e:
    message = str(e).splitlines()[0]
check(message is not None and "out of host memory" in message, f"the big call: {message}")
again = np.asarray(small(small_x, small_w))
check(np.array_equal(again, expected), "the smaller call after it is not what it was before")
done(message=message)
"""


def failed_allocation(ctx: Context, isa: str | None) -> Result:
    (ok, detail), result = onednn_snippet(ctx, isa, FAILED_ALLOCATION, bfloat16=False)
    if ok:
        return ok, f"{shorten(result['message'], 100)!r}, then the smaller call as before"
    return ok, detail


SHAPE_CHECKS = """
from jax import lax

for dtype in (jnp.float32, jnp.bfloat16):
    x, k = jnp.ones((1, 8, 8, 128), dtype), jnp.ones((3, 3, 64, 64), dtype)
    for op in (ops.conv2d, ops.conv2d_relu_max_pool):
        for impl in IMPLS:
            try:
                y = jax.block_until_ready(op(x, k, impl=impl))
                check(False, f"{op.__name__} {impl}: 64-channel kernel, 128 channels: numbers")
            except ValueError as e:
                named = "(1, 8, 8, 128)" in str(e) and "(3, 3, 64, 64)" in str(e)
                check(named, f"{op.__name__} {impl}: the error names no shapes: {e}")

rng = np.random.default_rng(0)
x = jnp.asarray(rng.standard_normal((1, 8, 8, 8)), jnp.float32)
k = jnp.asarray(rng.standard_normal((3, 3, 8, 70)), jnp.float32)
for op in (ops.conv2d, ops.conv2d_relu_max_pool):
    want = np.asarray(op(x, k, jnp.full((70,), 0.5), impl="xla"))
    for impl in IMPLS:
        try:
            got = np.asarray(op(x, k, jnp.asarray([0.5]), impl=impl))
            check(np.allclose(got, want, rtol=1e-5, atol=1e-5), f"{op.__name__} {impl}: (1,) bias")
        except ValueError as e:
            check("(1,)" in str(e), f"{op.__name__} {impl}: (1,) bias refused unnamed: {e}")

# The handler itself, past conv2d's checks: an FFI error, never an out-of-bounds read.
call = jax.ffi.ffi_call("murajax_onednn_conv_fwd", jax.ShapeDtypeStruct((1, 8, 8, 64), jnp.float32))
attributes = dict(winograd=True, stride_h=np.int64(1), stride_w=np.int64(1), pad_top=np.int64(1),
                  pad_bottom=np.int64(1), pad_left=np.int64(1), pad_right=np.int64(1))
try:
    jax.block_until_ready(call(jnp.ones((1, 8, 8, 128)), jnp.ones((3, 3, 64, 64)), jnp.ones((64,)),
                               **attributes, has_bias=True, relu=False))
    check(False, "the FFI handler computed a 64-channel kernel on 128 channels")
except jax.errors.JaxRuntimeError as e:
    check("do not fit together" in str(e), f"the FFI handler's error: {str(e).splitlines()[0]}")
done()
"""


def shape_checks(ctx: Context, isa: str | None) -> Result:
    (ok, detail), _ = onednn_snippet(ctx, isa, SHAPE_CHECKS, bfloat16=None)
    return (
        ok,
        "ValueError naming the shapes, (1,) bias broadcast, FFI error; " + detail if ok else detail,
    )


NAN_PROPAGATION = """
def same_non_finite(got, want):
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    return (got.shape == want.shape and np.array_equal(np.isnan(got), np.isnan(want))
            and np.array_equal(np.isposinf(got), np.isposinf(want))
            and np.array_equal(np.isneginf(got), np.isneginf(want)))

layers = {
    "conv2d": lambda x, k, b, impl: ops.conv2d(x, k, b, impl=impl),
    "conv2d+relu": lambda x, k, b, impl: ops.conv2d(x, k, b, relu=True, impl=impl),
    "conv2d_relu_max_pool": lambda x, k, b, impl: ops.conv2d_relu_max_pool(x, k, b, impl=impl),
}
rng = np.random.default_rng(0)
cases = 0
for dtype in (jnp.float32, jnp.bfloat16):
    for channels in (4, 64):  # a direct convolution, and one Winograd takes in float32
        image = rng.standard_normal((2, 8, 8, channels))
        image[0, 2, 3, 0] = np.nan
        image[1, 5, 5, 1] = np.inf
        nan_only = np.where(np.isinf(image), 0.0, image)
        k = jnp.asarray(rng.standard_normal((3, 3, channels, channels)) / channels, dtype)
        b = jnp.asarray(rng.standard_normal((channels,)), dtype)
        for name, layer in layers.items():
            x = jnp.asarray(image, dtype)
            want = layer(x, k, b, "xla")
            grad = jax.grad(lambda k, impl: jnp.sum(layer(jnp.asarray(nan_only, dtype), k, b, impl)
                                                    .astype(jnp.float32)))
            want_grad = grad(k, "xla")
            for impl in IMPLS:
                cases += 1
                what = f"{jnp.dtype(dtype).name} {channels} channels {name} {impl}"
                check(same_non_finite(layer(x, k, b, impl), want), f"{what}: NaN/inf not XLA's")
                check(same_non_finite(grad(k, impl), want_grad), f"{what}: gradient NaN not XLA's")
done(cases=cases)
"""


def nan_propagation(ctx: Context, isa: str | None) -> Result:
    (ok, detail), result = onednn_snippet(ctx, isa, NAN_PROPAGATION, bfloat16=True)
    if ok:
        return ok, f"{result['cases']} layers: NaN and inf where XLA puts them; {detail}"
    return ok, detail


BROKEN_LIBRARY = """
import warnings
from pathlib import Path
from murajax.ops import onednn

folder = Path({folder!r})
library = folder / onednn.LIBRARY_NAME
mark = onednn.BUILD_ID_MARK + onednn.build_id().encode() + b"\\0"
library.write_bytes(b"\\x7fELF" + bytes(64) + mark)  # a half-copied library
onednn.library_candidates = lambda: [library]
y = ops.conv2d(jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 4, 4)), relu=True)
check(float(y[0, 3, 3, 0]) == 36.0, f"conv2d gave {{float(y[0, 3, 3, 0])}}, not 36")
check(ops.resolve_conv_impl("auto") == "xla", "auto is not XLA with a broken library")
done(status=onednn.onednn_status())
"""


def unloadable_library(ctx: Context) -> Result:
    """An unloadable file that claims this checkout's build id (a half-copied library)."""
    folder = ctx.folder("broken_library")
    code = SNIPPET_PRELUDE + textwrap.dedent(BROKEN_LIBRARY.format(folder=str(folder)))
    outcome = ctx.python(code, 120)
    result = snippet_result(outcome)
    if crashed(outcome) or result is None:
        return False, how_it_ended(outcome)
    one_warning = len(result["fallbacks"]) == 1 and "cannot load" in result["fallbacks"][0]
    ok = not result["failures"] and one_warning
    return ok, f"status {shorten(str(result['status']), 90)!r}; warnings {len(result['fallbacks'])}"


def stale_library_without_compiler(ctx: Context) -> Result:
    """$CXX names no compiler: the built library's build id (which records the compiler) no
    longer matches, and it cannot be rebuilt: a stale library on a machine without a compiler."""
    workdir = ctx.folder("stale_library") / "run"
    outcome = ctx.main(workdir, *short_run(), CXX="no-such-g++")
    warnings = [line for line in outcome.stderr.splitlines() if FALLBACK in line]
    one = len(warnings) == 1 and "stale" in warnings[0]
    return all_of(
        succeeded(outcome),
        (one, f"{len(warnings)} fallback warning(s): {shorten(' | '.join(warnings), 160)}"),
        ("rebuilding" not in outcome.stderr, "no rebuild attempted"),
    )


WINOGRAD_ALLOCATION = """
def pooled(x, w):
    return ops.conv2d_relu_max_pool(x, w, impl="onednn")

def grads(x, w):
    return jax.grad(lambda x, w: jnp.sum(pooled(x, w)), argnums=(0, 1))(x, w)

rng = np.random.default_rng(0)
w = jnp.asarray(rng.standard_normal((3, 3, 64, 64)) / 24, jnp.float32)
small = jnp.asarray(rng.standard_normal((1, 16, 16, 64)), jnp.float32)
expected = [np.asarray(g) for g in jax.jit(grads)(small, w)]
big = jnp.asarray(rng.standard_normal((2, 64, 64, 64)), jnp.float32)
message = None
try:
    jax.block_until_ready(jax.jit(grads)(big, w))
except Exception as e:
    message = str(e).splitlines()[0]
check(message is not None and "out of host memory" in message, f"the big call: {message}")
again = [np.asarray(g) for g in jax.jit(grads)(small, w)]
check(all(np.array_equal(a, b) for a, b in zip(again, expected)), "the smaller call changed")
done(message=message)
"""


def winograd_allocation(ctx: Context, isa: str | None) -> Result:
    """Winograd's buffers (allocated around its OpenMP regions) capped at 1.5 MB by
    `$MURAJAX_ONEDNN_BUFFER_LIMIT`: the failure is an FFI error, not std::terminate."""
    (ok, detail), result = onednn_snippet(
        ctx, isa, WINOGRAD_ALLOCATION, bfloat16=False, MURAJAX_ONEDNN_BUFFER_LIMIT="1500000"
    )
    if ok:
        return ok, f"{shorten(result['message'], 100)!r}, then the smaller call as before"
    return ok, detail


CONCURRENT_CALLS = """
import threading

rng = np.random.default_rng(0)
shapes = [((4, 16, 16, 8), (3, 3, 8, 16)), ((2, 16, 16, 64), (3, 3, 64, 64)),
          ((3, 12, 12, 16), (3, 3, 16, 32)), ((1, 32, 32, 4), (3, 3, 4, 8))]

def step(impl):
    def loss(x, k):
        return jnp.sum(ops.conv2d_relu_max_pool(x, k, impl=impl) ** 2)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))

jobs = []
for x_shape, k_shape in shapes:
    x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
    k = jnp.asarray(rng.standard_normal(k_shape) / 8, jnp.float32)
    jobs.append((x, k, step("onednn"), jax.tree.map(np.asarray, step("xla")(x, k))))

def work(index):
    x, k, f, want = jobs[index % len(jobs)]
    for _ in range(6):
        got = jax.tree.map(np.asarray, f(x, k))
        close = all(np.allclose(g, w, rtol=2e-4, atol=2e-4)
                    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)))
        check(close, f"thread {index}: a result differs from XLA's")

threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
done()
"""


def concurrent_calls(ctx: Context, isa: str | None) -> Result:
    (ok, detail), _ = onednn_snippet(ctx, isa, CONCURRENT_CALLS, bfloat16=False)
    return ok, "8 threads x 6 train steps of 4 shapes equal XLA's; " + detail if ok else detail


OPENMP_RUNTIMES = """
import os, re
from pathlib import Path
from murajax.ops import onednn

jax.block_until_ready(ops.conv2d(jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 8)), impl="onednn"))
maps = open("/proc/self/maps").read()
runtimes = sorted({m for m in re.findall(r"/(lib(?:g|i)?omp[^/\\s]*\\.so[^/\\s]*)", maps)})
check(runtimes and all(r.startswith("libgomp") for r in runtimes), f"OpenMP runtimes: {runtimes}")
os.environ["CXX"] = "clang++"
command = onednn.build_command(Path("x.so"))
# Clang's own OpenMP (-fopenmp) would load libomp beside libgomp: GNU's, or OpenMP SIMD only.
openmp = [flag for flag in command if flag.startswith("-fopenmp")]
check(openmp in (["-fopenmp=libgomp"], ["-fopenmp-simd"]), f"clang++'s OpenMP flags: {openmp}")
done(runtimes=runtimes)
"""


def openmp_runtimes(ctx: Context) -> Result:
    (ok, detail), result = onednn_snippet(ctx, None, OPENMP_RUNTIMES, bfloat16=False)
    if ok:
        return ok, f"loaded {result['runtimes']}; clang++ builds with no second OpenMP runtime"
    return ok, detail


# --------------------------------------------------------------------------- 8: .h5 files


def declared_8_gib_h5(ctx: Context) -> Result:
    folder = ctx.folder("h5_bomb")

    def weights(group):  # chunked and never written: a few KB on disk
        group.create_dataset("kernel:0", shape=(1 << 31,), dtype="f4", chunks=(1 << 16,))
        group.create_dataset("bias:0", shape=(1 << 31,), dtype="f4", chunks=(1 << 16,))

    path = vgg16_h5(folder / "bomb.h5", weights)
    args = [*ctx.smoke(VGG16), f"--workdir={folder / 'run'}", f"--config.model.weights={path}"]
    outcome = ctx.command("main", *args)
    ok, detail = user_error(outcome, str(path), "2147483648")
    if ok:  # the part of the line about the declared size
        detail = f"exit 2: {excerpt(error_lines(outcome)[0], '2147483648')!r}"
    small = outcome.max_rss_mb < 3072
    kilobytes = path.stat().st_size // 1024
    return ok and small, f"{kilobytes} KB file: {detail}; peak {outcome.max_rss_mb:.0f} MB"


def external_storage_h5(ctx: Context) -> Result:
    import numpy as np

    folder = ctx.folder("h5_external")
    raw = folder / "elsewhere.bin"
    raw.write_bytes(np.arange(64, dtype="f4").tobytes())

    def weights(group):
        group.create_dataset("kernel:0", data=np.zeros((3, 3, 3, 64), "f4"))
        group.create_dataset("bias:0", shape=(64,), dtype="f4", external=[(str(raw), 0, 256)])

    path = vgg16_h5(folder / "weights.h5", weights)
    args = [*ctx.smoke(VGG16), f"--workdir={folder / 'run'}", f"--config.model.weights={path}"]
    return user_error(ctx.command("main", *args), str(path), "external")


def not_an_h5_file(ctx: Context) -> Result:
    """A zero-byte `.h5` file, and a folder named like one."""
    folder = ctx.folder("h5_empty")
    empty = folder / "empty.h5"
    empty.touch()
    directory = folder / "folder.h5"
    directory.mkdir()
    results = []
    for path in (empty, directory):
        args = [
            *ctx.smoke(VGG16),
            f"--workdir={folder / path.stem}",
            f"--config.model.weights={path}",
        ]
        results.append(user_error(ctx.command("main", *args), str(path)))
    return each(results, "both refused")


# --------------------------------------------------------------------------- 9: downloads


class _EndlessHandler(http.server.BaseHTTPRequestHandler):
    """Answers any GET with zeros and no Content-Length until the client hangs up (at most
    `limit` bytes), counting what it sent."""

    sent = 0
    limit = 0

    def do_GET(self):  # noqa: N802  (http.server's name)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        chunk = bytes(1 << 16)
        with contextlib.suppress(OSError):
            while type(self).sent < type(self).limit:
                self.wfile.write(chunk)
                type(self).sent += len(chunk)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def endless_server(limit: int) -> Iterator[tuple[str, type[_EndlessHandler]]]:
    """A server on 127.0.0.1 whose every file is endless: (its URL, its handler class)."""
    handler = type("Endless", (_EndlessHandler,), {"sent": 0, "limit": limit})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


VGG16_FILE_SIZE = 58_889_256  # murajax.models.weights_hub.IMAGENET_FILES["vgg16"].size
VGG16_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"


def download_without_length(ctx: Context) -> Result:
    folder = ctx.folder("download")
    cache = folder / "cache"
    args = [*ctx.smoke(VGG16), f"--workdir={folder / 'run'}", "--config.model.weights=imagenet"]
    with endless_server(limit=4 * VGG16_FILE_SIZE) as (url, handler):
        outcome = ctx.command("main", *args, MURAJAX_WEIGHTS_URL=url, MURAJAX_CACHE=str(cache))
        sent = handler.sent
    ok, detail = user_error(outcome, "sent more than")
    left = [p.name for p in (cache / "weights").glob("*") if not p.name.endswith(".lock")]
    capped = sent < VGG16_FILE_SIZE + (32 << 20)  # what it read, plus the sockets' buffers
    return (
        ok and capped and not left,
        f"server sent {sent / 1e6:.0f} MB (file: {VGG16_FILE_SIZE / 1e6:.0f} MB): {detail};"
        f" left in the cache: {left}",
    )


def download_lock_held(ctx: Context) -> Result:
    import fcntl

    folder = ctx.folder("download_lock")
    weights = folder / "cache" / "weights"
    weights.mkdir(parents=True)
    lock = weights / f".{VGG16_FILE}.lock"
    args = [*ctx.smoke(VGG16), f"--workdir={folder / 'run'}", "--config.model.weights=imagenet"]
    with open(lock, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        handle.flush()
        with endless_server(limit=0) as (url, handler):
            outcome = ctx.command(
                "main",
                *args,
                timeout=120,
                MURAJAX_WEIGHTS_URL=url,
                MURAJAX_CACHE=str(folder / "cache"),
                MURAJAX_DOWNLOAD_LOCK_TIMEOUT="2",
            )
            contacted = handler.sent > 0
    ok, detail = user_error(outcome, str(lock), f"pid {os.getpid()}")
    return ok and not contacted, f"{detail} (after {outcome.seconds:.0f} s)"


# --------------------------------------------------------------------------- 10: predict


def predict_bad_files(ctx: Context) -> Result:
    """Files that are not images or are too big, among good ones."""
    workdir = ctx.trained_copy("predict_bad_files")
    inputs = workdir.parent / "in"
    gray_png(inputs / "study1" / "image1.png")
    with open(inputs / "study1" / "image2.png", "wb") as f:
        f.truncate(2 << 30)  # 2 GiB of zeros, sparse on disk: not an image
    (inputs / "study2").mkdir()
    (inputs / "study2" / "image1.png").write_bytes(png_header_only(10_000, 10_000))  # 100 Mpx
    good = gray_png(inputs / "study2" / "image2.png").read_bytes()
    (inputs / "study2" / "image3.png").write_bytes(good[: len(good) // 2])  # truncated
    (inputs / "study2" / "image4.png").touch()  # zero bytes
    gray_png(inputs / "study2" / "image5.png")
    output = workdir.parent / "predictions.csv"
    flags = [f"--workdir={workdir}", f"--input={inputs}", f"--output={output}"]
    outcome = ctx.command("predict", *flags)
    ok, detail = succeeded(outcome)
    bad = ("study1/image2.png", "study2/image1.png", "study2/image3.png", "study2/image4.png")
    warnings = [line for line in outcome.stderr.splitlines() if "skipped" in line]
    skipped = [name for name in bad if any(str(inputs / name) in line for line in warnings)]
    rows = output.read_text().splitlines()[1:] if output.is_file() else []
    small = outcome.max_rss_mb < 1536
    return (
        ok and len(skipped) == 4 and len(rows) == 2 and small,
        f"{detail}; skipped {skipped} with warnings; {len(rows)} studies scored;"
        f" peak {outcome.max_rss_mb:.0f} MB",
    )


def predict_tree(ctx: Context) -> Result:
    """A symlinked study folder, image1.png beside image1.jpg, and the outputs (CSV, heatmaps)
    inside the input tree, predicted twice."""
    workdir = ctx.trained_copy("predict_tree")
    inputs = workdir.parent / "in"
    gray_png(inputs / "study1" / "image1.png")
    from PIL import Image

    Image.open(inputs / "study1" / "image1.png").save(inputs / "study1" / "image1.jpg")
    gray_png(workdir.parent / "elsewhere" / "study2" / "image1.png")
    (inputs / "study2").symlink_to(
        workdir.parent / "elsewhere" / "study2", target_is_directory=True
    )
    output, heatmaps = inputs / "predictions.csv", inputs / "heatmaps"
    flags = [
        f"--workdir={workdir}",
        f"--input={inputs}",
        f"--output={output}",
        f"--heatmaps={heatmaps}",
    ]
    first = ctx.command("predict", *flags)
    first_rows = output.read_text().splitlines() if output.is_file() else []
    second = ctx.command("predict", *flags)
    second_rows = output.read_text().splitlines() if output.is_file() else []
    maps = sorted(p.name for p in heatmaps.rglob("*.png"))
    ok = (
        len(first_rows) == 3  # header + study1 + study2 (through the link)
        and second_rows == first_rows  # the heatmaps and CSV were not scored
        and {"image1.png_gradcam.png", "image1.jpg_gradcam.png"} <= set(maps)
    )
    return all_of(
        succeeded(first),
        succeeded(second),
        (ok, f"studies {len(first_rows) - 1} then {len(second_rows) - 1}; heatmaps {maps}"),
    )


def predict_output_is_a_folder(ctx: Context) -> Result:
    workdir = ctx.trained_copy("predict_output_folder")
    inputs = workdir.parent / "in"
    gray_png(inputs / "study1" / "image1.png")
    output = workdir.parent / "out.csv"
    output.mkdir()
    flags = [f"--workdir={workdir}", f"--input={inputs}", f"--output={output}"]
    return user_error(ctx.command("predict", *flags), str(output))


def predict_nothing_readable(ctx: Context) -> Result:
    workdir = ctx.trained_copy("predict_nothing")
    inputs = workdir.parent / "in" / "study1"
    inputs.mkdir(parents=True)
    (inputs / "image1.png").write_bytes(b"not a png at all")
    (inputs / "._image1.png").write_bytes(b"\x00\x05\x16\x07")
    output = workdir.parent / "out.csv"
    flags = [f"--workdir={workdir}", f"--input={inputs.parent}", f"--output={output}"]
    ok, detail = user_error(ctx.command("predict", *flags))
    return ok and not output.exists(), detail + (
        "" if not output.exists() else "; a CSV was written"
    )


# --------------------------------------------------------------------------- 11: results page

FOREIGN_CONFIG = """
import pathlib
pathlib.Path({marker!r}).touch()  # what any code in a config file could do
from experiments.configs.pretrained import get_config, get_sweep
"""


def results_foreign_config(ctx: Context) -> Result:
    folder = ctx.folder("results")
    marker = folder / "config_ran"
    config = folder / "elsewhere" / "pretrained.py"
    config.parent.mkdir()
    config.write_text(FOREIGN_CONFIG.format(marker=str(marker)))
    sweep = folder / "sweep"
    sweep.mkdir()
    state = {"config": str(config), "runs": [{"name": "seed=0", "overrides": {"seed": 0}}]}
    (sweep / "sweep.json").write_text(json.dumps(state))
    page = folder / "page.md"
    outcome = ctx.command("results", f"--sweeps={sweep}", f"--output={page}", timeout=120)
    ok, detail = user_error(outcome, str(config))
    return ok and not marker.exists() and not page.exists(), (
        f"{detail}; config ran: {marker.exists()}; page written: {page.exists()}"
    )


def readme_says_configs_run(ctx: Context) -> Result:
    del ctx
    text = " ".join((ROOT / "README.md").read_text().split())
    ok = "Python that runs" in text and "trust" in text
    return ok, "README: config files are 'Python that runs' ... 'trust'" if ok else "not found"


# --------------------------------------------------------------------------- 12-14: workdirs


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, seconds: float) -> bool:
    """Polls `condition` until it holds (True), `process` ends or `seconds` pass (False)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def second_writer(ctx: Context) -> Result:
    """A run training (for ever), then a second run and an evaluation on its workdir."""
    workdir = ctx.folder("lock") / "run"
    args = [PYTHON, "-m", "experiments.main", *ctx.smoke(), f"--workdir={workdir}"]
    args.append("--config.train.steps=100000")
    with tempfile.TemporaryFile("w+") as err:
        first = subprocess.Popen(
            args, cwd=ROOT, env=ctx.env, stdout=subprocess.DEVNULL, stderr=err,
            start_new_session=True,
        )  # fmt: skip
        try:
            started = wait_for((workdir / "metrics.jsonl").exists, first, 400)
            if not started:
                err.seek(0)
                return (
                    False,
                    f"the first run did not start training: {shorten(last_line(err.read()))}",
                )
            second = ctx.main(workdir, "--config.train.steps=100000", timeout=120)
            evaluate = ctx.command("evaluate", f"--workdir={workdir}", timeout=120)
            alive = first.poll() is None
            first.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                first.wait(120)
        finally:
            _kill_group(first.pid)
            first.wait()
        err.seek(0)
        first_err = err.read()
    who = f"is in use by pid {first.pid} on host {socket.gethostname()} (experiments.main)"
    checkpoints = sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    stopped = first.returncode == 143 and "Traceback" not in first_err and bool(checkpoints)
    return all_of(
        each([user_error(second, who), user_error(evaluate, who)], "main and evaluate refused"),
        (alive, "the first run went on" if alive else "the first run died meanwhile"),
        (stopped, f"SIGTERM: it exits {first.returncode}, checkpoints {checkpoints[-3:]}"),
    )


def foreign_folder(ctx: Context) -> Result:
    """Someone else's folder (a `config.json` that is not murajax's, notes) as --workdir of
    `main`, `evaluate` and `sweep`."""
    folder = ctx.folder("foreign") / "project"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"name": "my project", "lr": 0.1}) + "\n")
    (folder / "notes.txt").write_text("mine\n")
    before = snapshot(folder)
    results = [
        user_error(ctx.main(folder, timeout=120), "not a murajax"),
        user_error(ctx.command("evaluate", f"--workdir={folder}"), "not a murajax"),
        user_error(
            ctx.command("sweep", "--config=experiments/configs/baseline.py", f"--workdir={folder}"),
            "not a murajax",
        ),
    ]
    touched = changes(before, snapshot(folder))
    return all_of(
        each(results, "main, evaluate and sweep refused"),
        (not touched, f"changed in the folder: {touched or 'nothing'}"),
    )


def workdir_is_a_file(ctx: Context) -> Result:
    path = ctx.folder("workdir_file") / "run"
    path.write_text("a file\n")
    ok, detail = user_error(ctx.main(path, timeout=120), str(path))
    return ok and path.read_text() == "a file\n", detail


def torn_metrics_line(ctx: Context) -> Result:
    """A run killed while appending to metrics.jsonl: its last line is half a row."""
    workdir = ctx.trained_copy("torn_metrics")
    path = workdir / "metrics.jsonl"
    rows = path.read_text().splitlines()
    with open(path, "a") as f:
        f.write('{"step": 20, "split": "tr')
    outcome = ctx.main(workdir, "--config.train.steps=24")
    lines = path.read_text().splitlines()
    parsed = []
    with contextlib.suppress(ValueError):
        parsed = [json.loads(line) for line in lines if line.strip()]
    kept = len(parsed) == len(lines) and [json.dumps(r) for r in parsed[: len(rows)]] == [
        json.dumps(json.loads(r)) for r in rows
    ]
    warned = f"{path} line {len(rows) + 1} is incomplete" in outcome.stdout
    return all_of(
        succeeded(outcome),
        (warned, "warned of the torn line" if warned else "no warning naming the torn line"),
        (kept, f"metrics.jsonl: {len(rows)} rows kept, {len(parsed)} rows, all JSON: {kept}"),
    )


def damaged_metrics_line(ctx: Context) -> Result:
    """A line that does not parse before the last one: not a torn write, a damaged file."""
    workdir = ctx.trained_copy("damaged_metrics")
    path = workdir / "metrics.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + "garbage\n" + "".join(lines[1:]))
    before = path.read_bytes()
    checkpoints = sorted(os.listdir(workdir / "checkpoints"))
    ok, detail = user_error(ctx.main(workdir, "--config.train.steps=24"), f"{path} line 2")
    kept = (
        path.read_bytes() == before and sorted(os.listdir(workdir / "checkpoints")) == checkpoints
    )
    return ok and kept, f"{detail}; metrics.jsonl and checkpoints unchanged: {kept}"


def junk_checkpoint_resume(ctx: Context) -> Result:
    """A step folder of junk newer than the real checkpoints, then `main` resumes."""
    workdir = ctx.trained_copy("junk_checkpoint_resume")
    junk = workdir / "checkpoints" / "30"
    junk.mkdir()
    (junk / "junk").write_text("not a checkpoint\n")
    outcome = ctx.main(workdir, "--config.train.steps=40")
    warned = [line for line in outcome.stdout.splitlines() if str(junk) in line]
    kept = any(p.read_text() == "not a checkpoint\n" for p in workdir.rglob("junk"))
    return all_of(
        succeeded(outcome),
        (len(warned) == 1, f"warning: {shorten(warned[0], 160) if warned else 'none'}"),
        (kept, "the junk kept aside" if kept else "the junk was deleted"),
    )


def unreadable_checkpoint_evaluate(ctx: Context, how: str) -> Result:
    """`evaluate --checkpoint=latest` where the newest checkpoint is junk ('junk': a step
    folder holding a stray file) or damaged ('zeroed': checkpoint 20's files emptied)."""
    workdir = ctx.trained_copy(f"checkpoint_{how}")
    if how == "junk":
        (workdir / "checkpoints" / "30").mkdir()
        (workdir / "checkpoints" / "30" / "junk").write_text("not a checkpoint\n")
    else:
        for path in (workdir / "checkpoints" / "20").rglob("*"):
            if path.is_file():
                path.write_bytes(b"")
    saved = set(snapshot(workdir / "checkpoints").values())
    outcome = ctx.command("evaluate", f"--workdir={workdir}", "--checkpoint=latest")
    as_error = user_error(outcome)
    fallback = succeeded(outcome)
    kept = saved <= set(snapshot(workdir).values())  # moved aside counts as kept
    ok = (as_error[0] or fallback[0]) and kept
    return ok, f"{how_it_ended(outcome)}; checkpoints unchanged: {kept}"


def eval_folder_is_a_file(ctx: Context) -> Result:
    workdir = ctx.trained_copy("eval_file")
    shutil.rmtree(workdir / "eval")
    (workdir / "eval").write_text("a file where eval/ must go\n")
    before = snapshot(workdir)
    ok, detail = user_error(ctx.command("evaluate", f"--workdir={workdir}"), "eval")
    touched = [p for p in changes(before, snapshot(workdir)) if p != ".lock"]
    return ok and not touched, f"{detail}; changed: {touched or 'nothing'}"


def truncated_config_json(ctx: Context) -> Result:
    workdir = ctx.trained_copy("config_json")
    path = workdir / "config.json"
    path.write_text(path.read_text()[:100])
    return user_error(ctx.command("evaluate", f"--workdir={workdir}"), str(path))


def unknown_checkpoint_step(ctx: Context) -> Result:
    workdir = ctx.trained_copy("checkpoint_999")
    return user_error(ctx.command("evaluate", f"--workdir={workdir}", "--checkpoint=999"), "999")


# --------------------------------------------------------------------------- 15: benchmark


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux's /proc)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                with open(f"/proc/{name}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(name))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def survivors(pids: list[int], seconds: float) -> list[int]:
    """Those of `pids` still running after up to `seconds`."""
    deadline = time.monotonic() + seconds
    while any(map(_alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [pid for pid in pids if _alive(pid)]


def benchmark_sigterm(ctx: Context) -> Result:
    """SIGTERM while a measurement process trains (a row timed for 300 s)."""
    out = ctx.folder("bench_sigterm") / "bench.json"
    args = [PYTHON, "-m", "experiments.benchmark", "--models=C", "--image_size=16"]
    args += ["--batch_size=4", "--only=murajax", "--dtypes=float32", "--min_seconds=300"]
    args += ["--rounds=1", "--matmul_size=128", "--nopipeline", "--nodata_parallel"]
    args.append(f"--json={out}")
    with tempfile.TemporaryFile("w+") as err:
        bench = subprocess.Popen(
            args, cwd=ROOT, env=ctx.env, stdout=subprocess.DEVNULL, stderr=err,
            start_new_session=True,
        )  # fmt: skip
        measurers, left = [], []
        try:
            measuring = wait_for(lambda: bool(_children(bench.pid)) and out.exists(), bench, 240)
            measurers = _children(bench.pid)
            measurers += [pid for child in measurers for pid in _children(child)]
            if measuring:
                time.sleep(1.0)
                bench.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    bench.wait(30)
                left = survivors(measurers, 10)  # before anything here kills them
        finally:
            _kill_group(bench.pid)
            for pid in left:  # do not leave them spinning on a shared machine
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            bench.wait()
        err.seek(0)
        line = last_line(err.read())
    if not measuring:
        return False, f"no measurement process started: {shorten(line)}"
    figures = {}
    with contextlib.suppress(OSError, ValueError):
        figures = json.loads(out.read_text())
    marked = figures.get("settings", {}).get("interrupted") == "SIGTERM"
    ok = bench.returncode == 143 and not left and marked and "figures measured so far" in line
    return ok, (
        f"exit {bench.returncode}, {len(measurers) - len(left)} of {len(measurers)} measurement"
        f" processes gone, JSON interrupted={marked}: {shorten(line, 140)!r}"
    )


# --------------------------------------------------------------------------- other bad inputs

BAD_OVERRIDES = [
    ("--config.train.batch_size=0", "train.batch_size"),
    ("--config.data.image_size=-3", "data.image_size"),
    ("--config.optim.learning_rate=nan", "optim.learning_rate"),
    ("--config.model.conv_impl=bogus", "conv_impl"),
    ("--config.train.steps=abc", "train.steps"),
    ("--config.data.dataset=no_such", "no_such"),
    ("--config.nosuch.field=1", "nosuch"),
]


def bad_config_values(ctx: Context) -> Result:
    folder = ctx.folder("bad_values")
    failed = []
    for number, (flag, named) in enumerate(BAD_OVERRIDES):
        ok, detail = user_error(ctx.main(folder / f"run{number}", flag, timeout=120), named)
        if not ok:
            failed.append(f"{flag}: {detail}")
    if failed:
        return False, "; ".join(failed)
    return True, f"{len(BAD_OVERRIDES)} values, each one line naming the field"


def config_files_that_are_not_configs(ctx: Context) -> Result:
    """A folder given as --config, and a config file with a syntax error."""
    folder = ctx.folder("bad_config_files")
    broken = folder / "broken.py"
    broken.write_text("def get_config(arg=None:\n    pass\n")
    results = [
        user_error(
            ctx.command("main", "--config=experiments/configs", f"--workdir={folder / 'a'}"),
            "experiments/configs",
        ),
        user_error(
            ctx.command("main", f"--config={broken}", f"--workdir={folder / 'b'}"), str(broken)
        ),
    ]
    return each(results, "both refused")


def diverging_learning_rate(ctx: Context) -> Result:
    """--config.optim.learning_rate=1e30: training diverges (exit status 1, one line)."""
    workdir = ctx.folder("diverge") / "run"
    outcome = ctx.main(workdir, "--config.optim.learning_rate=1e30")
    return user_error(outcome, "step", "learning_rate", status=1)


# --------------------------------------------------------------------------- the table


@dataclasses.dataclass(frozen=True)
class Probe:
    name: str
    tried: str
    expected: str
    check: Callable[[Context], Result]


def with_isa(name: str, tried: str, expected: str, check: Callable) -> list[Probe]:
    """A oneDNN probe under the CPU's own instruction set and under AVX2."""
    return [
        Probe(name, tried, expected, functools.partial(check, isa=None)),
        Probe(f"{name}@avx2", f"{tried} (ONEDNN_MAX_CPU_ISA=AVX2)", expected,
              functools.partial(check, isa="AVX2")),
    ]  # fmt: skip


USER_ERROR = "one `error:` line naming it, exit status 2, nothing saved lost"

PROBES: list[Probe] = [
    *with_isa(
        "1_bfloat16_training",
        "experiments.main smoke with --config.model.dtype=bfloat16",
        "training finishes; one fallback warning only where oneDNN lacks bfloat16 kernels",
        bfloat16_training,
    ),
    Probe(
        "1_bfloat16_benchmark_row@avx2",
        "experiments.benchmark's murajax bfloat16 row of CNN C under AVX2",
        "a row with images/s, not FAILED",
        bfloat16_benchmark_row,
    ),
    *with_isa(
        "2_empty_batches",
        "gradients of conv2d and conv2d_relu_max_pool on (0,8,8,64), (2,0,8,64), (2,8,0,64)",
        "XLA's answer (zeros), no SIGFPE",
        empty_batches,
    ),
    *with_isa(
        "3_failed_allocation",
        "a conv+pool whose 1 GiB buffer fails under RLIMIT_AS, then a smaller call",
        "an 'out of host memory' FFI error, then the smaller call's usual answer, no SIGSEGV",
        failed_allocation,
    ),
    *with_isa(
        "4_shape_checks",
        "a 64-channel kernel on a 128-channel image, a (1,) bias, a raw FFI call that does not fit",
        "ValueError naming the shapes; XLA's broadcast; an FFI error; never numbers",
        shape_checks,
    ),
    *with_isa(
        "5_nan_propagation",
        "NaN and inf pixels through conv2d, fused ReLU and pooling, direct and Winograd",
        "NaN and inf exactly where XLA puts them, values and kernel gradients",
        nan_propagation,
    ),
    Probe(
        "6_stale_library_without_compiler",
        "experiments.main smoke with CXX=no-such-g++ (the built library no longer matches)",
        "training on XLA with one warning naming the stale library; no exception",
        stale_library_without_compiler,
    ),
    Probe(
        "6_unloadable_library",
        "a broken _onednn_conv.so carrying this checkout's build id, then conv2d",
        "XLA's answer with one 'cannot load' warning; no exception",
        unloadable_library,
    ),
    *with_isa(
        "7_winograd_allocation_failure",
        "Winograd train steps with $MURAJAX_ONEDNN_BUFFER_LIMIT=1.5 MB on a large batch",
        "an 'out of host memory' FFI error (not std::terminate), then the small call as before",
        winograd_allocation,
    ),
    *with_isa(
        "7_concurrent_calls",
        "8 Python threads running oneDNN train steps of 4 shapes at once",
        "every result equal to XLA's (buffers shared under the lock)",
        concurrent_calls,
    ),
    Probe(
        "7_one_openmp_runtime",
        "the OpenMP runtimes mapped after a oneDNN convolution; CXX=clang++'s build command",
        "libgomp alone; clang++ asked for -fopenmp=libgomp or -fopenmp-simd, not libomp",
        openmp_runtimes,
    ),
    Probe(
        "8_h5_declaring_8_gib",
        "experiments.main vgg16:smoke with a few-KB .h5 declaring 2^31 floats per weight",
        f"{USER_ERROR}; under 3 GB resident",
        declared_8_gib_h5,
    ),
    Probe(
        "8_h5_external_storage",
        "experiments.main vgg16:smoke with an .h5 whose bias is stored in another file",
        USER_ERROR,
        external_storage_h5,
    ),
    Probe(
        "8_h5_not_a_file",
        "experiments.main vgg16:smoke with a zero-byte .h5, and with a folder named x.h5",
        USER_ERROR,
        not_an_h5_file,
    ),
    Probe(
        "9_download_without_length",
        "model.weights=imagenet from a 127.0.0.1 mirror that streams zeros without Content-Length",
        "one `error:` line, exit 2, at most the file's size read, nothing left in the cache",
        download_without_length,
    ),
    Probe(
        "9_download_lock_held",
        "model.weights=imagenet while another process holds the download lock (timeout 2 s)",
        "one `error:` line naming the lock file and its holder, exit 2, in seconds",
        download_lock_held,
    ),
    Probe(
        "10_predict_bad_files",
        "experiments.predict on a 2 GiB non-image .png, a 100 Mpx 16-bit PNG, a truncated and "
        "an empty PNG among good images",
        "each skipped with a warning naming it; the rest scored; under 1.5 GB resident",
        predict_bad_files,
    ),
    Probe(
        "10_predict_tree",
        "experiments.predict twice on a tree with a symlinked study, image1.png + image1.jpg, and "
        "its CSV and heatmaps inside it",
        "both studies scored, two heatmaps, the second run scoring the same studies",
        predict_tree,
    ),
    Probe(
        "10_predict_output_is_a_folder",
        "experiments.predict --output=<an existing folder>",
        USER_ERROR,
        predict_output_is_a_folder,
    ),
    Probe(
        "10_predict_nothing_readable",
        "experiments.predict on a folder holding only a non-image .png and ._image1.png",
        f"{USER_ERROR}; no CSV",
        predict_nothing_readable,
    ),
    Probe(
        "11_results_foreign_config",
        "experiments.results on a sweep folder whose sweep.json names a config outside the project",
        f"{USER_ERROR}; the config never runs, no page written",
        results_foreign_config,
    ),
    Probe(
        "11_readme_says_configs_run",
        "README.md read for what config files are",
        "it says config files are Python that runs, and to run only configs you trust",
        readme_says_configs_run,
    ),
    Probe(
        "12_second_writer",
        "experiments.main and experiments.evaluate on a workdir whose run trains, then SIGTERM",
        "both refused in one line naming the first run's pid and host; it goes on and stops "
        "with 143 and its checkpoints",
        second_writer,
    ),
    Probe(
        "13_foreign_folder",
        "main, evaluate and sweep into a folder holding someone else's config.json and notes",
        f"{USER_ERROR}; the folder byte for byte as it was",
        foreign_folder,
    ),
    Probe(
        "13_workdir_is_a_file",
        "experiments.main --workdir=<a file>",
        f"{USER_ERROR}; the file unchanged",
        workdir_is_a_file,
    ),
    Probe(
        "14_torn_metrics_line",
        "resuming a run whose metrics.jsonl ends with half a row",
        "the torn line dropped with a warning; the run resumes; every line JSON",
        torn_metrics_line,
    ),
    Probe(
        "14_damaged_metrics_line",
        "resuming a run whose metrics.jsonl has a garbage line 2",
        f"{USER_ERROR} (file and line); metrics.jsonl and checkpoints unchanged",
        damaged_metrics_line,
    ),
    Probe(
        "15_benchmark_sigterm",
        "SIGTERM to experiments.benchmark while its measurement process trains",
        "exit 143 at once, its processes gone, the JSON kept and marked interrupted",
        benchmark_sigterm,
    ),
    Probe(
        "checkpoint_junk_resume",
        "experiments.main resuming a workdir with a junk checkpoints/30/ newer than the real ones",
        "one warning naming it, moved aside (not deleted), resumed from 20",
        junk_checkpoint_resume,
    ),
    Probe(
        "checkpoint_junk_evaluate",
        "experiments.evaluate --checkpoint=latest with a junk checkpoints/30/",
        f"{USER_ERROR} (or a fallback to a readable checkpoint)",
        functools.partial(unreadable_checkpoint_evaluate, how="junk"),
    ),
    Probe(
        "checkpoint_zeroed_evaluate",
        "experiments.evaluate --checkpoint=latest with checkpoint 20's files emptied",
        f"{USER_ERROR} (or a fallback to a readable checkpoint)",
        functools.partial(unreadable_checkpoint_evaluate, how="zeroed"),
    ),
    Probe(
        "checkpoint_unknown_step",
        "experiments.evaluate --checkpoint=999",
        USER_ERROR,
        unknown_checkpoint_step,
    ),
    Probe(
        "eval_folder_is_a_file",
        "experiments.evaluate where eval/ is a file",
        f"{USER_ERROR}; the workdir unchanged",
        eval_folder_is_a_file,
    ),
    Probe(
        "config_json_truncated",
        "experiments.evaluate on a workdir whose config.json is cut after 100 bytes",
        USER_ERROR,
        truncated_config_json,
    ),
    Probe(
        "config_bad_values",
        "experiments.main with " + ", ".join(flag for flag, _ in BAD_OVERRIDES),
        "each one `error:` line naming the field, exit 2",
        bad_config_values,
    ),
    Probe(
        "config_not_a_config_file",
        "experiments.main --config=<a folder>, and a config file with a syntax error",
        USER_ERROR,
        config_files_that_are_not_configs,
    ),
    Probe(
        "config_diverging_learning_rate",
        "experiments.main smoke with --config.optim.learning_rate=1e30",
        "one `error:` line naming the step and the learning rate, exit 1",
        diverging_learning_rate,
    ),
]


# --------------------------------------------------------------------------- running


def selected(probes: list[Probe], only: str | None) -> list[Probe]:
    """The probes `--only` names (comma-separated names or shell patterns), all without it.
    Raises SystemExit(2) with one line for a name that selects nothing."""
    if not only:
        return probes
    patterns = [p.strip() for p in only.split(",") if p.strip()]
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(p.name, pattern) for p in probes):
            print(f"error: --only: no probe is named {pattern!r} (see --list)", file=sys.stderr)
            raise SystemExit(2)
    return [p for p in probes if any(fnmatch.fnmatchcase(p.name, x) for x in patterns)]


def run_probe(probe: Probe, ctx: Context) -> tuple[bool, str]:
    """The probe's verdict and line; an exception in the probe itself is a FAIL naming it."""
    start = time.monotonic()
    try:
        ok, detail = probe.check(ctx)
    except Exception as e:  # noqa: BLE001  (reported as the probe's failure)
        ok, detail = False, f"the probe itself failed: {type(e).__name__}: {shorten(str(e))}"
    took = f" [{time.monotonic() - start:.0f} s]"
    if ok:
        return True, f"PASS {probe.name}: {probe.tried} -> {detail}{took}"
    return False, f"FAIL {probe.name}: {probe.tried} -> {detail} (expected {probe.expected}){took}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated probe names or patterns (e.g. '5_*')")
    parser.add_argument("--list", action="store_true", help="list the probes and exit")
    args = parser.parse_args(argv)
    probes = selected(PROBES, args.only)
    if args.list:
        for probe in probes:
            print(f"{probe.name}: {probe.tried} (expected {probe.expected})")
        return 0
    start = time.monotonic()
    failed = []
    with tempfile.TemporaryDirectory(prefix="murajax_hardening_") as root:
        ctx = Context(Path(root))
        for probe in probes:
            ok, line = run_probe(probe, ctx)
            print(line, flush=True)
            if not ok:
                failed.append(probe.name)
    took = time.monotonic() - start
    print(
        f"\n{len(probes) - len(failed)} of {len(probes)} probes passed in {took:.0f} s"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
