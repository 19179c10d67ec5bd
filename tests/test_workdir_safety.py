"""Workdirs as safe as the rest (issue 19, findings 12-15): one writer at a time (the workdir
lock), someone else's folder is never written into, a torn `metrics.jsonl` line does not stop
a resume and every rewrite is whole; and the benchmark's measurement processes die with it.
The command-line checks run `python -m experiments.main` (and `.evaluate`, `.benchmark`) as
a user does."""

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

import tfds_mura  # noqa: F401  (registers the MURA datasets)
from experiments.bench import runner, timing, workloads
from murajax import errors, resume, sweep, train, workdir_lock, writers
from murajax import workdir as workdir_lib
from tests.trivial_mura import trivial_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = "tests/interrupt_fixture_config.py"
LONG = "--config.train.steps=100000"  # a run that trains until it is stopped


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


def _run(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _finished(process: subprocess.Popen, timeout: float = 300) -> subprocess.CompletedProcess:
    """`process` waited for, as `subprocess.run` returns it (killed if it runs too long)."""
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        process.kill()
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def _one_line(stderr: str) -> str:
    """A command's stderr, which must be one line."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def _snapshot(folder) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> bytes), folders included as b''."""
    found = {}
    for root, dirs, names in os.walk(folder):
        for name in dirs:
            found[os.path.relpath(os.path.join(root, name), folder) + "/"] = b""
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, folder)] = f.read()
    return found


def _alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, dead but not reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _all_gone(pids, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while any(_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux's /proc)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(name))
            except OSError:
                continue
    return found


_HOLD = """
import sys, time
from murajax import workdir_lock
workdir_lock.acquire(sys.argv[1], command="holder")
print("holding", flush=True)
time.sleep(120)
"""


def _holder(workdir: str) -> subprocess.Popen:
    """A process that holds `workdir`'s lock (command 'holder') until it is killed."""
    process = subprocess.Popen(
        [sys.executable, "-c", _HOLD, workdir], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "holding"
    return process


def _in_use(workdir: str, pid: int, command: str) -> str:
    return (
        f"workdir {workdir} is in use by pid {pid} on host {socket.gethostname()} ({command});"
        " wait for it to finish or use another --workdir"
    )


# --------------------------------------------------------------------------- 12: the lock


def test_a_second_writer_is_refused_at_once_and_the_first_run_goes_on(data_dir, env, tmp_path):
    """Finding 12: `experiments.main` twice on one workdir. The second removed the first's
    `N.orbax-checkpoint-tmp`, failed, and the first died with a traceback; now the second
    (and `experiments.evaluate`) is one line naming the first, which goes on unharmed."""
    workdir = str(tmp_path / "run")
    first = subprocess.Popen(
        _main_args(workdir, data_dir, LONG),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not os.path.exists(os.path.join(workdir, workdir_lib.METRICS_LOG)):
            assert first.poll() is None, first.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.05)
        others = [  # a second run and an evaluation, at once
            subprocess.Popen(
                args,
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for args in (
                _main_args(workdir, data_dir, LONG),
                [sys.executable, "-m", "experiments.evaluate", f"--workdir={workdir}"],
            )
        ]
        second, evaluate = [_finished(p) for p in others]
        assert first.poll() is None, "the first run did not outlive the second command"
        first.send_signal(signal.SIGTERM)
        _, first_err = first.communicate(timeout=120)
    finally:
        first.kill()
    for done in (second, evaluate):
        assert done.returncode == 2, done.stderr[-3000:]
        assert _one_line(done.stderr) == "error: " + _in_use(workdir, first.pid, "experiments.main")
        assert "removing" not in done.stdout
    # The first run stopped on its own terms: a checkpoint at the step the signal met.
    assert first.returncode == 143, first_err[-3000:]
    assert "interrupted by SIGTERM: stopped after step " in _one_line(first_err)
    assert workdir_lib.checkpoint_steps(workdir)


def test_a_holder_killed_with_sigkill_leaves_the_workdir_free(tmp_path):
    """The kernel releases the lock of a process that dies, SIGKILL included: a killed run
    resumes without anything to clean up."""
    workdir = str(tmp_path)
    holder = _holder(workdir)
    try:
        with pytest.raises(workdir_lock.WorkdirInUse) as caught:
            workdir_lock.acquire(workdir)
        assert str(caught.value) == _in_use(workdir, holder.pid, "holder")
        assert isinstance(caught.value, errors.WorkdirError)  # one `error:` line, status 2
    finally:
        holder.kill()
        holder.wait()
    with workdir_lock.holding(workdir):
        assert workdir_lock.read_holder(workdir) == workdir_lock.this_holder()
        with workdir_lock.holding(workdir):  # re-entrant in one process (a sweep and a run)
            assert workdir_lock.holds(workdir)
        assert workdir_lock.holds(workdir)
    assert not workdir_lock.holds(workdir)


_FORK_AND_RELEASE = """
import os, subprocess, sys, time
from murajax import workdir_lock
workdir = sys.argv[1]
with workdir_lock.holding(workdir):
    child = os.fork()
    if child == 0:
        time.sleep(60)  # a worker process that outlives its parent's hold
        os._exit(0)
try:
    probe = "from murajax import workdir_lock; import sys; workdir_lock.acquire(sys.argv[1])"
    done = subprocess.run([sys.executable, "-c", probe, workdir], capture_output=True, text=True)
    print("free" if done.returncode == 0 else done.stderr.strip().splitlines()[-1], flush=True)
finally:
    os.kill(child, 9)
    os.waitpid(child, 0)
"""


def test_a_forked_child_does_not_keep_the_workdir_locked(tmp_path):
    """A child forked while the lock is held (grain's workers, multiprocessing) closes its
    copy: once the parent lets go, another process gets the lock."""
    done = _run([sys.executable, "-c", _FORK_AND_RELEASE, str(tmp_path)], os.environ, 120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "free"


def test_a_sweep_folder_in_use_is_refused_before_any_run(tmp_path):
    loaded = sweep.load_sweep("experiments/configs/optimizers.py:smoke")
    trained = []
    holder = _holder(str(tmp_path))
    try:
        with pytest.raises(workdir_lock.WorkdirInUse, match=r"in use by pid \d+ .*\(holder\)"):
            sweep.run_sweep(
                loaded, str(tmp_path), train_fn=lambda c, w: trained.append(w), log=print
            )
    finally:
        holder.kill()
        holder.wait()
    assert trained == [] and os.listdir(tmp_path) == [workdir_lib.LOCK_FILE]


# --------------------------------------------------------------------------- 13: not ours


def _someone_elses(folder) -> dict[str, bytes]:
    """`folder` made into another project's output (a config.json, report.md and
    metrics.jsonl that are not murajax's); returns its snapshot."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"architectures": ["BertModel"], "hidden_size": 768}\n')
    (folder / "report.md").write_text("# Their report\n")
    (folder / "metrics.jsonl").write_text('{"epoch": 1, "acc": 0.5}\n')
    return _snapshot(folder)


def test_training_into_someone_elses_folder_is_refused_with_nothing_written(
    data_dir, env, tmp_path
):
    """Finding 13: their config.json, report.md and metrics.jsonl were overwritten after one
    "config differs ... updating it" line."""
    folder = tmp_path / "theirs"
    before = _someone_elses(folder)
    done = _run(_main_args(str(folder), data_dir), env)
    assert done.returncode == 2, done.stderr[-3000:]
    assert _one_line(done.stderr) == (
        f"error: --workdir={folder} is not empty and is not a murajax workdir: its config.json"
        " is not a murajax config (keys architectures, hidden_size); nothing was written"
        " there: use a new or empty folder"
    )
    assert _snapshot(folder) == before


@pytest.mark.parametrize(
    "files, reason",
    [
        ({"notes.txt": "mine\n"}, "it has no config.json (it holds notes.txt)"),
        ({"config.json": "{not json"}, "its config.json is not readable JSON: Expecting"),
        ({"config.json": "[1, 2]\n"}, "its config.json is not a murajax config (a JSON list"),
        ({"config.json": '{"seed": 0}\n'}, "its config.json is not a murajax config (keys seed)"),
    ],
)
def test_train_and_evaluate_refuses_a_folder_that_is_not_a_workdir(
    data_dir, tmp_path, files, reason
):
    folder = tmp_path / "theirs"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    before = _snapshot(folder)
    with pytest.raises(errors.WorkdirError) as caught:
        train.train_and_evaluate(trivial_config(data_dir), str(folder))
    message = str(caught.value)
    assert message.startswith(f"--workdir={folder} is not empty and is not a murajax workdir: ")
    assert reason in message and "\n" not in message
    assert _snapshot(folder) == before


def test_new_empty_and_murajax_folders_may_be_written(tmp_path):
    """What marks a murajax workdir: its config.json (a murajax `Config` as JSON, also an
    older one that lacks newer fields); an empty folder, or one holding only murajax's lock
    file or an unfinished temporary file, is new; so is one that does not exist."""
    assert workdir_lib.run_workdir_refusal(str(tmp_path / "missing")) is None
    assert workdir_lib.run_workdir_refusal(str(tmp_path)) is None
    (tmp_path / workdir_lib.LOCK_FILE).write_text("")
    (tmp_path / ".config.json.x1y2.part").write_text('{"arch')
    assert workdir_lib.run_workdir_refusal(str(tmp_path)) is None
    config = trivial_config("/data")
    resume.check_and_write_config(config, str(tmp_path))
    (tmp_path / "metrics.jsonl").write_text("")
    assert workdir_lib.run_workdir_refusal(str(tmp_path)) is None
    older = json.loads((tmp_path / "config.json").read_text())
    del older["eval"], older["train"]["on_nonfinite"]
    (tmp_path / "config.json").write_text(json.dumps(older))
    assert (
        workdir_lib.is_run_config(older) and workdir_lib.run_workdir_refusal(str(tmp_path)) is None
    )
    (tmp_path / "file").write_text("")
    assert workdir_lib.run_workdir_refusal(str(tmp_path / "file")) == "it is a file, not a folder"


def test_a_sweep_into_someone_elses_folder_is_refused_with_nothing_written(tmp_path):
    folder = tmp_path / "theirs"
    before = _someone_elses(folder)
    loaded = sweep.load_sweep("experiments/configs/optimizers.py:smoke")
    with pytest.raises(errors.WorkdirError, match="is not empty and is not a murajax sweep folder"):
        sweep.run_sweep(loaded, str(folder), train_fn=lambda c, w: None, log=print)
    assert _snapshot(folder) == before
    done = tmp_path / "swept"  # a sweep's own folder (sweep.json) is taken, and resumed
    sweep.run_sweep(loaded, str(done), train_fn=lambda c, w: os.makedirs(w), log=print)
    sweep.run_sweep(loaded, str(done), train_fn=lambda c, w: None, log=print)
    assert workdir_lib.sweep_folder_refusal(str(done)) is None


# --------------------------------------------------------------------------- 14: torn lines


def _rows_file(tmp_path, *lines: str) -> str:
    path = tmp_path / workdir_lib.METRICS_LOG
    path.write_text("".join(lines))
    return str(path)


ROWS = [
    '{"step": 4, "split": "train", "loss": 0.5}\n',
    '{"step": 8, "split": "train", "loss": 0.4}\n',
    '{"step": 8, "split": "holdout", "loss": 0.6}\n',
]


def test_a_torn_last_line_is_dropped_with_a_warning_and_the_file_replaced(tmp_path, capsys):
    path = _rows_file(tmp_path, *ROWS, '{"step": 12, "split": "tr')
    inode = os.stat(path).st_ino
    assert [r["step"] for r in writers.read_metrics(str(tmp_path))] == [4, 8, 8]
    warning = f"[murajax] warning: {path} line 4 is incomplete (a run killed while writing it)"
    assert capsys.readouterr().out.startswith(warning)
    writers.truncate_after(str(tmp_path), 8)
    assert capsys.readouterr().out.startswith(warning)
    with open(path) as f:
        assert f.read() == "".join(ROWS)
    assert os.stat(path).st_ino != inode  # a new file renamed over the old, not rewritten
    writers.truncate_after(str(tmp_path), 4)
    with open(path) as f:
        assert f.read() == ROWS[0]
    assert capsys.readouterr().out == ""
    # The zeros a crash can leave at the end of a file are a torn last line too.
    _rows_file(tmp_path, *ROWS, "\0" * 30)
    assert len(writers.read_metrics(str(tmp_path))) == 3


def test_a_bad_line_before_the_last_is_one_clear_error(tmp_path):
    path = _rows_file(tmp_path, ROWS[0], '{"step": 8, "spl\n', ROWS[2])
    for read in (writers.read_metrics, lambda w: writers.truncate_after(w, 4)):
        with pytest.raises(errors.WorkdirError) as caught:
            read(str(tmp_path))
        message = str(caught.value)
        assert message.startswith(f'{path} line 2 is not a metrics row (\'{{"step": 8, "spl\')')
        assert "\n" not in message and "the file is damaged" in message
    with open(path) as f:
        assert f.read() == ROWS[0] + '{"step": 8, "spl\n' + ROWS[2]  # left as it was


def test_workdir_files_are_replaced_whole(tmp_path):
    """config.json and every JSON file of a workdir are written beside and renamed over the
    old one: a writer that fails (or is killed) half-way leaves the old file."""
    path = str(tmp_path / "metrics.json")
    workdir_lib.write_json(path, {"kappa": 0.5})
    inode = os.stat(path).st_ino
    with pytest.raises(TypeError):
        workdir_lib.write_json(path, {"kappa": 0.7, "checkpoint": object()})
    assert workdir_lib.read_json(path) == {"kappa": 0.5}
    workdir_lib.write_json(path, {"kappa": 0.7})
    assert os.stat(path).st_ino != inode and workdir_lib.read_json(path) == {"kappa": 0.7}
    config = trivial_config("/data")
    resume.check_and_write_config(config, str(tmp_path))
    inode = os.stat(tmp_path / "config.json").st_ino
    config.train.steps = 48
    resume.check_and_write_config(config, str(tmp_path))
    assert os.stat(tmp_path / "config.json").st_ino != inode
    assert workdir_lib.read_config(str(tmp_path)).train.steps == 48
    assert sorted(os.listdir(tmp_path)) == ["config.json", "metrics.json"]  # no leftovers


def test_predictions_reports_and_plots_are_replaced_whole(tmp_path):
    """The evaluation's CSVs, the sweep summary, predict's CSV and the plots are written beside
    and renamed over the old file too: a writer that fails half-way leaves the old one."""
    import numpy as np

    from murajax import evaluation, plots, predict
    from murajax.report import sweep as sweep_report

    studies = {
        "study_id": np.array(["s1"]),
        "group": np.array([0]),
        "label": np.array([1]),
        "prob": np.array([0.75]),
        "pred": np.array([1]),
        "n_images": np.array([2]),
    }
    bad = {**studies, "label": np.array(["not a number"])}

    class Unprintable:
        def __str__(self) -> str:
            raise ValueError("cannot be written")

    good_rows = [{"name": "a", "kappa": 0.5}]
    bad_rows = [{"name": "a", "kappa": 0.5}, {"name": "b", "kappa": Unprintable()}]
    writers_and_values = [
        (evaluation.write_study_predictions, studies, bad),
        (sweep_report.write_csv, good_rows, bad_rows),
        (
            predict.write_csv,
            [{"study": "s", "body_part": "XR_HAND", "prob": 0.5, "pred": 1, "n_images": 1}],
            [{"study": "s", "body_part": "XR_HAND", "prob": "x", "pred": 1, "n_images": 1}],
        ),
    ]
    for write, good, broken in writers_and_values:
        path = str(tmp_path / f"{write.__module__}.csv")
        write(path, good)
        before = open(path).read()
        with pytest.raises((TypeError, ValueError)):
            write(path, broken)
        assert open(path).read() == before, write.__module__
    figure_path = str(tmp_path / "roc.png")
    from matplotlib.figure import Figure

    plots._save(Figure(), figure_path)
    before = open(figure_path, "rb").read()
    broken = Figure()
    broken.savefig = lambda *args, **kwargs: (_ for _ in ()).throw(OSError("disk full"))
    with pytest.raises(OSError, match="disk full"):
        plots._save(broken, figure_path)
    assert open(figure_path, "rb").read() == before
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".part")]


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory) -> str:
    """A finished 16-step run: rows every 4 steps, checkpoints (and holdout rows) at 8, 16."""
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "_write_report", lambda *args, **kwargs: None)  # (tested elsewhere)
        train.train_and_evaluate(_short_config(data_dir), workdir)
    return workdir


def _short_config(data_dir: str):
    config = trivial_config(data_dir, steps=16, eval_every=8, checkpoint_every=8)
    config.eval.splits = ()  # the rows and checkpoints are what is compared
    config.eval.bootstrap_samples = 10
    return config


def _rows_without_speed(workdir: str) -> list[dict]:
    return [
        {k: v for k, v in row.items() if k != "images_per_sec"}
        for row in writers.read_metrics(workdir)
    ]


def test_a_run_killed_while_writing_a_row_resumes_and_ends_as_one_never_killed(
    uninterrupted, data_dir, tmp_path, monkeypatch, capsys
):
    """Finding 14: a torn last line in metrics.jsonl made every resume fail with a
    JSONDecodeError traceback. The workdir is left as a run killed after checkpoint 8 while
    appending the row of step 12."""
    workdir = str(tmp_path / "killed")
    shutil.copytree(uninterrupted, workdir)
    shutil.rmtree(os.path.join(workdir, workdir_lib.CHECKPOINTS_DIR, "16"))
    path = os.path.join(workdir, workdir_lib.METRICS_LOG)
    with open(path) as f:
        lines = f.readlines()
    kept = [line for line in lines if json.loads(line)["step"] <= 8]
    torn = next(line for line in lines if json.loads(line)["step"] == 12)[:25]
    with open(path, "w") as f:
        f.writelines([*kept, torn])
    monkeypatch.setattr(train, "_write_report", lambda *args, **kwargs: None)
    train.train_and_evaluate(_short_config(data_dir), workdir)
    out = capsys.readouterr().out
    assert f"warning: {path} line {len(kept) + 1} is incomplete" in out
    assert f"resumed from {workdir}/checkpoints/8" in out
    assert _rows_without_speed(workdir) == _rows_without_speed(uninterrupted)
    with open(path) as f:
        assert all(json.loads(line) for line in f)


# --------------------------------------------------------------------------- 15: benchmark


def test_sigterm_to_the_benchmark_stops_its_processes_and_keeps_its_json(tmp_path):
    """Finding 15: SIGTERM to `experiments.benchmark` left its measurement processes running
    at full CPU. A 16 px CNN row timed for 300 s is measuring when the signal comes."""
    out = tmp_path / "bench.json"
    command = [
        sys.executable,
        "-m",
        "experiments.benchmark",
        "--models=C",
        "--image_size=16",
        "--batch_size=4",
        "--only=murajax",
        "--dtypes=float32",
        "--min_seconds=300",
        "--rounds=1",
        "--matmul_size=256",
        "--nopipeline",
        "--nodata_parallel",
        f"--json={out}",
    ]
    benchmark = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        lines = []
        for line in benchmark.stderr:  # progress lines, until the row's process starts
            lines.append(line)
            if "1/1 murajax cnn_c@16 b4 float32 ..." in line:
                break
        deadline = time.monotonic() + 60
        while not (children := _children(benchmark.pid)):
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.05)
        benchmark.send_signal(signal.SIGTERM)
        stdout, stderr = benchmark.communicate(timeout=30)
    finally:
        benchmark.kill()
    assert benchmark.returncode == 143, stderr[-3000:]
    assert _one_line(stderr) == (
        "[benchmark] interrupted by SIGTERM: its measurement processes were stopped; the"
        f" figures measured so far are in {out}"
    )
    assert _all_gone(children), [p for p in children if _alive(p)]
    figures = json.loads(out.read_text())
    assert figures["settings"]["interrupted"] == "SIGTERM"
    assert figures["matmul_gflops"]["float32"] > 0  # measured before the signal, kept
    assert figures["train_step"] == []  # the row in flight is not half a row


_FAKE_MEASUREMENT = """
import os, subprocess, sys, time
grandchild = subprocess.Popen(["sleep", "120"])  # as torch.compile's or grain's workers
with open(os.path.join(sys.argv[2], str(os.getpid())), "w") as f:
    f.write(f"{os.getpid()} {grandchild.pid}")
print(sys.argv[3], flush=True)  # compiled and warmed up: then it never answers
time.sleep(120)
"""


def test_a_signal_kills_every_measurement_process_and_what_they_started(tmp_path, monkeypatch):
    """`runner.stopping_on_signals`: two processes of a row taking turns (each with a child
    of its own) are killed at once by SIGTERM, and the row raises `Interrupted`."""
    folder = str(tmp_path)
    monkeypatch.setattr(
        runner,
        "_command",
        lambda job: [sys.executable, "-c", _FAKE_MEASUREMENT, "job", folder, timing.READY_LINE],
    )

    def signal_when_both_run() -> None:
        deadline = time.monotonic() + 60
        while len(os.listdir(folder)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=signal_when_both_run, daemon=True).start()
    tiny = dataclasses.replace(workloads.by_key("C"), image_size=16, batch_size=4)
    previous = signal.getsignal(signal.SIGTERM)
    with runner.stopping_on_signals():
        with pytest.raises(runner.Interrupted) as caught:
            runner.run_train_steps(
                [tiny], ["float32"], ["murajax", "keras-jax"], min_seconds=0.0, rounds=2
            )
        assert runner.stop_signal() == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is previous
    assert caught.value.exit_status == 143
    pids = [
        int(p)
        for name in os.listdir(folder)
        for p in open(os.path.join(folder, name)).read().split()
    ]
    assert len(pids) == 4
    assert _all_gone(pids), [p for p in pids if _alive(p)]


_SPAWN_AND_WAIT = """
import time
from experiments.bench import runner
print(runner.spawn(["sleep", "120"]).pid, flush=True)
time.sleep(120)
"""


def test_a_measurement_process_dies_with_a_benchmark_killed_by_sigkill():
    """No handler runs on SIGKILL: the kernel kills the children (PR_SET_PDEATHSIG)."""
    parent = subprocess.Popen(
        [sys.executable, "-c", _SPAWN_AND_WAIT], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        child = int(parent.stdout.readline())
        assert _alive(child)
    finally:
        parent.kill()
        parent.wait()
    assert _all_gone([child])
