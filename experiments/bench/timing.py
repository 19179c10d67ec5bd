"""The step-timing loop every framework's measurement uses, and the process's peak memory."""

import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any


def time_steps(
    step: Callable[[], Any],
    *,
    min_seconds: float,
    min_steps: int = 5,
    warmup_steps: int = 2,
    max_steps: int = 100_000,
) -> dict[str, float]:
    """Times `step()` (one synchronous train step: it returns when the step's results exist).

    The first call is timed alone (`compile_s`: tracing, compiling and one step); then
    `warmup_steps - 1` untimed calls; then timed calls, each on its own, until together they
    took at least `min_seconds` and numbered at least `min_steps`. Returns `compile_s`,
    `step_s` (the median), `step_s_min`, `steps` and `timed_s`.
    """
    start = time.perf_counter()
    step()
    compile_s = time.perf_counter() - start
    for _ in range(max(0, warmup_steps - 1)):
        step()
    times: list[float] = []
    while (sum(times) < min_seconds or len(times) < min_steps) and len(times) < max_steps:
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {
        "compile_s": compile_s,
        "step_s": statistics.median(times),
        "step_s_min": min(times),
        "steps": len(times),
        "timed_s": sum(times),
    }


def peak_memory_mb() -> float:
    """This process's peak resident memory so far, in MiB (`getrusage`'s ru_maxrss)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes vs KiB


def _significant(seconds: float, digits: int = 4) -> float:
    """`seconds` to `digits` significant digits: a 4 ms step keeps its 0.1% precision."""
    return float(f"{seconds:.{digits}g}")


def measurement_row(timing: dict[str, float], images_per_step: int, flops: float | None) -> dict:
    """The timing fields of a train-step row: images/s, step and compile seconds, GFLOP/s
    achieved (from `flops` per step, when known) and the peak memory so far."""
    step_s = timing["step_s"]
    return {
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
