"""Every user mistake is one line: `error: ...`, exit status 2, no traceback, nothing lost.

Each entry point (`experiments.main`, `.evaluate`, `.predict`, `.sweep`) is driven in a fresh
process with bad inputs: a MURA tree with a truncated PNG, a dataset whose record files are
gone, a workdir that cannot be written, another model's weights file, a checkpoint that does
not exist, an empty `--input`. The processes run at once (each imports JAX, seconds each);
the other cases of the same code paths (every kind of dataset, weights-file and output
error) run in this process, through `experiments.cli.guard`, the wrapper the programs use.
A finished run, trained once, must come out of all of it unchanged and still evaluate to
the numbers its training gave.
"""

import contextlib
import glob
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import cli
from murajax import data, errors, inference, models, predict, reevaluate, train
from murajax import workdir as workdir_lib
from murajax.config import DataConfig, ModelConfig
from tests import sweep_fixture_config
from tests.legacy_h5 import write_legacy_h5

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "tests/sweep_fixture_config.py"  # trivial_mura, 16 steps, checkpoints 8 and 16
DUMMY_MURA = os.path.join(ROOT, "tfds_mura", "mura", "dummy_data", "MURA-v1.1")
TRUNCATED_PNG = "MURA-v1.1/valid/XR_HUMERUS/patient11185/study1_positive/image2.png"
PROGRAM_ERRORS = errors.USER_ERRORS  # evaluate's and predict's


# --------------------------------------------------------------------------- helpers


def snapshot(folder: str) -> dict[str, str]:
    """sha256 of every file under `folder`, by relative path."""
    digests = {}
    for path in sorted(glob.glob(os.path.join(folder, "**"), recursive=True)):
        if os.path.isfile(path):
            with open(path, "rb") as f:
                digests[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return digests


def saved_state(folder: str) -> dict[str, str]:
    """What a run saved and a failed rerun must not lose: config, metrics, checkpoints."""
    keep = ("config.json", "metrics.jsonl", "checkpoints" + os.sep)
    return {k: v for k, v in snapshot(folder).items() if k.startswith(keep)}


def train_records(data_dir: str) -> list[str]:
    return glob.glob(os.path.join(data_dir, "trivial_mura", "*", "*-train.array_record*"))


@contextlib.contextmanager
def records_gone(data_dir: str) -> Iterator[None]:
    """The dataset's train records moved away (a half-deleted dataset), then put back."""
    moved = [(path, path + ".away") for path in train_records(data_dir)]
    for path, away in moved:
        os.replace(path, away)
    try:
        yield
    finally:
        for path, away in moved:
            os.replace(away, path)


def broken_mura_tree(root: Path) -> str:
    """The builder's dummy MURA tree with one PNG truncated; returns the manual dir."""
    shutil.copytree(DUMMY_MURA, root / "MURA-v1.1")
    png = root / TRUNCATED_PNG
    png.write_bytes(png.read_bytes()[:100])
    return str(root)


def error_line(stderr: str) -> str:
    """The last non-empty line of stderr."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def guarded_error(capsys, fn: Callable[[], object], user_errors: tuple = errors.USER_ERRORS) -> str:
    """Runs `fn` as the programs run their main (`cli.guard`); checks the exit status (2)
    and that stderr ends with the only `error:` line (warnings may come before it); returns
    that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli.guard(lambda argv: fn(), user_errors)([])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    line = error_line(stderr)
    assert line.startswith("error: ") and stderr.count("error: ") == 1, stderr
    return line


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def own_data(data_dir, tmp_path_factory) -> str:
    """A copy of the session's `trivial_mura` data_dir, which this module damages for a while."""
    path = str(tmp_path_factory.mktemp("data") / "tfds")
    shutil.copytree(data_dir, path)
    return path


@pytest.fixture(scope="module")
def finished(own_data, tmp_path_factory) -> dict:
    """A finished tiny run (the sweep fixture's config), what it saved and what it scored."""
    workdir = str(tmp_path_factory.mktemp("finished") / "run")
    results = train.train_and_evaluate(sweep_fixture_config.get_config(own_data), workdir)
    return {"workdir": workdir, "results": results, "files": snapshot(workdir)}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Bad inputs: a regular file where a folder should be, an empty folder, junk images,
    weights files that are another model's, truncated, of wrong shapes, or missing."""
    tmp = tmp_path_factory.mktemp("inputs")
    (tmp / "a_file").write_text("not a folder")
    (tmp / "empty").mkdir()
    (tmp / "junk").mkdir()
    (tmp / "junk" / "._image1.png").write_bytes(bytes(64))
    (tmp / "junk" / "notes.txt").write_text("x")
    other = [
        ("conv1", [("kernel", np.zeros((3, 3, 1, 4))), ("bias", np.zeros(4))]),
        ("logits", [("kernel", np.zeros((4, 2))), ("bias", np.zeros(2))]),
    ]
    write_legacy_h5(tmp / "other_model.h5", other)
    whole = (tmp / "other_model.h5").read_bytes()
    (tmp / "truncated.h5").write_bytes(whole[: len(whole) // 2])
    one_channel = [("block1_conv1", [("kernel", np.zeros((3, 3, 1, 64))), ("bias", np.zeros(64))])]
    write_legacy_h5(tmp / "wrong_shapes.h5", one_channel)
    paths = {
        name: str(tmp / name)
        for name in ("a_file", "empty", "junk", "other_model.h5", "truncated.h5")
    }
    paths |= {"wrong_shapes.h5": str(tmp / "wrong_shapes.h5"), "missing.h5": str(tmp / "no.h5")}
    return paths


def _cases(finished: dict, own_data: str, files: dict, tmp: Path) -> dict[str, list[str]]:
    """Command lines of the bad-input cases, by name."""
    run = finished["workdir"]
    fixture = f"--config={CONFIG}:{own_data}"
    return {
        "main_mura_tree_with_a_truncated_png": [
            "experiments.main",
            f"--config={CONFIG}:{tmp / 'mura_data'}",
            f"--workdir={tmp / 'mura_run'}",
            "--config.data.dataset=mura",
            f"--config.data.manual_dir={broken_mura_tree(tmp / 'manual')}",
        ],
        "main_rerun_with_the_dataset_damaged": [
            "experiments.main",
            fixture,
            f"--workdir={tmp / 'rerun'}",
        ],
        "main_workdir_under_a_file": [
            "experiments.main",
            fixture,
            f"--workdir={files['a_file']}/run",
        ],
        "main_weights_of_another_model": [
            "experiments.main",
            fixture,
            f"--workdir={tmp / 'vgg_run'}",
            "--config.model.name=vgg16",
            "--config.data.image_size=32",
            f"--config.model.weights={files['other_model.h5']}",
        ],
        "evaluate_checkpoint_that_does_not_exist": [
            "experiments.evaluate",
            f"--workdir={run}",
            "--checkpoint=99",
        ],
        "evaluate_with_the_dataset_damaged": [
            "experiments.evaluate",
            f"--workdir={tmp / 'reevaluated'}",
        ],
        "predict_empty_input": [
            "experiments.predict",
            f"--workdir={run}",
            f"--input={files['empty']}",
            f"--output={tmp / 'predictions.csv'}",
        ],
        "sweep_with_the_dataset_damaged": [
            "experiments.sweep",
            fixture,
            f"--workdir={tmp / 'sweep'}",
        ],
        "sweep_workdir_under_a_file": [
            "experiments.sweep",
            fixture,
            f"--workdir={files['a_file']}/sweep",
        ],
    }


# What the error line must name, per case.
EXPECTED = {
    "main_mura_tree_with_a_truncated_png": [
        "building 'mura' failed",
        f"{TRUNCATED_PNG}: unreadable image (image file is truncated)",
    ],
    "main_rerun_with_the_dataset_damaged": [
        "dataset 'trivial_mura' in",
        "is damaged: reading its 'train' split failed",
        "trivial_mura-train.array_record",
        "to rebuild it",
    ],
    "main_workdir_under_a_file": ["cannot write to --workdir=", "a_file is a file, not a folder"],
    "main_weights_of_another_model": [
        "vgg16 weights from",
        "other_model.h5: none of the model's 13 layers is in the file, which holds conv1, logits",
    ],
    "evaluate_checkpoint_that_does_not_exist": [
        "checkpoint 99 not found: available steps 8, 16 (or 'best', 'latest')"
    ],
    "evaluate_with_the_dataset_damaged": ["dataset 'trivial_mura' in", "is damaged"],
    "predict_empty_input": ["nothing to score: --input=", "empty holds no files; expected image"],
    "sweep_with_the_dataset_damaged": ["dataset 'trivial_mura' in", "is damaged"],
    "sweep_workdir_under_a_file": ["cannot write to --workdir=", "a_file is a file, not a folder"],
}


@pytest.fixture(scope="module")
def commands(finished, own_data, files, tmp_path_factory) -> dict:
    """Runs every case's command at once, with the dataset's train records moved away
    meanwhile; returns their results and the two copies of the run they reran."""
    tmp = tmp_path_factory.mktemp("commands")
    copies = {}
    for name in ("rerun", "reevaluated"):  # main and evaluate rerun copies of the run
        copies[name] = str(tmp / name)
        shutil.copytree(finished["workdir"], copies[name])
    saved = {name: saved_state(path) for name, path in copies.items()}
    cases = _cases(finished, own_data, files, tmp)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    with records_gone(own_data):
        processes = {
            name: subprocess.Popen(
                [sys.executable, "-m", *argv],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name, argv in cases.items()
        }
        results = {}
        for name, process in processes.items():
            out, err = process.communicate(timeout=300)
            results[name] = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    return {"results": results, "copies": copies, "saved": saved, "tmp": tmp}


# --------------------------------------------------------------------------- the programs


@pytest.mark.parametrize("case", list(EXPECTED))
def test_each_program_reports_a_bad_input_on_one_line(commands, case):
    result = commands["results"][case]
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    line = error_line(result.stderr)
    assert line.startswith("error: "), result.stderr[-3000:]
    for fragment in EXPECTED[case]:
        assert fragment in line, line


def test_failed_commands_lose_nothing_and_create_nothing(finished, commands, files):
    assert snapshot(finished["workdir"]) == finished["files"]  # evaluate and predict read it
    for name, path in commands["copies"].items():  # main and evaluate failed on these
        assert saved_state(path) == commands["saved"][name], name
    rerun = inference.load(commands["copies"]["rerun"], "latest")  # and it restores
    original = inference.load(finished["workdir"], "latest")
    assert rerun.steps == original.steps == (16,)
    for got, want in zip(
        jax.tree.leaves(rerun.states[0].params),
        jax.tree.leaves(original.states[0].params),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    tmp = commands["tmp"]
    assert not os.path.exists(tmp / "predictions.csv")
    assert os.path.isfile(files["a_file"])  # the workdirs under it were never made


# --------------------------------------------------------------------------- datasets


def _damaged_info(own_data: str, tmp: Path) -> str:
    copy = str(tmp / "tfds")
    shutil.copytree(own_data, copy)
    (info,) = glob.glob(os.path.join(copy, "trivial_mura", "*", "dataset_info.json"))
    Path(info).write_text("{")
    return copy


def _junk_records(own_data: str, tmp: Path) -> str:
    copy = str(tmp / "tfds")
    shutil.copytree(own_data, copy)
    for path in train_records(copy):
        Path(path).write_bytes(b"junk")
    return copy


# name -> (DataConfig fields given the module's paths, what the message names)
DATASET_CASES = {
    "unknown_name": (
        lambda p: {"dataset": "no_such_dataset", "data_dir": p["tmp"]},
        ["unknown dataset 'no_such_dataset'", "'mura' (real MURA", "'mura_synthetic'"],
    ),
    "unknown_config": (
        lambda p: {"dataset": "mura_synthetic/nope", "data_dir": p["tmp"]},
        ["dataset 'mura_synthetic/nope'", "BuilderConfig nope not found", "'tiny'"],
    ),
    "mura_without_manual_dir": (
        lambda p: {"dataset": "mura", "data_dir": p["tmp"]},
        ["building 'mura' failed (manual_dir=None): MURA not found", "downloads/manual"],
    ),
    "mura_manual_dir_missing": (
        lambda p: {"dataset": "mura", "data_dir": p["tmp"], "manual_dir": p["tmp"] + "/nowhere"},
        ["building 'mura' failed", "MURA not found", "nowhere"],
    ),
    "data_dir_is_a_file": (
        lambda p: {"dataset": "mura_synthetic/tiny", "data_dir": p["a_file"]},
        ["building 'mura_synthetic/tiny' into", "a_file", "must be a folder you can write to"],
    ),
    "not_prepared": (
        lambda p: {"dataset": "trivial_mura", "data_dir": p["tmp"], "build_if_missing": False},
        ["dataset 'trivial_mura' is not prepared in", "data.build_if_missing=True"],
    ),
    "damaged_dataset_info": (
        lambda p: {"dataset": "trivial_mura", "data_dir": p["damaged_info"]},
        ["is damaged: its dataset_info.json cannot be read", "to rebuild it"],
    ),
    "junk_record_file": (
        lambda p: {"dataset": "trivial_mura", "data_dir": p["junk_records"]},
        ["is damaged: reading its 'train' split failed", "to rebuild it"],
    ),
}


@pytest.mark.parametrize("case", list(DATASET_CASES))
def test_every_kind_of_dataset_error_is_a_one_line_data_error(
    case, own_data, files, tmp_path, capsys
):
    paths = {"tmp": str(tmp_path / "tfds"), "a_file": files["a_file"]}
    if case == "damaged_dataset_info":
        paths["damaged_info"] = _damaged_info(own_data, tmp_path)
    if case == "junk_record_file":
        paths["junk_records"] = _junk_records(own_data, tmp_path)
    fields, expected = DATASET_CASES[case]
    config = DataConfig(**fields(paths))
    with pytest.raises(errors.DataError):
        data.open_sources(config)
    line = guarded_error(capsys, lambda: data.open_sources(config))
    for fragment in expected:
        assert fragment in line, line


# --------------------------------------------------------------------------- weights files


WEIGHTS_CASES = {
    "missing.h5": (FileNotFoundError, ["Keras weights file", "no.h5 does not exist"]),
    "truncated.h5": (errors.WeightsError, ["truncated.h5 is not an HDF5 file", "truncated"]),
    "other_model.h5": (errors.WeightsError, ["none of the model's 13 layers is in the file"]),
    "wrong_shapes.h5": (
        errors.WeightsError,
        ["shape mismatch block1_conv1/kernel (3,3,1,64) in the file vs (3,3,3,64) in the model"],
    ),
}


@pytest.fixture(scope="module")
def vgg16_shapes() -> dict:
    """The shapes of a 2-class VGG16's initial variables (nothing computed)."""
    model = models.create("vgg16", num_classes=2)
    return jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3), jnp.float32))
    )


@pytest.mark.parametrize("name", list(WEIGHTS_CASES))
def test_bad_weights_files_are_one_line_naming_the_file(name, files, vgg16_shapes, capsys):
    error, expected = WEIGHTS_CASES[name]
    model_config = ModelConfig(name="vgg16", weights=files[name])
    with pytest.raises(error):
        models.pretrained_variables(model_config, vgg16_shapes)
    line = guarded_error(capsys, lambda: models.pretrained_variables(model_config, vgg16_shapes))
    for fragment in expected:
        assert fragment in line, line


def test_weights_for_a_model_without_keras_weights_is_one_config_line(files, capsys):
    model_config = ModelConfig(name="cnn", weights=files["other_model.h5"])
    line = guarded_error(capsys, lambda: models.create_from_config(model_config))
    assert "config.model.weights=" in line and "model 'cnn' does not load weights" in line
    # the models that do load weights are listed (tests may register more of them)
    assert "(models that do: 'densenet169', " in line and "'vgg16'" in line


# --------------------------------------------------------------------------- folders, predict


def test_unwritable_folders_are_named(files, tmp_path):
    assert workdir_lib.unwritable_reason(str(tmp_path / "new" / "run")) is None
    under_a_file = os.path.join(files["a_file"], "run")
    assert (
        workdir_lib.unwritable_reason(under_a_file) == f"{files['a_file']} is a file, not a folder"
    )
    with pytest.raises(errors.WorkdirError, match=r"cannot write to --workdir=.*a_file is a"):
        workdir_lib.check_writable(under_a_file, f"--workdir={under_a_file}")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        reason = workdir_lib.unwritable_reason(str(locked / "run"))
        if os.geteuid() == 0:  # root writes there anyway, and so may the program
            assert reason is None
        else:
            assert reason == f"cannot create files in {locked} (Permission denied)"
    finally:
        locked.chmod(0o755)
    assert not os.path.exists(tmp_path / "new")  # the check creates nothing


def test_evaluate_refuses_an_unwritable_eval_folder_before_any_compute(
    finished, tmp_path, monkeypatch
):
    """A file where the evaluation's folder must go (`eval`): refused, naming it, before a
    checkpoint is loaded or an image scored, and nothing in the workdir changes (as root too,
    where permission bits would not stop the writes)."""
    workdir = str(tmp_path / "run")
    shutil.copytree(finished["workdir"], workdir)
    eval_path = os.path.join(workdir, "eval")
    shutil.rmtree(eval_path)
    with open(eval_path, "w") as f:
        f.write("not a folder")
    before = (snapshot(workdir), sorted(glob.glob(os.path.join(workdir, "**"), recursive=True)))

    def computes(*args, **kwargs):
        raise AssertionError("computed before refusing")

    monkeypatch.setattr(reevaluate.inference, "load", computes)
    monkeypatch.setattr(reevaluate, "predict_images", computes)
    with pytest.raises(errors.WorkdirError) as error:
        reevaluate.reevaluate(workdir, "holdout", plots=False)
    message = str(error.value)
    assert f"cannot write to {eval_path}/holdout" in message
    assert f"{eval_path} is a file, not a folder" in message and "\n" not in message
    after = (snapshot(workdir), sorted(glob.glob(os.path.join(workdir, "**"), recursive=True)))
    assert after == before


def test_predict_input_output_and_checkpoint_mistakes(finished, files, tmp_path, capsys):
    run, out = finished["workdir"], str(tmp_path / "out.csv")

    def fails(inputs, output=out, **kwargs) -> str:
        return guarded_error(
            capsys, lambda: predict.predict(run, inputs, output, **kwargs), PROGRAM_ERRORS
        )

    assert "input " + files["empty"] + "/nope does not exist" in fails([files["empty"] + "/nope"])
    assert "nothing to score: --input= holds no files" in fails([])
    line = fails([files["junk"]])  # junk named on stderr, skipped, then nothing left
    assert "nothing to score: no readable image among the 2 file(s)" in line
    line = fails([files["junk"]], checkpoint="99")
    assert "checkpoint 99 not found: available steps 8, 16" in line
    line = fails([files["junk"]], output=os.path.join(files["a_file"], "out.csv"))
    assert "cannot write to --output=" in line and "a_file is a file, not a folder" in line
    line = fails([files["junk"]], output=str(tmp_path))
    assert f"--output={tmp_path} is a folder: expected the path of the CSV file" in line
    line = fails([files["junk"]], heatmaps_dir=os.path.join(files["a_file"], "maps"))
    assert "cannot write to --heatmaps=" in line
    assert not os.path.exists(out)


def test_a_bug_is_not_reported_as_a_user_error():
    def buggy(argv):
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):  # keeps its traceback
        cli.guard(buggy, errors.USER_ERRORS)([])


# --------------------------------------------------------------------------- afterwards


def test_the_finished_run_still_evaluates_to_its_training_numbers(finished, commands):
    del commands  # after every failed command
    body = reevaluate.reevaluate(finished["workdir"], "validation", "best", plots=False)
    trained = finished["results"]["validation"]
    assert body["step"] == trained["step"]
    assert body["study"]["kappa"] == trained["study"]["kappa"]
    assert body["study"]["auroc"] == trained["study"]["auroc"]


@pytest.mark.parametrize(
    "damage, message",
    [
        ("junk step folder", "cannot be restored (KeyError"),
        ("checkpoint metadata emptied", "unreadable checkpoint files"),
        ("metrics emptied", "unreadable checkpoint files"),
    ],
)
def test_evaluate_names_an_unreadable_checkpoint_in_one_line_and_moves_nothing(
    finished, tmp_path, damage, message
):
    """`evaluate --checkpoint=latest` on a workdir whose newest checkpoint is junk or damaged:
    one error line naming it and what else to choose (it was a KeyError or JSONDecodeError
    traceback), with every checkpoint left where it was."""
    workdir = str(tmp_path / "run")
    shutil.copytree(finished["workdir"], workdir)
    checkpoints = os.path.join(workdir, "checkpoints")
    newest = max(int(name) for name in os.listdir(checkpoints) if name.isdigit())
    if damage == "junk step folder":
        damaged = os.path.join(checkpoints, str(newest + 1))
        os.makedirs(damaged)
        with open(os.path.join(damaged, "junk"), "w") as f:
            f.write("not a checkpoint")
    else:
        name = (
            "_CHECKPOINT_METADATA" if "metadata" in damage else os.path.join("metrics", "metrics")
        )
        damaged = os.path.join(checkpoints, str(newest))
        open(os.path.join(damaged, name), "w").close()
    before = snapshot(checkpoints)
    with pytest.raises(errors.WorkdirError) as error:
        reevaluate.reevaluate(workdir, "holdout", checkpoint="latest", plots=False)
    text = str(error.value)
    assert message in text and damaged in text and "\n" not in text
    assert snapshot(checkpoints) == before
