"""Evaluation of k-class predictions (k >= 2): per study and per group, with bootstrap CIs.

The multi-class counterpart of `murajax.metrics` (whose conventions it follows; binary
MURA evaluation stays there, with its own metrics and file formats). Each image carries a
probability vector over the k classes; a study's vector is the mean of its images' vectors
(or each class's max over the images, renormalised to sum to 1), and its prediction is the
class of highest probability (the first such class on a tie, as `np.argmax` gives).

Scores, study-level and image-level:
- `accuracy`, and Cohen's `kappa` of the argmax predictions, unweighted or with linear or
  quadratic weights for ordinal labels (`eval.kappa_weights`). Weights are the distances of
  the class *indices*, |i - j| or (i - j)^2, over all k classes (scikit-learn's
  `cohen_kappa_score(..., labels=range(k), weights=...)`), so that a class absent from the
  data does not bring its neighbours closer together.
- `auroc`: the one-vs-rest macro AUROC, the mean of `auroc_by_class` over the classes that
  have both outcomes (cases of the class and cases of other classes); NaN if none has. With
  every class present it equals `roc_auc_score(..., multi_class="ovr", average="macro")`.
- per class: `auroc_by_class` (that class against the rest, on its probability),
  `sensitivity_by_class` (recall) and `precision_by_class`, NaN where undefined (no cases of
  the class; no predictions of it), as scikit-learn gives them with `zero_division=nan`;
- `confusion`, k x k counts (rows: true class, columns: predicted class), `class_counts`.

Confidence intervals are percentile bootstraps that resample studies, as in
`murajax.metrics`: a resample is a vector of multiplicities; its k x k confusion matrix is
a sum over cases grouped by cell, and each class's AUROC the weighted Mann-Whitney
statistic of that class against the rest (`weighted_ovr_auroc`), in integer arithmetic.
On the same resample these equal scikit-learn's functions on the explicitly resampled rows
(tested); 1000 resamples of 3000 studies with 5 classes take about half a second. Resamples
where a score is undefined are left out of its interval; the macro AUROC of a resample
averages the classes with both outcomes in it.
"""

import functools
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn import metrics as skm

from murajax.config import KAPPA_WEIGHTS
from murajax.metrics import (
    _MAX_BOOTSTRAP_CELLS,
    AGGREGATIONS,
    Arrays,
    Calibrate,
    Scores,
    _divide,
    aggregate_probs,
    bootstrap_counts,
    percentile_interval,
    score_overall_and_groups,
    study_index,
)

# The scores of each level that are one number, in the order they are reported ...
SCORE_NAMES: tuple[str, ...] = ("kappa", "auroc", "accuracy")
# ... and those with one number per class (dicts keyed by class), reported after them.
CLASS_SCORE_NAMES: tuple[str, ...] = (
    "auroc_by_class",
    "sensitivity_by_class",
    "precision_by_class",
)

Interval = tuple[float, float]


# --------------------------------------------------------------------------- inputs


def _class_probs(probs: np.ndarray, n: int | None = None) -> np.ndarray:
    """`probs` as float64 (n, k) with k >= 2, or a ValueError naming what is wrong."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(
            f"probs of shape {probs.shape} is invalid: expected (cases, classes) with at "
            "least 2 classes"
        )
    if n is not None and len(probs) != n:
        raise ValueError(f"probs has {len(probs)} rows but there are {n} labels: expected one each")
    return probs


def _class_labels(labels: np.ndarray, k: int) -> np.ndarray:
    """`labels` as int64 (n,) class indices in [0, k), or a ValueError naming a bad one."""
    values = np.asarray(labels).reshape(-1)
    y = values.astype(np.int64)
    bad = (y != values) | (y < 0) | (y >= k)
    if bad.any():
        raise ValueError(
            f"label {values[np.flatnonzero(bad)[0]].item()!r} is invalid: expected a class index "
            f"in [0, {k})"
        )
    return y


def _kappa_weights(kappa_weights: str) -> str | None:
    """The `weights` argument of `sklearn.metrics.cohen_kappa_score` for `kappa_weights`."""
    if kappa_weights not in KAPPA_WEIGHTS:
        raise ValueError(
            f"unknown kappa_weights {kappa_weights!r}: expected one of {', '.join(KAPPA_WEIGHTS)}"
        )
    return None if kappa_weights == "none" else kappa_weights


def kappa_weight_matrix(k: int, kappa_weights: str = "none") -> np.ndarray:
    """The k x k disagreement weights of Cohen's kappa, as scikit-learn builds them:
    1 off the diagonal ("none"), |i - j| ("linear") or (i - j)^2 ("quadratic")."""
    weights = _kappa_weights(kappa_weights)
    index = np.arange(k, dtype=np.float64)
    distance = np.abs(index[:, None] - index[None, :])
    if weights is None:
        return (distance > 0).astype(np.float64)
    return distance if weights == "linear" else distance**2


def predict(probs: np.ndarray) -> np.ndarray:
    """Hard predictions: the class of highest probability (the first one on a tie)."""
    return np.argmax(_class_probs(probs), axis=1).astype(np.int64)


# --------------------------------------------------------------------------- studies


def aggregate_study_probs(
    study_ids: Sequence[str] | np.ndarray,
    probs: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray | None,
    aggregation: str = "mean",
) -> Arrays:
    """Groups image probability vectors by study: one row per study, sorted by study id
    (the order of `metrics.study_index`).

    Returns `study_id`, `label`, `prob` (studies, k), `group` and `n_images`. "mean"
    averages the images' vectors; "max" takes each class's maximum over the images and
    renormalises the vector to sum to 1 (so a study with one confident image of a class
    leans to it, while its vector stays a distribution; all-zero maxima stay zero).
    `groups` None gives every study the group -1 (none). Raises if the images of a study
    disagree on label or group, or if `aggregation` is unknown.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}: expected 'mean' or 'max'")
    unique, first, inverse = study_index(study_ids)
    probs = _class_probs(probs, len(inverse))
    y = _class_labels(labels, probs.shape[1])
    if len(y) != len(inverse):
        raise ValueError(f"{len(y)} labels for {len(inverse)} images: expected one each")
    n = len(unique)
    counts = np.bincount(inverse, minlength=n)
    agg = aggregate_probs(probs, inverse, n, aggregation)  # as `EvalState.studies` does
    if groups is None:
        groups = np.full(len(inverse), -1)
    per_study = {}
    for name, values in (("label", y), ("group", np.asarray(groups))):
        values = values.astype(np.int64).reshape(-1)
        if len(values) != len(inverse):
            raise ValueError(f"{len(values)} values of {name!r} for {len(inverse)} images")
        per_study[name] = values[first]
        mismatch = values != per_study[name][inverse]
        if mismatch.any():
            study = unique[inverse[np.flatnonzero(mismatch)[0]]]
            raise ValueError(f"images of study {study!r} carry different values of {name!r}")
    return {
        "study_id": unique,
        "label": per_study["label"],
        "prob": agg,
        "group": per_study["group"],
        "n_images": counts,
    }


# --------------------------------------------------------------------------- point estimates


def _binary_auroc(positive: np.ndarray, scores: np.ndarray) -> float:
    """`roc_auc_score(positive, scores)`, NaN without both outcomes."""
    if positive.all() or not positive.any():
        return float("nan")
    return float(skm.roc_auc_score(positive, scores))


def point_scores(labels: np.ndarray, probs: np.ndarray, *, kappa_weights: str = "none") -> Scores:
    """The scores of `SCORE_NAMES` and `CLASS_SCORE_NAMES` with scikit-learn's functions.

    `labels` are class indices in [0, k), `probs` (n, k) the probability vectors. Per-class
    scores are dicts {class index: value}. Also returns `n`, `kappa_weights`, `confusion`
    (k x k list of counts, rows true, columns predicted) and `class_counts` {class: cases}.
    Undefined scores are NaN: kappa when no disagreement is expected (e.g. one class in
    truth and predictions), AUROC of a class without both outcomes, macro AUROC when no
    class has both, sensitivity of a class without cases, precision of one never predicted,
    and accuracy of no cases.
    """
    probs = _class_probs(probs)
    k = probs.shape[1]
    y = _class_labels(labels, k)
    if len(y) != len(probs):
        raise ValueError(f"{len(y)} labels for {len(probs)} rows of probs: expected one each")
    weights = _kappa_weights(kappa_weights)
    pred = predict(probs)
    classes = np.arange(k)
    nan = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns on each undefined score
        kappa = accuracy = nan
        recall = precision = np.full(k, nan)
        confusion = np.zeros((k, k))
        if len(y):
            kappa = float(skm.cohen_kappa_score(y, pred, labels=classes, weights=weights))
            accuracy = float(skm.accuracy_score(y, pred))
            per_class = {"labels": classes, "average": None, "zero_division": nan}
            recall = skm.recall_score(y, pred, **per_class)
            precision = skm.precision_score(y, pred, **per_class)
            confusion = skm.confusion_matrix(y, pred, labels=classes)
        by_class = [_binary_auroc(y == c, probs[:, c]) for c in classes]
        defined = [a for a in by_class if not np.isnan(a)]
    return {
        "kappa": kappa,
        "auroc": float(np.mean(defined)) if defined else nan,
        "accuracy": accuracy,
        "auroc_by_class": {int(c): by_class[c] for c in classes},
        "sensitivity_by_class": {int(c): float(recall[c]) for c in classes},
        "precision_by_class": {int(c): float(precision[c]) for c in classes},
        "n": int(len(y)),
        "kappa_weights": kappa_weights,
        "confusion": np.asarray(confusion, dtype=np.int64).tolist(),
        "class_counts": {int(c): int(n) for c, n in enumerate(np.bincount(y, minlength=k))},
    }


# --------------------------------------------------------------------------- bootstrap


def _columns(columns: np.ndarray | None, n: int) -> np.ndarray:
    return np.arange(n) if columns is None else np.asarray(columns, dtype=np.int64).reshape(-1)


def weighted_confusion(
    weights: np.ndarray,
    labels: np.ndarray,
    preds: np.ndarray,
    k: int,
    columns: np.ndarray | None = None,
) -> np.ndarray:
    """The k x k confusion matrix (rows true, columns predicted) of each row of `weights`
    (resamples x cases, integer multiplicities): int64 (resamples, k, k).

    Case i counts `weights[:, columns[i]]` times (`columns` None: column i), so image-level
    resamples read their studies' multiplicities directly. Cases are grouped by cell and
    their multiplicities summed: one pass over the cases whatever k is.
    """
    weights = np.asarray(weights)
    cell = np.asarray(labels, np.int64).reshape(-1) * k + np.asarray(preds, np.int64).reshape(-1)
    columns = _columns(columns, len(cell))
    out = np.zeros((len(weights), k * k), dtype=np.int64)
    if len(cell):
        order = np.argsort(cell, kind="stable")
        cells, starts = np.unique(cell[order], return_index=True)
        out[:, cells] = np.add.reduceat(weights[:, columns[order]], starts, axis=1, dtype=np.int64)
    return out.reshape(len(weights), k, k)


def weighted_ovr_auroc(
    weights: np.ndarray,
    labels: np.ndarray,
    probs: np.ndarray,
    columns: np.ndarray | None = None,
) -> np.ndarray:
    """Each class's one-vs-rest AUROC for each row of `weights` (resamples x cases, integer
    multiplicities; case i counts `weights[:, columns[i]]` times): float (resamples, k).

    The weighted Mann-Whitney U of `metrics.weighted_auroc`, P(a case of the class scores
    above a case of another class), ties counting half, NaN without both. It is computed
    from the class's cases: the other cases sorted by score once, their running totals of
    multiplicity give, at each case's score (found by `searchsorted`), how many others lie
    below and how many tie. Integer sums (int32 running totals: up to 2^31 drawn cases)
    keep it exact and fast.
    """
    probs = _class_probs(probs)
    k = probs.shape[1]
    y = _class_labels(labels, k)
    columns = _columns(columns, len(y))
    weights = np.asarray(weights).astype(np.int32, copy=False)
    out = np.full((len(weights), k), np.nan)
    for c in range(k):
        is_class = y == c
        pos, neg = np.flatnonzero(is_class), np.flatnonzero(~is_class)
        if len(pos) == 0 or len(neg) == 0:
            continue
        neg = neg[np.argsort(probs[neg, c], kind="stable")]
        others = probs[neg, c]
        below = np.searchsorted(others, probs[pos, c], side="left")
        up_to = np.searchsorted(others, probs[pos, c], side="right")
        totals = np.empty((len(weights), len(neg) + 1), dtype=np.int32)
        totals[:, 0] = 0
        np.cumsum(weights[:, columns[neg]], axis=1, out=totals[:, 1:])
        mine = weights[:, columns[pos]]
        twice_wins = np.einsum(
            "bi,bi->b", mine, totals[:, below] + totals[:, up_to], dtype=np.int64
        )
        pairs = mine.sum(axis=1, dtype=np.int64) * totals[:, -1].astype(np.int64)
        out[:, c] = _divide(twice_wins / 2, pairs)
    return out


def scores_from_confusion(
    confusion: np.ndarray, kappa_weights: str = "none"
) -> dict[str, np.ndarray]:
    """Accuracy, kappa, and per-class sensitivity and precision of confusion matrices
    (..., k, k): scalars per matrix, and (..., k) for the per-class scores.

    Kappa follows `sklearn.metrics.cohen_kappa_score`: 1 - observed / expected weighted
    disagreement, NaN when no disagreement is expected.
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    w = kappa_weight_matrix(confusion.shape[-1], kappa_weights)
    n = confusion.sum(axis=(-2, -1))
    truth, predicted = confusion.sum(axis=-1), confusion.sum(axis=-2)
    diagonal = np.diagonal(confusion, axis1=-2, axis2=-1)
    observed = np.sum(w * confusion, axis=(-2, -1))
    expected = _divide(np.einsum("...i,ij,...j->...", truth, w, predicted), n)
    return {
        "kappa": 1 - _divide(observed, expected),
        "accuracy": _divide(diagonal.sum(axis=-1), n),
        "sensitivity_by_class": _divide(diagonal, truth),
        "precision_by_class": _divide(diagonal, predicted),
    }


def resampled_scores(
    weights: np.ndarray,
    labels: np.ndarray,
    probs: np.ndarray,
    kappa_weights: str = "none",
    columns: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Every score for each row of integer multiplicities `weights` (resamples x cases, or
    x columns with case i counting `weights[:, columns[i]]` times): (resamples,) arrays for
    `SCORE_NAMES`, (resamples, k) for `CLASS_SCORE_NAMES`."""
    probs = _class_probs(probs)
    k = probs.shape[1]
    y = _class_labels(labels, k)
    confusion = weighted_confusion(weights, y, predict(probs), k, columns)
    scores = scores_from_confusion(confusion, kappa_weights)
    by_class = weighted_ovr_auroc(weights, y, probs, columns)
    defined = ~np.isnan(by_class)
    scores["auroc_by_class"] = by_class
    scores["auroc"] = _divide(np.where(defined, by_class, 0).sum(axis=1), defined.sum(axis=1))
    return scores


def bootstrap_intervals(
    study_labels: np.ndarray,
    study_probs: np.ndarray,
    image_study: np.ndarray,
    image_labels: np.ndarray,
    image_probs: np.ndarray,
    *,
    kappa_weights: str = "none",
    samples: int,
    confidence: float,
    rng: np.random.Generator,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Study-level and image-level percentile CIs of every score, resampling studies.

    Returns for each level {score: (low, high)} for `SCORE_NAMES` and {score: {class index:
    (low, high)}} for `CLASS_SCORE_NAMES`. `image_study[i]` is the row of image i's study in
    the study arrays; an image-level resample holds each image as often as its study was
    drawn. Resamples where a score is undefined are left out of its interval.
    """
    k = _class_probs(study_probs).shape[1]
    n_studies, n_images = len(study_labels), max(len(image_labels), 1)
    chunk = max(1, _MAX_BOOTSTRAP_CELLS // max(n_images, n_studies, 1))
    counts = bootstrap_counts(n_studies, samples, rng)
    names = (*SCORE_NAMES, *CLASS_SCORE_NAMES)
    study_values: dict[str, list[np.ndarray]] = {name: [] for name in names}
    image_values: dict[str, list[np.ndarray]] = {name: [] for name in names}
    image_study = np.asarray(image_study, dtype=np.int64)
    for start in range(0, samples, chunk):
        weights = counts[start : start + chunk].astype(np.int32)
        for values, scores in (
            (study_values, resampled_scores(weights, study_labels, study_probs, kappa_weights)),
            (
                image_values,
                resampled_scores(weights, image_labels, image_probs, kappa_weights, image_study),
            ),
        ):
            for name in names:
                values[name].append(scores[name])

    def intervals(values: dict[str, list[np.ndarray]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in SCORE_NAMES:
            out[name] = percentile_interval(np.concatenate(values[name]), confidence)
        for name in CLASS_SCORE_NAMES:
            table = np.concatenate(values[name]).reshape(-1, k)
            out[name] = {c: percentile_interval(table[:, c], confidence) for c in range(k)}
        return out

    return intervals(study_values), intervals(image_values)


# --------------------------------------------------------------------------- whole evaluation


def _check_class_names(class_names: Sequence[str], k: int) -> list[str]:
    names = [str(name) for name in class_names]
    if len(names) != k:
        raise ValueError(f"{len(names)} class_names for {k} classes: expected one name each")
    if len(set(names)) != k:
        raise ValueError(f"class_names {names} repeat a name: expected distinct names")
    return names


def _named(scores: Scores, intervals: Mapping[str, Any], class_names: Sequence[str]) -> Scores:
    """`scores` with `<name>_ci` after each score (NaNs without `intervals`), per-class
    entries keyed by class name, and `class_names` after `confusion`."""
    nan_interval = [float("nan")] * 2
    out: Scores = {}
    for name in SCORE_NAMES:
        out[name] = scores[name]
        out[f"{name}_ci"] = list(intervals[name]) if intervals else nan_interval
    for name in CLASS_SCORE_NAMES:
        out[name] = {label: scores[name][c] for c, label in enumerate(class_names)}
        out[f"{name}_ci"] = {
            label: list(intervals[name][c]) if intervals else nan_interval
            for c, label in enumerate(class_names)
        }
    for key, value in scores.items():
        if key in out:
            continue
        if key == "class_counts":
            value = {label: value[c] for c, label in enumerate(class_names)}
        out[key] = value
        if key == "confusion":
            out["class_names"] = list(class_names)
    return out


def score_group(
    studies: Arrays,
    images: Arrays,
    image_study: np.ndarray,
    *,
    class_names: Sequence[str],
    kappa_weights: str = "none",
    samples: int,
    confidence: float,
    rng: np.random.Generator,
) -> Scores:
    """Study-level and image-level scores with CIs of one group: {"study": ..., "image": ...}.

    `studies` has `label` and `prob` (studies, k) per study, `images` `label` and `prob`
    per image, and `image_study` maps each image to its study's row. Per-class scores and
    their intervals are keyed by class name; `image` also has `n_studies`.
    """
    k = _class_probs(studies["prob"]).shape[1]
    class_names = _check_class_names(class_names, k)
    study = point_scores(studies["label"], studies["prob"], kappa_weights=kappa_weights)
    image = point_scores(images["label"], images["prob"], kappa_weights=kappa_weights)
    image["n_studies"] = study["n"]
    study_ci: Mapping[str, Any] = {}
    image_ci: Mapping[str, Any] = {}
    if samples > 0 and study["n"] > 0:
        study_ci, image_ci = bootstrap_intervals(
            studies["label"],
            studies["prob"],
            image_study,
            images["label"],
            images["prob"],
            kappa_weights=kappa_weights,
            samples=samples,
            confidence=confidence,
            rng=rng,
        )
    return {
        "study": _named(study, study_ci, class_names),
        "image": _named(image, image_ci, class_names),
    }


def evaluate_predictions(
    study_ids: Sequence[str] | np.ndarray,
    probs: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray | None,
    *,
    class_names: Sequence[str],
    group_names: Sequence[str] = (),
    aggregation: str = "mean",
    kappa_weights: str = "none",
    bootstrap_samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    calibrate: Calibrate | None = None,
) -> tuple[Scores, Arrays]:
    """Scores k-class image predictions per study and per image, overall and per group.

    `calibrate` maps the studies' and images' probability vectors to calibrated ones before
    any score (as in `murajax.metrics.evaluate_predictions`).

    `probs` (images, k) are the images' probability vectors, `labels` class indices,
    `groups` indices into `group_names` (None, or `group_names=()`, for no groups). Returns
    `{"study": {...}, "image": {...}, "by_group": {name: {study-level scores..., "image":
    {...}}}}` (groups without studies left out) and the per-study table of
    `aggregate_study_probs` with `pred` (the argmax class) added. Each score comes with
    `<name>_ci`, its bootstrap interval over studies (NaNs when `bootstrap_samples` is 0);
    the overall scores and every group draw their own seeded resamples, as in
    `murajax.metrics.evaluate_predictions`.
    """
    probs = _class_probs(probs)
    class_names = _check_class_names(class_names, probs.shape[1])
    _kappa_weights(kappa_weights)
    studies = aggregate_study_probs(study_ids, probs, labels, groups, aggregation)
    if calibrate is not None:
        studies["prob"] = calibrate(studies["prob"])
        probs = calibrate(probs)
    studies["pred"] = predict(studies["prob"])
    _, _, image_study = study_index(study_ids)
    images = {"label": _class_labels(labels, probs.shape[1]), "prob": probs}
    score = functools.partial(
        score_group,
        class_names=class_names,
        kappa_weights=kappa_weights,
        samples=bootstrap_samples,
        confidence=confidence,
    )
    return score_overall_and_groups(score, studies, images, image_study, group_names, seed), studies
