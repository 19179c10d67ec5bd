"""What an evaluation writes (metrics.json, CSVs, plots) and the workdir's report.md."""

import csv
import json
import os
import re

import numpy as np
import pytest
from PIL import Image
from sklearn import metrics as skm

from experiments.configs import quickstart
from murajax import evaluation, plots, train, writers
from murajax import metrics as metrics_lib
from murajax import workdir as workdir_lib
from murajax.data import spec as spec_lib
from murajax.report import run as report
from tests.trivial_mura import trivial_config
from tfds_mura.features import BODY_PARTS, PAPER_REFERENCE, mura_features

EVAL_FILES = {"metrics.json", "predictions.csv", "image_predictions.csv"}
EVAL_FILES |= set(workdir_lib.PLOT_FILES.values())

MURA = spec_lib.from_features("mura", mura_features(), PAPER_REFERENCE)
"""MURA's `DatasetSpec` (labels, body parts, the paper's kappas), as `data.resolve` gives it."""


def _assert_png(path: str) -> None:
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] >= 100 and image.size[1] >= 100


def _predictions(n_studies: int = 60, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    per_study = rng.integers(1, 4, n_studies)
    labels = np.repeat(rng.integers(0, 2, n_studies), per_study)
    n = len(labels)
    return {
        "study_id": np.repeat([f"valid/s{i}" for i in range(n_studies)], per_study),
        "group": np.repeat(np.arange(n_studies) % 7, per_study),  # MURA's body parts
        "label": labels,
        "prob": np.clip(0.35 * labels + rng.uniform(0, 0.65, n), 0, 1),
        "image_path": np.asarray([f"MURA-v1.1/valid/x/image{i}.png" for i in range(n)]),
        "loss": rng.uniform(0, 1, n),
    }


# --------------------------------------------------------------------------- plots


def test_every_plot_is_a_png(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 80)
    probs = np.clip(0.3 * labels + rng.uniform(0, 0.7, 80), 0, 1)
    curves = {"overall": (labels, probs), "XR_WRIST": (labels[:30], probs[:30])}
    curves["XR_HAND"] = (np.ones(3), np.array([0.2, 0.5, 0.9]))  # one class: no curve
    rows = [{"step": s, "split": "train", "loss": 1 / s} for s in range(1, 30)]
    rows += [{"step": s, "split": "holdout", "loss": 0.5, "kappa": s / 40} for s in (10, 20)]
    rows += [{"step": 29, "split": "holdout", "loss": 0.4, "kappa": None, "auroc": 0.8}]
    grid = [[rng.integers(0, 255, (20, 30), dtype=np.uint8), None], [None, np.zeros((8, 8, 3))]]
    paths = [
        plots.roc_curves(curves, str(tmp_path / "roc.png")),
        plots.confusion_matrix(labels, probs >= 0.5, str(tmp_path / "confusion.png")),
        plots.calibration({"studies": (labels, probs)}, str(tmp_path / "calibration.png")),
        plots.kappa_by_group(
            ["overall", "XR_WRIST", "XR_NEW"],
            [0.6, None, float("nan")],
            [[0.5, 0.7], [None, None], [float("nan")] * 2],
            str(tmp_path / "kappa.png"),
            reference=PAPER_REFERENCE["kappa"],
            reference_label=PAPER_REFERENCE["label"],
        ),
        plots.kappa_by_group(["overall"], [0.6], [[0.5, 0.7]], str(tmp_path / "no_ref.png")),
        plots.training_curves(rows, str(tmp_path / "nested" / "curves.png")),
        plots.training_curves([], str(tmp_path / "empty_curves.png")),
        plots.image_grid(grid, str(tmp_path / "grid.png"), row_labels=["a", "b"]),
    ]
    for path in paths:
        _assert_png(path)


def test_paper_reference_kappas():
    assert PAPER_REFERENCE["kappa"]["overall"] == 0.705
    assert set(PAPER_REFERENCE["kappa"]) == {"overall", *BODY_PARTS}
    assert "not the same data" in PAPER_REFERENCE["label"]
    # They reach murajax as MURA's DatasetSpec.
    assert MURA.reference_kappa == PAPER_REFERENCE["kappa"] and MURA.reference_auroc == 0.929
    assert MURA.reference_label == PAPER_REFERENCE["label"]


# --------------------------------------------------------------------------- write_evaluation


class _Writer:
    def __init__(self):
        self.rows = []

    def write(self, step, split, values):
        self.rows.append((step, split, values))


def test_write_evaluation_writes_the_contract_files(tmp_path):
    config = quickstart.get_config("smoke")
    config.eval.bootstrap_samples = 50
    predictions = _predictions()
    writer = _Writer()
    body = evaluation.write_evaluation(
        config,
        str(tmp_path),
        "validation",
        predictions,
        7,
        threshold=0.4,
        writer=writer,
        dataset=MURA,
    )
    out = tmp_path / "eval" / "validation"
    assert EVAL_FILES <= set(os.listdir(out))
    for name in workdir_lib.PLOT_FILES.values():
        _assert_png(str(out / name))
    with open(out / "metrics.json") as f:
        saved = json.load(f)
    assert saved["step"] == 7 and saved["split"] == "validation"
    assert saved["threshold"] == 0.4 and saved["aggregation"] == "mean"
    assert saved["threshold_method"] == "fixed" and saved["bootstrap"]["samples"] == 50
    for level in ("study", "image"):
        for key in ("kappa", "auroc", "accuracy", "sensitivity", "specificity", "precision"):
            assert key in saved[level] and len(saved[level][f"{key}_ci"]) == 2
        assert "n" in saved[level] and "f1_ci" in saved[level]
    assert set(saved["by_body_part"]) == set(BODY_PARTS)
    assert "image" in saved["by_body_part"]["XR_WRIST"]
    assert saved["study"]["kappa"] == body["study"]["kappa"]

    # predictions.csv: one row per study, and the numbers are scikit-learn's on it.
    with open(out / "predictions.csv") as f:
        studies = list(csv.DictReader(f))
    assert list(studies[0]) == ["study_id", "body_part", "label", "prob", "pred", "n_images"]
    assert len(studies) == saved["study"]["n"] == 60
    assert sum(int(r["n_images"]) for r in studies) == len(predictions["label"])
    labels = np.array([int(r["label"]) for r in studies])
    preds = np.array([int(r["pred"]) for r in studies])
    probs = np.array([float(r["prob"]) for r in studies])
    assert (preds == (probs >= 0.4)).all()
    assert saved["study"]["kappa"] == pytest.approx(skm.cohen_kappa_score(labels, preds))
    assert saved["study"]["auroc"] == pytest.approx(skm.roc_auc_score(labels, probs), abs=1e-5)
    with open(out / "image_predictions.csv") as f:
        images = list(csv.DictReader(f))
    assert list(images[0]) == ["image_path", "study_id", "body_part", "label", "prob"]
    assert len(images) == saved["image"]["n"] == len(predictions["label"])
    assert images[0]["body_part"] == BODY_PARTS[0]
    assert saved["image"]["loss"] == pytest.approx(np.mean(predictions["loss"]))

    ((step, split, logged),) = writer.rows
    assert (step, split) == (7, "validation")
    assert logged["kappa"] == body["study"]["kappa"] and logged["threshold"] == 0.4


def test_write_evaluation_takes_an_eval_state_without_loss(tmp_path):
    config = quickstart.get_config("smoke")
    config.eval.bootstrap_samples = 0
    predictions = _predictions(14)
    del predictions["loss"]
    state = metrics_lib.EvalState.from_dict(predictions)
    body = evaluation.write_evaluation(config, str(tmp_path), "holdout", state, 3, plots=False)
    assert body["threshold"] == 0.5 and body["study"]["loss"] != body["study"]["loss"]  # NaN
    with open(tmp_path / "eval" / "holdout" / "metrics.json") as f:
        assert json.load(f)["study"]["loss"] is None  # NaN is written as null
    assert not any(n.endswith(".png") for n in os.listdir(tmp_path / "eval" / "holdout"))


def test_youden_threshold_is_chosen_on_the_holdout(tmp_path):
    config = quickstart.get_config("smoke")
    config.eval.bootstrap_samples = 0
    config.eval.threshold_method = "youden"
    holdout = _predictions(80, seed=1)
    with pytest.raises(ValueError, match="chooses the threshold on the holdout"):
        evaluation.write_evaluation(config, str(tmp_path), "validation", _predictions(), 1)
    threshold = evaluation.choose_threshold(config, holdout)
    studies = metrics_lib.EvalState.from_dict(holdout).studies()
    assert threshold == metrics_lib.youden_threshold(studies["label"], studies["prob"])
    body = evaluation.write_evaluation(
        config, str(tmp_path), "validation", _predictions(), 1, threshold=threshold, plots=False
    )
    assert body["threshold"] == threshold and body["threshold_chosen_on"] == "holdout"
    own = evaluation.write_evaluation(config, str(tmp_path), "holdout", holdout, 1, plots=False)
    assert own["threshold"] == threshold
    config.eval.threshold_method = "fixed"
    assert evaluation.choose_threshold(config, holdout) == config.eval.threshold


# --------------------------------------------------------------------------- report.md


def _run_config(data_dir: str):
    config = trivial_config(data_dir, steps=12, eval_every=6, checkpoint_every=6)
    config.eval.threshold_method = "youden"
    return config


@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run"))
    config = _run_config(data_dir)
    results = train.train_and_evaluate(config, workdir)
    return config, workdir, results


def _links(markdown: str) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", markdown)


def test_training_writes_the_report(finished_run):
    _, workdir, _ = finished_run
    with open(os.path.join(workdir, "report.md")) as f:
        text = f.read()
    assert text.startswith("# murajax report")
    for section in (
        "## Results",
        "### validation",
        "## Heatmaps",
        "## Training curves",
        "## Data",
        "## Example radiographs",
        "## Configuration",
    ):
        assert section in text, section
    assert "| **overall** |" in text and "| XR_WRIST |" in text and "not the same data" in text
    assert "| holdout |" in text and "| validation |" in text  # data breakdown by split
    assert "```json" in text and '"dataset": "trivial_mura"' in text
    links = _links(text)
    for name in ("report/examples.png", "report/training_curves.png", "report/heatmaps.png"):
        assert name in links
    for name in workdir_lib.PLOT_FILES.values():
        assert f"eval/validation/{name}" in links
    for link in links:
        path = os.path.join(workdir, link)
        assert os.path.isfile(path), link
        if link.endswith(".png"):
            _assert_png(path)


def test_final_threshold_is_the_holdout_youden_threshold(finished_run):
    _, workdir, results = finished_run
    body = results["validation"]
    assert body["threshold_method"] == "youden" and body["threshold_chosen_on"] == "holdout"
    holdout = [
        r
        for r in writers.read_metrics(workdir)
        if r["split"] == "holdout" and r["step"] == body["step"]
    ]
    assert holdout and holdout[0]["threshold"] == pytest.approx(body["threshold"])


def test_report_degrades_without_model_or_heatmaps(finished_run):
    config, workdir, _ = finished_run
    text = _read(report.write_report(config, workdir, examples=False))
    assert "Heatmaps not drawn: no model was given" in text
    assert "## Example radiographs" not in text


def test_report_of_an_empty_workdir_says_what_is_missing(tmp_path):
    config = quickstart.get_config("smoke")
    config.data.dataset = "mura_synthetic/nonexistent_config"
    config.data.build_if_missing = False
    text = _read(report.write_report(config, str(tmp_path), heatmaps=0))
    assert "No evaluation found" in text and "No training logged" in text
    assert "> Not available: train:" in text
    assert "## Heatmaps" not in text


def test_pick_studies_takes_correct_and_wrong_ones():
    rows = [
        {"study_id": "tp", "label": "1", "pred": "1", "prob": "0.9"},
        {"study_id": "tp2", "label": "1", "pred": "1", "prob": "0.6"},
        {"study_id": "tn", "label": "0", "pred": "0", "prob": "0.1"},
        {"study_id": "fp", "label": "0", "pred": "1", "prob": "0.8"},
        {"study_id": "fn", "label": "1", "pred": "0", "prob": "0.3"},
    ]
    chosen = report.pick_studies(rows, 4)
    assert chosen == [
        ("tp", "true positive"),
        ("tn", "true negative"),
        ("fp", "false positive"),
        ("fn", "false negative"),
    ]
    only_correct = report.pick_studies(rows[:3], 4)
    assert [s for s, _ in only_correct] == ["tp", "tn", "tp2"]


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()
