"""Data parallelism: 'jit' and 'pmap' over 2 devices, and 2 processes, compute what 1 device does.

The suite runs on one CPU device, so the multi-device runs happen in subprocesses of this
module (`python -m tests.test_parallel ...`) with `--xla_force_host_platform_device_count=2`,
and the multi-host run in two processes joined by `jax.distributed` on 127.0.0.1. They write
workdirs and arrays that the tests below compare with a single-device run of the same config.
"""

import functools
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tfds_mura  # noqa: F401  (registers the MURA datasets)
from murajax import checkpoint as ckpt
from murajax import models, optim, parallel, steps, train, writers, xla_flags
from murajax.config import ConfigError
from tests.trivial_mura import trivial_config

STEPS, CRASH_AFTER = 12, 8  # end-to-end runs: 12 steps, checkpoints every 4
RTOL, ATOL = 1e-5, 1e-6  # float32: the devices sum in another order
FAST_CPU = xla_flags.CPU_FLAGS


def _config(
    data_dir: str,
    parallelism: str = "jit",
    splits: tuple[str, ...] = ("validation",),
    **train_overrides,
):
    """The end-to-end config: trivial_mura, a tiny CNN with BatchNorm, batch 8, evaluated and
    checkpointed every 4 steps, the learning rate halved when the holdout loss stalls."""
    overrides = {"steps": STEPS, "eval_every": 4, "checkpoint_every": 4, "log_every": 4}
    config = trivial_config(data_dir, parallelism=parallelism, **{**overrides, **train_overrides})
    config.optim.schedule = "plateau"  # the holdout evaluations change the device state
    config.optim.plateau_patience = 1
    config.optim.decay_factor = 0.5
    config.eval.splits = splits
    return config


def _env(device_count: int) -> dict[str, str]:
    flags = f"{FAST_CPU} --xla_force_host_platform_device_count={device_count}"
    return {**os.environ, "PYTHONPATH": os.getcwd(), "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags}


def _run_processes(commands: list[list[str]], env: dict[str, str], timeout: float) -> None:
    """Runs `python -m tests.test_parallel ...` processes side by side; fails with the output
    of any that fails (a missing peer aborts a jax.distributed process: hence the timeout)."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.test_parallel", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for args in commands
    ]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=timeout)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    failed = [
        f"{' '.join(args)} exited with {proc.returncode}:\n{out[-2000:]}"
        for args, proc, out in zip(commands, procs, outputs, strict=True)
        if proc.returncode != 0
    ]
    assert not failed, "\n\n".join(failed)  # every failing process: which one failed first


def _final_state(workdir: str, config) -> steps.TrainState:
    """The state of the newest checkpoint of `workdir`, restored host-local on one device."""
    manager = ckpt.make_manager(workdir, keep_latest=3)
    model = models.create_from_config(config.model)
    tx = optim.make_optimizer(config.optim, config.train.steps)
    shape = (1, config.data.image_size, config.data.image_size, 1)
    template = steps.create_train_state(model, tx, jax.random.key(0), shape)
    state, _ = ckpt.restore(manager, manager.latest_step(), template, None)
    manager.close()
    return state


def _train_losses(workdir: str) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in writers.read_metrics(workdir) if r["split"] == "train"]


def _assert_same_run(workdir: str, reference: str, config) -> None:
    """The same final params, BatchNorm statistics, optimiser state and step, and the same
    logged train losses, to float32 tolerance."""
    got, want = _final_state(workdir, config), _final_state(reference, config)
    assert int(got.step) == int(want.step) == STEPS
    chex.assert_trees_all_close(got.params, want.params, rtol=RTOL, atol=ATOL)
    chex.assert_trees_all_close(got.batch_stats, want.batch_stats, rtol=RTOL, atol=ATOL)
    chex.assert_trees_all_close(got.opt_state, want.opt_state, rtol=RTOL, atol=ATOL)
    got_losses, want_losses = _train_losses(workdir), _train_losses(reference)
    assert [s for s, _ in got_losses] == [s for s, _ in want_losses] == [4, 8, 12]
    np.testing.assert_allclose(
        [v for _, v in got_losses], [v for _, v in want_losses], rtol=RTOL, atol=ATOL
    )


# --------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def single_device(data_dir, tmp_path_factory) -> str:
    """The reference: the end-to-end config trained in this process, on one device."""
    assert jax.device_count() == 1
    workdir = str(tmp_path_factory.mktemp("single_device"))
    train.train_and_evaluate(_config(data_dir), workdir)
    return workdir


@pytest.fixture(scope="module")
def two_devices(data_dir, tmp_path_factory) -> Path:
    """A subprocess with 2 CPU devices runs `_two_devices_main` (see there) into this folder."""
    out = tmp_path_factory.mktemp("two_devices")
    _run_processes([["devices", str(out), data_dir]], _env(2), timeout=300)
    return out


# --------------------------------------------------------------------------- step level


def _flat(tree) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def _train_steps(parallelism: str, devices, count: int = 4) -> dict:
    """`count` train steps of a tiny CNN without BatchNorm on fixed random batches of 8,
    `parallelism` over `devices`; the final params (flattened) and the per-step losses."""
    config = trivial_config("unused")
    config.model.batch_norm = False
    model = models.create_from_config(config.model)
    tx = optim.make_optimizer(config.optim, config.train.steps)
    state = steps.create_train_state(model, tx, jax.random.key(0), (8, 16, 16, 1))
    step_fn = functools.partial(
        steps.train_step,
        model=model,
        tx=tx,
        weight_table=jnp.asarray(np.linspace(0.5, 2.0, 14, dtype=np.float32).reshape(7, 2)),
        label_smoothing=0.0,
        l2_weight=1e-3,
    )
    dp = parallel.data_parallel(step_fn, parallelism, parallel.make_mesh(devices))
    state = dp.put_state(state)
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(count):
        batch = {
            "image": rng.normal(size=(8, 16, 16, 1)).astype(np.float32),
            "label": rng.integers(0, 2, 8).astype(np.int32),
            "group": rng.integers(0, 7, 8).astype(np.int32),
        }
        state, metrics = dp.step(state, dp.put_batch(batch))
        losses.append(float(metrics["loss"]))
    host = dp.host_state(state)
    return {
        "losses": np.asarray(losses),
        **{"params" + k: v for k, v in _flat(host.params).items()},
        **{"batch_stats" + k: v for k, v in _flat(host.batch_stats).items()},
    }


@pytest.mark.parametrize("mode", ["jit2", "pmap2"])
def test_steps_without_batch_norm_on_two_devices_equal_one_device(two_devices, mode):
    """(The end-to-end runs below have BatchNorm.)"""
    one = np.load(two_devices / "steps_jit1.npz")
    two = np.load(two_devices / f"steps_{mode}.npz")
    assert sorted(one.files) == sorted(two.files)
    assert not any(k.startswith("batch_stats") for k in one.files)
    for key in one.files:
        np.testing.assert_allclose(two[key], one[key], rtol=RTOL, atol=ATOL, err_msg=key)
    assert len(set(one["losses"].round(4))) > 1  # the runs did train


# --------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("parallelism", ["jit", "pmap"])
def test_two_devices_train_like_one(two_devices, single_device, data_dir, parallelism):
    _assert_same_run(str(two_devices / parallelism), single_device, _config(data_dir))
    state = _final_state(str(two_devices / parallelism), _config(data_dir))
    (plateau,) = [
        x
        for x in jax.tree.leaves(state.opt_state, is_leaf=optim._is_plateau_state)
        if optim._is_plateau_state(x)
    ]
    assert np.isfinite(plateau.best_value)  # the holdout losses reached the trained state
    with open(two_devices / parallelism / "config.json") as f:
        assert json.load(f)["train"]["parallelism"] == parallelism


@pytest.mark.parametrize("first,then", [("pmap", "jit"), ("jit", "pmap")])
def test_a_run_resumes_under_the_other_parallelism(two_devices, data_dir, first, then):
    resumed = two_devices / f"{first}_then_{then}"
    rows = writers.read_metrics(str(resumed))
    assert [r["step"] for r in rows if r["split"] == "train"] == [4, 8, 12]
    _assert_same_run(str(resumed), str(two_devices / then), _config(data_dir))  # uninterrupted


def test_batch_size_not_splitting_over_the_devices_is_one_line(two_devices):
    message = (two_devices / "batch_size_error.txt").read_text()
    assert message == (
        "config.train.batch_size=7 is invalid: expected a multiple of the number of devices (2)"
        " (train.parallelism='jit')"
    )


def test_batch_size_is_checked_before_any_compute(data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "device_count", lambda: 4)
    monkeypatch.setattr(steps, "create_train_state", lambda *a, **k: pytest.fail("computed"))
    workdir = tmp_path / "never"
    with pytest.raises(ConfigError, match=r"^config\.train\.batch_size=6 is invalid") as error:
        train.train_and_evaluate(_config(data_dir, batch_size=6), str(workdir))
    assert "\n" not in str(error.value) and "devices (4)" in str(error.value)
    assert not workdir.exists()


@pytest.mark.parametrize(
    "batch_size,parallelism,devices,local,processes,valid",
    [
        (8, "jit", 2, 2, 1, True),
        (7, "jit", 2, 2, 1, "devices (2)"),
        (12, "jit", 8, 4, 2, "devices (8)"),
        (16, "pmap", 8, 4, 2, True),
        (12, "pmap", 8, 4, 2, "processes x devices per process (2 x 4)"),
        (9, "pmap", 2, 1, 2, "processes (2)"),
        (9, "jit", 2, 1, 2, "processes (2)"),
    ],
)
def test_check_batch_size(batch_size, parallelism, devices, local, processes, valid):
    check = functools.partial(
        parallel.check_batch_size,
        batch_size,
        parallelism,
        device_count=devices,
        local_device_count=local,
        process_count=processes,
    )
    if valid is True:
        check()
        return
    with pytest.raises(ConfigError) as error:
        check()
    message = str(error.value)
    assert message.startswith(f"config.train.batch_size={batch_size} is invalid: expected ")
    assert valid in message and f"train.parallelism={parallelism!r}" in message
    assert "\n" not in message


# --------------------------------------------------------------------------- placement


def test_layouts_round_trip_on_this_process():
    mesh = parallel.make_mesh()
    state = {"w": jnp.arange(6.0).reshape(2, 3), "key": jax.random.key(3), "step": jnp.int32(5)}
    for put, get in (
        (parallel.replicate, parallel.unreplicate),
        (parallel.stack, parallel.unstack),
    ):
        placed = put(state, mesh=mesh)
        back = get(placed)
        np.testing.assert_array_equal(back["w"], state["w"])
        np.testing.assert_array_equal(
            jax.random.key_data(back["key"]), jax.random.key_data(state["key"])
        )
        assert int(back["step"]) == 5
    assert parallel.stack(state, mesh)["w"].shape == (jax.local_device_count(), 2, 3)
    batch = {
        "image": np.ones((4, 2, 3, 3, 1), np.float32),  # a study batch (B, V, H, W, C)
        "view_mask": np.ones((4, 2), bool),
        "study_id": np.asarray(["a", "b", "c", "d"]),
    }
    sharded = parallel.shard_batch(batch, mesh)
    assert set(sharded) == {"image", "view_mask"}  # strings cannot enter a step
    assert sharded["image"].shape == (4, 2, 3, 3, 1)
    assert sharded["image"].sharding.spec == jax.sharding.PartitionSpec("data")
    split = parallel.split_batch(batch, mesh)
    assert split["view_mask"].shape == (jax.local_device_count(), 4 // jax.local_device_count(), 2)


# --------------------------------------------------------------------------- multi-host


@pytest.mark.parametrize("parallelism", ["jit", pytest.param("pmap", marks=pytest.mark.slow)])
def test_two_processes_train_like_one(single_device, data_dir, tmp_path, parallelism):
    """Two processes with 2 CPU devices each (4 devices, each process reads half of every
    batch) train, checkpoint and evaluate in one shared workdir like one process on 1 device."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    workdir = str(tmp_path / "shared")
    _run_processes(
        [["host", str(pid), port, workdir, data_dir, parallelism] for pid in (0, 1)],
        _env(2),
        timeout=240,
    )
    _assert_same_run(workdir, single_device, _config(data_dir))
    with open(os.path.join(workdir, "eval", "validation", "metrics.json")) as f:
        body = json.load(f)
    with open(os.path.join(single_device, "eval", "validation", "metrics.json")) as f:
        reference = json.load(f)
    assert body["step"] == reference["step"] == STEPS
    for name in ("n", "accuracy", "kappa"):
        assert body["study"][name] == reference["study"][name], name
    assert body["study"]["auroc"] == pytest.approx(reference["study"]["auroc"], abs=1e-6)


# --------------------------------------------------------------------------- subprocesses


def _crash_after(workdir: Path, step: int) -> None:
    """Leaves `workdir` as a run that died after checkpoint `step`."""
    for name in os.listdir(workdir / "checkpoints"):
        if name.isdigit() and int(name) > step:
            shutil.rmtree(workdir / "checkpoints" / name)
    shutil.rmtree(workdir / "eval", ignore_errors=True)


def _two_devices_main(out: Path, data_dir: str) -> None:
    """With 2 devices: step-level runs without BatchNorm (1-device jit, 2-device jit and
    pmap), end-to-end runs under 'jit' and 'pmap', each resumed from a crash under the
    other mode, and the error of a batch that does not split over the devices."""
    assert jax.device_count() == 2, jax.devices()
    train._write_report = lambda *args, **kwargs: None  # (tested elsewhere) saves time
    for name, parallelism, devices in (
        ("jit1", "jit", jax.devices()[:1]),
        ("jit2", "jit", None),
        ("pmap2", "pmap", None),
    ):
        np.savez(out / f"steps_{name}.npz", **_train_steps(parallelism, devices))
    for parallelism in ("jit", "pmap"):  # the final evaluation is compared across hosts only
        train.train_and_evaluate(_config(data_dir, parallelism, ()), str(out / parallelism))
    for first, then in (("pmap", "jit"), ("jit", "pmap")):
        resumed = out / f"{first}_then_{then}"
        shutil.copytree(out / first, resumed)
        _crash_after(resumed, CRASH_AFTER)
        train.train_and_evaluate(_config(data_dir, then, ()), str(resumed))
    try:
        train.train_and_evaluate(_config(data_dir, batch_size=7), str(out / "bad"))
    except ConfigError as error:
        (out / "batch_size_error.txt").write_text(str(error))


def _host_main(pid: int, port: str, workdir: str, data_dir: str, parallelism: str) -> None:
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)
    assert jax.process_count() == 2 and jax.device_count() == 4, jax.devices()
    train.train_and_evaluate(_config(data_dir, parallelism), workdir)


if __name__ == "__main__":
    if sys.argv[1] == "devices":
        _two_devices_main(Path(sys.argv[2]), sys.argv[3])
    elif sys.argv[1] == "host":
        pid, port, workdir, data_dir, parallelism = sys.argv[2:7]
        _host_main(int(pid), port, workdir, data_dir, parallelism)
    else:
        sys.exit(f"unknown mode {sys.argv[1]!r}")
