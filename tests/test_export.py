"""Model packages (`experiments.export`): written, verified, and run without murajax.

Each model (the CNN, VGG16, a small DenseNet registered as a user's model, the multi-view
model; DenseNet-169 itself is slow) is trained for a few steps on TrivialMura, exported, and
its package's `predict.py` is run in a fresh interpreter that cannot import murajax (nor jax,
for ONNX): its CSV must match `experiments.predict --workdir`'s.
"""

import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from murajax import errors, export, inference, models, predict, train
from murajax.config import ModelConfig
from murajax.data import pipeline, preprocess
from murajax.export import function, runtime, verify
from murajax.export import onnx as onnx_lib
from murajax.models.densenet import DenseNet
from murajax.ops import graph_style
from tests.trivial_mura import trivial_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE_FILES = {
    "model.stablehlo",
    "model.onnx",
    "preprocess.json",
    "metadata.json",
    "MODEL_CARD.md",
    "predict.py",
}


@models.register("tiny_densenet", normalization="imagenet", channels=3)
def tiny_densenet(num_classes=2, *, dtype="float32", conv_impl="auto"):
    """A user's own model: DenseNet-169's layers (dense blocks, native BatchNorm), 2 blocks."""
    return DenseNet(blocks=(1, 2), num_classes=num_classes, dtype=dtype, conv_impl=conv_impl)


def _config(data_dir, name: str, **fields):
    config = trivial_config(data_dir, steps=4, eval_every=2, checkpoint_every=2, log_every=2)
    config.optim.warmup_steps = 0
    config.eval.bootstrap_samples = 20
    if name != "cnn":
        config.model = ModelConfig(name=name, **fields)
    if name in ("vgg16", "densenet169"):
        config.data.image_size = 32
    if name == "multiview":
        config.data.max_views = 2
    return config


MODELS = {
    "cnn": {},
    "vgg16": {},
    "tiny_densenet": {},
    "multiview": {"widths": (4, 8)},
    "densenet169": {},
}


@pytest.fixture(scope="module")
def workdirs(data_dir, tmp_path_factory):
    """{model name: a trained workdir}, trained on first use."""
    made: dict[str, str] = {}

    def get(name: str) -> str:
        if name not in made:
            workdir = str(tmp_path_factory.mktemp(name))
            train.train_and_evaluate(_config(data_dir, name, **MODELS[name]), workdir)
            made[name] = workdir
        return made[name]

    return get


@pytest.fixture(scope="module")
def packages(workdirs, tmp_path_factory):
    """{model name: its package (both formats)}, exported on first use."""
    made: dict[str, str] = {}

    def get(name: str) -> str:
        if name not in made:
            output = str(tmp_path_factory.mktemp("packages") / name)
            export.export(workdirs(name), output, progress=lambda _: None)
            made[name] = output
        return made[name]

    return get


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> str:
    """A MURA-like folder of studies: odd sizes, RGB and 16-bit PNGs, and a junk file."""
    root = tmp_path_factory.mktemp("studies")
    rng = np.random.default_rng(0)
    shapes = [(40, 27), (19, 33), (64, 64), (23, 23), (50, 31)]
    for k, (h, w) in enumerate(shapes):
        part = ("XR_WRIST", "XR_ELBOW", "XR_HAND")[k % 3]
        study = root / f"MURA-v1.1/valid/{part}/patient{k:05d}/study1_negative"
        study.mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(study / "image1.png")
        if k % 2:
            rgb = rng.integers(0, 256, (h + 3, w, 3), dtype=np.uint8)
            Image.fromarray(rgb).save(study / "image2.png")
        if k == 4:
            sixteen = rng.integers(0, 65536, (h, w), dtype=np.uint16)
            Image.fromarray(sixteen).save(study / "image3.png")
            (study / "notes.txt").write_text("not an image")
    return str(root)


# --------------------------------------------------------------------------- helpers

BLOCKER = """
import runpy, sys
for name in {blocked!r}:
    sys.modules[name] = None  # `import name` now fails: the package must not need it
sys.argv = [{script!r}] + {args!r}
runpy.run_path({script!r}, run_name="__main__")
"""


def run_standalone(package: str, args: list[str], blocked: tuple[str, ...], cwd: str):
    """Runs PKG/predict.py with `python -I` (no repo on the path, no PYTHONPATH) in `cwd`,
    with the `blocked` modules unimportable."""
    script = os.path.join(package, "predict.py")
    code = BLOCKER.format(blocked=list(blocked), script=script, args=args)
    return subprocess.run(
        [sys.executable, "-I", "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300
    )


NOT_MURAJAX = ("murajax", "tfds_mura", "experiments", "tests", "flax", "tensorflow_datasets")


def read_rows(path: str) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def assert_same_predictions(ours: str, theirs: str, tolerance: float) -> None:
    a, b = read_rows(ours), read_rows(theirs)
    assert [r["study"] for r in a] == [r["study"] for r in b] and a
    for x, y in zip(a, b, strict=True):
        assert set(x) == set(y)
        probs = [k for k in x if k.startswith("prob")]
        for k in probs:
            assert abs(float(x[k]) - float(y[k])) <= tolerance, (k, x, y)
        for k in set(x) - set(probs) - {"pred", "label"}:
            assert x[k] == y[k]
        if all(abs(float(x[k]) - 0.5) > 1e-3 for k in probs):  # not at the threshold
            assert (x["pred"], x["label"]) == (y["pred"], y["label"])


# --------------------------------------------------------------------------- the package


def test_package_holds_every_file_with_its_sha256(packages, workdirs):
    package = packages("cnn")
    assert set(os.listdir(package)) == PACKAGE_FILES  # no staging folder left either
    assert not [n for n in os.listdir(os.path.dirname(package)) if "partial" in n]
    with open(os.path.join(package, "metadata.json")) as f:
        metadata = json.load(f)
    assert set(metadata["sha256"]) == PACKAGE_FILES - {"metadata.json"}
    for name, digest in metadata["sha256"].items():
        assert runtime.sha256_of(os.path.join(package, name)) == digest
    assert metadata["model"]["name"] == "cnn" and metadata["checkpoint"]["steps"] == [4]
    assert metadata["dataset"]["label_names"] == ["normal", "abnormal"]
    assert metadata["decision"] == {
        "threshold": 0.5,
        "method": "fixed",
        "how": "fixed (config eval.threshold)",
        "aggregation": "mean",
    }
    with open(os.path.join(workdirs("cnn"), "eval", "validation", "metrics.json")) as f:
        evaluated = json.load(f)
    assert metadata["metrics"]["study"]["kappa_ci"] == evaluated["study"]["kappa_ci"]
    assert set(metadata["metrics"]["by_body_part"]) == set(evaluated["by_body_part"])
    verification = metadata["verification"]
    assert verification["inputs"].startswith("16 holdout images of trivial_mura")
    assert verification["max_abs_difference"]["stablehlo"] <= 1e-5
    assert verification["max_abs_difference"]["onnx"] <= 1e-4
    assert metadata["formats"]["stablehlo"]["platforms"] == ["cpu", "cuda"]
    assert metadata["versions"]["jax"] and metadata["formats"]["onnx"]["opset"]
    card = open(os.path.join(package, "MODEL_CARD.md")).read()
    for text in ("not a diagnosis", "Lower resolution", "No patient history", "Research Use"):
        assert text in card
    kappa = evaluated["study"]["kappa"]
    assert f"| **all** | {evaluated['study']['n']} | {kappa:.3f}" in card


@pytest.mark.parametrize(
    "name",
    [
        "cnn",
        "vgg16",
        "tiny_densenet",
        "multiview",
        pytest.param("densenet169", marks=pytest.mark.slow),
    ],
)
@pytest.mark.parametrize("fmt", ["onnx", "stablehlo"])
def test_package_scores_studies_without_murajax(name, fmt, packages, workdirs, studies, tmp_path):
    package = packages(name)
    expected = str(tmp_path / "workdir.csv")
    predict.predict(workdirs(name), [studies], expected, warn=lambda _: None)
    blocked = NOT_MURAJAX + (("jax", "jaxlib") if fmt == "onnx" else ("onnxruntime",))
    out = str(tmp_path / "package.csv")
    args = [f"--input={studies}", f"--output={out}", f"--format={fmt}"]
    result = run_standalone(package, args, blocked, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "skipped" in result.stderr and "notes.txt" in result.stderr
    assert_same_predictions(out, expected, tolerance=1e-4)


def test_onnxruntime_gives_the_stablehlo_outputs(packages):
    for name in ("cnn", "multiview"):
        model_onnx, metadata = runtime.load(packages(name), "onnx")
        model_hlo, _ = runtime.load(packages(name), "stablehlo")
        size = metadata["preprocess"]["image_size"]
        images = verify.random_squares(6, size, seed=3)
        inputs = [images]
        if model_onnx.study_level:
            inputs = [images.reshape(3, 2, size, size, 1), np.array([[1, 1], [1, 0], [1, 1]], bool)]
        for a, b in zip(model_onnx(*inputs), model_hlo(*inputs), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("resize", ["pad", "crop"])
@pytest.mark.parametrize("normalization", ["imagenet", "standardize"])
def test_preprocess_json_gives_the_pipelines_tensor(resize, normalization, tmp_path):
    rng = np.random.default_rng(1)
    files = {
        "gray.png": rng.integers(0, 256, (37, 23), dtype=np.uint8),
        "rgb.png": rng.integers(0, 256, (20, 45, 3), dtype=np.uint8),
        "sixteen.png": rng.integers(0, 65536, (30, 30), dtype=np.uint16),
    }
    spec = pipeline.PreprocessSpec(
        image_size=24, resize=resize, normalization=normalization, channels=3
    )
    prep = {"image_size": 24, "resize": resize}
    for name, array in files.items():
        path = str(tmp_path / name)
        Image.fromarray(array).save(path)
        from murajax import image_files

        gray = image_files.read_gray(path)
        square = runtime.prepare(runtime.read_gray(path), prep)
        np.testing.assert_array_equal(
            square, preprocess.resize_to_square(gray[:, :, None], 24, resize)
        )
        ours = pipeline.prepare_images([{"image": gray[:, :, None]}], spec)
        theirs = function.normalize(square[None], normalization, 3)
        np.testing.assert_allclose(np.asarray(theirs), ours, atol=2e-6, rtol=0)
        if normalization != "standardize":  # the same lookup table: the same floats
            np.testing.assert_array_equal(np.asarray(theirs), ours)


def test_an_ensemble_is_averaged_inside_the_package(workdirs, tmp_path):
    workdir = workdirs("cnn")
    output = str(tmp_path / "ensemble")
    exported = export.export(
        workdir, output, ensemble=2, formats="stablehlo", progress=lambda _: None
    )
    assert exported.metadata["checkpoint"]["ensemble"] == 2
    loaded = inference.load(workdir, ensemble=2)
    model, _ = runtime.load(output)
    images = verify.random_squares(5, loaded.config.data.image_size, seed=4)
    members = []
    for m in range(2):
        one = dataclasses.replace(loaded, states=(loaded.states[m],), steps=(loaded.steps[m],))
        members.append(np.asarray(function.build(one).fn(images)[0]))
    np.testing.assert_allclose(model(images)[0], np.mean(members, axis=0), atol=1e-6)


# --------------------------------------------------------------------------- refusals


def _copy(package: str, tmp_path) -> str:
    copy = str(tmp_path / "copy")
    shutil.copytree(package, copy)
    return copy


def _error_line(result) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_a_changed_or_missing_file_is_refused(packages, studies, tmp_path):
    package = _copy(packages("cnn"), tmp_path)
    args = [f"--input={studies}", f"--output={tmp_path / 'out.csv'}"]
    with open(os.path.join(package, "model.onnx"), "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    line = _error_line(run_standalone(package, args, NOT_MURAJAX, str(tmp_path)))
    assert "model.onnx was changed after export" in line
    os.remove(os.path.join(package, "model.onnx"))
    line = _error_line(run_standalone(package, args, NOT_MURAJAX, str(tmp_path)))
    assert "model.onnx is missing" in line
    assert not os.path.exists(tmp_path / "out.csv")


def test_a_runtime_that_is_not_installed_is_named(packages, studies, tmp_path):
    args = [f"--input={studies}", f"--output={tmp_path / 'out.csv'}", "--format=onnx"]
    blocked = NOT_MURAJAX + ("onnxruntime",)
    line = _error_line(run_standalone(packages("cnn"), args, blocked, str(tmp_path)))
    assert "--format=onnx needs onnxruntime, which is not installed" in line
    blocked = NOT_MURAJAX + ("onnxruntime", "jax")
    line = _error_line(run_standalone(packages("cnn"), args[:2], blocked, str(tmp_path)))
    assert "needs onnxruntime or jax to run" in line


def test_a_stablehlo_outside_the_compatibility_window_is_refused(packages, tmp_path):
    package = _copy(packages("cnn"), tmp_path)
    path = os.path.join(package, "metadata.json")
    with open(path) as f:
        metadata = json.load(f)
    metadata["formats"]["stablehlo"]["calling_convention_version"] = 99
    with open(path, "w") as f:
        json.dump(metadata, f)
    with pytest.raises(runtime.PackageError, match="calling convention 99 .* outside the"):
        runtime.load(package, "stablehlo")


def test_images_of_another_size_or_channel_count_are_refused(packages):
    model, _ = runtime.load(packages("cnn"), "onnx")
    with pytest.raises(runtime.PackageError, match=r"takes uint8 \(B, 16, 16, 1\)"):
        model(np.zeros((2, 32, 32, 1), np.uint8))
    with pytest.raises(runtime.PackageError, match=r"shape \(2, 16, 16, 3\)"):
        model(np.zeros((2, 16, 16, 3), np.uint8))
    with pytest.raises(runtime.PackageError, match="dtype float32"):
        model(np.zeros((2, 16, 16, 1), np.float32))


def test_export_refuses_an_existing_folder_and_bad_formats(workdirs, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(errors.WorkdirError, match="a folder that is not empty"):
        export.export(workdirs("cnn"), str(taken), progress=lambda _: None)
    assert os.listdir(taken) == ["keep.txt"]
    with pytest.raises(errors.ConfigError, match="--formats=tflite: expected one or more of"):
        export.export(workdirs("cnn"), str(tmp_path / "new"), formats="tflite")


def test_an_artifact_that_differs_leaves_no_package(workdirs, tmp_path, monkeypatch):
    monkeypatch.setitem(verify.TOLERANCE, "stablehlo", -1.0)
    output = tmp_path / "pkg"
    with pytest.raises(errors.ExportFailed, match="model.stablehlo gives probabilities up to"):
        export.export(workdirs("cnn"), str(output), formats="stablehlo", progress=lambda _: None)
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- commands


def _command(*args: str, cwd: str = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_export_and_predict_commands(workdirs, studies, tmp_path):
    workdir, package = workdirs("cnn"), str(tmp_path / "pkg")
    result = _command("experiments.export", f"--workdir={workdir}", f"--output={package}")
    assert result.returncode == 0, result.stderr
    assert "verified on 16 holdout images" in result.stdout
    assert f"python {package}/predict.py --input=DIR" in result.stdout
    with_package, with_workdir = str(tmp_path / "a.csv"), str(tmp_path / "b.csv")
    common = [f"--input={studies}"]
    result = _command(
        "experiments.predict", f"--model={package}", *common, f"--output={with_package}"
    )
    assert result.returncode == 0, result.stderr
    result = _command(
        "experiments.predict", f"--workdir={workdir}", *common, f"--output={with_workdir}"
    )
    assert result.returncode == 0, result.stderr
    assert_same_predictions(with_package, with_workdir, tolerance=1e-4)
    again = _command("experiments.export", f"--workdir={workdir}", f"--output={package}")
    assert "error: --output=" in _error_line(again) and "not empty" in again.stderr
    heat = _command(
        "experiments.predict", f"--model={package}", *common, "--output=x.csv", "--heatmaps=h"
    )
    assert "--heatmaps needs --workdir" in _error_line(heat)


def test_without_the_extra_onnx_is_named_and_stablehlo_is_the_default(monkeypatch):
    monkeypatch.setattr(onnx_lib, "REQUIRED", ("jax2onnx", "no_such_runtime"))
    with pytest.raises(errors.ConfigError, match="--formats=onnx needs no_such_runtime .*export"):
        export.parse_formats("stablehlo,onnx")
    assert export.parse_formats(None) == ("stablehlo",)


def test_without_the_dataset_seeded_random_images_verify(workdirs, tmp_path, monkeypatch):
    def unavailable(*_):
        raise FileNotFoundError("no dataset here")

    monkeypatch.setattr(verify, "holdout_squares", unavailable)
    exported = export.export(
        workdirs("cnn"), str(tmp_path / "pkg"), formats="stablehlo", progress=lambda _: None
    )
    assert exported.verified_on == (
        "16 seeded random images (the dataset could not be read: no dataset here)"
    )
    assert exported.metadata["verification"]["inputs"] == exported.verified_on


def test_the_onnx_graph_style_concatenates_and_folds_batchnorm_to_the_same_values():
    model = DenseNet(blocks=(2, 2), num_classes=2, conv_impl="xla")
    x = np.random.default_rng(5).normal(size=(2, 16, 16, 3)).astype(np.float32)
    variables = model.init(jax.random.key(0), x)
    variables["batch_stats"] = jax.tree.map(lambda v: v + 0.3, variables["batch_stats"])

    def logits(x):
        return model.apply(variables, x, train=False)

    def trace() -> str:  # a new function each time: make_jaxpr caches by function
        return str(jax.make_jaxpr(lambda x: logits(x))(x))

    assert "scatter" in trace()  # the buffer, updated in place
    with graph_style.for_onnx():
        traced = trace()
        got = logits(x)
    assert "scatter" not in traced and "concatenate" in traced
    np.testing.assert_allclose(got, logits(x), atol=1e-5)
