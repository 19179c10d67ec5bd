"""experiments.benchmark: ratios and tables (pure), FLOP counts, the peers' architectures, and
the command end to end with tiny settings (murajax and one peer, each in its own process)."""

import dataclasses
import json
import os
import subprocess
import sys

os.environ["KERAS_BACKEND"] = "jax"  # as test_keras_parity: before keras is imported

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import pytest  # noqa: E402

from experiments.bench import runner, table, timing, worker, workloads  # noqa: E402
from murajax import (
    models,  # noqa: E402
    validation,
)

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
    """After compiling and warming up it says READY, then answers each command with that
    stretch's step times, until stdin ends; the row keeps every stretch's median."""
    import io

    clock = FakeClock([5.0, 8.0, 0.25, 0.5, 1.0, 0.125, 2.0, 64.0])
    monkeypatch.setattr(timing, "time", clock)
    commands = io.StringIO(
        '{"min_seconds": 0.0, "min_steps": 2}\n\n{"min_seconds": 3.0, "min_steps": 1}\n'
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
        timing.READY_LINE,
        timing.TIMES_PREFIX + "[0.25, 0.5]",
        timing.TIMES_PREFIX + "[1.0, 0.125, 2.0]",  # until 3 s were timed
    ]
    assert clock.steps == 2 + 5
    assert result == {
        "compile_s": 5.0,
        "step_s": 0.5,  # the median of all five
        "step_s_min": 0.125,
        "steps": 5,
        "timed_s": 3.875,
        "turn_step_s": [0.375, 1.0],  # each stretch's median, in order
    }
    row = timing.measurement_row(result, 4, flops=None)
    assert row["turn_step_s"] == [0.375, 1.0] and row["images_per_s"] == 8.0


def test_time_steps_in_turns_without_a_turn_fails():
    import io

    with pytest.raises(RuntimeError, match="no step was timed"):
        timing.time_steps(
            lambda: None,
            min_seconds=0.0,
            turns=True,
            commands=io.StringIO('{"stop": true}\n'),
            replies=io.StringIO(),
        )


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
    assert runner.has_peer("murajax", multiview) and not runner.has_peer("keras-tf", multiview)


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
    assert workloads.forward_flops(workloads.by_key("multiview")) is None


def _murajax_weight_shapes(workload: workloads.Workload) -> list[tuple[int, ...]]:
    """The shapes of murajax's trainable weights, layer by layer in the order the model calls
    its layers, each layer's as Keras lists them: kernel (or BatchNorm's scale), then bias."""
    model = models.create_from_config(workload.config(conv_impl="xla").model)
    shape = (1, workload.image_size, workload.image_size, workload.channels)
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


@pytest.mark.parametrize("key", ["C", "quickstart", "A"])
def test_keras_peer_trains_the_same_architecture(key):
    from experiments.bench import keras_peer

    workload = dataclasses.replace(workloads.by_key(key), image_size=32)
    model = keras_peer.build_model(workloads.peer_spec(workload))
    keras_shapes = [tuple(w.shape) for w in model.trainable_weights]
    assert keras_shapes == _murajax_weight_shapes(workload)  # layer by layer, in order
    images = jnp.zeros((2, 32, 32, workload.channels))
    assert tuple(model(images).shape) == (2, 2)


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
if job["framework"] == "keras-jax":  # dies in its second turn
    print(timing.READY_LINE, flush=True)
    sys.stdin.readline()
    print(timing.TIMES_PREFIX + "[0.01]", flush=True)
    sys.stdin.readline()
    sys.exit("MemoryError: out of memory")
result = timing.time_steps(lambda: time.sleep(0.002), min_seconds=0.0, turns=job["turns"])
print("RESULT " + json.dumps(timing.measurement_row(result, 4, None)), flush=True)
"""


def test_interleaved_rounds_rotate_and_a_failing_process_leaves_the_others(monkeypatch):
    """`run_train_steps` with rounds: every process gets one stretch per round; a process
    that dies mid-way becomes a row with its last error line, and the others finish."""
    monkeypatch.setattr(
        runner,
        "_command",
        lambda job: [sys.executable, "-c", _FAKE_PROCESS, json.dumps(job), timing.__file__],
    )
    rows = runner.run_train_steps(
        [TINY], ["float32"], ["murajax", "keras-tf", "keras-jax"], min_seconds=0.0, rounds=3
    )
    by_framework = {r["framework"]: r for r in rows}
    assert [r["framework"] for r in rows] == ["murajax", "keras-tf", "keras-jax"]
    for name in ("murajax", "keras-tf"):
        assert by_framework[name]["rounds"] == 3
        assert len(by_framework[name]["turn_step_s"]) == 3
        assert by_framework[name]["steps"] == 3 * 2  # ceil(min_steps 5 / 3 rounds) per turn
    failed = by_framework["keras-jax"]
    assert failed["images_per_s"] is None
    assert failed["error"] == "MemoryError: out of memory"


def test_benchmark_command_end_to_end(tmp_path):
    """murajax and Keras on JAX on a 16 px CNN, each in its own process, taking turns over 3
    rounds, and the JSON."""
    out = tmp_path / "bench.json"
    command = [
        sys.executable,
        "-m",
        "experiments.benchmark",
        "--models=C",
        "--image_size=16",
        "--batch_size=4",
        "--only=murajax,keras-jax",
        "--dtypes=float32",
        "--min_seconds=0.2",
        "--min_steps=2",
        "--rounds=3",
        "--matmul_size=256",
        "--nopipeline",
        "--nodata_parallel",
        f"--json={out}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert {"machine", "matmul_gflops", "train_step", "input_pipeline"} <= set(figures)
    machine = figures["machine"]
    for key in ("cpu", "cores", "jax", "jaxlib", "keras", "tensorflow", "torch", "date"):
        assert key in machine
    assert "ynn_fusion_type" in machine["XLA_FLAGS"]  # experiments/__init__.py's flag
    assert figures["matmul_gflops"]["float32"] > 0 and figures["matmul_gflops"]["bfloat16"] > 0
    assert figures["settings"]["min_seconds"] == 0.2
    rows = {r["framework"]: r for r in figures["train_step"]}
    assert set(rows) == {"murajax", "keras-jax"}
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
