"""The step-timing loop every framework's measurement uses, and the process's peak memory.

A measurement either times its steps in one stretch, or takes turns with the other
frameworks of its row (`turns=True`, the runner's interleaved rounds): after the compile and
warm-up steps it prints `READY` on stdout, then for each line `{"min_seconds": s,
"min_steps": k}` the runner writes to its stdin it times a stretch of steps and answers
`TIMES [seconds, ...]`, until the runner closes stdin (or writes `{"stop": true}`). Every
process of a row then sees the same slow and fast spells of a shared machine. Standard
library only: the peers' processes load this file without murajax.
"""

import json
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

READY_LINE = "READY"
TIMES_PREFIX = "TIMES "


def time_steps(
    step: Callable[[], Any],
    *,
    min_seconds: float,
    min_steps: int = 5,
    warmup_steps: int = 2,
    max_steps: int = 100_000,
    turns: bool = False,
    commands: TextIO | None = None,
    replies: TextIO | None = None,
) -> dict[str, Any]:
    """Times `step()` (one synchronous train step: it returns when the step's results exist).

    The first call is timed alone (`compile_s`: tracing, compiling and one step); then
    `warmup_steps - 1` untimed calls; then timed calls, each on its own, until together they
    took at least `min_seconds` and numbered at least `min_steps`. With `turns`, the timed
    calls come in the stretches the runner asks for instead (module docstring; `commands` and
    `replies` default to stdin and stdout), and `min_seconds`/`min_steps` are the runner's.
    Returns `compile_s`, `step_s` (the median), `step_s_min`, `steps`, `timed_s`, and with
    `turns` also `turn_step_s` (each stretch's median).
    """
    start = time.perf_counter()
    step()
    compile_s = time.perf_counter() - start
    for _ in range(max(0, warmup_steps - 1)):
        step()
    if turns:
        stretches = _take_turns(step, commands or sys.stdin, replies or sys.stdout, max_steps)
    else:
        stretches = [_time_stretch(step, min_seconds, min_steps, max_steps)]
    times = [t for stretch in stretches for t in stretch]
    if not times:
        raise RuntimeError("no step was timed: the runner asked for no turn")
    result: dict[str, Any] = {
        "compile_s": compile_s,
        "step_s": statistics.median(times),
        "step_s_min": min(times),
        "steps": len(times),
        "timed_s": sum(times),
    }
    if turns:
        result["turn_step_s"] = [statistics.median(s) for s in stretches if s]
    return result


def _time_stretch(
    step: Callable[[], Any], min_seconds: float, min_steps: int, max_steps: int
) -> list[float]:
    """Seconds of each of `step()`'s calls, timed one by one until together they took at least
    `min_seconds` and numbered at least `min_steps` (or `max_steps`)."""
    times: list[float] = []
    while (sum(times) < min_seconds or len(times) < min_steps) and len(times) < max_steps:
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def _take_turns(
    step: Callable[[], Any], commands: TextIO, replies: TextIO, max_steps: int
) -> list[list[float]]:
    """The stretches the runner asks for, one per command line (see the module docstring)."""
    print(READY_LINE, file=replies, flush=True)
    stretches = []
    for line in commands:
        if not line.strip():
            continue
        command = json.loads(line)
        if command.get("stop"):
            break
        times = _time_stretch(step, command["min_seconds"], command["min_steps"], max_steps)
        stretches.append(times)
        print(TIMES_PREFIX + json.dumps(times), file=replies, flush=True)
    return stretches


def peak_memory_mb() -> float:
    """This process's peak resident memory so far, in MiB (`getrusage`'s ru_maxrss)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes vs KiB


def _significant(seconds: float, digits: int = 4) -> float:
    """`seconds` to `digits` significant digits: a 4 ms step keeps its 0.1% precision."""
    return float(f"{seconds:.{digits}g}")


def measurement_row(timing: dict[str, Any], images_per_step: int, flops: float | None) -> dict:
    """The timing fields of a train-step row: images/s, step and compile seconds, GFLOP/s
    achieved (from `flops` per step, when known), the peak memory so far, and each turn's
    median step seconds when the steps were timed in turns."""
    step_s = timing["step_s"]
    row = {
        "images_per_s": round(images_per_step / step_s, 2),
        "step_s": _significant(step_s),
        "step_s_min": _significant(timing["step_s_min"]),
        "compile_s": round(timing["compile_s"], 2),
        "steps": timing["steps"],
        "timed_s": round(timing["timed_s"], 2),
        "peak_memory_mb": round(peak_memory_mb(), 1),
        "flops_per_step": flops,
        "gflops": None if not flops else round(flops / step_s / 1e9, 1),
    }
    if "turn_step_s" in timing:
        row["turn_step_s"] = [_significant(t) for t in timing["turn_step_s"]]
    return row
