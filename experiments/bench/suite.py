"""The whole benchmark, as `python -m experiments.benchmark` runs it: `run(Settings(...))`.

It checks the settings first (`SettingsError` names an unknown dtype, workload or framework,
before anything is measured), then measures in this order: the matmul peak; the train steps
(`runner.run_train_steps`, murajax's row then its peers'); the input pipeline; the
data-parallel table; the matmul peak again (the better of the two is kept). With
`Settings.json` the figures are rewritten to that file after each, so that an interrupted run
keeps what it measured. At the end it prints the tables to stdout.
"""

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from experiments.bench import data_parallel, runner, schedule, table, workloads
from murajax.config import DataConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """What the benchmark measures and how long: the flags of `experiments.benchmark`, by the
    same names (see their help). None picks the default (`DEFAULTS`, by `quick`):
    `min_seconds`, `min_steps`, `rounds`, `time_limit_s`, `peer_budget_s`; `data_parallel`
    unless `quick`, `only` every available framework, `models` the workloads `quick`
    selects. `time_limit_s` or `peer_budget_s` 0: none."""

    json: str | None
    quick: bool
    min_seconds: float | None
    min_steps: int | None
    rounds: int | None
    warmup_steps: int
    time_limit_s: float | None
    peer_budget_s: float | None
    only: Sequence[str] | None
    models: Sequence[str] | None
    dtypes: Sequence[str]
    pipeline: bool
    cache: str | None
    data_parallel: bool | None
    dataset: str
    data_dir: str | None
    image_size: int | None
    batch_size: int | None
    matmul_size: int | None
    steps: int


class SettingsError(ValueError):
    """A setting names something unknown; the message is one line for the user."""


DEFAULTS: dict[bool, dict[str, float]] = {
    # --quick: C and VGG16@128 (4 rows) in under 10 minutes on any 2-core CPU.
    True: {
        "min_seconds": 2.0,
        "min_steps": 3,
        "rounds": 3,
        "time_limit_s": 540.0,
        "peer_budget_s": 120.0,
        "peer_floor_s": 40.0,
    },
    # Every workload (12 rows) in under an hour on 2 cores.
    False: {
        "min_seconds": 6.0,
        "min_steps": 3,
        "rounds": 3,
        "time_limit_s": 3300.0,
        "peer_budget_s": 400.0,
        "peer_floor_s": 60.0,
    },
}
"""The timing settings' defaults, without and with `quick`: each framework's first step and
one warm-up step, then `rounds` turns of at least `min_seconds / rounds` seconds and
`ceil(min_steps / rounds)` steps; the run's time limit, which the peers' budgets shrink to
keep to (murajax's own steps are not cut); a peer's budget cap and floor (which covers its
process's start: `schedule.peer_budget`; the time limit wins over it)."""


def _has_data_cache() -> bool:
    return hasattr(DataConfig(), "cache")


def _pipeline_cache(settings: Settings) -> str | None:
    """The `data.cache` the pipeline is also timed with, if murajax has that field."""
    return settings.cache if settings.cache and _has_data_cache() else None


def row_estimates(
    selected: Sequence[workloads.Workload],
    dtypes: Sequence[str],
    chosen: Sequence[str],
    timing: schedule.Timing,
    figures: dict[str, Any],
    cap_s: float,
) -> list[float]:
    """Each train-step row's estimated seconds, in the order they run: every framework that
    has the model (`schedule.framework_estimate_s`: steps at a fraction of this machine's
    matmul peak, `figures['matmul_gflops']`; a peer at most `cap_s`)."""
    estimates = []
    for workload in selected:
        flops = workloads.train_step_flops(workload)
        compile_s = schedule.COMPILE_S.get(workload.model, schedule.COMPILE_S["vgg16"])
        for dtype in dtypes:
            step_s = schedule.step_estimate_s(flops, figures["matmul_gflops"].get(dtype))
            estimates.append(
                sum(
                    schedule.framework_estimate_s(
                        compile_s, step_s, timing, None if runner.is_murajax(f) else cap_s
                    )
                    for f in chosen
                    if runner.has_peer(f, workload)
                )
            )
    return estimates


def estimate_line(clock: schedule.RunClock, estimates: Sequence[float], reserve_s: float) -> str:
    """The run's estimated length, printed before the train steps."""
    total = clock.elapsed_s() + sum(estimates) + reserve_s
    line = (
        f"estimated: about {schedule.format_duration(total)} in all ("
        f"{len(estimates)} train-step rows {schedule.format_duration(sum(estimates))}, then "
        f"{schedule.format_duration(reserve_s)})"
    )
    if clock.limit_s is not None:
        line += (
            f"; time limit {schedule.format_duration(clock.limit_s)}: the peers' budgets "
            "shrink to keep to it"
        )
    return line


def _workload_maker(settings: Settings) -> Callable[[str], workloads.Workload]:
    """The workload of a key, with the settings' image and batch size when they are set."""
    overrides = {"image_size": settings.image_size, "batch_size": settings.batch_size}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return lambda key: dataclasses.replace(workloads.by_key(key), **overrides)


def _selection(
    settings: Settings, workload: Callable[[str], workloads.Workload], notes: list[str]
) -> tuple[list[workloads.Workload], list[str]]:
    """The workloads and frameworks to measure; raises `SettingsError` for unknown names."""
    bad_dtypes = [d for d in settings.dtypes if d not in workloads.DTYPES]
    if bad_dtypes:
        raise SettingsError(
            f"--dtypes: unknown {', '.join(bad_dtypes)}: expected {workloads.DTYPES}"
        )
    try:
        selected = [workload(w.key) for w in workloads.select(settings.quick, settings.models)]
        chosen = runner.frameworks(settings.only, notes)
    except ValueError as e:
        raise SettingsError(str(e)) from e
    return selected, chosen


def run(settings: Settings) -> dict[str, Any]:
    """Measures what `settings` select, prints the tables and returns the figures:
    `{"machine", "matmul_gflops", "train_step", "input_pipeline", "settings"}` and
    `"data_parallel"` when that table was measured."""
    started = time.perf_counter()
    quick = settings.quick
    defaults = DEFAULTS[quick]

    def setting(name: str) -> Any:
        value = getattr(settings, name)
        return defaults[name] if value is None else value

    min_seconds, min_steps, rounds = setting("min_seconds"), setting("min_steps"), setting("rounds")
    time_limit_s, peer_budget_s = setting("time_limit_s"), setting("peer_budget_s")
    if rounds < 1:
        raise SettingsError(f"--rounds={rounds}: expected 1 or more")
    for name, value in (("time_limit_s", time_limit_s), ("peer_budget_s", peer_budget_s)):
        if value < 0:
            raise SettingsError(f"--{name}={value:g}: expected 0 (none) or more")
    notes: list[str] = []
    workload = _workload_maker(settings)
    selected, chosen = _selection(settings, workload, notes)
    for note in notes:
        runner.log(note)
    recorded = {
        "quick": quick,
        "min_seconds": min_seconds,
        "min_steps": min_steps,
        "rounds": rounds,
        "warmup_steps": settings.warmup_steps,
        "time_limit_s": time_limit_s or None,
        "peer_budget_s": peer_budget_s or None,
        "peer_floor_s": defaults["peer_floor_s"],
        "frameworks": chosen,
        "workloads": [dataclasses.asdict(w) for w in selected],
        "dtypes": settings.dtypes,
        "notes": notes,
    }
    figures: dict[str, Any] = {
        "machine": runner.machine_info(),
        "matmul_gflops": {},
        "train_step": [],
        "input_pipeline": [],
        "settings": recorded,
    }

    def save() -> None:
        if settings.json:
            with open(settings.json, "w") as f:
                json.dump(figures, f, indent=2)

    figures["matmul_gflops"] = runner.run_matmul(settings.matmul_size)
    save()
    timing = schedule.Timing(rounds, min_seconds, min_steps, settings.warmup_steps)
    cap_s = peer_budget_s or math.inf
    estimates = row_estimates(selected, settings.dtypes, chosen, timing, figures, cap_s)
    pipeline_specs = (
        runner.pipeline_specs(quick, _pipeline_cache(settings)) if settings.pipeline else []
    )
    with_data_parallel = settings.data_parallel if settings.data_parallel is not None else not quick
    reserve_s = len(pipeline_specs) * schedule.PIPELINE_SPEC_S + schedule.MATMUL_S
    reserve_s += schedule.DATA_PARALLEL_S if with_data_parallel else 0.0
    clock = schedule.RunClock(
        estimates,
        time_limit_s or None,
        reserve_s,
        started=time.monotonic() - (time.perf_counter() - started),
    )
    recorded["estimate_s"] = round(clock.elapsed_s() + sum(estimates) + reserve_s)
    runner.log(estimate_line(clock, estimates, reserve_s))
    budgets = runner.Budgets(cap_s=cap_s, floor_s=defaults["peer_floor_s"], clock=clock)
    measured: list[dict[str, Any]] = []

    def on_row(row: dict[str, Any]) -> None:
        measured.append(row)
        figures["train_step"] = table.add_ratios(measured, figures["matmul_gflops"])
        save()

    runner.run_train_steps(
        selected,
        settings.dtypes,
        chosen,
        min_seconds=min_seconds,
        min_steps=min_steps,
        warmup_steps=settings.warmup_steps,
        rounds=rounds,
        budgets=budgets,
        on_row=on_row,
    )
    if pipeline_specs:
        pipeline_rows = runner.run_pipeline(
            pipeline_specs, dataset=settings.dataset, data_dir=settings.data_dir, feeds=workload
        )
        figures["input_pipeline"] = table.add_step_ratios(pipeline_rows, figures["train_step"])
        save()
    if with_data_parallel:
        runner.log("data parallelism (quickstart CNN, 64 px, batch 32, 2 fake CPU devices) ...")
        figures["data_parallel"] = data_parallel.data_parallel_throughput(64, 32, settings.steps)
        save()
    # The peak again at the end (a busy machine may have held the first back): keep the best.
    again = runner.run_matmul(settings.matmul_size)
    recorded["matmul_runs"] = [figures["matmul_gflops"], again]
    figures["matmul_gflops"] = {
        k: max(v, again.get(k, 0.0)) for k, v in figures["matmul_gflops"].items()
    }
    figures["train_step"] = table.add_ratios(measured, figures["matmul_gflops"])
    recorded["wall_s"] = round(time.perf_counter() - started, 1)
    save()
    print_tables(figures, settings)
    return figures


def _budget_words(recorded: dict[str, Any]) -> str:
    """How the peers' time was bounded, in words."""
    cap = recorded.get("peer_budget_s")
    if not cap and not recorded.get("time_limit_s"):
        return "every peer took every step"
    words = "a peer takes the steps that fit its time budget ("
    words += f"at most {cap:g} s, " if cap else ""
    words += f"{schedule.PEER_FACTOR:g}x murajax's time in the row"
    words += f"; at least {recorded.get('peer_floor_s', 0):g} s"
    if recorded.get("time_limit_s"):
        words += f"; at most its part of the {recorded['time_limit_s']:g} s time limit"
    return words + "), and says so when cut"


def _rounds_words(rounds: int) -> str:
    if rounds > 1:
        return f"in {rounds} rounds taking turns with the row's other frameworks"
    return "one framework after another"


def print_tables(figures: dict[str, Any], settings: Settings) -> None:
    """The machine, the matmul peak, the train-step table, the goals, the input-pipeline and
    data-parallel tables and the notes, on stdout."""
    machine = figures["machine"]
    recorded = figures["settings"]
    print(
        f"machine: {machine['cpu']}, {machine['cores']} cores, jax {machine['jax']}, "
        f"keras {machine['keras']}, tensorflow {machine['tensorflow']}, torch {machine['torch']}"
        f"; {machine['date']}; XLA_FLAGS={machine['XLA_FLAGS'] or '(none)'}; malloc: murajax "
        f"{machine.get('malloc', 'system')}, peers the C library's (as their users run them)"
    )
    peak = figures["matmul_gflops"]
    print(
        f"matmul peak: float32 {peak['float32']:.0f} GFLOP/s, "
        f"bfloat16 (float32 results) {peak['bfloat16']:.0f} GFLOP/s"
    )
    print(
        f"\ntrain step (median of >= {recorded['min_seconds']:g} s and >= "
        f"{recorded['min_steps']} steps after {recorded['warmup_steps']} untimed, "
        f"{_rounds_words(recorded.get('rounds', 1))}; {_budget_words(recorded)}; 'of peak' = "
        "GFLOP/s over the matmul peak of the row's dtype, which a busy machine can push past "
        "100%; 'vs best peer' = images/s over the fastest non-murajax framework of the same "
        "model, size, batch and dtype; 'params' = trainable parameters):"
    )
    print(table.format_train_table(figures["train_step"]))
    goals = table.goal_lines(figures["train_step"])
    if goals:
        print("\nissue 9's goals:")
        print("\n".join(goals))
    if figures["input_pipeline"]:
        print(
            f"\ninput pipeline on {settings.dataset} (decode + resize + augment + batch 32; "
            f"{os.cpu_count()} workers = one per core):"
        )
        print(table.format_pipeline_table(figures["input_pipeline"]))
    if "data_parallel" in figures:
        print("\ndata parallelism, quickstart CNN (64 px, global batch 32, 2 fake CPU devices):")
        print(data_parallel.format_table(figures["data_parallel"]))
    for note in recorded["notes"]:
        print(f"note: {note}")
    estimate = recorded.get("estimate_s")
    print(
        f"\n(benchmark took {schedule.format_duration(recorded['wall_s'])}"
        + (f"; estimated {schedule.format_duration(estimate)})" if estimate else ")")
    )
    if settings.json:
        print(f"wrote {settings.json}")
