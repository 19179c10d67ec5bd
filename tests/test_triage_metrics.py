"""Operating points, calibration, conformal sets and referral (issue 23's statistics), on
synthetic study scores whose answers are known."""

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from murajax import calibration, conformal, operating_points, referral
from murajax.errors import ConfigError


def synthetic(n: int, seed: int, temperature: float = 1.0):
    """Labels and calibrated abnormal probabilities (labels drawn from the probabilities),
    the probabilities then made over- (T < 1) or under-confident by `temperature`."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, n)
    probs = 1 / (1 + np.exp(-logits))
    labels = (rng.random(n) < probs).astype(np.int64)
    shown = 1 / (1 + np.exp(-logits / temperature))
    return labels, shown


# --------------------------------------------------------------------------- operating points


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sensitivity=0.95", operating_points.OperatingPoint("sensitivity", 0.95)),
        ("specificity=0.9", operating_points.OperatingPoint("specificity", 0.9)),
        ("youden", operating_points.OperatingPoint("youden")),
    ],
)
def test_operating_points_parse(text, expected):
    assert operating_points.parse(text) == expected
    assert operating_points.parse(text).name == text


@pytest.mark.parametrize("text", ["sensitivity=1.5", "sensitivity=", "recall=0.9", "youden=1"])
def test_bad_operating_points_are_named(text):
    with pytest.raises(ConfigError, match=f"config.eval.operating_points: '{text}' is invalid"):
        operating_points.parse(text)


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95, 1.0])
def test_a_sensitivity_point_is_the_highest_threshold_that_reaches_it(target):
    labels, probs = synthetic(400, 1)
    point = operating_points.OperatingPoint("sensitivity", target)
    threshold = operating_points.choose_threshold(point, labels, probs)
    assert (probs >= threshold)[labels == 1].mean() >= target
    lowest_flagged = probs[(labels == 1) & (probs >= threshold)].min()
    assert (probs > lowest_flagged)[labels == 1].mean() < target  # any higher misses more


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95])
def test_a_specificity_point_is_the_lowest_threshold_that_reaches_it(target):
    labels, probs = synthetic(400, 2)
    point = operating_points.OperatingPoint("specificity", target)
    threshold = operating_points.choose_threshold(point, labels, probs)
    assert (probs < threshold)[labels == 0].mean() >= target
    highest_kept = probs[(labels == 0) & (probs < threshold)].max()
    assert (probs < highest_kept)[labels == 0].mean() < target  # any lower flags more


def test_scores_at_a_threshold_match_scikit_learn_and_have_intervals():
    labels, probs = synthetic(300, 3)
    out = operating_points.scores_at(labels, probs, 0.4, samples=300)
    preds = probs >= 0.4
    tn, fp, fn, tp = skm.confusion_matrix(labels, preds).ravel()
    assert out["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert out["specificity"] == pytest.approx(tn / (tn + fp))
    assert out["ppv"] == pytest.approx(tp / (tp + fp))
    assert out["npv"] == pytest.approx(tn / (tn + fn))
    assert out["kappa"] == pytest.approx(skm.cohen_kappa_score(labels, preds))
    assert out["flagged"] == tp + fp and out["n"] == 300
    for name in operating_points.SCORES:
        low, high = out[f"{name}_ci"]
        assert low <= out[name] <= high and low < high


# --------------------------------------------------------------------------- calibration


def test_ece_of_a_hand_worked_example():
    labels = np.array([0, 1, 1, 1])
    probs = np.array([0.05, 0.15, 0.95, 0.95])
    # width bins: [0, 0.1): 1 case, p 0.05, y 0 -> 0.05; [0.1, 0.2): p 0.15, y 1 -> 0.85;
    # [0.9, 1]: 2 cases, p 0.95, y 1 -> 0.05 each.  ECE = (0.05 + 0.85 + 2 * 0.05) / 4
    assert calibration.ece(labels, probs) == pytest.approx(0.25)
    # two equal-mass bins: {0.05, 0.15}: |0.5 - 0.1| = 0.4; {0.95, 0.95}: 0.05
    assert calibration.ece(labels, probs, bins=2, strategy="mass") == pytest.approx(0.225)


def test_temperature_scaling_finds_the_temperature_and_keeps_auroc():
    labels, probs = synthetic(4000, 4, temperature=0.5)  # overconfident by 2x
    fitted = calibration.fit_temperature(labels, probs)
    assert fitted == pytest.approx(2.0, rel=0.1)
    calibrated = calibration.apply_temperature(probs, fitted)
    assert calibration.nll(labels, calibrated) < calibration.nll(labels, probs)
    for strategy in calibration.STRATEGIES:
        before = calibration.ece(labels, probs, strategy=strategy)
        after = calibration.ece(labels, calibrated, strategy=strategy)
        assert after < before / 2
    assert skm.roc_auc_score(labels, calibrated) == skm.roc_auc_score(labels, probs)
    np.testing.assert_allclose(calibration.apply_temperature(probs, 1.0), probs, atol=1e-12)


def test_temperature_on_class_vectors_keeps_each_ranking():
    rng = np.random.default_rng(5)
    vectors = rng.dirichlet([0.5, 0.5, 0.5], size=200)
    labels = rng.integers(0, 3, 200)
    scaled = calibration.apply_temperature(vectors, 1.7)
    np.testing.assert_allclose(scaled.sum(axis=1), 1.0)
    assert (np.argsort(scaled, axis=1) == np.argsort(vectors, axis=1)).all()
    assert calibration.fit_temperature(labels[:1], vectors[:1]) == 1.0


def test_ece_interval_holds_the_ece():
    labels, probs = synthetic(500, 6, temperature=0.6)
    value = calibration.ece(labels, probs, strategy="mass")
    low, high = calibration.ece_interval(labels, probs, strategy="mass", samples=400)
    assert low <= value <= high


# --------------------------------------------------------------------------- conformal


@pytest.mark.parametrize("alpha", [0.05, 0.10])
def test_split_conformal_covers_one_minus_alpha_over_random_splits(alpha):
    labels, probs = synthetic(1000, 7)
    rng = np.random.default_rng(8)
    coverages = []
    for _ in range(300):
        order = rng.permutation(len(labels))
        cal, test = order[:300], order[300:]
        q = conformal.calibrate(labels[cal], probs[cal], alpha)
        sets = conformal.prediction_sets(probs[test], q)
        coverages.append(conformal.coverage(labels[test], sets))
    mean = float(np.mean(coverages))
    # The guarantee: at least 1 - alpha on average, and at most 1 - alpha + 1 / (n + 1).
    assert 1 - alpha - 0.005 <= mean <= 1 - alpha + 1 / 301 + 0.01


def test_mondrian_covers_each_class_and_group():
    rng = np.random.default_rng(9)
    labels, probs = synthetic(3000, 10)
    groups = rng.integers(0, 2, len(labels))
    probs = np.where(groups == 1, np.clip(probs * 0.6, 0, 1), probs)  # group 1 miscalibrated
    alpha, cells = 0.1, {(g, k): [] for g in range(2) for k in range(2)}
    for _ in range(100):
        order = rng.permutation(len(labels))
        cal, test = order[:1500], order[1500:]
        q = conformal.calibrate_mondrian(labels[cal], probs[cal], alpha, groups[cal], 2)
        sets = conformal.prediction_sets(probs[test], q, groups[test])
        for g, k in cells:
            inside = test[(groups[test] == g) & (labels[test] == k)]
            where = np.isin(test, inside)
            cells[(g, k)].append(conformal.coverage(labels[inside], sets[where]))
    for cell, values in cells.items():
        assert np.mean(values) >= 1 - alpha - 0.01, cell


def test_a_cell_too_small_keeps_every_class():
    q = conformal.calibrate_mondrian(np.array([0, 1, 1]), np.array([0.2, 0.7, 0.9]), 0.1)
    assert (q == math.inf).all()  # 2 scores per class cannot give a 90% quantile
    sets = conformal.prediction_sets(np.array([0.5]), q)
    assert sets.all() and conformal.size_shares(sets) == {0: 0.0, 1: 0.0, 2: 1.0}


# --------------------------------------------------------------------------- referral


def test_referral_keeps_the_certain_studies_and_nothing_referred_is_the_whole_split():
    labels, probs = synthetic(600, 11)
    curve = referral.referral_curve(labels, probs, 0.5, np.linspace(0, 0.5, 6))
    assert curve["kept"][0] == 600 and curve["kept"][-1] == 300
    assert curve["auroc"][0] == pytest.approx(skm.roc_auc_score(labels, probs))
    assert curve["kappa"][0] == pytest.approx(skm.cohen_kappa_score(labels, probs >= 0.5))
    assert curve["accuracy"][-1] > curve["accuracy"][0]  # the errors are the uncertain ones
    assert curve["kappa"][-1] > curve["kappa"][0]


def test_aurc_is_lower_when_errors_are_the_uncertain_ones():
    labels, probs = synthetic(600, 12)
    honest = referral.aurc(labels, probs, 0.5)
    rng = np.random.default_rng(13)
    wrong = (probs >= 0.5) != labels
    # The same predictions, with the errors' confidence swapped for random certainty.
    shuffled = np.where(wrong, np.where(probs >= 0.5, 0.99, 0.01), probs)
    assert referral.aurc(labels, shuffled, 0.5) > honest
    assert 0 <= honest <= np.mean(wrong) and rng is not None


# --------------------------------------------------------------------------- in metrics.json


def test_a_run_and_its_reevaluation_write_the_triage_section(data_dir, tmp_path):
    import json
    import os

    from murajax import reevaluate, train
    from murajax import workdir as workdir_lib
    from tests.trivial_mura import trivial_config

    config = trivial_config(data_dir)
    config.eval.operating_points = ("sensitivity=0.9", "specificity=0.9", "youden")
    config.eval.calibration = "temperature"
    config.eval.conformal_alphas = (0.1,)
    config.eval.bootstrap_samples = 50
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, "eval", "validation", "metrics.json")) as f:
        section = json.load(f)["triage"]
    assert section["chosen_on"] == "holdout"
    assert section["calibration"]["method"] == "temperature"
    assert 0.05 <= section["calibration"]["temperature"] <= 20
    after = section["calibration"]["after"]
    assert set(after) == {"ece_width", "ece_width_ci", "ece_mass", "ece_mass_ci", "by_group"}
    assert set(after["by_group"]["XR_WRIST"]) == set(after) - {"by_group"}
    points = section["operating_points"]
    assert list(points) == ["sensitivity=0.9", "specificity=0.9", "youden"]
    for scores in points.values():
        assert scores["n"] == 16 and 0 <= scores["flagged"] <= 16
        assert set(scores["by_group"]) <= {
            "XR_ELBOW",
            "XR_FINGER",
            "XR_FOREARM",
            "XR_HAND",
            "XR_HUMERUS",
            "XR_SHOULDER",
            "XR_WRIST",
        }
    conformal_10 = section["conformal"]["0.1"]
    assert 0 <= conformal_10["split"]["coverage"] <= 1
    assert sum(conformal_10["mondrian"]["set_sizes"].values()) == pytest.approx(1)
    low, high = conformal_10["split"]["coverage_ci"]
    assert low <= conformal_10["split"]["coverage"] <= high
    wrist = conformal_10["mondrian"]["by_group"]["XR_WRIST"]
    assert sum(wrist["set_sizes"].values()) == pytest.approx(1) and "coverage_ci" in wrist
    referral_curve = section["referral"]
    assert referral_curve["kept"][0] == 16 and referral_curve["referred"][-1] == 0.5
    assert referral_curve["reference_kappa"] == 0.705
    assert referral_curve["threshold"] == pytest.approx(0.5)  # temperature keeps 0.5 at 0.5
    plots = os.listdir(os.path.join(workdir, "eval", "validation"))
    assert "referral.png" in plots and "roc.png" in plots
    report = open(os.path.join(workdir, "report.md")).read()
    assert "| sensitivity=0.9 |" in report and "Conformal sets at alpha 0.1: coverage" in report
    assert "referral.png)" in report
    body = reevaluate.reevaluate(workdir, "validation", plots=False)
    assert workdir_lib.json_safe(body["triage"]["operating_points"]) == points


def test_the_triage_fields_are_checked():
    from murajax import validation
    from murajax.config import Config

    config = Config()
    config.eval.calibration = "platt"
    with pytest.raises(ConfigError, match="config.eval.calibration='platt' is invalid"):
        validation.validate(config)
    config.eval.calibration = "none"
    config.eval.conformal_alphas = (1.5,)
    with pytest.raises(ConfigError, match="conformal_alphas: 1.5 is invalid"):
        validation.validate(config)
    config.eval.conformal_alphas = (0.1,)
    config.eval.referral_fraction = 1.0
    with pytest.raises(ConfigError, match="referral_fraction=1.0 is invalid"):
        validation.validate(config)


def image_predictions(n_studies: int, seed: int, classes: int = 2, temperature: float = 0.4):
    """Two images per study of uncalibrated predictions: a dict of image arrays as
    `evaluation.write_evaluation` takes them (binary: the abnormal probability; else (N, K))."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n_studies)
    logits = rng.normal(0.0, 1.0, (n_studies, 2, classes))
    logits[np.arange(n_studies), :, labels] += 1.5
    probs = np.exp(logits / temperature)
    probs /= probs.sum(-1, keepdims=True)
    ids = np.repeat([f"s{i:03d}" for i in range(n_studies)], 2)
    return {
        "study_id": ids,
        "image_path": np.array(
            [f"{s}/image{k}.png" for s, k in zip(ids, [1, 2] * n_studies, strict=True)]
        ),
        "group": np.repeat(rng.integers(0, 3, n_studies), 2),
        "label": np.repeat(labels, 2),
        "prob": probs.reshape(-1, classes)[:, 1] if classes == 2 else probs.reshape(-1, classes),
        "loss": np.zeros(2 * n_studies),
    }


def _evaluate(tmp_path, config, name, split, holdout, dataset):
    from murajax import evaluation

    return evaluation.write_evaluation(
        config,
        str(tmp_path / name),
        "validation",
        split,
        1,
        dataset=dataset,
        holdout=lambda: holdout,
        plots=False,
    )


def test_temperature_calibrates_every_score_and_keeps_auroc_and_kappa(tmp_path):
    import csv

    from murajax.config import Config
    from murajax.data import DatasetSpec

    dataset = DatasetSpec("toy", ("normal", "abnormal"))
    holdout, split = image_predictions(300, 1), image_predictions(200, 2)
    config = Config()
    config.eval.bootstrap_samples = 20
    config.eval.threshold_method = "youden"
    raw = _evaluate(tmp_path, config, "raw", split, holdout, dataset)
    config.eval.calibration = "temperature"
    scaled = _evaluate(tmp_path, config, "scaled", split, holdout, dataset)
    temperature = scaled["calibration"]["temperature"]
    assert abs(np.log(temperature)) > 0.1  # the predictions are not calibrated
    assert scaled["triage"]["calibration"]["temperature"] == temperature
    for level in ("study", "image"):
        assert scaled[level]["auroc"] == pytest.approx(raw[level]["auroc"], abs=1e-12)
    assert scaled["study"]["kappa"] == pytest.approx(raw["study"]["kappa"], abs=1e-12)
    after = scaled["triage"]["calibration"]["after"]["ece_width"]
    assert after < scaled["triage"]["calibration"]["before"]["ece_width"]
    assert scaled["calibration"]["threshold_uncalibrated"] == pytest.approx(raw["threshold"])
    assert scaled["threshold"] == pytest.approx(
        calibration.apply_temperature(np.array([raw["threshold"]]), temperature)[0]
    )

    def column(name, key):
        with open(tmp_path / name / "eval" / "validation" / "predictions.csv") as f:
            return [row[key] for row in csv.DictReader(f)]

    raw_probs = np.array(column("raw", "prob"), float)
    expected = calibration.apply_temperature(raw_probs, temperature)
    np.testing.assert_allclose(np.array(column("scaled", "prob"), float), expected, atol=2e-6)
    assert column("scaled", "pred") == column("raw", "pred")
    labels = np.array(column("raw", "label"), int)
    assert calibration.nll(labels, expected) < calibration.nll(labels, raw_probs)
    referred = np.array(column("scaled", "referred"), int)
    assert referred.sum() == round(0.1 * 200)
    assert set(column("scaled", "conformal_set")) <= {"normal", "abnormal", "normal|abnormal", ""}


def test_three_classes_get_calibration_conformal_sets_and_referral(tmp_path):
    from murajax.config import Config
    from murajax.data import DatasetSpec

    dataset = DatasetSpec("chest", ("normal", "opacity", "effusion"))
    holdout, split = image_predictions(300, 3, classes=3), image_predictions(300, 4, classes=3)
    config = Config()
    config.eval.bootstrap_samples = 20
    config.eval.calibration = "temperature"
    body = _evaluate(tmp_path, config, "three", split, holdout, dataset)
    section = body["triage"]
    assert "operating_points" not in section  # a binary notion
    assert (
        section["calibration"]["after"]["ece_width"] < section["calibration"]["before"]["ece_width"]
    )
    for alpha in ("0.05", "0.1"):
        entry = section["conformal"][alpha]
        assert entry["split"]["coverage"] >= 1 - float(alpha) - 0.05
        assert set(entry["split"]["set_sizes"]) == {0, 1, 2, 3}
    curve = section["referral"]
    assert curve["kept"][0] == 300 and curve["kept"][-1] == 150
    assert curve["accuracy"][-1] >= curve["accuracy"][0]  # the uncertain ones go first


def test_new_images_are_decided_on_the_uncalibrated_threshold_an_evaluation_recorded(tmp_path):
    """predict and export score the model's own probabilities: a calibrated evaluation's
    threshold is handed to them on that scale, so their decisions are the evaluation's."""
    from murajax import workdir as workdir_lib
    from murajax.config import Config
    from murajax.data import DatasetSpec

    dataset = DatasetSpec("toy", ("normal", "abnormal"))
    holdout, split = image_predictions(300, 5), image_predictions(100, 6)
    config = Config()
    config.eval.bootstrap_samples = 0
    config.eval.threshold_method = "youden"
    raw = _evaluate(tmp_path, config, "run", split, holdout, dataset)
    config.eval.calibration = "temperature"
    scaled = _evaluate(tmp_path, config, "run", split, holdout, dataset)
    assert scaled["threshold"] != pytest.approx(raw["threshold"])
    recorded = workdir_lib.recorded_threshold(str(tmp_path / "run"), [1])
    assert recorded == pytest.approx(raw["threshold"])
