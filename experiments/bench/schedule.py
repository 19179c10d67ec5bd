"""How long the benchmark's measurements may take: the run's time limit, each row's share of
it, each peer's budget within its row, and the steps a budgeted process takes.

murajax's processes (the subject) take the steps the settings ask for. A peer's process gets a
time budget for the row (`peer_budget`): the less of a fixed cap (`--peer_budget_s`) and
`PEER_FACTOR` x the row's murajax process (its time so far and its planned turns), at least a
floor, but at most an equal part of what is left of the row's share of the run's time limit
(`RunClock`); with less than `LEAST_PEER_S` it is not started. Its first step (compile
included) must come within the budget (else the process is stopped and its row says so); then
it takes the warm-up steps and turns that fit (`timing.warmup_that_fits`, in its process;
`next_turn`): down to one timed step, or none (`first_step_only`: the row is the first
step's). A row cut short says why (`cut_note`).

The row shares come from an estimate of each row's time (`framework_estimate_s`: a process's
start, a compile time per model, and steps at a fraction of the machine's matmul peak), which
is also what the benchmark prints before it starts. Standard library only; pure except for
`RunClock`, which reads a clock.
"""

import dataclasses
import math
import time
from collections.abc import Callable, Sequence

PEER_FACTOR = 3.0
"""A peer may take this many times the row's murajax process (the slowest, if several)."""

SPAWN_S = 8.0
"""A measurement process's start on 2 cores (Python and jax, TensorFlow or torch imports)."""

LEAST_PEER_S = 10.0
"""A peer whose budget is less is not started: its process's start would take it all."""

COMPILE_S: dict[str, float] = {
    "cnn_c": 4.0,
    "quickstart": 4.0,
    "vgg16": 8.0,
    "densenet169": 170.0,
    "multiview": 6.0,
}
"""A first step's seconds (compile included) per workload model, for estimates: measured on 2
cores (DenseNet-169: murajax 161 s, murajax-xla 206 s, Keras-TF 109 s)."""

EFFICIENCY = 0.6
"""The fraction of the matmul peak a train step is assumed to reach, for estimates."""

PIPELINE_SPEC_S = 35.0
"""Seconds per input-pipeline measurement (two worker counts), for estimates."""

DATA_PARALLEL_S = 90.0
"""Seconds of the data-parallel table, for estimates."""

MATMUL_S = 10.0
"""Seconds of one matmul-peak measurement (its process's start included)."""


@dataclasses.dataclass(frozen=True)
class Timing:
    """The steps a row's frameworks take: a first step, `warmup_steps - 1` untimed ones, then
    `rounds` turns of at least `min_seconds / rounds` seconds and `ceil(min_steps / rounds)`
    steps each."""

    rounds: int
    min_seconds: float
    min_steps: int
    warmup_steps: int

    @property
    def turn_seconds(self) -> float:
        """A turn's least seconds."""
        return self.min_seconds / self.rounds

    @property
    def turn_steps(self) -> int:
        """A turn's least steps."""
        return max(1, math.ceil(self.min_steps / self.rounds))

    def turns_s(self, step_s: float, rounds: int | None = None) -> float:
        """Seconds that `rounds` (default: all) full turns take at `step_s` a step."""
        rounds = self.rounds if rounds is None else rounds
        steps = max(self.turn_steps, math.ceil(self.turn_seconds / step_s) if step_s else 1)
        return rounds * steps * step_s


@dataclasses.dataclass(frozen=True)
class Turn:
    """One stretch a process times: at least `min_seconds` and `min_steps`, at most
    `max_steps` (None: no limit)."""

    min_seconds: float
    min_steps: int
    max_steps: int | None = None

    @property
    def cut(self) -> bool:
        """Whether the stretch is shorter than planned (it has a step limit)."""
        return self.max_steps is not None

    def command(self) -> dict[str, float | int]:
        """The process's command line for it (`timing`'s protocol)."""
        command: dict[str, float | int] = {
            "min_seconds": self.min_seconds,
            "min_steps": self.min_steps,
        }
        if self.max_steps is not None:
            command["max_steps"] = self.max_steps
        return command


@dataclasses.dataclass(frozen=True)
class Budget:
    """The seconds a peer's process may take in its row (start, first step, warm-up and its
    turns), what set them (for the row's note), and whether it is not to be started (`skip`:
    the run's time limit left it less than `LEAST_PEER_S`)."""

    seconds: float
    why: str
    skip: bool = False


SLOW_COMPILE_S = 60.0
"""A model whose compile estimate (`COMPILE_S`) is at least this raises its peers' floor."""


def model_floor_s(model: str, floor_s: float) -> float:
    """The least budget a peer gets for `model`: `floor_s`; for a model that compiles slowly
    (`SLOW_COMPILE_S`), its start and the model's compile estimate where that is more, so that
    a peer that compiles as slowly as estimated still times steps after it. (Once murajax
    compiled DenseNet-169 in 25 s, 3x its time no longer covered Keras-TF's 73 s compile, and
    Keras's row was its first step only.)"""
    compile_s = COMPILE_S.get(model, 0.0)
    if compile_s < SLOW_COMPILE_S:
        return floor_s
    return max(floor_s, SPAWN_S + compile_s)


def peer_budget(
    *,
    cap_s: float,
    floor_s: float,
    murajax_s: float | None = None,
    share_left_s: float | None = None,
    peers_left: int = 1,
    factor: float = PEER_FACTOR,
) -> Budget:
    """A peer's budget: the less of `cap_s` and `factor` x `murajax_s` (the row's murajax
    process, when one was measured), at least `floor_s`; but at most `share_left_s /
    peers_left` (an equal part of what is left of the row's share of the run's time limit,
    when there is one): the time limit wins over the floor."""
    seconds, why = cap_s, f"the {cap_s:.0f} s cap"
    if murajax_s is not None and factor * murajax_s < seconds:
        seconds, why = factor * murajax_s, f"{factor:g}x murajax's {murajax_s:.0f} s"
    if seconds < floor_s:
        seconds, why = floor_s, f"the {floor_s:.0f} s floor"
    if share_left_s is not None and share_left_s / max(1, peers_left) < seconds:
        seconds = max(0.0, share_left_s / max(1, peers_left))
        return Budget(round(seconds, 1), "the run's time limit", seconds < LEAST_PEER_S)
    return Budget(round(seconds, 1), why)


def next_turn(
    left_s: float, step_s: float, rounds_left: int, timing: Timing, known: bool = True
) -> Turn | None:
    """The stretch a budgeted process times in this round, with `left_s` of its budget, at
    about `step_s` a step, `rounds_left` rounds to go (this one included): the planned turn
    if every remaining one fits; else the steps that fit, spread evenly over the remaining
    rounds (a turn of `max_steps` steps, no least seconds); None when none falls to this
    round. `known` False: `step_s` is only an upper bound (the first step's, compile
    included), so one step that fits is taken at once, to learn the real step time."""
    planned = Turn(timing.turn_seconds, timing.turn_steps)
    if step_s <= 0 or timing.turns_s(step_s, rounds_left) <= left_s:
        return planned
    fit = int(left_s // step_s)
    steps = fit // max(1, rounds_left)  # the remainder falls to the later rounds
    if rounds_left <= 1:
        steps = fit
    if not known and fit >= 1:
        steps = max(steps, 1)
    return Turn(0.0, steps, steps) if steps >= 1 else None


def cut_note(
    budget: Budget,
    *,
    first_step: bool,
    warmup_steps: int,
    warmup_wanted: int,
    timed_steps: int,
    turns: int,
    rounds: int,
    cut: bool,
) -> str | None:
    """Why a budgeted process's row has fewer steps than planned, or None when it has them
    all. `first_step`: whether its first step came; `warmup_steps`: the untimed steps it
    took (of `warmup_wanted`); `timed_steps` in `turns` of `rounds`; `cut`: whether a turn
    was shorter than planned."""
    within = f"within its {budget.seconds:.0f} s budget ({budget.why})"
    if not first_step:
        return f"cut short: no first step {within}; not measured"
    if timed_steps == 0:
        return (
            f"cut short: only its first step (compile included) fit {within}: "
            "its step s is that step's, an upper bound; not compared"
        )
    if not cut and turns == rounds and warmup_steps == warmup_wanted:
        return None
    parts = [f"{timed_steps} timed step{'s' * (timed_steps != 1)}"]
    if turns < rounds:
        parts.append(f"in {turns} of {rounds} rounds")
    if warmup_steps < warmup_wanted:
        parts.append("no warm-up step" if warmup_steps == 0 else f"{warmup_steps} warm-up")
    return f"cut short to fit {within}: {', '.join(parts)}"


# --------------------------------------------------------------------------- estimates


def step_estimate_s(flops: float | None, peak_gflops: float | None) -> float:
    """A train step's seconds if it reaches `EFFICIENCY` of the matmul peak (1 s when either
    is unknown)."""
    if not flops or not peak_gflops:
        return 1.0
    return flops / (EFFICIENCY * peak_gflops * 1e9)


def framework_estimate_s(
    compile_s: float, step_s: float, timing: Timing, cap_s: float | None = None
) -> float:
    """One process's seconds in a row: its start, its first step, the warm-up and its turns;
    at most `cap_s` (a peer's budget cap) when given."""
    seconds = SPAWN_S + compile_s + max(0, timing.warmup_steps - 1) * step_s
    seconds += timing.turns_s(step_s)
    return seconds if cap_s is None else min(seconds, cap_s)


def format_duration(seconds: float) -> str:
    """'45 s', '12 min', '1 h 05 min'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


class RunClock:
    """The run's time limit spread over its rows: each row's share of the time left is in
    proportion to its estimate among the rows still to come (a row that took less leaves the
    rest to the later ones); `reserve_s` is kept for what comes after the train steps.
    `limit_s` None: no limit (`share_s` is None). It also says how far the run is
    (`progress`)."""

    def __init__(
        self,
        estimates_s: Sequence[float],
        limit_s: float | None,
        reserve_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        started: float | None = None,
    ) -> None:
        self.estimates_s = list(estimates_s)
        self.limit_s = limit_s
        self.reserve_s = reserve_s
        self.clock = clock
        self.started = clock() if started is None else started

    def elapsed_s(self) -> float:
        """Seconds since the run started."""
        return self.clock() - self.started

    def share_s(self, row: int) -> float | None:
        """Row `row`'s share of the time left (None without a limit), when it starts."""
        if self.limit_s is None:
            return None
        left = self.limit_s - self.reserve_s - self.elapsed_s()
        rest = sum(self.estimates_s[row:])
        return max(0.0, left) * (self.estimates_s[row] / rest if rest else 1.0)

    def left_estimate_s(self, rows_done: int) -> float:
        """The estimated seconds still to go after `rows_done` rows (the rest of the
        estimates, scaled by how the rows so far compared with theirs, plus the reserve)."""
        done_estimate = sum(self.estimates_s[:rows_done])
        scale = self.elapsed_s() / done_estimate if rows_done and done_estimate else 1.0
        return scale * sum(self.estimates_s[rows_done:]) + self.reserve_s

    def progress(self, rows_done: int) -> str:
        """'row 3/12 done; 4 min elapsed, about 20 min to go (limit 55 min)'."""
        line = (
            f"row {rows_done}/{len(self.estimates_s)} done; "
            f"{format_duration(self.elapsed_s())} elapsed, "
            f"about {format_duration(self.left_estimate_s(rows_done))} to go"
        )
        if self.limit_s is not None:
            line += f" (time limit {format_duration(self.limit_s)})"
        return line
