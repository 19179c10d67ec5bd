"""The step-timing loop every framework's measurement uses, and the process's peak memory.

A measurement either times its steps in one stretch, or takes the steps the runner asks for
(`turns=True`: the runner's interleaved rounds and its time budgets): after the first step
(compile included) and the warm-up steps it prints `READY {"compile_s": s, "warmup_s": [...]}`
on stdout, then for each line the runner writes to its stdin, `{"min_seconds": s,
"min_steps": k}` (optionally `"max_steps": n`), it times a stretch of steps and answers
`TIMES [seconds, ...]`, until the runner closes stdin or writes `{"stop": true}` (with
`"first_step_only": true` when it chose to time no step: the row is then the first step's). A
`deadline` (the end of a peer's time budget, as `time.time()`) leaves out the warm-up steps
that would leave no room for one timed step before it. Every process of a row then sees the
same slow and fast spells of a shared machine, and the runner decides how many steps a slow
one takes. Standard library only: the peers' processes load this file without murajax.
"""

import json
import math
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
    deadline: float | None = None,
    commands: TextIO | None = None,
    replies: TextIO | None = None,
) -> dict[str, Any]:
    """Times `step()` (one synchronous train step: it returns when the step's results exist).

    The first call is timed alone (`compile_s`: tracing, compiling and one step); then
    `warmup_steps - 1` untimed calls (fewer before a `deadline`: `warmup_that_fits`); then
    timed calls, each on its own, until together they took at least `min_seconds` and
    numbered at least `min_steps`. With `turns`, the timed calls come in the stretches the
    runner asks for instead (module docstring; `commands` and `replies` default to stdin and
    stdout; `min_seconds` and `min_steps` are then the runner's). Returns `compile_s`,
    `step_s` (the median), `step_s_min`, `steps`, `timed_s`, `warmup_steps` (the first step
    included), and with `turns` also `turn_step_s` (each stretch's median). When the runner
    asked for no timed step and said `first_step_only`, `steps` is 0 and `step_s` is the
    first step's (`first_step_only`: True).
    """
    start = time.perf_counter()
    step()
    compile_s = time.perf_counter() - start
    warmup = max(0, warmup_steps - 1)
    if deadline is not None:
        warmup = warmup_that_fits(deadline - time.time(), compile_s, warmup)
    warmup_s = []
    for _ in range(warmup):
        begin = time.perf_counter()
        step()
        warmup_s.append(time.perf_counter() - begin)
    first_step_only = False
    if turns:
        replies = replies or sys.stdout
        ready = {"compile_s": compile_s, "warmup_s": warmup_s}
        print(f"{READY_LINE} {json.dumps(ready)}", file=replies, flush=True)
        stretches, first_step_only = _take_turns(step, commands or sys.stdin, replies, max_steps)
    else:
        stretches = [_time_stretch(step, min_seconds, min_steps, max_steps)]
    times = [t for stretch in stretches for t in stretch]
    result: dict[str, Any] = {"compile_s": compile_s, "warmup_steps": 1 + warmup}
    if times:
        result.update(
            step_s=statistics.median(times),
            step_s_min=min(times),
            steps=len(times),
            timed_s=sum(times),
        )
    elif first_step_only:
        result.update(step_s=compile_s, step_s_min=compile_s, steps=0, timed_s=0.0)
        result["first_step_only"] = True
    else:
        raise RuntimeError("no step was timed: the runner asked for no turn")
    if turns:
        result["turn_step_s"] = [statistics.median(s) for s in stretches if s]
    return result


def warmup_that_fits(left_s: float, step_s: float, wanted: int) -> int:
    """Untimed warm-up steps to take with `left_s` of a time budget at about `step_s` a step
    (a first step's seconds, compile included, is an upper bound): `wanted`, or fewer so that
    one timed step still fits after them."""
    if step_s <= 0 or math.isinf(left_s):
        return wanted
    return max(0, min(wanted, int(left_s // step_s) - 1))


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
) -> tuple[list[list[float]], bool]:
    """The stretches the runner asks for, one per command line (see the module docstring),
    and whether the runner said `first_step_only` when it stopped."""
    stretches, first_step_only = [], False
    for line in commands:
        if not line.strip():
            continue
        command = json.loads(line)
        if command.get("stop"):
            first_step_only = bool(command.get("first_step_only"))
            break
        limit = min(max_steps, command.get("max_steps") or max_steps)
        times = _time_stretch(step, command["min_seconds"], command["min_steps"], limit)
        stretches.append(times)
        print(TIMES_PREFIX + json.dumps(times), file=replies, flush=True)
    return stretches, first_step_only


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
        "warmup_steps": timing.get("warmup_steps"),
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
    if timing.get("first_step_only"):
        row["first_step_only"] = True
    return row


def parameter_count(shapes: Any) -> int:
    """Trainable parameters of a model, from its weights' shapes (tuples of ints)."""
    total = 0
    for shape in shapes:
        size = 1
        for n in shape:
            size *= int(n)
        total += size
    return total
