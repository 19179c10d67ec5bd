"""Long runs that survive (issue 10): SIGTERM/SIGINT checkpoint and resume bit-exactly,
non-finite steps stop or are skipped, and a resume refuses a config its checkpoints cannot
take. The command-line checks run `python -m experiments.main` as a user does."""

import functools
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

import tfds_mura  # noqa: F401  (registers the MURA datasets)
from murajax import config as config_lib
from murajax import (
    errors,
    evaluation,
    interrupt,
    nonfinite,
    optim,
    resume,
    steps,
    train,
    validation,
    writers,
)
from murajax import workdir as workdir_lib
from murajax.config import ConfigError
from murajax.metrics import EvalState
from tests import interrupt_fixture_config
from tests.trivial_mura import trivial_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = "tests/interrupt_fixture_config.py"
STEPS = interrupt_fixture_config.STEPS


# --------------------------------------------------------------------------- helpers


def _main_args(workdir: str, data_dir: str, *flags: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "experiments.main",
        f"--config={FIXTURE}:{data_dir}",
        f"--workdir={workdir}",
        *flags,
    ]


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _train_steps(workdir: str) -> list[int]:
    """The steps of the train rows in metrics.jsonl so far (a line still being written by a
    running command is left out)."""
    path = os.path.join(workdir, workdir_lib.METRICS_LOG)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.endswith("\n")]
    return [row["step"] for row in rows if row["split"] == "train"]


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _signal_once_training(targets: dict[str, tuple[subprocess.Popen, str, int]]) -> dict:
    """Sends each `(process, workdir, signum)` its signal as soon as it has logged a train
    row in its workdir; returns by name its exit status, stderr, the seconds from the signal
    to the exit, the checkpoints and the train rows' steps."""
    deadline = time.monotonic() + 240
    sent: dict[str, float] = {}
    while len(sent) < len(targets):
        for name, (process, workdir, signum) in targets.items():
            if name not in sent and _train_steps(workdir):
                process.send_signal(signum)
                sent[name] = time.monotonic()
            assert name in sent or process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.02)
    results = {}
    for name, (process, workdir, _) in targets.items():
        _, err = process.communicate(timeout=60)
        results[name] = {
            "status": process.returncode,
            "stderr": err,
            "seconds": time.monotonic() - sent[name],
            "checkpoints": _checkpoint_steps(workdir),
            "rows": _train_steps(workdir),
        }
    return results


def _checkpoint_steps(workdir: str) -> list[int]:
    folder = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(folder) if n.isdigit())


def _saved_state(workdir: str, step: int) -> dict:
    """The arrays of a checkpoint's train state, read without a target."""
    path = os.path.join(workdir, "checkpoints", str(step), "state")
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(path)


def _rows(workdir: str) -> list[dict]:
    """metrics.jsonl without the wall-clock throughput."""
    return [
        {k: v for k, v in row.items() if k != "images_per_sec"}
        for row in writers.read_metrics(workdir)
    ]


def _one_line(stderr: str) -> str:
    """A command's stderr, which must be one line."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


# --------------------------------------------------------------------------- SIGTERM, SIGINT


@pytest.fixture(scope="module")
def interrupted(data_dir, env, tmp_path_factory) -> dict:
    """A run stopped by SIGTERM beside one stopped by SIGINT; then, side by side, the
    SIGTERM one rerun to the end and the same command run uninterrupted."""
    base = tmp_path_factory.mktemp("signals")
    workdirs = {name: str(base / name) for name in ("term", "int", "reference")}
    commands = {name: _main_args(workdir, data_dir) for name, workdir in workdirs.items()}
    stopped = _signal_once_training(
        {
            name: (_start(commands[name], env), workdirs[name], signum)
            for name, signum in (("term", signal.SIGTERM), ("int", signal.SIGINT))
        }
    )
    reference = _start(commands["reference"], env)
    resumed = _run(commands["term"], env)
    _, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err[-3000:]
    return {**workdirs, "stopped": stopped, "resumed": resumed}


@pytest.mark.parametrize("name, signum", [("term", signal.SIGTERM), ("int", signal.SIGINT)])
def test_a_signal_saves_the_current_step_and_exits_128_plus_signal(interrupted, name, signum):
    stopped = interrupted["stopped"][name]
    assert stopped["status"] == 128 + signum, stopped["stderr"][-3000:]
    assert stopped["seconds"] < 30
    (step,) = stopped["checkpoints"]  # no periodic checkpoint before it: the signal's
    assert 0 < step < STEPS // 2
    # Every row logged is at or before the checkpoint; the steps after the last row travel
    # in the checkpoint rather than as a partial row.
    assert stopped["rows"] and max(stopped["rows"]) <= step
    line = _one_line(stopped["stderr"])
    assert f"interrupted by {signal.Signals(signum).name}: stopped after step {step}" in line
    assert f"to resume, run the same command: {sys.executable} -m experiments.main" in line
    assert f"--workdir={interrupted[name]}" in line


def test_rerun_resumes_and_ends_bit_identical_to_an_uninterrupted_run(interrupted):
    resumed = interrupted["resumed"]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (step,) = interrupted["stopped"]["term"]["checkpoints"]
    assert f"resumed from {interrupted['term']}/checkpoints/{step}" in resumed.stdout
    reference, stopped = interrupted["reference"], interrupted["term"]
    chex.assert_trees_all_equal(_saved_state(reference, STEPS), _saved_state(stopped, STEPS))
    assert _rows(stopped) == _rows(reference)


def test_a_second_signal_exits_at_once():
    """The first signal is only recorded while training; the second ends the process."""
    program = (
        "import os, signal, time\n"
        "from murajax import interrupt\n"
        "with interrupt.StopSignals() as signals, signals.deferring():\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(0.1)\n"
        "    print('recorded', signals.stop_at(1), flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(5)\n"
        "print('not reached')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 143
    assert done.stdout.split() == ["recorded", str(int(signal.SIGTERM))]
    assert "second SIGTERM: exiting now" in done.stderr


def test_handlers_are_restored_and_a_signal_outside_the_loop_raises():
    previous = signal.getsignal(signal.SIGINT)
    with pytest.raises(errors.TrainingInterrupted) as caught:
        with interrupt.StopSignals() as signals:
            assert signal.getsignal(signal.SIGINT) == signals._handle
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert caught.value.exit_status == 130 and isinstance(caught.value, KeyboardInterrupt)
    assert signal.getsignal(signal.SIGINT) is previous
    with interrupt.StopSignals() as signals:
        assert signals.stop_at(5) is None
    assert signal.getsignal(signal.SIGINT) is previous


class _FakeKeyValueStore:
    """The coordination service's key-value store and barriers, for threads."""

    def __init__(self, processes: int):
        self.values: dict[str, str] = {}
        self.barriers: dict[str, threading.Barrier] = {}
        self.calls = 0
        self._processes = processes
        self._lock = threading.Lock()

    def key_value_set(self, key: str, value: str) -> None:
        with self._lock:
            self.calls += 1
            self.values[key] = value

    def wait_at_barrier(self, barrier_id: str, timeout_in_ms: int) -> None:
        with self._lock:
            barrier = self.barriers.setdefault(barrier_id, threading.Barrier(self._processes))
        barrier.wait(timeout=timeout_in_ms / 1000)

    def key_value_dir_get(self, key: str) -> list[tuple[str, str]]:
        with self._lock:
            return [(k, v) for k, v in self.values.items() if k.startswith(key)]

    def key_value_delete(self, key: str) -> None:
        with self._lock:
            self.values = {
                k: v for k, v in self.values.items() if k != key and not k.startswith(key + "/")
            }


def test_processes_agree_on_the_step_to_stop_at():
    """Process 1 is signalled at step 13; both stop at step 20, the next agreement, and
    exchange nothing at the steps between agreements."""
    store = _FakeKeyValueStore(processes=2)
    stops: dict[int, tuple[int, int]] = {}

    def run(process: int) -> None:
        agreement = interrupt.Agreement(store, process, session=1, sync_every=10)
        for step in range(1, 40):
            signum = signal.SIGTERM if process == 1 and step >= 13 else None
            decided = agreement.decide(step, signum)
            if decided:
                stops[process] = (step, decided)
                return

    threads = [threading.Thread(target=run, args=(p,)) for p in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert stops == {0: (20, signal.SIGTERM), 1: (20, signal.SIGTERM)}
    assert store.calls == 4  # steps 10 and 20, one key per process each


@pytest.mark.slow
def test_two_processes_stop_at_the_same_step_when_one_is_signalled(data_dir, env, tmp_path):
    """`jax.distributed` on 127.0.0.1: SIGTERM to process 1 only; both stop at the next
    agreement step with one checkpoint there and exit 143 (the fast test above checks the
    agreement itself)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = str(tmp_path / "shared")
    processes = [
        _start(
            _main_args(
                workdir,
                data_dir,
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={pid}",
            ),
            env,
        )
        for pid in (0, 1)
    ]
    try:
        stopped = _signal_once_training({"1": (processes[1], workdir, signal.SIGTERM)})["1"]
        _, err0 = processes[0].communicate(timeout=120)
    finally:
        for process in processes:
            process.kill()
    assert stopped["status"] == 143, stopped["stderr"][-3000:]
    assert processes[0].returncode == 143, err0[-3000:]
    (step,) = stopped["checkpoints"]
    assert step % interrupt.SYNC_EVERY == 0
    for err in (stopped["stderr"], err0):
        assert f"interrupted by SIGTERM: stopped after step {step}" in _one_line(err)


# --------------------------------------------------------------------------- non-finite


class _Tiny(nn.Module):
    """A convolution, BatchNorm and a dense head: the state a step must keep, compiled fast."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.Conv(2, (3, 3))(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        return nn.Dense(2)(jnp.mean(x, axis=(1, 2)))


def test_a_non_finite_step_is_reported_and_skip_keeps_the_state():
    config = trivial_config("/unused")
    config.optim.schedule = "constant"
    model, tx = _Tiny(), optim.make_optimizer(config.optim, 10)
    state = steps.create_train_state(model, tx, jax.random.key(0), (4, 8, 8, 1))
    images = jax.random.uniform(jax.random.key(1), (4, 8, 8, 1))
    batch = {
        "image": images.at[0, 0, 0, 0].set(jnp.nan),
        "label": jnp.arange(4) % 2,
        "group": jnp.zeros(4, jnp.int32),
    }

    @functools.partial(jax.jit, static_argnames="skip")
    def step(state, batch, skip):
        options = {"weight_table": jnp.ones((7, 2)), "label_smoothing": 0.0, "l2_weight": 0.0}
        return steps.train_step(state, batch, model=model, tx=tx, skip_nonfinite=skip, **options)

    good, metrics = step(state, {**batch, "image": images}, skip=True)
    assert int(metrics["nonfinite"]) == 0 and nonfinite.all_finite(good.params)
    assert not jnp.array_equal(good.params["Dense_0"]["kernel"], state.params["Dense_0"]["kernel"])
    skipped, metrics = step(good, batch, skip=True)
    assert int(metrics["nonfinite"]) == nonfinite.LOSS | nonfinite.GRADIENTS | nonfinite.PARAMETERS
    chex.assert_trees_all_equal(skipped.params, good.params)
    chex.assert_trees_all_equal(skipped.batch_stats, good.batch_stats)
    chex.assert_trees_all_equal(skipped.opt_state, good.opt_state)
    assert int(skipped.step) == int(good.step) + 1  # the step counts (the data moved on)
    applied, metrics = step(good, batch, skip=False)  # 'stop': reported, and not kept
    assert not nonfinite.all_finite(applied.params)
    assert nonfinite.describe(int(metrics["nonfinite"])) == (
        "loss, gradients and updated parameters"
    )


def test_skipped_steps_are_counted_and_left_out_of_the_means():
    rows = [(1, {"loss": 1.0, "nonfinite": 0.0}), (2, {"loss": math.nan, "nonfinite": 1.0})]
    rows.append((3, {"loss": 2.0, "nonfinite": 0.0}))
    assert nonfinite.train_row(rows, count_skipped=True) == {"loss": 1.5, "skipped": 1}
    watch = nonfinite.Watch(skip=True, max_skipped=2)
    assert watch.check(rows) is None and watch.in_a_row == 0
    bad = [(s, {"loss": math.nan, "nonfinite": 1.0}) for s in (4, 5)]
    assert watch.check(rows + bad[:1]) is None  # rows already seen are not counted again
    assert watch.check(rows + bad) == nonfinite.Divergence(step=5, code=1, in_a_row=2)
    saved = json.loads(json.dumps(nonfinite.rows_to_json(rows)))
    restored = nonfinite.rows_from_json(saved)
    assert restored[0] == rows[0] and math.isnan(restored[1][1]["loss"])


@pytest.fixture(scope="module")
def rerun(interrupted, data_dir, env, tmp_path_factory) -> dict:
    """Side by side: a copy of the finished reference run (checkpoints at 100 and 200)
    resumed for 40 more steps with a learning rate that diverges, and a copy of the run
    stopped by SIGINT rerun with another dropout rate and Adam b1."""
    base = tmp_path_factory.mktemp("rerun")
    diverging, changed = str(base / "diverging"), str(base / "changed")
    shutil.copytree(interrupted["reference"], diverging)
    shutil.copytree(interrupted["int"], changed)
    with open(os.path.join(changed, "config.json")) as f:
        config_before = f.read()
    rows = writers.read_metrics(diverging)
    flags = ("--config.train.steps=240", "--config.optim.learning_rate=1e12")
    refused = _start(
        _main_args(changed, data_dir, "--config.model.dropout_rate=0.5", "--config.optim.b1=0.5"),
        env,
    )
    done = _run(_main_args(diverging, data_dir, *flags), env)
    out, err = refused.communicate(timeout=300)
    return {
        "diverging": diverging,
        "rows_before": rows,
        "done": done,
        "changed": changed,
        "config_before": config_before,
        "refused": subprocess.CompletedProcess(refused.args, refused.returncode, out, err),
    }


def test_a_diverging_run_stops_with_one_line_and_keeps_the_last_good_checkpoint(rerun):
    workdir, done = rerun["diverging"], rerun["done"]
    assert done.returncode == 1
    line = _one_line(done.stderr)
    assert line.startswith("error: training diverged: step ")
    assert "non-finite loss" in line and "checkpoints/200;" in line
    step = int(line.split("step ")[1].split()[0])
    assert step > 200
    # A lower learning rate is a change a resume accepts, and is listed as such.
    assert "[murajax] resuming with changed " in done.stdout
    assert "optim.learning_rate (0.01 -> 1000000000000.0)" in done.stdout
    assert _checkpoint_steps(workdir) == [100, 200]
    rows = writers.read_metrics(workdir)
    assert rows[: len(rerun["rows_before"])] == rerun["rows_before"]
    for row in rows:
        assert all(v is not None for v in row.values()), row
        assert row["step"] < step


def test_skip_mode_counts_skipped_steps_and_stops_after_max_skipped(data_dir, tmp_path):
    config = trivial_config(data_dir, steps=40, on_nonfinite="skip", max_skipped=3)
    config.train.log_every = 1
    config.optim.learning_rate = 1e30  # the first step's update overflows the next ones
    with pytest.raises(errors.TrainingDiverged) as caught:
        train.train_and_evaluate(config, str(tmp_path), model=_Tiny())
    message = str(caught.value)
    assert "\n" not in message
    assert "training diverged: 3 steps in a row up to step " in message
    assert "(train.max_skipped=3)" in message and "no checkpoint was saved" in message
    step = int(message.split("up to step ")[1].split()[0])
    rows = [r for r in writers.read_metrics(str(tmp_path)) if r["split"] == "train"]
    # One row per step before the stop (the rows of the check that stops are not written);
    # a skipped step's row has no loss and counts it.
    assert [r["step"] for r in rows] == list(range(1, step))
    assert [r["skipped"] for r in rows[-2:]] == [1, 1] and rows[0]["skipped"] == 0
    assert all((r["loss"] is None) == (r["skipped"] == 1) for r in rows)


class _Flaky(nn.Module):
    """`_Tiny` whose training logits are NaN at about a third of the steps, drawn from the
    step's dropout key (`fold_in(key, step)`): the same steps are bad however the run is
    cut, and evaluation (train=False) is always finite."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        logits = _Tiny()(x, train)
        if train:
            bad = jax.random.uniform(self.make_rng("dropout")) < 0.35
            logits = jnp.where(bad, jnp.nan, logits)
        return logits


def test_skip_mode_resumed_after_an_interruption_ends_as_an_uninterrupted_run(
    data_dir, tmp_path, monkeypatch
):
    """`train.on_nonfinite='skip'` across a resume: a run stopped by a signal at step 10, in
    the middle of a log window with skipped steps, and resumed, ends with the rows and the
    state of a run never stopped (the window's steps and the count of bad steps in a row
    travel in the checkpoint)."""
    config = trivial_config(
        data_dir, steps=24, eval_every=12, checkpoint_every=100, on_nonfinite="skip"
    )
    config.train.max_skipped = 100
    config.eval.splits = ()  # the rows and the checkpoints are what is compared
    config.eval.bootstrap_samples = 10
    monkeypatch.setattr(train, "_write_report", lambda *args, **kwargs: None)
    reference, stopped = str(tmp_path / "reference"), str(tmp_path / "stopped")
    train.train_and_evaluate(config, reference, model=_Flaky())
    with monkeypatch.context() as signalled:  # what SIGTERM at step 10 makes `stop_at` say
        signalled.setattr(
            interrupt.StopSignals,
            "stop_at",
            lambda self, step, final=False: signal.SIGTERM if step == 10 else None,
        )
        with pytest.raises(errors.TrainingInterrupted) as caught:
            train.train_and_evaluate(config, stopped, model=_Flaky())
    assert caught.value.step == 10 and _checkpoint_steps(stopped) == [10]
    assert [r["step"] for r in writers.read_metrics(stopped)] == [4, 8]
    train.train_and_evaluate(config, stopped, model=_Flaky())
    rows = _rows(reference)
    assert _rows(stopped) == rows
    skipped = {r["step"]: r["skipped"] for r in rows if r["split"] == "train"}
    assert skipped[12] > 0 and 0 < sum(skipped.values()) < 24  # bad steps across the cut
    chex.assert_trees_all_equal(_saved_state(stopped, 24), _saved_state(reference, 24))


def test_evaluating_non_finite_probabilities_is_one_line():
    config = trivial_config("/unused")
    predictions = EvalState.create(
        study_id=["a", "a", "b"],
        group=[0, 0, 1],
        label=[0, 0, 1],
        prob=[0.2, np.nan, 0.9],
        image_path=["a/1.png", "a/2.png", "b/1.png"],
    )
    with pytest.raises(errors.NonFinitePredictions) as caught:
        evaluation.write_evaluation(config, "/nonexistent", "validation", predictions, step=3)
    message = str(caught.value)
    assert "\n" not in message and "1 of 3 validation predictions (the first: a/2.png)" in message
    assert errors.NonFinitePredictions in errors.USER_ERRORS  # `error: ...`, exit status 2


def test_predicting_with_a_diverged_model_is_one_line(data_dir):
    """The probabilities a model gives are checked where they enter evaluation (holdout
    evaluations, the final one and `experiments.evaluate` all predict through here)."""
    config = trivial_config(data_dir)
    model = _Tiny()
    tx = optim.make_optimizer(config.optim, 10)
    state = steps.create_train_state(model, tx, jax.random.key(0), (1, 16, 16, 1))
    state = state.replace(params=jax.tree.map(lambda x: x * jnp.nan, state.params))
    eval_fn = jax.jit(functools.partial(steps.eval_step, model=model))
    with pytest.raises(
        errors.NonFinitePredictions, match="not finite for 31 of 31 validation predictions"
    ):
        evaluation.predict_state(config, state, eval_fn, "validation", model=None)


# --------------------------------------------------------------------------- changed config


def test_resume_refuses_a_model_or_optimiser_change_with_one_line(rerun):
    workdir, done = rerun["changed"], rerun["refused"]
    assert done.returncode == 2
    line = _one_line(done.stderr)
    assert line.startswith(f"error: cannot resume {workdir}:")
    assert "model.dropout_rate (0.25 -> 0.5), optim.b1 (0.9 -> 0.5)" in line
    assert "new --workdir" in line
    with open(os.path.join(workdir, "config.json")) as f:
        assert f.read() == rerun["config_before"]  # nothing changed


def test_allowed_changes_are_listed_and_a_workdir_without_checkpoints_takes_any(tmp_path, capsys):
    config = trivial_config("/data")
    workdir = str(tmp_path)
    resume.check_and_write_config(config, workdir)
    config.model.widths = (2, 2)
    resume.check_and_write_config(config, workdir)  # no checkpoint: taken
    assert "no checkpoint to resume" in capsys.readouterr().out
    os.makedirs(tmp_path / "checkpoints" / "4")
    config.train.steps, config.eval.bootstrap_samples = 48, 5
    resume.check_and_write_config(config, workdir)
    assert capsys.readouterr().out.strip() == (
        "[murajax] resuming with changed eval.bootstrap_samples (20 -> 5), train.steps (24 -> 48)"
    )
    config.seed = 1
    with pytest.raises(ConfigError, match=r"another seed \(0 -> 1\)"):
        resume.check_and_write_config(config, workdir)


def test_fields_missing_from_an_older_config_json_are_unchanged_at_their_default():
    new = json.loads(json.dumps(config_lib.to_dict(trivial_config("/data"))))
    old = json.loads(json.dumps(new))
    del old["train"]["on_nonfinite"], old["train"]["max_skipped"]
    assert resume.changes(old, new) == {}
    new["train"]["max_skipped"] = 3
    assert list(resume.changes(old, new)) == ["train.max_skipped"]


@pytest.mark.parametrize(
    "field, value, expected",
    [
        (
            "on_nonfinite",
            "ignore",
            "config.train.on_nonfinite='ignore' is invalid: expected one of 'stop', 'skip'",
        ),
        ("max_skipped", 0, "config.train.max_skipped=0 is invalid: expected a number >= 1"),
    ],
)
def test_non_finite_options_are_validated_in_one_line(field, value, expected):
    config = trivial_config("/data")
    setattr(config.train, field, value)
    with pytest.raises(ConfigError) as caught:
        validation.validate(config)
    assert str(caught.value) == expected


# --------------------------------------------------------------------------- every program


def test_every_program_reports_an_interruption_and_a_divergence_in_one_line(capsys):
    """`cli.guard` (main, sweep, evaluate, predict): a checkpointed SIGTERM is one line with the
    command that resumes and status 143, Ctrl-C elsewhere 130, a divergence `error:` and 1."""
    from experiments import cli

    def raising(error: BaseException):
        def main(argv: list[str]) -> None:
            raise error

        return cli.guard(main, errors.USER_ERRORS)

    stopped = errors.TrainingInterrupted(
        "interrupted by SIGTERM: stopped after step 7 with a checkpoint in W/checkpoints/7",
        signum=signal.SIGTERM,
        step=7,
    )
    cases = [
        (stopped, 143, "interrupted by SIGTERM: stopped after step 7"),
        (KeyboardInterrupt(), 130, "interrupted; to resume, run the same command: "),
        (errors.TrainingDiverged("training diverged: step 3 had a non-finite loss"), 1, "error: "),
    ]
    for error, status, start in cases:
        with pytest.raises(SystemExit) as exited:
            raising(error)([])
        assert exited.value.code == status
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and start in lines[0], lines


def test_a_diverged_sweep_run_is_named(tmp_path):
    from murajax import sweep as sweep_lib

    sweep = sweep_lib.load_sweep("experiments/configs/optimizers.py:smoke")

    def diverge(config, workdir):
        raise errors.TrainingDiverged("training diverged: step 2 had a non-finite loss")

    with pytest.raises(errors.TrainingDiverged, match=rf"^run {sweep.runs[0].name}: training"):
        sweep_lib.run_sweep(sweep, str(tmp_path), train_fn=diverge, log=lambda line: None)


@pytest.mark.parametrize("signalled", [True, False], ids=["signalled", "not-signalled"])
def test_processes_agree_at_the_final_step_between_agreement_steps(signalled):
    """`decide(final=True)` (the run's last step, 15 here, not a multiple of sync_every=10) is
    an agreement too: process 1, signalled at step 12, and process 0 both stop for SIGTERM at
    step 15, or both carry on (None) when no process was signalled."""
    store = _FakeKeyValueStore(processes=2)
    decisions: dict[int, list[tuple[int, int | None]]] = {0: [], 1: []}

    def run(process: int) -> None:
        agreement = interrupt.Agreement(store, process, session=2, sync_every=10)
        for step in range(1, 16):
            signum = signal.SIGTERM if signalled and process == 1 and step >= 12 else None
            decided = agreement.decide(step, signum, final=step == 15)
            if decided is not None or step in (10, 15):
                decisions[process].append((step, decided))

    threads = [threading.Thread(target=run, args=(p,), daemon=True) for p in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads), "a process waits at a barrier"
    final = signal.SIGTERM if signalled else None
    assert decisions == {p: [(10, None), (15, final)] for p in (0, 1)}
    assert store.calls == 4  # steps 10 and 15, one key per process each
