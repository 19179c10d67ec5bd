"""`experiments.evaluate` and `experiments.predict` on a tiny trained workdir (TrivialMura)."""

import csv
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from murajax import data, errors, image_files, inference, predict, reevaluate, train
from murajax import workdir as workdir_lib
from murajax.config import Config
from tests.trivial_mura import trivial_config
from tfds_mura.features import BODY_PARTS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory) -> tuple[str, dict]:
    """A finished run (checkpoints 12 and 24 with holdout kappa, 16 without) and the
    validation metrics.json its training wrote."""
    workdir = str(tmp_path_factory.mktemp("run"))
    train.train_and_evaluate(trivial_config(data_dir), workdir)
    with open(os.path.join(workdir, "eval", "validation", "metrics.json")) as f:
        return workdir, json.load(f)


@pytest.fixture
def workdir(run, tmp_path) -> str:
    """A copy of the run, so that each test's evaluation files start afresh."""
    copy = str(tmp_path / "run")
    shutil.copytree(run[0], copy)
    return copy


# --------------------------------------------------------------------------- evaluate


def _image_probs(predictions) -> dict[str, float]:
    values = predictions.as_dict()
    return dict(zip(values["image_path"], values["prob"], strict=True))


def test_evaluate_reproduces_the_training_metrics(run, workdir):
    _, trained = run
    body = reevaluate.reevaluate(workdir, "validation", "best", plots=False)
    assert body["step"] == trained["step"] == 24 and body["steps"] == [24]
    for key in ("study", "image", "by_body_part"):
        assert workdir_lib.json_safe(body[key]) == trained[key]
    out = os.path.join(workdir, "eval", "validation")
    with open(os.path.join(out, "metrics.json")) as f:
        assert json.load(f)["steps"] == [24]
    with open(os.path.join(out, "predictions.csv")) as f:
        assert len(list(csv.DictReader(f))) == 16
    line = reevaluate.summary_line(body, workdir)
    assert line.startswith("validation (checkpoint 24): study kappa 1.000 [1.000, 1.000], AUROC")


def test_evaluate_latest_and_a_numbered_step(workdir):
    assert reevaluate.reevaluate(workdir, "validation", "latest", plots=False)["steps"] == [24]
    body = reevaluate.reevaluate(workdir, "holdout", "16", plots=False)
    assert body["step"] == 16 and body["split"] == "holdout"
    with open(os.path.join(workdir, "eval", "holdout", "metrics.json")) as f:
        assert json.load(f)["step"] == 16


def test_ensemble_averages_the_best_checkpoints(workdir, capsys):
    one = {s: inference.load(workdir, str(s)) for s in (12, 24)}
    single = {s: _image_probs(reevaluate.predict_images(one[s], "validation")) for s in one}
    both = inference.load(workdir, "best", ensemble=2)
    assert both.steps == (24, 12)  # by holdout kappa: 1.0, then 0.0 (16 has no metrics)
    mean = _image_probs(reevaluate.predict_images(both, "validation"))
    assert set(mean) == set(single[12]) and len(mean) == 31
    for path, prob in mean.items():
        assert prob == pytest.approx((single[12][path] + single[24][path]) / 2, rel=1e-5)
    body = reevaluate.reevaluate(workdir, "validation", ensemble=5, plots=False)
    assert body["steps"] == [24, 12] and body["ensemble"] == 2
    assert "only 2 of the 4 checkpoints carry holdout metrics" in body["note"]
    assert "an ensemble of 2, not 5" in capsys.readouterr().out


def test_ensemble_with_an_explicit_checkpoint_is_refused(workdir):
    with pytest.raises(errors.WorkdirError, match="leave checkpoint at 'best'"):
        inference.load(workdir, "latest", ensemble=2)


def test_workdir_without_checkpoints(workdir, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(os.path.join(workdir, "config.json"), bare)
    with pytest.raises(errors.WorkdirError, match="no checkpoints/ folder"):
        inference.load(str(bare))
    (bare / "checkpoints").mkdir()
    with pytest.raises(errors.WorkdirError, match="holds no finished checkpoint"):
        inference.load(str(bare))


# --------------------------------------------------------------------------- predict


def _png(path, array: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def _fake_tree(root, gray: np.ndarray) -> dict[str, str]:
    """A MURA-like tree: one validation image as 8-bit, RGB and 16-bit PNGs, plus junk."""
    studies = {
        "gray": root / "MURA-v1.1/valid/XR_WRIST/patient11185/study1_positive",
        "rgb": root / "MURA-v1.1/valid/XR_ELBOW/patient11186/study1_negative",
        "sixteen": root / "MURA-v1.1/valid/XR_HAND/patient11187/study2_negative",
        "plain": root / "other/case7",
    }
    _png(studies["gray"] / "image1.png", gray)
    _png(studies["gray"] / "image2.png", gray[::-1])
    _png(studies["rgb"] / "image1.png", np.stack([gray] * 3, axis=-1))
    _png(studies["sixteen"] / "image1.png", gray.astype(np.uint16) * 257)
    _png(studies["plain"] / "image1.png", gray)
    (studies["gray"] / "._image1.png").write_bytes(b"\x00\x05\x16\x07" + bytes(60))
    truncated = (studies["sixteen"] / "image1.png").read_bytes()
    (studies["sixteen"] / "image2.png").write_bytes(truncated[: len(truncated) // 2])
    (studies["plain"] / "notes.txt").write_text("not an image")
    (root / "MURA-v1.1" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    return {name: str(path) for name, path in studies.items()}


def _validation_example(workdir: str) -> tuple[np.ndarray, str]:
    """The first validation image (as stored) and its path."""
    config = workdir_lib.read_config(workdir)
    record = data.open_sources(config.data)["validation"][0]
    with Image.open(io.BytesIO(record["image"])) as image:
        return np.asarray(image.convert("L")), record["image_path"].decode()


def test_predict_scores_studies_like_evaluation(workdir, tmp_path):
    gray, image_path = _validation_example(workdir)
    reevaluate.reevaluate(workdir, "validation", "best", plots=False)
    with open(os.path.join(workdir, "eval", "validation", "image_predictions.csv")) as f:
        expected = {r["image_path"]: float(r["prob"]) for r in csv.DictReader(f)}[image_path]
    studies = _fake_tree(tmp_path / "in", gray)
    warnings: list[str] = []
    output, heatmaps = str(tmp_path / "out" / "p.csv"), str(tmp_path / "heat")
    rows = predict.predict(
        workdir, [str(tmp_path / "in")], output, heatmaps_dir=heatmaps, warn=warnings.append
    )
    with open(output) as f:
        table = {r["study"]: r for r in csv.DictReader(f)}
    assert list(next(iter(table.values()))) == list(predict.CSV_COLUMNS)
    assert set(table) == set(studies.values()) and len(rows) == 4
    by_name = {name: table[path] for name, path in studies.items()}
    assert [by_name[n]["n_images"] for n in ("gray", "rgb", "sixteen", "plain")] == list("2111")
    # RGB and 16-bit PNGs become the same 8-bit image: the same probability as evaluation.
    for name in ("rgb", "sixteen", "plain"):
        assert float(by_name[name]["prob"]) == pytest.approx(expected, abs=2e-6)
    assert [by_name[n]["body_part"] for n in ("gray", "rgb", "sixteen", "plain")] == [
        "XR_WRIST",
        "XR_ELBOW",
        "XR_HAND",
        "",
    ]
    for row in table.values():
        assert row["pred"] == str(int(float(row["prob"]) >= 0.5))
        assert row["label"] == ("abnormal" if row["pred"] == "1" else "normal")
    skipped = sorted(w.split(":")[0].removeprefix("skipped ") for w in warnings)
    junk = ["MURA-v1.1/.DS_Store", "XR_WRIST/patient11185/study1_positive/._image1.png"]
    junk += ["XR_HAND/patient11187/study2_negative/image2.png", "other/case7/notes.txt"]
    assert len(skipped) == 4 and all(any(s.endswith(j) for s in skipped) for j in junk)
    assert any("truncated" in w for w in warnings)
    written = sorted(
        os.path.relpath(os.path.join(d, n), heatmaps)
        for d, _, names in os.walk(heatmaps)
        for n in names
    )
    assert len(written) == 5
    assert "other/case7/image1.png_gradcam.png" in written
    assert "MURA-v1.1/valid/XR_WRIST/patient11185/study1_positive/image2.png_gradcam.png" in written
    with Image.open(os.path.join(heatmaps, "other/case7/image1.png_gradcam.png")) as overlay:
        assert overlay.mode == "RGB" and overlay.size == (gray.shape[1], gray.shape[0])


def test_predict_keeps_its_outputs_out_of_its_inputs_and_names_each_heatmap(workdir, tmp_path):
    """The CSV and the heatmaps folder inside the input folder: a second run scores exactly
    what the first did (not the first run's overlays); image1.png and image1.jpg each get
    their own overlay."""
    gray = np.full((12, 10), 200, np.uint8)
    _png(tmp_path / "in" / "study1" / "image1.png", gray)
    Image.fromarray(gray).save(tmp_path / "in" / "study1" / "image1.jpg")
    output, heatmaps = str(tmp_path / "in" / "p.csv"), str(tmp_path / "in" / "heat")
    runs = [
        predict.predict(
            workdir, [str(tmp_path / "in")], output, heatmaps_dir=heatmaps, warn=pytest.fail
        )
        for _ in range(2)
    ]
    assert runs[0] == runs[1]
    assert [(r["study"], r["n_images"]) for r in runs[0]] == [(str(tmp_path / "in" / "study1"), 2)]
    assert sorted(os.listdir(os.path.join(heatmaps, "study1"))) == [
        "image1.jpg_gradcam.png",
        "image1.png_gradcam.png",
    ]


def test_predict_draws_each_chosen_attribution(workdir, tmp_path):
    """`attributions`: one `<file name>_<method>.png` per image and method; an unknown
    method is refused before anything is loaded."""
    gray = (np.arange(12 * 10).reshape(12, 10) % 256).astype(np.uint8)
    _png(tmp_path / "in" / "study1" / "image1.png", gray)
    output, heatmaps = str(tmp_path / "p.csv"), str(tmp_path / "heat")
    methods = ("gradcam", "ig", "occlusion")
    predict.predict(
        workdir,
        [str(tmp_path / "in")],
        output,
        heatmaps_dir=heatmaps,
        warn=pytest.fail,
        attributions=methods,
    )
    names = sorted(os.listdir(os.path.join(heatmaps, "study1")))
    assert names == [f"image1.png_{m}.png" for m in sorted(methods)]
    for name in names:
        with Image.open(os.path.join(heatmaps, "study1", name)) as overlay:
            assert overlay.mode == "RGB" and overlay.size == (10, 12)
    with pytest.raises(errors.ConfigError, match="unknown attribution method 'lime'"):
        predict.predict(workdir, [str(tmp_path / "in")], output, attributions=("lime",))


def test_sanity_check_of_a_workdir_and_its_report_section(workdir):
    from murajax import attribution_sanity
    from murajax.report import run as report_run

    result = attribution_sanity.check_workdir(workdir, count=3, methods=("gradcam", "ig"))
    assert result["images"] == 3 and result["split"] == "validation" and result["step"] == 24
    assert result["layers"] == ["logits", "dense1", "block2", "block1"]
    folder = os.path.join(workdir, "eval", "validation")
    with open(os.path.join(folder, "attribution_sanity.json")) as f:
        assert json.load(f)["correlation"].keys() == {"gradcam", "ig"}
    assert os.path.isfile(os.path.join(folder, "attribution_sanity.png"))
    section = report_run.attributions_section(workdir)
    assert section.startswith("## Attributions") and "| 4: block1 |" in section
    assert "![Sanity check](eval/validation/attribution_sanity.png)" in section
    assert report_run.attributions_section(os.path.dirname(workdir)) == ""


def test_predict_groups_given_files_by_folder(workdir, tmp_path):
    gray = np.full((12, 10), 200, np.uint8)
    for folder in ("a", "b"):
        for name in ("image1.png", "image2.png"):
            _png(tmp_path / folder / name, gray)
    files = [str(tmp_path / "a" / "image1.png"), str(tmp_path / "b" / "*.png")]
    rows = predict.predict(workdir, files, str(tmp_path / "p.csv"), warn=pytest.fail)
    assert [(r["study"], r["n_images"]) for r in rows] == [
        (str(tmp_path / "a"), 1),
        (str(tmp_path / "b"), 2),
    ]


def test_collect_studies_walks_nested_folders(tmp_path):
    for path in ("p1/s1/a.png", "p1/s1/b.png", "p1/s2/a.png", "top.png"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(b"")
    studies = image_files.collect_studies([str(tmp_path)])
    assert {os.path.relpath(k, tmp_path): len(v) for k, v in studies.items()} == {
        ".": 1,
        "p1/s1": 2,
        "p1/s2": 1,
    }
    with pytest.raises(FileNotFoundError, match="does not exist"):
        image_files.collect_studies([str(tmp_path / "missing")])


def test_group_of_mura_body_parts():
    path = "MURA-v1.1/valid/XR_WRIST/p1/study1/image1.png"
    assert image_files.group_of(path, BODY_PARTS) == "XR_WRIST"
    assert image_files.group_of("/data/xr_elbow/case3", BODY_PARTS) == "XR_ELBOW"
    assert image_files.group_of("/data/XR_KNEE/case3", BODY_PARTS) == ""
    assert image_files.group_of("/data/case3", BODY_PARTS) == ""


@pytest.mark.parametrize("mode", ["pad", "crop"])
def test_heatmap_to_original_undoes_the_square_resize(mode):
    tall = np.zeros((40, 20), np.uint8)
    tall[:20] = 255  # the top half is bright
    square = image_files.model_view(Config(), tall)  # the default image size, 224
    heat = square.astype(np.float32) / 255.0  # a heatmap that follows the model's view
    back = image_files.heatmap_to_original(heat, tall.shape, square.shape[0], mode)
    assert back.shape == tall.shape
    if mode == "pad":
        np.testing.assert_allclose(back, tall / 255.0, atol=0.2)
    else:  # the crop sees only the middle rows: the top and bottom are zero
        assert back[:5].max() == 0 and back[-5:].max() == 0


# --------------------------------------------------------------------------- command line


def _cli(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def cli_results(run, tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """The commands' error cases, run concurrently (each process imports jax)."""
    workdir = run[0]
    junk = tmp_path_factory.mktemp("junk")
    (junk / "._image1.png").write_bytes(bytes(64))
    (junk / "notes.txt").write_text("x")
    configs = tmp_path_factory.mktemp("configs")
    (configs / "broken.py").write_text("def get_config(:\n")
    cases = {
        "missing_config": (
            "experiments.main",
            "--config=experiments/configs/nope.py",
            f"--workdir={junk}/w",
        ),
        "bad_variant": (
            "experiments.main",
            "--config=experiments/configs/multiview.py:smoke,resnet",
            f"--workdir={junk}/w",
        ),
        "broken_config": (
            "experiments.main",
            f"--config={configs}/broken.py",
            f"--workdir={configs}/w",
        ),
        "no_config": ("experiments.evaluate", f"--workdir={junk}"),
        "unknown_step": ("experiments.evaluate", f"--workdir={workdir}", "--checkpoint=13"),
        "bad_split": ("experiments.evaluate", f"--workdir={workdir}", "--split=train"),
        "nothing_readable": (
            "experiments.predict",
            f"--workdir={workdir}",
            f"--input={junk}",
            f"--output={junk}/out.csv",
        ),
        "attribution_without_heatmaps": (
            "experiments.predict",
            f"--workdir={workdir}",
            f"--input={junk}",
            f"--output={junk}/out.csv",
            "--attribution=ig",
        ),
        "unknown_attribution": (
            "experiments.predict",
            f"--workdir={workdir}",
            f"--input={junk}",
            f"--output={junk}/out.csv",
            f"--heatmaps={junk}/heat",
            "--attribution=gradcam,lime",
        ),
        "unknown_sanity_method": (
            "experiments.sanity_check",
            f"--workdir={workdir}",
            "--methods=ig,saliency",
        ),
    }
    processes = {
        name: subprocess.Popen(
            [sys.executable, "-m", *argv],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, argv in cases.items()
    }
    results = {}
    for name, process in processes.items():
        out, err = process.communicate(timeout=180)
        results[name] = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    return results


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing_config", "cannot load --config=experiments/configs/nope.py: [Errno 2]"),
        ("bad_variant", "multiview.py:smoke,resnet: unknown variant 'resnet', expected cnn"),
        ("broken_config", "broken.py:1: invalid syntax (in a config file)"),
        ("no_config", "has no config.json"),
        ("unknown_step", "checkpoint 13 not found: available steps 8, 12, 16, 24"),
        ("bad_split", "split='train': expected one of validation, holdout"),
        ("nothing_readable", "nothing to score: no readable image among the 2 file(s)"),
        ("attribution_without_heatmaps", "--attribution=ig needs --heatmaps=DIR"),
        ("unknown_attribution", "unknown attribution method 'lime': expected one of gradcam"),
        ("unknown_sanity_method", "unknown attribution method 'saliency'"),
    ],
)
def test_command_errors_are_one_line(cli_results, case, message):
    result = cli_results[case]
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1]
    assert "Traceback" not in result.stderr
    if case == "nothing_readable":
        assert sum("warning: skipped" in line for line in lines) == 2
