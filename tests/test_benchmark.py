"""experiments.benchmark: ratios and tables (pure), FLOP counts, the peers' architectures, and
the command end to end with tiny settings (murajax and one peer, each in its own process)."""

import dataclasses
import json
import math
import os
import subprocess
import sys

os.environ["KERAS_BACKEND"] = "jax"  # as test_keras_parity: before keras is imported

import time  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from experiments.bench import (  # noqa: E402
    runner,
    schedule,
    suite,
    table,
    timing,
    worker,
    workloads,
)
from murajax import (
    models,  # noqa: E402
    validation,
)
from tests.test_allocator import expected_malloc  # noqa: E402

TINY = dataclasses.replace(workloads.by_key("C"), image_size=16, batch_size=4)
TRAIN_KEYS = (
    "framework",
    "model",
    "image_size",
    "batch_size",
    "dtype",
    "images_per_s",
    "step_s",
    "compile_s",
    "peak_memory_mb",
    "gflops",
    "peak_fraction",
    "ratio_to_best_peer",
)


def _row(framework: str, speed: float | None, dtype: str = "float32", **kw) -> dict:
    row = {
        "framework": framework,
        "model": "cnn_c",
        "image_size": 128,
        "batch_size": 32,
        "dtype": dtype,
        "images_per_s": speed,
    }
    return {**row, **kw}


# --------------------------------------------------------------------------- pure functions


def test_add_ratios_compares_each_row_with_the_fastest_peer_of_its_group():
    rows = [
        _row("murajax", 50.0, gflops=100.0),
        _row("murajax-xla", 40.0),
        _row("keras-tf", 100.0, gflops=150.0),
        _row("keras-jax", 25.0),
        _row("torch-eager", None, error="boom"),  # a failed peer is no peer
        _row("murajax", 90.0, "bfloat16", gflops=200.0),
        _row("keras-tf", 60.0, "bfloat16"),
        _row("torch-compile", 120.0, "bfloat16"),
        _row("murajax", 10.0, model="multiview"),  # no peer at all
    ]
    out = table.add_ratios(rows, {"float32": 200.0, "bfloat16": 400.0})
    got = {(r["framework"], r["dtype"], r["model"]): r for r in out}
    assert got["murajax", "float32", "cnn_c"]["ratio_to_best_peer"] == 0.5
    assert got["murajax", "float32", "cnn_c"]["best_peer"] == "keras-tf"
    assert got["murajax-xla", "float32", "cnn_c"]["ratio_to_best_peer"] == 0.4
    assert got["keras-tf", "float32", "cnn_c"]["ratio_to_best_peer"] == 1.0
    assert got["keras-jax", "float32", "cnn_c"]["ratio_to_best_peer"] == 0.25
    assert got["torch-eager", "float32", "cnn_c"]["ratio_to_best_peer"] is None
    assert got["murajax", "bfloat16", "cnn_c"]["ratio_to_best_peer"] == 0.75
    assert got["murajax", "bfloat16", "cnn_c"]["best_peer"] == "torch-compile"
    assert got["murajax", "float32", "multiview"]["ratio_to_best_peer"] is None
    # peak fraction: against the matmul peak of the row's own dtype
    assert got["murajax", "float32", "cnn_c"]["peak_fraction"] == 0.5
    assert got["murajax", "bfloat16", "cnn_c"]["peak_fraction"] == 0.5
    assert got["keras-jax", "float32", "cnn_c"]["peak_fraction"] is None
    assert "ratio_to_best_peer" not in rows[0]  # copies, not in place
    # the goals' cross-dtype ratio: murajax bfloat16 over keras-tf float32
    assert table.ratio(out, "cnn_c", "murajax", "keras-tf", "bfloat16", "float32") == 0.9
    assert table.ratio(out, "cnn_c", "murajax", "keras-jax", "bfloat16") is None


def test_add_step_ratios_uses_the_fastest_murajax_step_it_feeds():
    train = [
        _row("murajax", 50.0),
        _row("murajax", 80.0, "bfloat16"),
        _row("keras-tf", 500.0),  # a peer's speed is not what the pipeline must feed
    ]
    pipeline = [
        {"source": "s", "image_size": 128, "workers": 0, "images_per_s": 200.0},
        {"source": "s", "image_size": 128, "workers": 2, "images_per_s": None},
        {"source": "s", "image_size": 224, "workers": 0, "images_per_s": 30.0},
    ]
    for row in pipeline:
        row.update(feeds_model="cnn_c", feeds_image_size=row["image_size"], feeds_batch=32)
    out = table.add_step_ratios(pipeline, train)
    assert out[0]["step_images_per_s"] == 80.0 and out[0]["ratio_to_step"] == 2.5
    assert out[1]["ratio_to_step"] is None
    assert out[2]["step_images_per_s"] is None and out[2]["ratio_to_step"] is None


def test_tables_are_fixed_width_and_show_errors():
    rows = table.add_ratios(
        [
            _row("murajax", 50.0, step_s=0.64, compile_s=3.2, peak_memory_mb=900.0, gflops=40.0),
            _row("keras-tf", 100.0, step_s=0.32, compile_s=2.0, peak_memory_mb=1000.0),
            _row("torch-compile", None, error="timed out after 1800 s"),
        ],
        {"float32": 80.0},
    )
    text = table.format_train_table(rows)
    header, *lines = text.splitlines()
    assert header.split()[:5] == ["model", "size", "batch", "dtype", "framework"]
    assert "vs best peer" in header
    assert lines[0].endswith("0.50x") and lines[1].endswith("1.00x")
    assert len(lines[0]) == len(lines[1]) == len(header)  # right-aligned columns line up
    assert lines[0].index("50.0") + 4 == lines[1].index("100.0") + 5
    assert "50%" in lines[0]  # 40 GFLOP/s of an 80 GFLOP/s peak
    assert "(timed out after 1800 s)" in lines[2]

    pipeline = [
        {
            "source": "mura_synthetic@512px",
            "image_size": 128,
            "workers": 2,
            "images_per_s": 300.0,
            "startup_s": 1.5,
            "feeds": "cnn_c@128 b32",
            "step_images_per_s": 100.0,
            "ratio_to_step": 3.0,
        }
    ]
    text = table.format_pipeline_table(pipeline)
    assert "pipeline/step" in text.splitlines()[0]
    assert text.splitlines()[1].endswith("3.00x")


def test_table_has_parameter_counts_and_footnotes_for_cut_rows():
    rows = table.add_ratios(
        [
            _row("murajax", 50.0, params=68_915),
            _row("keras-tf", 10.0, params=68_915, note="cut short to fit: 2 timed steps"),
            _row("keras-jax", 40.0, params=14_714_688),  # not the same network
            _row("torch-eager", 1.0, first_step_only=True, note="only its first step"),
        ]
    )
    got = {r["framework"]: r for r in rows}
    assert got["keras-tf"]["params_match"] and not got["keras-jax"]["params_match"]
    assert "params_match" not in got["murajax"]
    assert got["murajax"]["best_peer"] == "keras-jax"  # the first step only is no step time
    assert got["torch-eager"]["ratio_to_best_peer"] is None
    text = table.format_train_table(rows)
    lines = text.splitlines()
    assert "params" in lines[0] and "68.9k" in lines[1] and "14.7M" in lines[3]
    assert lines[2].endswith("[1]") and lines[3].endswith("[2]") and lines[4].endswith("[3]")
    assert lines[5] == "[1] keras-tf cnn_c@128 float32: cut short to fit: 2 timed steps"
    assert "14,714,688 parameters, not murajax's" in lines[6]
    assert lines[7].startswith("[3] torch-eager") and len(lines) == 8
    assert [table.format_params(n) for n in (512, 999_499, 999_500, None)] == [
        "512",
        "999.5k",
        "1.0M",
        "-",
    ]


def test_a_slow_compiling_model_raises_the_floor_to_its_compile_estimate():
    assert schedule.model_floor_s("cnn_c", 60) == 60
    densenet = schedule.model_floor_s("densenet169", 60)
    assert densenet == schedule.SPAWN_S + schedule.COMPILE_S["densenet169"] > 60
    budget = schedule.peer_budget(cap_s=400, floor_s=densenet, murajax_s=49)
    assert budget.seconds == densenet and "floor" in budget.why  # not 3x 49 s = 147 s


def test_peer_budget_is_cap_or_murajax_times_3_at_least_the_floor_within_the_time_limit():
    budget = schedule.peer_budget(cap_s=120, floor_s=20, murajax_s=30, share_left_s=300)
    assert budget == schedule.Budget(90, "3x murajax's 30 s")
    budget = schedule.peer_budget(cap_s=120, floor_s=20, murajax_s=60)
    assert budget == schedule.Budget(120, "the 120 s cap")
    budget = schedule.peer_budget(cap_s=120, floor_s=20, murajax_s=1, share_left_s=1000)
    assert budget == schedule.Budget(20, "the 20 s floor")
    budget = schedule.peer_budget(
        cap_s=120, floor_s=20, murajax_s=60, share_left_s=200, peers_left=4
    )
    assert budget == schedule.Budget(50, "the run's time limit")
    budget = schedule.peer_budget(cap_s=120, floor_s=20, murajax_s=1, share_left_s=-50)
    assert budget == schedule.Budget(0, "the run's time limit", skip=True)  # the limit wins
    budget = schedule.peer_budget(cap_s=5, floor_s=5, share_left_s=9)
    assert budget == schedule.Budget(5, "the 5 s cap")  # short, but as asked: started


def test_a_peer_the_time_limit_leaves_no_time_is_not_started(monkeypatch):
    _fake_processes(monkeypatch, {})
    started = []
    spawn = runner.spawn
    monkeypatch.setattr(
        runner, "spawn", lambda command, **kw: started.append(1) or spawn(command, **kw)
    )
    clock = schedule.RunClock([10.0], limit_s=1.0)  # nothing to share once murajax ran
    budgets = runner.Budgets(cap_s=60, floor_s=60, clock=clock)
    rows = runner.run_train_steps(
        [TINY], ["float32"], ["murajax", "keras-tf"], min_seconds=0.0, rounds=2, budgets=budgets
    )
    murajax, keras = rows
    assert murajax["images_per_s"] > 0 and len(started) == 1  # keras-tf's never started
    assert keras["images_per_s"] is None
    assert keras["note"].startswith("not measured: the run's time limit left it")
    assert keras["budget_s"] < schedule.LEAST_PEER_S and keras["cut_short"]


def test_turns_and_warmup_that_fit_a_budget():
    plan = schedule.Timing(rounds=3, min_seconds=6.0, min_steps=3, warmup_steps=2)
    assert (plan.turn_seconds, plan.turn_steps) == (2.0, 1)
    assert plan.turns_s(0.5) == 3 * 4 * 0.5  # 2 s turns of 0.5 s steps
    assert plan.turns_s(10.0, rounds=2) == 2 * 10.0
    full = schedule.Turn(2.0, 1)
    assert schedule.next_turn(math.inf, 10.0, 3, plan) == full
    assert schedule.next_turn(30.0, 10.0, 3, plan) == full  # three 10 s turns fit
    assert schedule.next_turn(25.0, 10.0, 3, plan) is None  # 2 steps: the later rounds
    # 10 s is only the first step's (compile included): one step now, to learn its time
    assert schedule.next_turn(25.0, 10.0, 3, plan, known=False) == schedule.Turn(0.0, 1, 1)
    assert schedule.next_turn(25.0, 10.0, 2, plan) == full  # two turns fit
    assert schedule.next_turn(9.0, 10.0, 1, plan) is None
    # 1 s steps: a full turn is two (2 s); 5 s left for 3 turns: 1 step now, 4 s for 2
    assert schedule.next_turn(5.0, 1.0, 3, plan) == schedule.Turn(0.0, 1, 1)
    assert schedule.next_turn(1.5, 1.0, 1, plan) == schedule.Turn(0.0, 1, 1)
    assert schedule.Turn(0.0, 1, 1).cut and not full.cut
    assert schedule.Turn(0.0, 2, 2).command() == {
        "min_seconds": 0.0,
        "min_steps": 2,
        "max_steps": 2,
    }
    assert timing.warmup_that_fits(math.inf, 10.0, 1) == 1
    assert timing.warmup_that_fits(25.0, 10.0, 1) == 1  # and one timed step after it
    assert timing.warmup_that_fits(15.0, 10.0, 1) == 0  # room for the timed step only
    budget = schedule.Budget(60, "the 60 s cap")
    counts = {"warmup_wanted": 1, "rounds": 3}
    assert (
        schedule.cut_note(
            budget, first_step=True, warmup_steps=1, timed_steps=3, turns=3, cut=False, **counts
        )
        is None
    )
    note = schedule.cut_note(
        budget, first_step=True, warmup_steps=0, timed_steps=2, turns=2, cut=True, **counts
    )
    assert note == (
        "cut short to fit within its 60 s budget (the 60 s cap): 2 timed steps, in 2 of 3 "
        "rounds, no warm-up step"
    )


def test_run_clock_shares_the_time_limit_by_estimate_and_says_how_far_it_is():
    now = [0.0]
    clock = schedule.RunClock([10, 30, 60], 1000, reserve_s=100, clock=lambda: now[0])
    assert clock.share_s(0) == pytest.approx(900 * 10 / 100)
    now[0] = 50.0  # the first row took 50 s, five times its estimate
    assert clock.share_s(1) == pytest.approx(850 * 30 / 90)  # the rest, by estimate
    assert clock.left_estimate_s(1) == pytest.approx(5 * 90 + 100)
    assert clock.progress(1) == (
        "row 1/3 done; 50 s elapsed, about 9 min to go (time limit 17 min)"
    )
    now[0] = 2000.0  # past the limit: nothing left to share
    assert clock.share_s(2) == 0.0
    unlimited = schedule.RunClock([10], None)
    assert unlimited.share_s(0) is None and "limit" not in unlimited.progress(1)
    assert [schedule.format_duration(s) for s in (45, 600, 3900)] == [
        "45 s",
        "10 min",
        "1 h 05 min",
    ]


@pytest.mark.parametrize("bfloat16_peak", [300.0, 40.0])  # AVX512_BF16; AVX2 only
def test_the_default_time_limits_leave_room_for_the_peers(bfloat16_peak):
    """On a 2-core machine (matmul peaks of the AMD EPYC of this work: 150 GFLOP/s float32,
    300 bfloat16; an AVX2 one has about 40 in bfloat16), murajax's estimated rows (never cut)
    and what follows the train steps fit the default time limits of --quick (under 10 min)
    and of the full run (under an hour), so that the peers' budgets can keep to them."""
    figures = {"matmul_gflops": {"float32": 150.0, "bfloat16": bfloat16_peak}}
    for quick, hard_limit in ((True, 600), (False, 3600)):
        defaults = suite.DEFAULTS[quick]
        assert defaults["time_limit_s"] < hard_limit
        plan = schedule.Timing(
            defaults["rounds"], defaults["min_seconds"], defaults["min_steps"], 2
        )
        selected = workloads.select(quick)
        murajax = suite.row_estimates(
            selected, workloads.DTYPES, ["murajax", "murajax-xla"], plan, figures, math.inf
        )
        reserve = len(runner.pipeline_specs(quick, "memory")) * schedule.PIPELINE_SPEC_S
        reserve += 2 * schedule.MATMUL_S + (0 if quick else schedule.DATA_PARALLEL_S)
        assert len(murajax) == 2 * len(selected)
        assert sum(murajax) + reserve < defaults["time_limit_s"], (quick, murajax)


class FakeClock:
    """`time` for `timing`: each `step()` advances `perf_counter` by its next known duration
    (binary fractions, so the sums and medians are exact)."""

    def __init__(self, durations: list[float]) -> None:
        self.now = 100.0
        self.durations = iter(durations)
        self.steps = 0

    def perf_counter(self) -> float:
        return self.now

    def step(self) -> None:
        self.steps += 1
        self.now += next(self.durations)


def test_time_steps_times_the_first_step_alone_and_takes_the_median(monkeypatch):
    # compile 5 s, one warm-up step of 8 s (untimed), then steps until 3 s have been timed
    clock = FakeClock([5.0, 8.0, 0.25, 0.125, 0.5, 2.0, 1.0, 64.0])
    monkeypatch.setattr(timing, "time", clock)
    result = timing.time_steps(clock.step, min_seconds=3.0, min_steps=2, warmup_steps=2)
    assert clock.steps == 2 + 5  # 0.25 + 0.125 + 0.5 + 2 < 3 s: a fifth step, then enough
    assert result == {
        "compile_s": 5.0,
        "warmup_steps": 2,
        "step_s": 0.5,  # the median: not the mean 0.775, nor the minimum
        "step_s_min": 0.125,
        "steps": 5,
        "timed_s": 3.875,
    }
    row = timing.measurement_row(result, 8, flops=1e9)
    assert (row["images_per_s"], row["step_s"], row["step_s_min"]) == (16.0, 0.5, 0.125)
    assert (row["compile_s"], row["timed_s"], row["gflops"]) == (5.0, 3.88, 2.0)
    assert row["peak_memory_mb"] > 10


def test_time_steps_in_turns_times_the_stretches_the_runner_asks_for(monkeypatch):
    """After the first step and the warm-up it says READY with their seconds, then answers
    each command with that stretch's step times, until stdin ends; the row keeps every
    stretch's median."""
    import io

    clock = FakeClock([5.0, 8.0, 0.25, 0.5, 1.0, 0.125, 2.0, 64.0])
    monkeypatch.setattr(timing, "time", clock)
    commands = io.StringIO(
        '{"min_seconds": 0.0, "min_steps": 2}\n\n'
        '{"min_seconds": 3.0, "min_steps": 1, "max_steps": 9}\n'
    )
    replies = io.StringIO()
    result = timing.time_steps(
        clock.step,
        min_seconds=99.0,  # the runner's commands decide, not these
        min_steps=99,
        warmup_steps=2,
        turns=True,
        commands=commands,
        replies=replies,
    )
    assert replies.getvalue().splitlines() == [
        timing.READY_LINE + ' {"compile_s": 5.0, "warmup_s": [8.0]}',
        timing.TIMES_PREFIX + "[0.25, 0.5]",
        timing.TIMES_PREFIX + "[1.0, 0.125, 2.0]",  # until 3 s were timed
    ]
    assert clock.steps == 2 + 5
    assert result == {
        "compile_s": 5.0,
        "warmup_steps": 2,  # the first step and the untimed one
        "step_s": 0.5,  # the median of all five
        "step_s_min": 0.125,
        "steps": 5,
        "timed_s": 3.875,
        "turn_step_s": [0.375, 1.0],  # each stretch's median, in order
    }
    row = timing.measurement_row(result, 4, flops=None)
    assert row["turn_step_s"] == [0.375, 1.0] and row["images_per_s"] == 8.0


def test_time_steps_in_turns_stops_at_max_steps_and_can_be_its_first_step_only(monkeypatch):
    import io

    clock = FakeClock([5.0, 1.0, 1.0, 1.0])
    clock.time = lambda: clock.now  # the deadline's clock
    monkeypatch.setattr(timing, "time", clock)
    replies = io.StringIO()
    commands = io.StringIO('{"min_seconds": 60.0, "min_steps": 1, "max_steps": 2}\n')
    result = timing.time_steps(  # 9 s left after the first step: room for one timed step
        clock.step,
        min_seconds=0.0,
        turns=True,
        deadline=clock.now + 5.0 + 9.0,
        commands=commands,
        replies=replies,
    )
    assert clock.steps == 3 and result["steps"] == 2  # 60 s asked, 2 steps allowed
    assert result["warmup_steps"] == 1  # the default 2 less the one a deadline leaves out

    clock = FakeClock([5.0, 1.0])
    monkeypatch.setattr(timing, "time", clock)
    commands = io.StringIO('{"stop": true, "first_step_only": true}\n')
    result = timing.time_steps(
        clock.step,
        min_seconds=1.0,
        warmup_steps=1,
        turns=True,
        commands=commands,
        replies=io.StringIO(),
    )
    assert clock.steps == 1
    assert result["first_step_only"] and result["steps"] == 0 and result["step_s"] == 5.0
    assert timing.measurement_row(result, 5, None)["first_step_only"]


def test_measurement_row_keeps_the_precision_of_millisecond_steps():
    """A 4.6 ms step is not rounded to 4.6 ms flat: step_s and images/s agree to 0.1%."""
    timing_ = {
        "step_s": 0.004649486,
        "step_s_min": 0.0041234,
        "compile_s": 1.0,
        "steps": 9,
        "timed_s": 0.3,
    }
    row = timing.measurement_row(timing_, 4, flops=None)
    assert row["step_s"] == pytest.approx(4 / row["images_per_s"], rel=1e-3)
    assert row["step_s"] == 0.004649 and row["step_s_min"] == 0.004123


def test_frameworks_choose_order_and_skip_torch_without_it(monkeypatch):
    assert runner.frameworks(["keras-jax", "murajax"]) == ["murajax", "keras-jax"]
    with pytest.raises(ValueError, match="unknown framework"):
        runner.frameworks(["keras-pytorch"])
    default = runner.frameworks()
    assert default[0] == "murajax"
    assert "murajax-xla" in default
    monkeypatch.setattr(runner, "torch_available", lambda: False)
    notes: list[str] = []
    chosen = runner.frameworks(None, notes)
    assert not [f for f in chosen if f.startswith("torch")]
    assert "keras-tf" in chosen and notes and "torch" in notes[0]
    multiview = workloads.by_key("multiview")
    assert runner.has_peer("murajax", multiview) and runner.has_peer("keras-tf", multiview)
    assert not runner.has_peer("torch-eager", multiview)  # Keras only


def test_workload_selection_and_configs():
    assert [w.key for w in workloads.select(quick=True)] == ["C", "A"]
    assert len(workloads.select(quick=False)) == len(workloads.WORKLOADS)
    assert [w.key for w in workloads.select(False, ["A", "cnn_c"])] == ["C", "A"]
    for name in ("resnet", "vgg16"):  # unknown; a model label of two workloads
        with pytest.raises(ValueError, match="unknown workload"):
            workloads.by_key(name)
    for workload in workloads.WORKLOADS:
        for dtype in workloads.DTYPES:
            config = workload.config(dtype, conv_impl="xla")
            validation.validate(config)
            assert config.model.dtype == dtype and config.optim.name == "adam"
            assert config.optim.schedule == "constant"
            assert getattr(config.model, "conv_impl", "xla") == "xla"


# --------------------------------------------------------------------------- architectures


def test_analytic_flops_match_published_counts_and_xla():
    # VGG16's convolutions: 15.35 G multiply-adds at 224 px; DenseNet-169: about 3.36 G.
    assert workloads.vgg16_forward_flops(224) == pytest.approx(2 * 15.35e9, rel=0.01)
    assert workloads.densenet169_forward_flops(224) == pytest.approx(2 * 3.36e9, rel=0.01)
    # XLA's count skips the zero padding of 'same' convolutions: a few % fewer at 64 px.
    workload = dataclasses.replace(workloads.by_key("quickstart"), batch_size=2)
    config = workload.config(conv_impl="xla")
    model = models.create_from_config(config.model)
    x = jnp.zeros((2, workload.image_size, workload.image_size, 1))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    xla = jax.jit(model.apply).lower(variables, x).cost_analysis()["flops"] / 2
    assert workloads.forward_flops(workload) == pytest.approx(xla, rel=0.1)
    assert workloads.train_step_flops(workload) == 3 * 2 * workloads.forward_flops(workload)
    # The multi-view model per view slot: the encoder on a view and a quarter of the head.
    multiview = dataclasses.replace(workloads.by_key("multiview"), batch_size=2)
    model = models.create_from_config(multiview.config(conv_impl="xla").model)
    x = jnp.zeros((2, multiview.views, multiview.image_size, multiview.image_size, 1))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    xla = jax.jit(model.apply).lower(variables, x).cost_analysis()["flops"] / 2 / 4
    assert workloads.forward_flops(multiview) == pytest.approx(xla, rel=0.1)


def _murajax_weight_shapes(workload: workloads.Workload) -> list[tuple[int, ...]]:
    """The shapes of murajax's trainable weights, layer by layer in the order the model calls
    its layers, each layer's as Keras lists them: kernel (or BatchNorm's scale), then bias."""
    model = models.create_from_config(workload.config(conv_impl="xla").model)
    shape = (1, workload.image_size, workload.image_size, workload.channels)
    if workload.views > 1:
        shape = (1, workload.views, *shape[1:])
    called: list[tuple[str, ...]] = []  # module paths, in call order

    def record(method, args, kwargs, context):
        if context.method_name == "__call__":
            called.append(tuple(context.module.path))
        return method(*args, **kwargs)

    with nn.intercept_methods(record):
        variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))
    layers = {path: weights for path, weights in _layers_with_weights(variables["params"])}
    assert set(called) >= set(layers), "a layer with weights was not seen being called"
    order = ("kernel", "scale", "bias")  # Keras: kernel, bias; BatchNorm: gamma, beta
    return [
        tuple(layers[path][name].shape)
        for path in dict.fromkeys(called)
        if path in layers
        for name in sorted(layers[path], key=order.index)
    ]


def _layers_with_weights(params: dict, path: tuple[str, ...] = ()):
    """(module path, {weight name: array}) of every module of `params` that owns weights."""
    own = {name: value for name, value in params.items() if not isinstance(value, dict)}
    if own:
        yield path, own
    for name, value in params.items():
        if isinstance(value, dict):
            yield from _layers_with_weights(value, (*path, name))


def _keras_shape_of_torch(parameter) -> tuple[int, ...]:
    """A torch weight's shape as Keras (and murajax) store it: convolution kernels HWIO, dense
    kernels (in, out)."""
    shape = tuple(parameter.shape)
    if len(shape) == 4:  # (out, in, h, w)
        return (shape[2], shape[3], shape[1], shape[0])
    if len(shape) == 2:  # (out, in)
        return (shape[1], shape[0])
    return shape


@pytest.mark.parametrize("key", ["C", "quickstart", "A", "multiview"])
def test_keras_peer_trains_the_same_architecture(key):
    from experiments.bench import keras_peer

    workload = dataclasses.replace(workloads.by_key(key), image_size=32, batch_size=2)
    spec = workloads.peer_spec(workload)
    model = keras_peer.build_model(spec)
    keras_shapes = [tuple(w.shape) for w in model.trainable_weights]
    assert keras_shapes == _murajax_weight_shapes(workload)  # layer by layer, in order
    assert timing.parameter_count(keras_shapes) == timing.parameter_count(
        _murajax_weight_shapes(workload)
    )
    images, _ = keras_peer.inputs(spec)
    assert tuple(model(images).shape) == (2, 2)


def test_keras_multiview_peer_computes_murajax_multiview():
    """With murajax's weights, the Keras multi-view model gives murajax's logits, padded
    views (and a study with none real) included: the same network, not only the same
    shapes. The parameter counts of both, printed, are the workload's."""
    from experiments.bench import keras_peer

    workload = dataclasses.replace(workloads.by_key("multiview"), image_size=32, batch_size=3)
    spec = workloads.peer_spec(workload)
    keras_model = keras_peer.build_model(spec)
    model = models.create_from_config(workload.config(conv_impl="xla").model)
    batch, _ = keras_peer.inputs(spec, seed=1)
    batch["view_mask"][0, 2:] = False  # a study of two views
    batch["view_mask"][2, :] = False  # a padding row: no real view
    variables = model.init(jax.random.key(1), batch["image"])
    murajax_weights = _weights_in_call_order(model, variables, batch["image"])
    for keras_weight, value in zip(keras_model.trainable_weights, murajax_weights, strict=True):
        keras_weight.assign(np.asarray(value))
    want = model.apply(variables, batch["image"], view_mask=batch["view_mask"])
    got = keras_model(batch, training=False)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5)
    murajax_count = sum(x.size for x in jax.tree.leaves(variables["params"]))
    keras_count = timing.parameter_count(w.shape for w in keras_model.trainable_weights)
    print(f"multiview parameters: murajax {murajax_count:,}, Keras {keras_count:,}")
    assert murajax_count == keras_count == 68_915


def _weights_in_call_order(model, variables, images) -> list:
    """murajax's trainable weights in the order `_murajax_weight_shapes` lists them."""
    called: list[tuple[str, ...]] = []

    def record(method, args, kwargs, context):
        if context.method_name == "__call__":
            called.append(tuple(context.module.path))
        return method(*args, **kwargs)

    with nn.intercept_methods(record):
        model.apply(variables, images)
    layers = dict(_layers_with_weights(variables["params"]))
    order = ("kernel", "scale", "bias")
    return [
        layers[path][name]
        for path in dict.fromkeys(called)
        if path in layers
        for name in sorted(layers[path], key=order.index)
    ]


@pytest.mark.parametrize("key", ["C", "quickstart", "A"])
def test_torch_peer_trains_the_same_architecture(key):
    pytest.importorskip("torch", reason="torch is the optional `bench` extra")
    import torch

    from experiments.bench import torch_peer

    workload = dataclasses.replace(workloads.by_key(key), image_size=32)
    model = torch_peer.build_model(workloads.peer_spec(workload))
    torch_shapes = [_keras_shape_of_torch(p) for p in model.parameters()]
    assert torch_shapes == _murajax_weight_shapes(workload)  # layer by layer, in order
    assert model(torch.zeros(2, workload.channels, 32, 32)).shape == (2, 2)


@pytest.mark.slow
def test_torch_densenet169_peer_has_murajax_weight_shapes():
    pytest.importorskip("torch", reason="torch is the optional `bench` extra")
    from experiments.bench import torch_peer

    workload = dataclasses.replace(workloads.by_key("densenet169"), image_size=64)
    model = torch_peer.build_model(workloads.peer_spec(workload))
    torch_shapes = [_keras_shape_of_torch(p) for p in model.parameters()]
    assert torch_shapes == _murajax_weight_shapes(workload)  # layer by layer, in order


# --------------------------------------------------------------------------- end to end


_FAKE_PROCESS = """
import importlib.util, json, sys, time
spec = importlib.util.spec_from_file_location("timing", sys.argv[2])
timing = importlib.util.module_from_spec(spec)
spec.loader.exec_module(timing)  # standard library only: as a peer's process loads it
job = json.loads(sys.argv[1])
first_s, step_s = json.loads(sys.argv[3]).get(job["framework"], [0.002, 0.002])
if job["framework"] == "keras-jax" and first_s is None:  # dies in its second stretch
    print(timing.READY_LINE + ' {"compile_s": 0.01}', flush=True)
    sys.stdin.readline()
    print(timing.TIMES_PREFIX + "[0.01]", flush=True)
    sys.stdin.readline()
    sys.exit("MemoryError: out of memory")
steps = iter([first_s])
step = lambda: time.sleep(next(steps, step_s))
result = timing.time_steps(
    step, min_seconds=0.0, turns=job["turns"], deadline=job.get("deadline")
)
print("RESULT " + json.dumps(timing.measurement_row(result, 4, None)), flush=True)
"""


def _fake_processes(monkeypatch, seconds: dict[str, list]) -> None:
    """Measurement processes that run `timing.time_steps` on a sleep: `seconds[framework]` is
    [first step, later steps] in seconds (default 2 ms each)."""
    monkeypatch.setattr(
        runner,
        "_command",
        lambda job: [
            sys.executable,
            "-c",
            _FAKE_PROCESS,
            json.dumps(job),
            timing.__file__,
            json.dumps(seconds),
        ],
    )


def test_interleaved_rounds_rotate_and_a_failing_process_leaves_the_others(monkeypatch):
    """`run_train_steps` with rounds: every process gets one stretch per round; a process
    that dies mid-way becomes a row with its last error line, and the others finish."""
    _fake_processes(monkeypatch, {"keras-jax": [None, None]})
    rows = runner.run_train_steps(
        [TINY], ["float32"], ["murajax", "keras-tf", "keras-jax"], min_seconds=0.0, rounds=3
    )
    by_framework = {r["framework"]: r for r in rows}
    assert [r["framework"] for r in rows] == ["murajax", "keras-tf", "keras-jax"]
    for name in ("murajax", "keras-tf"):
        assert by_framework[name]["rounds"] == 3
        assert len(by_framework[name]["turn_step_s"]) == 3
        assert by_framework[name]["steps"] == 3 * 2  # ceil(min_steps 5 / 3 rounds) per turn
        assert by_framework[name]["warmup_steps"] == 2  # the first and one untimed
        assert "note" not in by_framework[name]  # no budget: every step
    failed = by_framework["keras-jax"]
    assert failed["images_per_s"] is None
    assert failed["error"] == "MemoryError: out of memory"


@pytest.mark.parametrize("rounds", [3, 1])
def test_a_slow_peer_takes_the_steps_that_fit_its_budget(monkeypatch, rounds):
    """Peers with a 4 s budget: one with 0.6 s steps times fewer steps, one whose first step
    takes 3 s is its first step only (not compared), one whose first step never ends is
    stopped at the budget; each row says why, murajax's takes every step, and the row is
    over in about murajax's time plus the budgets, not the slow peers' time."""
    _fake_processes(
        monkeypatch,
        {"keras-tf": [0.6, 0.6], "keras-tf-xla": [3.0, 3.0], "keras-jax": [600.0, 0.0]},
    )
    frameworks = ["murajax", "keras-tf", "keras-tf-xla", "keras-jax"]
    budgets = runner.Budgets(cap_s=4.0, floor_s=4.0)
    start = time.monotonic()
    rows = runner.run_train_steps(
        [TINY], ["float32"], frameworks, min_seconds=0.0, rounds=rounds, budgets=budgets
    )
    took = time.monotonic() - start
    assert took < 3 * 4.0 + 10  # the 600 s first step did not hold it up
    got = {r["framework"]: r for r in rows}
    planned = rounds * math.ceil(5 / rounds)  # min_steps 5 over the rounds
    assert got["murajax"]["steps"] == planned  # every planned step
    assert "budget_s" not in got["murajax"] and "note" not in got["murajax"]
    slow = got["keras-tf"]
    assert slow["budget_s"] == 4.0 and slow["cut_short"]
    assert 1 <= slow["steps"] < planned and slow["step_s"] == pytest.approx(0.6, rel=0.2)
    assert slow["spent_s"] <= 4.0 + 0.6  # a step may end a little past the budget
    assert slow["note"].startswith("cut short to fit within its 4 s budget (the 4 s floor)")
    first_only = got["keras-tf-xla"]
    assert first_only["first_step_only"] and first_only["steps"] == 0, first_only
    assert first_only["step_s"] == pytest.approx(3.0, rel=0.2)
    assert first_only["warmup_steps"] == 1  # no room for a warm-up step either
    assert "only its first step" in first_only["note"]
    stopped = got["keras-jax"]
    assert stopped["images_per_s"] is None and "error" not in stopped
    assert stopped["note"].startswith("cut short: no first step within its 4 s budget")
    rows = table.add_ratios(rows)
    ratios = {r["framework"]: r["ratio_to_best_peer"] for r in rows}
    assert ratios["keras-tf-xla"] is None and ratios["keras-jax"] is None  # not compared
    assert ratios["murajax"] == pytest.approx(
        got["murajax"]["images_per_s"] / slow["images_per_s"], rel=0.01
    )
    text = table.format_train_table(rows)
    assert text.count("cut short") == 3  # the three notes, under the table


def _benchmark(tmp_path, flags: list[str], timeout: float):
    """`python -m experiments.benchmark` at 16 px in float32, two or more steps a row, no
    pipeline or data-parallel table, with `flags`: (its process, its JSON)."""
    out = tmp_path / "bench.json"
    common = ["--image_size=16", "--dtypes=float32", "--min_steps=2", "--matmul_size=256"]
    tables = ["--nopipeline", "--nodata_parallel", f"--json={out}"]
    command = [sys.executable, "-m", "experiments.benchmark", *flags, *common, *tables]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result, json.loads(out.read_text())


def test_benchmark_command_end_to_end(tmp_path):
    """murajax and Keras on JAX on a 16 px CNN, each in its own process, taking turns over 3
    rounds, and the JSON."""
    result, figures = _benchmark(
        tmp_path,
        [
            "--models=C",
            "--batch_size=4",
            "--only=murajax,keras-jax",
            "--min_seconds=0.2",
            "--rounds=3",
        ],
        timeout=300,
    )
    assert {"machine", "matmul_gflops", "train_step", "input_pipeline"} <= set(figures)
    machine = figures["machine"]
    for key in ("cpu", "cores", "jax", "jaxlib", "keras", "tensorflow", "torch", "date"):
        assert key in machine
    assert "ynn_fusion_type" in machine["XLA_FLAGS"]  # experiments/__init__.py's flag
    # `python -m experiments.benchmark` restarted itself with tcmalloc where it is installed
    # (murajax.allocator), and its murajax processes inherited it; a peer goes without.
    assert machine["malloc"] == expected_malloc()
    assert figures["matmul_gflops"]["float32"] > 0 and figures["matmul_gflops"]["bfloat16"] > 0
    assert figures["settings"]["min_seconds"] == 0.2
    rows = {r["framework"]: r for r in figures["train_step"]}
    assert set(rows) == {"murajax", "keras-jax"}
    assert rows["murajax"]["malloc"] == expected_malloc()
    for row in rows.values():
        assert set(TRAIN_KEYS) <= set(row), row
        assert (row["model"], row["image_size"], row["batch_size"]) == ("cnn_c", 16, 4)
        assert row["images_per_s"] > 0 and row["steps"] >= 3 and row["timed_s"] >= 0.2
        assert row["rounds"] == 3 and len(row["turn_step_s"]) == 3
        assert row["step_s"] == pytest.approx(4 / row["images_per_s"], rel=0.01)
        assert row["compile_s"] > 0 and row["peak_memory_mb"] > 100
        assert row["gflops"] > 0 and 0 < row["peak_fraction"]
    assert rows["keras-jax"]["ratio_to_best_peer"] == 1.0
    assert rows["murajax"]["ratio_to_best_peer"] == pytest.approx(
        rows["murajax"]["images_per_s"] / rows["keras-jax"]["images_per_s"], abs=0.001
    )
    assert rows["murajax"]["flops_source"].startswith("xla_cost_analysis")
    assert rows["keras-jax"]["flops_source"] == "analytic"
    assert rows["keras-jax"]["isolated"]  # the peer's process imported no murajax
    assert "vs best peer" in result.stdout and "keras-jax" in result.stdout
    progress = result.stderr
    assert "murajax cnn_c@16 b4 float32: compiling" in progress
    assert progress.index("round 1/3") < progress.index("round 3/3")  # progress, in order
    assert "in 3 rounds taking turns" in result.stdout


def test_benchmark_command_compares_the_multiview_model_with_keras_tf(tmp_path):
    """`--models=multiview --only=murajax,keras-tf`: the study model against the same
    shared-encoder network in Keras on TensorFlow, with a ratio, and the same parameter
    count in both rows."""
    result, figures = _benchmark(
        tmp_path,
        [
            "--models=multiview",
            "--batch_size=2",
            "--only=murajax,keras-tf",
            "--min_seconds=0.1",
            "--rounds=2",
        ],
        timeout=400,
    )
    rows = {r["framework"]: r for r in figures["train_step"]}
    assert set(rows) == {"murajax", "keras-tf"}
    murajax, keras = rows["murajax"], rows["keras-tf"]
    for row in (murajax, keras):
        assert (row["model"], row["views"], row["image_size"]) == ("multiview", 4, 16)
        assert row["images_per_s"] > 0 and row["gflops"] > 0
    assert murajax["params"] == keras["params"] == 68_915 and keras["params_match"]
    assert keras["isolated"] and keras["budget_s"] > 0
    assert murajax["ratio_to_best_peer"] == pytest.approx(
        murajax["images_per_s"] / keras["images_per_s"], abs=0.001
    )
    table_lines = [x for x in result.stdout.splitlines() if x.startswith("multiview")]
    assert len(table_lines) == 2 and all("68.9k" in x for x in table_lines)
    assert table_lines[0].endswith(f"{murajax['ratio_to_best_peer']:.2f}x")
    assert "estimated: about" in result.stderr and "row 1/1 done" in result.stderr


def test_benchmark_command_rejects_unknown_names_in_one_line():
    command = [sys.executable, "-m", "experiments.benchmark", "--models=resnet"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: unknown workload 'resnet'")


def test_pipeline_rows(data_dir, monkeypatch):
    """Input-pipeline rows through the worker's code (in this process, where `trivial_mura`
    is registered), with the step each row feeds."""
    monkeypatch.setattr(runner, "run_job", lambda job, timeout=None: worker.run(job))
    feeds = dataclasses.replace(workloads.by_key("C"), image_size=32)
    rows = runner.run_pipeline(
        [runner.PipelineSpec("C")],
        dataset="trivial_mura",
        data_dir=data_dir,
        workers=(0,),
        num_batches=2,
        batch_size=4,
        feeds=lambda key: feeds,
    )
    (row,) = rows
    assert {"source", "image_size", "workers", "images_per_s"} <= set(row)
    assert (row["source"], row["image_size"], row["workers"]) == ("trivial_mura", 32, 0)
    assert row["images_per_s"] > 0 and row["channels"] == 1
    (row,) = table.add_step_ratios(rows, [_row("murajax", 10.0, image_size=32)])
    assert row["ratio_to_step"] == pytest.approx(row["images_per_s"] / 10.0, abs=0.01)


def test_torch_peer_measures_a_step():
    pytest.importorskip("torch", reason="torch is the optional `bench` extra")
    job = runner.train_step_job("torch-eager", TINY, "bfloat16", min_seconds=0.1, min_steps=2)
    row = runner.run_job(job, timeout=120)
    assert row["images_per_s"] > 0 and row["flops_source"] == "analytic"
    assert row["isolated"]  # its process imported nothing of murajax or experiments


@pytest.mark.slow
def test_torch_compile_peer_measures_a_step():
    pytest.importorskip("torch", reason="torch is the optional `bench` extra")
    job = runner.train_step_job("torch-compile", TINY, "float32", min_seconds=0.1, min_steps=2)
    assert runner.run_job(job, timeout=600)["images_per_s"] > 0
