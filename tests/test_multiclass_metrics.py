"""Multi-class metrics and plots: equal to scikit-learn, k = 2 equal to murajax.metrics,
bootstrap CIs over studies, study aggregation of probability vectors, PNGs."""

import time
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from murajax import metrics, plots_multiclass
from murajax import multiclass_metrics as mm

WEIGHTINGS = ("none", "linear", "quadratic")
NAMES3 = ("normal", "opacity", "effusion")


def _sklearn_kappa(labels, preds, k, weights):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return skm.cohen_kappa_score(
            labels, preds, labels=np.arange(k), weights=None if weights == "none" else weights
        )


def _sklearn_scores(labels: np.ndarray, probs: np.ndarray, weights: str = "none") -> dict:
    """The reference: scikit-learn's functions on argmax predictions, per class one-vs-rest."""
    k = probs.shape[1]
    preds = probs.argmax(axis=1)
    classes = np.arange(k)
    by_class = [
        skm.roc_auc_score(labels == c, probs[:, c])
        if 0 < (labels == c).sum() < len(labels)
        else np.nan
        for c in classes
    ]
    present = np.unique(labels)
    if len(present) == k == 2:  # sklearn's binary AUROC, on the probability of class 1
        auroc = skm.roc_auc_score(labels, probs[:, 1])
    elif len(present) == k:  # sklearn's multi-class AUROC needs every class present
        auroc = skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro", labels=classes)
    elif len(present) >= 2:  # ... else the mean over the present classes
        auroc = np.mean([by_class[c] for c in present])
    else:
        auroc = np.nan
    return {
        "accuracy": skm.accuracy_score(labels, preds),
        "kappa": _sklearn_kappa(labels, preds, k, weights),
        "auroc": auroc,
        "auroc_by_class": by_class,
        "sensitivity_by_class": skm.recall_score(
            labels, preds, labels=classes, average=None, zero_division=np.nan
        ),
        "precision_by_class": skm.precision_score(
            labels, preds, labels=classes, average=None, zero_division=np.nan
        ),
        "confusion": skm.confusion_matrix(labels, preds, labels=classes).tolist(),
    }


def _assert_close(a: float, b: float) -> None:
    assert (np.isnan(a) and np.isnan(b)) or a == pytest.approx(b, rel=1e-12, abs=1e-12), (a, b)


def _assert_matches_sklearn(scores: dict, labels: np.ndarray, probs: np.ndarray, weights: str):
    expected = _sklearn_scores(labels, probs, weights)
    for name in ("accuracy", "kappa", "auroc"):
        _assert_close(scores[name], expected[name])
    for name in mm.CLASS_SCORE_NAMES:
        assert list(scores[name]) == list(range(probs.shape[1]))
        for c, value in scores[name].items():
            _assert_close(value, expected[name][c])
    assert scores["confusion"] == expected["confusion"]


def _probs(rng: np.random.Generator, labels: np.ndarray, k: int, signal: float = 1.0):
    """Softmax probabilities leaning towards the true class, rounded (ties, as models give),
    each row summing to 1."""
    logits = rng.normal(size=(len(labels), k))
    logits[np.arange(len(labels)), labels] += signal
    probs = np.exp(logits).round(1)
    return probs / probs.sum(axis=1, keepdims=True)


def _images(n_studies: int, k: int = 3, seed: int = 0, groups: int = 4, signal: float = 1.0):
    """Random k-class image predictions: 1-4 images per study, study labels and groups."""
    rng = np.random.default_rng(seed)
    per_study = rng.integers(1, 5, n_studies)
    label = np.repeat(rng.integers(0, k, n_studies), per_study)
    return {
        "study_id": np.repeat([f"study{i:05d}" for i in range(n_studies)], per_study),
        "group": np.repeat(rng.integers(0, groups, n_studies), per_study),
        "label": label,
        "prob": _probs(rng, label, k, signal),
    }


def _evaluate(images: dict, class_names=NAMES3, group_names=("a", "b", "c", "d"), **kw):
    return mm.evaluate_predictions(
        images["study_id"],
        images["prob"],
        images["label"],
        images["group"],
        class_names=class_names,
        group_names=group_names,
        **kw,
    )


# --------------------------------------------------------------------------- vs scikit-learn


@st.composite
def cases(draw):
    """Labels and probability vectors of 1-30 cases and 2-5 classes; some classes may be
    missing, and rows are drawn from few values so that scores tie."""
    k = draw(st.integers(2, 5))
    n = draw(st.integers(1, 30))
    labels = np.asarray(draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    raw = draw(st.lists(st.integers(0, 3), min_size=n * k, max_size=n * k))
    probs = np.asarray(raw, dtype=np.float64).reshape(n, k) + 0.5
    return labels, probs / probs.sum(axis=1, keepdims=True)


@settings(
    max_examples=60,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(case=cases(), weights=st.sampled_from(WEIGHTINGS))
def test_point_scores_equal_sklearn(case, weights):
    labels, probs = case
    scores = mm.point_scores(labels, probs, kappa_weights=weights)
    _assert_matches_sklearn(scores, labels, probs, weights)
    assert scores["n"] == len(labels) and scores["kappa_weights"] == weights
    assert scores["class_counts"] == dict(enumerate(np.bincount(labels, minlength=probs.shape[1])))


def test_point_scores_on_a_hand_computed_case():
    # truth 0 0 1 1 2 2, predictions 0 1 1 1 2 0: 4 of 6 right
    labels = np.array([0, 0, 1, 1, 2, 2])
    probs = np.eye(3)[[0, 1, 1, 1, 2, 0]] * 0.7 + 0.1
    scores = mm.point_scores(labels, probs)
    assert scores["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert scores["accuracy"] == pytest.approx(4 / 6)
    # chance agreement: truth 1/3 each, predictions 2/6, 3/6, 1/6 -> pe = 1/3
    assert scores["kappa"] == pytest.approx((4 / 6 - 1 / 3) / (1 - 1 / 3))
    assert scores["sensitivity_by_class"] == pytest.approx({0: 0.5, 1: 1.0, 2: 0.5})
    assert scores["precision_by_class"] == pytest.approx({0: 0.5, 1: 2 / 3, 2: 1.0})
    assert scores["class_counts"] == {0: 2, 1: 2, 2: 2}


def test_weighted_kappa_measures_distance_by_class_index():
    # Class 2 of 4 absent: sklearn's default labels (the classes present) would make 1 and
    # 3 neighbours; murajax (sklearn with labels=range(k)) keeps them two apart.
    labels = np.array([0, 1, 3, 3, 0, 1, 3])
    preds = np.array([1, 1, 3, 1, 0, 3, 0])
    for weights in ("linear", "quadratic"):
        kappa = mm.point_scores(labels, np.eye(4)[preds], kappa_weights=weights)["kappa"]
        assert kappa == pytest.approx(_sklearn_kappa(labels, preds, 4, weights), rel=1e-12)
        assert kappa != pytest.approx(skm.cohen_kappa_score(labels, preds, weights=weights))
    # with two classes 0 and 2 only, every disagreement weighs the same: all weightings agree
    labels, preds = np.array([0, 0, 2, 2, 0]), np.array([0, 2, 2, 0, 0])
    for weights in WEIGHTINGS:
        kappa = mm.point_scores(labels, np.eye(3)[preds], kappa_weights=weights)["kappa"]
        assert kappa == pytest.approx(skm.cohen_kappa_score(labels, preds))
    # ordinal: a near miss costs less under quadratic weights than unweighted
    labels = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    near = np.eye(4)[[1, 1, 2, 3, 0, 2, 2, 2]]
    scores = {w: mm.point_scores(labels, near, kappa_weights=w)["kappa"] for w in WEIGHTINGS}
    assert scores["quadratic"] > scores["linear"] > scores["none"]
    for weights, value in scores.items():
        assert value == pytest.approx(_sklearn_kappa(labels, near.argmax(1), 4, weights))


def test_undefined_scores_are_nan():
    probs = np.array([[0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.5, 0.3, 0.2]])
    one_class = mm.point_scores(np.array([1, 1, 1]), probs)
    assert np.isnan(one_class["auroc"])
    assert all(np.isnan(v) for v in one_class["auroc_by_class"].values())
    assert np.isnan(one_class["sensitivity_by_class"][0])  # no cases of class 0
    assert one_class["sensitivity_by_class"][1] == pytest.approx(2 / 3)
    assert np.isnan(one_class["precision_by_class"][2])  # class 2 never predicted
    assert one_class["kappa"] == pytest.approx(0.0)  # chance level: disagreement expected
    all_agree = mm.point_scores(np.array([1, 1]), probs[:2])  # one class, all right
    assert np.isnan(all_agree["kappa"]) and all_agree["accuracy"] == 1.0
    empty = mm.point_scores(np.zeros(0, int), np.zeros((0, 3)))
    assert empty["n"] == 0 and np.isnan(empty["accuracy"]) and np.isnan(empty["kappa"])
    assert empty["confusion"] == [[0] * 3] * 3
    # the macro AUROC averages the classes with both outcomes only
    two_of_three = mm.point_scores(np.array([0, 1, 0, 1]), np.tile(probs[:2], (2, 1)))
    assert np.isnan(two_of_three["auroc_by_class"][2])
    assert two_of_three["auroc"] == pytest.approx(
        np.mean([two_of_three["auroc_by_class"][c] for c in (0, 1)])
    )


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(ValueError, match=r"label 3 is invalid: expected a class index in \[0, 3\)"):
        mm.point_scores(np.array([0, 3]), np.full((2, 3), 1 / 3))
    with pytest.raises(ValueError, match="at least 2 classes"):
        mm.point_scores(np.array([0, 1]), np.array([0.2, 0.8]))
    with pytest.raises(ValueError, match="unknown kappa_weights 'cubic'"):
        mm.point_scores(np.array([0, 1]), np.eye(2), kappa_weights="cubic")
    with pytest.raises(ValueError, match="2 class_names for 3 classes"):
        _evaluate(_images(5), class_names=("a", "b"), bootstrap_samples=0)
    with pytest.raises(ValueError, match="repeat a name"):
        _evaluate(_images(5), class_names=("a", "b", "a"), bootstrap_samples=0)


# --------------------------------------------------------------------------- bootstrap


def test_vectorised_bootstrap_equals_sklearn_on_every_resample():
    images = _images(60, k=4, seed=2)
    studies = mm.aggregate_study_probs(
        images["study_id"], images["prob"], images["label"], images["group"]
    )
    _, _, image_study = metrics.study_index(images["study_id"])
    counts = metrics.bootstrap_counts(len(studies["label"]), 12, np.random.default_rng(3))
    for weights in WEIGHTINGS:
        study_scores = mm.resampled_scores(counts, studies["label"], studies["prob"], weights)
        image_scores = mm.resampled_scores(
            counts, images["label"], images["prob"], weights, image_study
        )
        for b in range(len(counts)):
            drawn = np.repeat(np.arange(len(studies["label"])), counts[b])
            rows = np.concatenate([np.flatnonzero(image_study == s) for s in drawn])
            for scores, labels, probs in (
                (study_scores, studies["label"][drawn], studies["prob"][drawn]),
                (image_scores, images["label"][rows], images["prob"][rows]),
            ):
                expected = _sklearn_scores(labels, probs, weights)
                for name in mm.SCORE_NAMES:
                    _assert_close(scores[name][b], expected[name])
                for name in mm.CLASS_SCORE_NAMES:
                    for c in range(4):
                        _assert_close(scores[name][b, c], expected[name][c])


def test_weighted_ovr_auroc_equals_binary_weighted_auroc():
    rng = np.random.default_rng(4)
    labels = np.array([0, 0, 1, 1, 2, 1, 0, 2])
    probs = _probs(rng, labels, 4)  # class 3 has no cases
    weights = metrics.bootstrap_counts(len(labels), 40, rng)
    weights[0] = [0, 0, 1, 1, 0, 1, 0, 0]  # only class 1 drawn: every AUROC undefined
    ovr = mm.weighted_ovr_auroc(weights, labels, probs)
    for c in range(4):
        binary = metrics.weighted_auroc(weights.astype(float), labels == c, probs[:, c])
        np.testing.assert_allclose(ovr[:, c], binary, rtol=1e-12, equal_nan=True)
    assert np.isnan(ovr[0]).all() and np.isnan(ovr[:, 3]).all()


def test_intervals_contain_the_estimate_and_shrink_with_more_data():
    small, _ = _evaluate(_images(60, seed=4), bootstrap_samples=300)
    large, _ = _evaluate(_images(1500, seed=4), bootstrap_samples=300)
    for result in (small, large):
        for level in ("study", "image"):
            scores = result[level]
            for name in mm.SCORE_NAMES:
                low, high = scores[f"{name}_ci"]
                assert low <= scores[name] <= high, (level, name)
            for name in mm.CLASS_SCORE_NAMES:
                assert list(scores[f"{name}_ci"]) == list(NAMES3)
                for cls, (low, high) in scores[f"{name}_ci"].items():
                    assert low <= scores[name][cls] <= high, (level, name, cls)
    for level in ("study", "image"):
        for name in mm.SCORE_NAMES:
            width = lambda r, lv=level, n=name: np.diff(r[lv][f"{n}_ci"])[0]  # noqa: E731
            assert width(large) < 0.5 * width(small), (level, name)
        for name in mm.CLASS_SCORE_NAMES:
            for cls in NAMES3:
                width = lambda r, lv=level, n=name, c=cls: np.diff(r[lv][f"{n}_ci"][c])[0]  # noqa: E731
                assert width(large) < 0.6 * width(small), (level, name, cls)


def test_intervals_are_reproducible_with_the_seed():
    images = _images(80, seed=5)
    first, studies = _evaluate(images, bootstrap_samples=100, seed=7, kappa_weights="quadratic")
    again, _ = _evaluate(images, bootstrap_samples=100, seed=7, kappa_weights="quadratic")
    other, _ = _evaluate(images, bootstrap_samples=100, seed=8, kappa_weights="quadratic")
    assert first == again
    assert first["study"]["kappa_ci"] != other["study"]["kappa_ci"]
    assert first["study"]["auroc_by_class_ci"] != other["study"]["auroc_by_class_ci"]
    assert first["study"]["kappa"] == other["study"]["kappa"]
    assert first["study"]["kappa_weights"] == "quadratic"
    assert first["study"]["kappa"] == pytest.approx(
        _sklearn_kappa(studies["label"], studies["pred"], 3, "quadratic")
    )


def test_no_resamples_give_undefined_intervals():
    result, _ = _evaluate(_images(20), bootstrap_samples=0)
    assert all(np.isnan(result["study"]["kappa_ci"]))
    assert all(np.isnan(v).all() for v in result["image"]["auroc_by_class_ci"].values())


def test_one_class_leaves_auroc_intervals_undefined():
    images = _images(30, seed=6)
    images["label"][:] = 2
    result, _ = _evaluate(images, bootstrap_samples=50)
    assert np.isnan(result["study"]["auroc"]) and all(np.isnan(result["study"]["auroc_ci"]))
    assert all(np.isnan(result["image"]["auroc_by_class_ci"]["effusion"]))
    assert all(np.isnan(result["study"]["sensitivity_by_class_ci"]["normal"]))
    low, high = result["study"]["sensitivity_by_class_ci"]["effusion"]
    assert 0 <= low <= result["study"]["sensitivity_by_class"]["effusion"] <= high <= 1


def test_bootstrap_is_fast_on_a_validation_sized_split():
    images = _images(3000, k=5, seed=8)  # ~7500 images
    start = time.perf_counter()
    _evaluate(images, class_names=list("abcde"), group_names=(), bootstrap_samples=1000)
    assert time.perf_counter() - start < 10.0  # measured ~0.5 s on 2 shared cores


# --------------------------------------------------------------------------- whole evaluation


def test_groups_are_scored_on_their_own_studies():
    images = _images(200, seed=7)
    result, studies = _evaluate(
        images, group_names=("a", "b", "c", "d", "empty"), bootstrap_samples=20
    )
    assert list(result["by_group"]) == ["a", "b", "c", "d"]  # groups without studies left out
    assert sum(g["n"] for g in result["by_group"].values()) == result["study"]["n"] == 200
    for index, scores in enumerate(result["by_group"].values()):
        rows = studies["group"] == index
        expected = _sklearn_scores(studies["label"][rows], studies["prob"][rows])
        for score in ("accuracy", "kappa", "auroc"):
            _assert_close(scores[score], expected[score])
        for c, cls in enumerate(NAMES3):
            _assert_close(scores["sensitivity_by_class"][cls], expected["sensitivity_by_class"][c])
        image_rows = images["group"] == index
        assert scores["image"]["n"] == image_rows.sum()
        assert scores["image"]["n_studies"] == rows.sum()
        _assert_matches_sklearn(
            mm.point_scores(images["label"][image_rows], images["prob"][image_rows]),
            images["label"][image_rows],
            images["prob"][image_rows],
            "none",
        )
        assert scores["image"]["accuracy"] == pytest.approx(
            skm.accuracy_score(images["label"][image_rows], images["prob"][image_rows].argmax(1))
        )
    ungrouped, _ = mm.evaluate_predictions(
        images["study_id"],
        images["prob"],
        images["label"],
        None,
        class_names=NAMES3,
        bootstrap_samples=20,
    )
    assert ungrouped["by_group"] == {}
    assert ungrouped["study"] == result["study"]  # the overall scores draw their own resamples


def test_scores_are_keyed_by_class_name_in_report_order():
    result, studies = _evaluate(_images(50, seed=9), bootstrap_samples=20)
    study = result["study"]
    assert list(study)[:12] == [
        "kappa",
        "kappa_ci",
        "auroc",
        "auroc_ci",
        "accuracy",
        "accuracy_ci",
        "auroc_by_class",
        "auroc_by_class_ci",
        "sensitivity_by_class",
        "sensitivity_by_class_ci",
        "precision_by_class",
        "precision_by_class_ci",
    ]
    assert study["class_names"] == list(NAMES3)
    assert sum(study["class_counts"].values()) == study["n"] == 50
    assert list(study["class_counts"]) == list(NAMES3)
    assert np.sum(study["confusion"]) == 50
    assert set(studies) == {"study_id", "label", "prob", "group", "n_images", "pred"}
    np.testing.assert_array_equal(studies["pred"], studies["prob"].argmax(axis=1))


# --------------------------------------------------------------------------- k = 2 vs binary


@pytest.mark.parametrize("weights", WEIGHTINGS)
def test_two_classes_agree_with_the_binary_metrics(weights):
    # Probabilities on a grid of 1/64 (ties), each study's images on one side of 0.5, and 1, 2
    # or 4 images per study: the means are exact, so 1 - mean(p) == mean(1 - p) (the same ties
    # in both columns), and no study lands on 0.5, where argmax (first class on a tie) and the
    # threshold (>= 0.5 is abnormal) part ways.
    rng = np.random.default_rng(10)
    per_study = rng.choice([1, 2, 4], 150)
    study_label = rng.integers(0, 2, 150)
    side = np.where(rng.uniform(size=150) < 0.8, study_label, 1 - study_label) * 2 - 1
    label = np.repeat(study_label, per_study)
    p = 0.5 + np.repeat(side, per_study) * rng.integers(1, 32, len(label)) / 64
    ids = np.repeat([f"s{i:03d}" for i in range(150)], per_study)
    groups = np.zeros(len(label), dtype=np.int64)
    options = {"bootstrap_samples": 200, "seed": 3}
    binary, binary_studies = metrics.evaluate_predictions(ids, p, label, groups, **options)
    multi, studies = mm.evaluate_predictions(
        ids,
        np.stack([1 - p, p], axis=1),
        label,
        groups,
        class_names=("normal", "abnormal"),
        kappa_weights=weights,
        **options,
    )
    np.testing.assert_allclose(studies["prob"][:, 1], binary_studies["prob"], rtol=1e-12)
    np.testing.assert_array_equal(studies["pred"], binary_studies["pred"])
    for level in ("study", "image"):
        ours, theirs = multi[level], binary[level]
        for name in ("accuracy", "kappa", "auroc"):
            _assert_close(ours[name], theirs[name])
            # the same seeded resamples: the same intervals
            np.testing.assert_allclose(ours[f"{name}_ci"], theirs[f"{name}_ci"], rtol=1e-9)
        _assert_close(ours["auroc_by_class"]["abnormal"], theirs["auroc"])
        _assert_close(ours["auroc_by_class"]["normal"], theirs["auroc"])
        _assert_close(ours["sensitivity_by_class"]["abnormal"], theirs["sensitivity"])
        _assert_close(ours["sensitivity_by_class"]["normal"], theirs["specificity"])
        _assert_close(ours["precision_by_class"]["abnormal"], theirs["precision"])
        np.testing.assert_allclose(
            ours["sensitivity_by_class_ci"]["abnormal"], theirs["sensitivity_ci"], rtol=1e-9
        )
        confusion = theirs["confusion"]
        assert ours["confusion"] == [
            [confusion["tn"], confusion["fp"]],
            [confusion["fn"], confusion["tp"]],
        ]


# --------------------------------------------------------------------------- aggregation


def test_aggregation_of_probability_vectors_by_mean_and_max():
    ids = ["b", "a", "b", "b", "c"]
    probs = np.array(
        [[0.2, 0.5, 0.3], [0.9, 0.05, 0.05], [0.4, 0.4, 0.2], [0.3, 0.3, 0.4], [0.1, 0.1, 0.8]]
    )
    labels, groups = np.array([1, 0, 1, 1, 2]), np.array([6, 0, 6, 6, 3])
    mean = mm.aggregate_study_probs(ids, probs, labels, groups, "mean")
    assert list(mean["study_id"]) == ["a", "b", "c"]  # sorted, as metrics.study_index
    np.testing.assert_allclose(mean["prob"], [[0.9, 0.05, 0.05], [0.3, 0.4, 0.3], [0.1, 0.1, 0.8]])
    assert list(mean["n_images"]) == [1, 3, 1]
    assert list(mean["label"]) == [0, 1, 2] and list(mean["group"]) == [0, 6, 3]
    maxed = mm.aggregate_study_probs(ids, probs, labels, groups, "max")
    # study b: maxima 0.4, 0.5, 0.4, renormalised by their sum 1.3
    np.testing.assert_allclose(maxed["prob"][1], np.array([0.4, 0.5, 0.4]) / 1.3)
    np.testing.assert_allclose(maxed["prob"].sum(axis=1), 1.0)
    np.testing.assert_allclose(maxed["prob"][[0, 2]], probs[[1, 4]])  # one image: as it is
    result, studies = mm.evaluate_predictions(
        ids, probs, labels, groups, class_names=NAMES3, aggregation="max", bootstrap_samples=0
    )
    assert list(studies["pred"]) == [0, 1, 2] and result["study"]["accuracy"] == 1.0
    none = mm.aggregate_study_probs(ids, probs, labels, None)
    assert list(none["group"]) == [-1, -1, -1]


def test_aggregation_rejects_inconsistent_studies():
    probs = np.full((2, 3), 1 / 3)
    with pytest.raises(ValueError, match="different values of 'label'"):
        mm.aggregate_study_probs(["a", "a"], probs, [0, 1], [0, 0])
    with pytest.raises(ValueError, match="different values of 'group'"):
        mm.aggregate_study_probs(["a", "a"], probs, [0, 0], [0, 1])
    with pytest.raises(ValueError, match="unknown aggregation"):
        mm.aggregate_study_probs(["a"], probs[:1], [0], [0], "median")
    with pytest.raises(ValueError, match="probs has 2 rows but there are 3"):
        mm.aggregate_study_probs(["a", "b", "c"], probs, [0, 0, 0], [0, 0, 0])


# --------------------------------------------------------------------------- plots


@pytest.mark.parametrize(
    "names",
    [
        NAMES3,
        (
            "no finding",
            "pleural effusion (left or right side)",
            "cardiomegaly_enlarged_heart_silhouette",
            "pneumothorax",
            "lung-opacity-consolidation-and-atelectasis",
        ),
    ],
)
def test_plots_write_pngs(tmp_path, names):
    k = len(names)
    rng = np.random.default_rng(11)
    labels = rng.integers(0, k - 1, 60)  # the last class has no cases
    probs = _probs(rng, labels, k)
    scores = mm.point_scores(labels, probs)
    paths = [
        plots_multiclass.confusion_matrix(scores["confusion"], names, str(tmp_path / "cm.png")),
        plots_multiclass.roc_curves(labels, probs, names, str(tmp_path / "sub" / "roc.png")),
    ]
    for path in paths:
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["cm.png", "roc.png", "sub"]


def test_confusion_plot_cells_show_the_counts():
    confusion = [[5, 1, 0], [2, 7, 1], [0, 0, 0]]
    figure = plots_multiclass.confusion_figure(confusion, NAMES3)
    ax = figure.axes[0]
    cells = {
        (int(round(t.get_position()[1])), int(round(t.get_position()[0]))): t.get_text()
        for t in ax.texts
    }
    assert {cell: text.split("\n")[0] for cell, text in cells.items()} == {
        (i, j): str(confusion[i][j]) for i in range(3) for j in range(3)
    }
    assert cells[(1, 1)] == "7\n(70%)"
    assert ax.get_xlabel() == "predicted" and ax.get_ylabel() == "true"
    assert [t.get_text() for t in ax.get_yticklabels()] == list(NAMES3)
    with pytest.raises(ValueError, match="2 class_names"):
        plots_multiclass.confusion_figure(confusion, NAMES3[:2])


def test_roc_legend_gives_each_class_its_auroc():
    rng = np.random.default_rng(12)
    labels = rng.integers(0, 2, 40)  # class 2 ("effusion") has no cases
    probs = _probs(rng, labels, 3)
    figure = plots_multiclass.roc_figure(labels, probs, NAMES3)
    legend = figure.axes[0].get_legend()
    texts = [t.get_text() for t in legend.get_texts()]
    for c in (0, 1):
        auroc = skm.roc_auc_score(labels == c, probs[:, c])
        assert f"{NAMES3[c]}: AUROC {auroc:.3f} (n={(labels == c).sum()})" in texts
    assert "effusion: AUROC undefined (no cases)" in texts and "chance" in texts
    macro = mm.point_scores(labels, probs)["auroc"]
    assert legend.get_title().get_text() == f"macro AUROC {macro:.3f}"
