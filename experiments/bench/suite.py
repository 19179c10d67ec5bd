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
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from experiments.bench import data_parallel, runner, table, workloads
from murajax.config import DataConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """What the benchmark measures and how long: the flags of `experiments.benchmark`, by the
    same names (see their help). None picks the default: `min_seconds` 10 (3 when `quick`),
    `min_steps` 5 (3), `rounds` 5 (4), `data_parallel` unless `quick`, `only` every available
    framework, `models` the workloads `quick` selects."""

    json: str | None
    quick: bool
    min_seconds: float | None
    min_steps: int | None
    rounds: int | None
    warmup_steps: int
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


def _has_data_cache() -> bool:
    return hasattr(DataConfig(), "cache")


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
    min_seconds = (
        settings.min_seconds if settings.min_seconds is not None else (3.0 if quick else 10.0)
    )
    min_steps = settings.min_steps if settings.min_steps is not None else (3 if quick else 5)
    rounds = settings.rounds if settings.rounds is not None else (4 if quick else 5)
    if rounds < 1:
        raise SettingsError(f"--rounds={rounds}: expected 1 or more")
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
        on_row=on_row,
    )
    if settings.pipeline:
        cache = settings.cache if settings.cache and _has_data_cache() else None
        specs = runner.pipeline_specs(quick, cache)
        pipeline_rows = runner.run_pipeline(
            specs, dataset=settings.dataset, data_dir=settings.data_dir, feeds=workload
        )
        figures["input_pipeline"] = table.add_step_ratios(pipeline_rows, figures["train_step"])
        save()
    if settings.data_parallel if settings.data_parallel is not None else not quick:
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
        f"; {machine['date']}; XLA_FLAGS={machine['XLA_FLAGS'] or '(none)'}"
    )
    peak = figures["matmul_gflops"]
    print(
        f"matmul peak: float32 {peak['float32']:.0f} GFLOP/s, "
        f"bfloat16 (float32 results) {peak['bfloat16']:.0f} GFLOP/s"
    )
    print(
        f"\ntrain step (median of >= {recorded['min_seconds']:g} s and >= "
        f"{recorded['min_steps']} steps after {recorded['warmup_steps']} untimed, "
        f"{_rounds_words(recorded.get('rounds', 1))}; 'of peak' = "
        "GFLOP/s over the matmul peak of the row's dtype, which a busy machine can push past "
        "100%; 'vs best peer' = images/s over the fastest non-murajax framework of the same "
        "model, size, batch and dtype):"
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
    print(f"\n(benchmark took {recorded['wall_s']:.0f} s)")
    if settings.json:
        print(f"wrote {settings.json}")
