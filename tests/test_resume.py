"""Kill-and-resume as a user meets it: `python -m experiments.main` SIGKILLed at seeded
random points (some during a checkpoint save), rerun each time, and with its newest
checkpoint damaged before the last rerun, ends exactly where an uninterrupted run ends:
params, batch statistics, optimiser (and plateau) state, PRNG key, data iterator, kept
checkpoints, metrics.jsonl and the final evaluation.

The run (tests/resume_fixture_config.py) has dropout, rotations and the plateau schedule on,
checkpoints every 5 steps, holdout evaluations every 6 and train logs every 4.
"""

import dataclasses
import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import chex
import jax
import pytest

import tfds_mura  # noqa: F401  (registers the MURA datasets)
from murajax import checkpoint as ckpt
from murajax import errors, inference, train, writers
from murajax import workdir as workdir_lib
from tests import resume_fixture_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = resume_fixture_config.STEPS
LOG_EVERY, EVAL_EVERY, CHECKPOINT_EVERY = 4, 6, 5
KEEP_LATEST, KEEP_BEST = 2, 2
SAVED = [s for s in range(1, STEPS + 1) if s % CHECKPOINT_EVERY == 0 or s % EVAL_EVERY == 0]
LOGGED = [s for s in range(1, STEPS + 1) if s % LOG_EVERY == 0 or s == STEPS]
SEED = 20261202
TIMING = ("images_per_sec",)


def _command(workdir: str, data_dir: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "experiments.main",
        f"--config=tests/resume_fixture_config.py:{data_dir}",
        f"--workdir={workdir}",
    ]


def _start(workdir: str, data_dir: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        _command(workdir, data_dir),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(process: subprocess.Popen, timeout: float = 240) -> str:
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, out
    return out


class Background:
    """A run started in the background; `workdir()` waits for it to finish successfully."""

    def __init__(self, workdir: str, data_dir: str, env: dict[str, str]):
        self._workdir = workdir
        self._process = _start(workdir, data_dir, env)
        self._output: str | None = None

    def workdir(self) -> str:
        if self._output is None:
            self._output = _finish(self._process)
        return self._workdir

    def stop(self) -> None:
        """Kills the run if it is still going (a test failed before waiting for it)."""
        if self._process.poll() is None:
            self._process.kill()
            self._process.communicate()


@pytest.fixture(scope="module")
def reference(data_dir, env, tmp_path_factory) -> Iterator[Background]:
    """The uninterrupted run, started at once so that it runs beside the killed ones."""
    run = Background(str(tmp_path_factory.mktemp("uninterrupted")), data_dir, env)
    yield run
    run.stop()


# --------------------------------------------------------------------------- kill points


@dataclasses.dataclass
class KillPoint:
    """Where to SIGKILL: while checkpoint `step` is being saved ('save'), or once the train
    row of `step` is in metrics.jsonl ('log')."""

    kind: str
    step: int


WINDOWS = ((5, 11), (12, 19), (20, 27))
"""The steps of the first, second and third kill points (one each)."""


def kill_points(seed: int = SEED) -> list[KillPoint]:
    """One kill point in each of `WINDOWS`, at least one of each kind, drawn with `seed`."""
    rng = random.Random(seed)
    kinds = ["save", "log", rng.choice(["save", "log"])]
    rng.shuffle(kinds)
    points = []
    for kind, (low, high) in zip(kinds, WINDOWS, strict=True):
        candidates = SAVED if kind == "save" else LOGGED
        points.append(KillPoint(kind, rng.choice([s for s in candidates if low <= s <= high])))
    return points


def _happened(point: KillPoint, workdir: str) -> bool:
    if point.kind == "save":
        return os.path.exists(_tmp_dir(workdir, point.step))
    return any(r["step"] == point.step and r["split"] == "train" for r in _rows_so_far(workdir))


def _rows_so_far(workdir: str) -> list[dict]:
    """The complete rows of a metrics.jsonl that a running process may be appending to."""
    if not os.path.exists(_metrics(workdir)):
        return []
    with open(_metrics(workdir)) as f:
        lines = f.read().split("\n")[:-1]  # the last piece may be a line being written
    return [json.loads(line) for line in lines if line.strip()]


def _tmp_dir(workdir: str, step: int) -> str:
    return os.path.join(workdir, workdir_lib.CHECKPOINTS_DIR, f"{step}{ckpt.TMP_SUFFIX}")


def _metrics(workdir: str) -> str:
    return os.path.join(workdir, workdir_lib.METRICS_LOG)


def _kill_at(process: subprocess.Popen, point: KillPoint, workdir: str) -> dict:
    """Waits for `point`, SIGKILLs `process` there and says what was left on disk. A save is
    interrupted only if it is still unfinished once the process is stopped (SIGSTOP)."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the run ended before {point}:\n{process.stdout.read()}")
        if _happened(point, workdir):
            process.send_signal(signal.SIGSTOP)
            if point.kind == "log" or os.path.exists(_tmp_dir(workdir, point.step)):
                break
            process.send_signal(signal.SIGCONT)
            raise AssertionError(f"the save at {point} finished before the kill")
        time.sleep(0.001)
    else:
        raise AssertionError(f"timed out waiting for {point}")
    process.kill()
    output = process.communicate()[0]
    folder = os.path.join(workdir, workdir_lib.CHECKPOINTS_DIR)
    names = sorted(os.listdir(folder), key=lambda n: int(n.split(".")[0]))
    rows = _rows_so_far(workdir)
    return {
        "killed": f"{point.kind} {point.step}",
        "checkpoints left": names,
        "last row": max(r["step"] for r in rows) if rows else None,
        "output": output,
    }


def _resume_lines(output: str) -> list[str]:
    return [
        line
        for line in output.splitlines()
        if "resumed from" in line or "interrupted while" in line or "warning" in line
    ]


def test_killed_and_resumed_runs_end_as_the_uninterrupted_one(reference, data_dir, env, tmp_path):
    """Three SIGKILLs at seeded points, then the newest finished checkpoint damaged (as a
    disk might): each rerun resumes from the newest checkpoint it can restore, never from a
    save it interrupted, and the last run ends exactly as the uninterrupted one."""
    workdir = str(tmp_path / "killed")
    points = kill_points()
    assert {p.kind for p in points} == {"save", "log"}
    assert any(p.step % LOG_EVERY for p in points if p.kind == "save")  # between log steps
    record = []
    for point in points:
        entry = _kill_at(_start(workdir, data_dir, env), point, workdir)
        record.append(entry)
        if point.kind == "save":  # torn: the unfinished save is on disk, not finalised
            assert f"{point.step}{ckpt.TMP_SUFFIX}" in entry["checkpoints left"]
            assert str(point.step) not in entry["checkpoints left"]
    finished = _steps(workdir)
    assert len(finished) >= 2
    _truncate_largest_array(workdir, finished[-1])
    record[-1]["damaged"] = finished[-1]
    # What the run after each kill said: the next killed run's output, or the last run's.
    after = [entry.pop("output") for entry in record][1:]
    after.append(_finish(_start(workdir, data_dir, env)))
    for entry, output in zip(record, after, strict=True):
        entry["resume"] = _resume_lines(output)
    print("\nkill points and resumes:")
    for entry in record:
        print(f"  {entry}")
    for entry in record:
        finished = sorted(int(n) for n in entry["checkpoints left"] if n.isdigit())
        damaged = entry.get("damaged")
        readable = [s for s in finished if s != damaged]
        resumed = [line for line in entry["resume"] if "resumed from" in line]
        if readable:
            assert resumed and resumed[0].endswith(f"/checkpoints/{readable[-1]}"), entry
        else:
            assert not resumed, entry
        torn = [n for n in entry["checkpoints left"] if not n.isdigit()]
        assert all(any(t in line for line in entry["resume"]) for t in torn), entry
        warnings = [line for line in entry["resume"] if "cannot be restored" in line]
        assert len(warnings) == (damaged is not None), entry
        assert damaged is None or f"/checkpoints/{damaged} cannot be" in warnings[0]
    assert os.listdir(os.path.join(workdir, workdir_lib.UNREADABLE_DIR)) == [
        str(record[-1]["damaged"])
    ]
    _assert_same_run(reference.workdir(), workdir)


def _truncate_largest_array(workdir: str, step: int) -> None:
    """Damages checkpoint `step`: its largest array file loses all but 10 bytes."""
    folder = os.path.join(
        workdir, workdir_lib.CHECKPOINTS_DIR, str(step), "state", "ocdbt.process_0"
    )
    arrays = glob.glob(os.path.join(folder, "d", "*"))
    with open(max(arrays, key=os.path.getsize), "r+b") as f:
        f.truncate(10)


def _assert_same_run(expected: str, actual: str) -> None:
    """The two workdirs hold the same checkpoints (state, iterator, metrics), the same
    metrics.jsonl (but timing) and the same final evaluation."""
    kept = _steps(expected)
    assert kept == _steps(actual)
    for step in kept:
        a = inference.load(expected, str(step)).states[0]
        b = inference.load(actual, str(step)).states[0]
        chex.assert_trees_all_equal(
            (a.step, a.params, a.batch_stats, a.opt_state, jax.random.key_data(a.key)),
            (b.step, b.params, b.batch_stats, b.opt_state, jax.random.key_data(b.key)),
        )
        for item in ("data/process_0-of-1.json", "meta/metadata", "metrics/metrics"):
            assert _read(expected, step, item) == _read(actual, step, item), (step, item)
    assert _log(expected) == _log(actual)
    for name in ("metrics.json", "predictions.csv"):
        path = os.path.join("eval", "validation", name)
        assert _text(expected, path) == _text(actual, path), name


def _steps(workdir: str) -> list[int]:
    folder = os.path.join(workdir, workdir_lib.CHECKPOINTS_DIR)
    return sorted(int(n) for n in os.listdir(folder) if n.isdigit())


def _read(workdir: str, step: int, item: str) -> str | None:
    path = os.path.join(workdir, workdir_lib.CHECKPOINTS_DIR, str(step), item)
    return _text(workdir, path) if os.path.exists(path) else None


def _text(workdir: str, path: str) -> str:
    with open(os.path.join(workdir, path)) as f:
        return f.read()


def _log(workdir: str) -> list[dict]:
    return [
        {k: v for k, v in row.items() if k not in TIMING} for row in writers.read_metrics(workdir)
    ]


def test_no_restorable_checkpoint_stops_the_run_with_one_user_error(reference, data_dir, tmp_path):
    """Every checkpoint damaged: the run stops before training with the one-line user error
    (exit status 2 from the commands), and moves or truncates nothing."""
    workdir = str(tmp_path / "damaged")
    shutil.copytree(reference.workdir(), workdir)
    for step in _steps(workdir):
        _truncate_largest_array(workdir, step)
    before = _text(workdir, workdir_lib.METRICS_LOG), _steps(workdir)
    with pytest.raises(errors.USER_ERRORS) as raised:
        train.train_and_evaluate(resume_fixture_config.get_config(data_dir), workdir)
    assert isinstance(raised.value, ckpt.CheckpointError)
    assert "\n" not in str(raised.value) and "can be restored" in str(raised.value)
    assert (_text(workdir, workdir_lib.METRICS_LOG), _steps(workdir)) == before
    assert not os.path.exists(os.path.join(workdir, workdir_lib.UNREADABLE_DIR))


# --------------------------------------------------------------------------- retention


def test_the_run_keeps_the_latest_and_the_best_by_its_logged_holdout_kappa(reference):
    """More checkpoints than keep_checkpoints + keep_best: the kept set is the latest N plus
    the top K by the holdout kappa in metrics.jsonl, and 'best' is its argmax (ties: the
    later step), which the final evaluation used."""
    assert len(SAVED) > KEEP_LATEST + KEEP_BEST
    workdir = reference.workdir()
    kappas = {
        r["step"]: r["kappa"] for r in writers.read_metrics(workdir) if r["split"] == "holdout"
    }
    assert sorted(kappas) == [s for s in SAVED if s % EVAL_EVERY == 0]

    def rank(step: int) -> tuple[float, int]:
        return workdir_lib.best_metric({workdir_lib.BEST_METRIC: kappas[step]}), step

    best = max(kappas, key=rank)
    top = sorted(kappas, key=rank)[-KEEP_BEST:]
    assert _steps(workdir) == sorted(set(SAVED[-KEEP_LATEST:]) | set(top))
    manager = ckpt.make_manager(workdir, keep_latest=KEEP_LATEST, keep_best=KEEP_BEST)
    assert manager.best_step() == ckpt.select_step(manager, "best") == best
    manager.close()
    with open(os.path.join(workdir, "eval", "validation", "metrics.json")) as f:
        assert json.load(f)["step"] == best


def test_an_older_flat_config_json_is_compared_by_the_model_fields_it_takes():
    """A workdir written before models had their own configs (every model's fields flat in
    `model`, `widths` even for VGG16) resumes with the same config: only real changes are
    named, as `model.<field>`."""
    from experiments.configs import quickstart, vgg16
    from murajax import config as config_lib
    from murajax import models, resume

    every_field = {
        **dataclasses.asdict(models.CNNConfig()),
        **dataclasses.asdict(models.MultiViewConfig()),
    }
    for config in (quickstart.get_config("smoke"), vgg16.get_config("smoke")):
        new = json.loads(config_lib.to_json(config))
        old = json.loads(config_lib.to_json(config))
        options = old["model"].pop("options")
        old["model"].update(json.loads(json.dumps({**every_field, **options})))
        old["model"]["num_classes"] = 2  # then a required field; now None: the dataset's
        assert resume.refused(resume.changes(old, new)) == {}
        del old["model"]["num_classes"]
        assert resume.changes(old, new) == {}
        old["model"]["dropout_rate"] = 0.25
        assert list(resume.changes(old, new)) == ["model.dropout_rate"]
