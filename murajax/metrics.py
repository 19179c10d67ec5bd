"""Evaluation as radiology judges it: per study and per body part, with bootstrap CIs.

Binary datasets (MURA; multi-class ones: `murajax.multiclass_metrics`). Image probabilities of
abnormality are aggregated into one probability per study (the mean
of its images, as in the MURA paper, or their max) and thresholded (0.5, or a threshold
chosen on the holdout by Youden's J). Both levels, images and studies, are scored with
accuracy, sensitivity, specificity, precision, F1, AUROC and Cohen's kappa, overall and per
body part. Point estimates are scikit-learn's functions on the predictions, so they equal
scikit-learn's numbers exactly; undefined values (AUROC or kappa with a single class, a
sensitivity without abnormal studies, ...) are NaN, as scikit-learn returns them.

Confidence intervals are percentile bootstraps that resample *studies* with replacement
(the unit radiologists report and the unit the images of one patient visit cluster in);
image-level intervals take the images of the resampled studies. The bootstrap is
vectorised: a resample is a vector of multiplicities (how often each study was drawn), the
confusion matrix of every resample is a matrix product, and AUROC is the weighted
Mann-Whitney statistic over tie groups of the scores. On the same resample these equal
scikit-learn's functions on the explicitly resampled rows (tested), and a thousand
resamples of a few hundred studies take milliseconds.

`EvalState` holds image-level predictions and merges (`a.merge(b)`), so that evaluation can
run in batches, on several devices and hosts, and be gathered before `compute`.
"""

import dataclasses
import functools
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from jax.experimental import multihost_utils
from sklearn import metrics as skm

Scores = dict[str, Any]
Arrays = dict[str, np.ndarray]
Calibrate = Callable[[np.ndarray], np.ndarray]
"""Maps probabilities (N,) or class vectors (N, K) to calibrated ones of the same shape."""


def _identity(probs: np.ndarray) -> np.ndarray:
    return probs


# The scores of each level, in the order they are reported.
SCORE_NAMES: tuple[str, ...] = (
    "kappa",
    "auroc",
    "accuracy",
    "sensitivity",
    "specificity",
    "precision",
    "f1",
)
AGGREGATIONS: tuple[str, ...] = ("mean", "max")
_MAX_BOOTSTRAP_CELLS = 4_000_000  # resamples x rows per chunk of the vectorised bootstrap


# --------------------------------------------------------------------------- studies


def study_index(
    study_ids: Sequence[str] | np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct study ids (sorted), the index of each study's first image, and for each
    image the index of its study.

    Sorting (rather than first appearance) makes every result independent of the order in
    which images arrive, e.g. of the order in which hosts' evaluation states are merged.
    """
    ids = np.asarray(study_ids).astype(str).reshape(-1)
    unique, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    return unique, first, inverse.reshape(-1)


def _aggregate(probs: np.ndarray, inverse: np.ndarray, n: int, aggregation: str) -> np.ndarray:
    """The mean or max of each study's image probabilities (N,) -> (n,)."""
    counts = np.bincount(inverse, minlength=n)
    if aggregation == "mean":
        return np.bincount(inverse, weights=probs, minlength=n) / np.maximum(counts, 1)
    agg = np.full(n, -np.inf)
    np.maximum.at(agg, inverse, probs)
    return agg


def aggregate_probs(
    probs: np.ndarray, inverse: np.ndarray, n: int, aggregation: str = "mean"
) -> np.ndarray:
    """Study probabilities from image probabilities: (N,) -> (n,) as `aggregation` says, or
    class-probability vectors (N, K) -> (n, K), each class aggregated on its own ("max" then
    renormalised so that each study's vector sums to 1). `inverse[i]` is image i's study."""
    if probs.ndim == 1:
        return _aggregate(probs, inverse, n, aggregation)
    columns = [_aggregate(probs[:, k], inverse, n, aggregation) for k in range(probs.shape[1])]
    agg = np.stack(columns, axis=1) if columns else np.zeros((n, 0))
    if aggregation == "max":
        total = agg.sum(axis=1, keepdims=True)
        agg = np.where(total > 0, agg / np.where(total > 0, total, 1), agg)  # zeros stay zero
    return agg


def aggregate_studies(
    study_ids: Sequence[str] | np.ndarray,
    probs: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    aggregation: str = "mean",
) -> Arrays:
    """Groups image predictions by study: one row per study, sorted by study id.

    `probs` are the images' probabilities of class 1 (N,) (MURA's abnormal), or their class
    probability vectors (N, K). Returns `study_id`, `prob` (the mean or max of the study's
    image probabilities, see `aggregate_probs`), `label`, `group` (MURA's body part) and
    `n_images` arrays. Raises if the images of a study disagree on label or group, or if
    `aggregation` is unknown.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}: expected 'mean' or 'max'")
    unique, first, inverse = study_index(study_ids)
    n = len(unique)
    probs = as_probs(probs)
    counts = np.bincount(inverse, minlength=n)
    agg = aggregate_probs(probs, inverse, n, aggregation)
    columns = {"label": np.asarray(labels), "group": np.asarray(groups)}
    per_study = {}
    for name, values in columns.items():
        values = values.astype(np.int64).reshape(-1)
        per_study[name] = values[first]
        mismatch = values != per_study[name][inverse]
        if mismatch.any():
            study = unique[inverse[np.flatnonzero(mismatch)[0]]]
            raise ValueError(f"images of study {study!r} carry different values of {name!r}")
    return {
        "study_id": unique,
        "prob": agg,
        "label": per_study["label"],
        "group": per_study["group"],
        "n_images": counts,
    }


def as_probs(values: Any) -> np.ndarray:
    """Probabilities as float64: (N,) of class 1, or (N, K) class vectors (kept 2-D)."""
    array = np.asarray(values, dtype=np.float64)
    return array if array.ndim == 2 else array.reshape(-1)


# --------------------------------------------------------------------------- point estimates


def predict(probs: np.ndarray, threshold: float) -> np.ndarray:
    """Hard predictions: 1 (abnormal) where `probs >= threshold`, else 0; for class vectors
    (N, K), the most probable class (the threshold is a binary notion)."""
    if np.ndim(probs) == 2:
        return np.argmax(probs, axis=1).astype(np.int64)
    return (np.asarray(probs, dtype=np.float64) >= threshold).astype(np.int64)


def point_scores(labels: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> Scores:
    """The scores of `SCORE_NAMES` with scikit-learn's functions, plus counts.

    Undefined scores are NaN: AUROC and kappa when one class is missing, sensitivity without
    abnormal cases, specificity without normal ones, precision without abnormal predictions.
    Also returns `n`, `abnormal`, `normal` and the confusion matrix `confusion` (`tn`, `fp`,
    `fn`, `tp`, abnormal = positive).
    """
    y = np.asarray(labels).astype(np.int64).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    pred = predict(probs, threshold)
    nan = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns on each undefined score
        both = len(np.unique(y)) == 2
        scores = {
            "kappa": float(skm.cohen_kappa_score(y, pred)) if len(y) else nan,
            "auroc": float(skm.roc_auc_score(y, probs)) if both else nan,
            "accuracy": float(skm.accuracy_score(y, pred)) if len(y) else nan,
            "sensitivity": float(skm.recall_score(y, pred, pos_label=1, zero_division=nan)),
            "specificity": float(skm.recall_score(y, pred, pos_label=0, zero_division=nan)),
            "precision": float(skm.precision_score(y, pred, zero_division=nan)),
            "f1": float(skm.f1_score(y, pred, zero_division=nan)),
        }
        tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    scores["n"] = int(len(y))
    scores["abnormal"] = int(y.sum())
    scores["normal"] = int(len(y) - y.sum())
    scores["confusion"] = {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)}
    return scores


def youden_threshold(labels: np.ndarray, probs: np.ndarray) -> float:
    """The threshold that maximises Youden's J = sensitivity + specificity - 1.

    Candidates are the scores where the ROC curve turns (`sklearn.metrics.roc_curve`); of
    equally good ones the highest wins. The returned threshold lies midway between the
    winning score and the next lower score, so the choice does not hinge on one case sitting
    exactly on the threshold; `probs >= threshold` then gives the J-maximising predictions.
    Returns 0.5 when J cannot be computed (a single class).
    """
    y = np.asarray(labels).astype(np.int64).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    if len(np.unique(y)) < 2:
        return 0.5
    fpr, tpr, thresholds = skm.roc_curve(y, probs, drop_intermediate=False)
    finite = np.isfinite(thresholds)
    j = np.where(finite, tpr - fpr, -np.inf)
    best = int(np.argmax(j))
    chosen = float(thresholds[best])
    lower = probs[probs < chosen]
    return float((chosen + lower.max()) / 2) if len(lower) else chosen


# --------------------------------------------------------------------------- bootstrap


def bootstrap_counts(n: int, samples: int, rng: np.random.Generator) -> np.ndarray:
    """`samples` resamples of `n` rows with replacement, as multiplicities: int (samples, n).

    Row b is `np.bincount(rng.integers(0, n, n), minlength=n)` of one resample.
    """
    if n == 0 or samples == 0:
        return np.zeros((samples, n), dtype=np.int64)
    draws = rng.integers(0, n, size=(samples, n))
    offsets = (np.arange(samples) * n)[:, None]
    return np.bincount((draws + offsets).ravel(), minlength=samples * n).reshape(samples, n)


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, NaN where the denominator is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(
            denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan
        )


def weighted_confusion(
    weights: np.ndarray, labels: np.ndarray, preds: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(tn, fp, fn, tp) of each row of `weights` (resamples x cases, the multiplicities)."""
    y = np.asarray(labels).astype(bool).reshape(-1)
    p = np.asarray(preds).astype(bool).reshape(-1)
    cells = np.stack([~y & ~p, ~y & p, y & ~p, y & p], axis=1).astype(np.float64)
    tn, fp, fn, tp = (weights @ cells).T
    return tn, fp, fn, tp


def scores_from_confusion(
    tn: np.ndarray, fp: np.ndarray, fn: np.ndarray, tp: np.ndarray
) -> dict[str, np.ndarray]:
    """The thresholded scores of `SCORE_NAMES` (all but AUROC) from confusion counts.

    Kappa follows `sklearn.metrics.cohen_kappa_score`: 1 - observed / expected
    disagreement, NaN when no disagreement is expected.
    """
    n = tn + fp + fn + tp
    expected = _divide((tn + fn) * (fn + tp) + (fp + tp) * (tn + fp), n)
    return {
        "kappa": 1 - _divide(fp + fn, expected),
        "accuracy": _divide(tp + tn, n),
        "sensitivity": _divide(tp, tp + fn),
        "specificity": _divide(tn, tn + fp),
        "precision": _divide(tp, tp + fp),
        "f1": _divide(2 * tp, 2 * tp + fp + fn),
    }


def weighted_auroc(weights: np.ndarray, labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """AUROC of each row of `weights` (resamples x cases): the weighted Mann-Whitney U.

    The probability that an abnormal case scores above a normal one, ties counting half,
    which is what `sklearn.metrics.roc_auc_score` computes; NaN without both classes.
    """
    weights = np.asarray(weights, dtype=np.float64)
    y = np.asarray(labels).astype(bool).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    order = np.argsort(probs, kind="stable")
    _, starts = np.unique(probs[order], return_index=True)  # tie groups, ascending
    w = weights[:, order]
    pos = np.add.reduceat(w * y[order], starts, axis=1)
    neg = np.add.reduceat(w * ~y[order], starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    wins = np.sum(pos * (below + 0.5 * neg), axis=1)
    return _divide(wins, pos.sum(axis=1) * neg.sum(axis=1))


def resampled_scores(
    weights: np.ndarray, labels: np.ndarray, probs: np.ndarray, threshold: float
) -> dict[str, np.ndarray]:
    """Every score of `SCORE_NAMES` for each row of case multiplicities `weights`."""
    scores = scores_from_confusion(*weighted_confusion(weights, labels, predict(probs, threshold)))
    scores["auroc"] = weighted_auroc(weights, labels, probs)
    return scores


def percentile_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """The percentile interval of the defined (non-NaN) bootstrap values; NaNs if none."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return (float("nan"), float("nan"))
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return (float(low), float(high))


def bootstrap_intervals(
    study_labels: np.ndarray,
    study_probs: np.ndarray,
    image_study: np.ndarray,
    image_labels: np.ndarray,
    image_probs: np.ndarray,
    *,
    threshold: float,
    samples: int,
    confidence: float,
    rng: np.random.Generator,
) -> tuple[dict[str, tuple[float, float]], dict[str, tuple[float, float]]]:
    """Study-level and image-level percentile CIs of every score, resampling studies.

    `image_study[i]` is the row of image i's study in the study arrays; an image-level
    resample holds each image as often as its study was drawn. Resamples where a score is
    undefined (e.g. AUROC of a resample with one class) are left out of its interval.
    """
    n_studies, n_images = len(study_labels), max(len(image_labels), 1)
    chunk = max(1, _MAX_BOOTSTRAP_CELLS // max(n_images, n_studies, 1))
    counts = bootstrap_counts(n_studies, samples, rng)
    study_values: dict[str, list[np.ndarray]] = {k: [] for k in SCORE_NAMES}
    image_values: dict[str, list[np.ndarray]] = {k: [] for k in SCORE_NAMES}
    for start in range(0, samples, chunk):
        weights = counts[start : start + chunk].astype(np.float64)
        for values, scores in (
            (study_values, resampled_scores(weights, study_labels, study_probs, threshold)),
            (
                image_values,
                resampled_scores(weights[:, image_study], image_labels, image_probs, threshold),
            ),
        ):
            for name in SCORE_NAMES:
                values[name].append(scores[name])

    def intervals(values: dict[str, list[np.ndarray]]) -> dict[str, tuple[float, float]]:
        return {
            name: percentile_interval(np.concatenate(v) if v else np.zeros(0), confidence)
            for name, v in values.items()
        }

    return intervals(study_values), intervals(image_values)


# --------------------------------------------------------------------------- whole evaluation


def _group_rng(seed: int, group: int) -> np.random.Generator:
    """The bootstrap generator of one group (0 = overall, 1 + i = body part i)."""
    return np.random.default_rng([abs(int(seed)), int(seed < 0), group])


def _with_intervals(scores: Scores, intervals: Mapping[str, tuple[float, float]]) -> Scores:
    """`scores` with `<name>_ci` after each score, in the order of `SCORE_NAMES`."""
    out: Scores = {}
    for name in SCORE_NAMES:
        out[name] = scores[name]
        out[f"{name}_ci"] = list(intervals[name]) if intervals else [float("nan")] * 2
    out.update({k: v for k, v in scores.items() if k not in out})
    return out


def score_group(
    studies: Arrays,
    images: Arrays,
    image_study: np.ndarray,
    *,
    threshold: float,
    samples: int,
    confidence: float,
    rng: np.random.Generator,
) -> Scores:
    """Study-level scores with CIs, and image-level ones under `"image"`, of one group.

    `studies` has `label` and `prob` per study, `images` `label` and `prob` per image, and
    `image_study` maps each image to its study's row.
    """
    study = point_scores(studies["label"], studies["prob"], threshold)
    image = point_scores(images["label"], images["prob"], threshold)
    image["n_studies"] = study["n"]
    study_ci: Mapping[str, tuple[float, float]] = {}
    image_ci: Mapping[str, tuple[float, float]] = {}
    if samples > 0 and study["n"] > 0:
        study_ci, image_ci = bootstrap_intervals(
            studies["label"],
            studies["prob"],
            image_study,
            images["label"],
            images["prob"],
            threshold=threshold,
            samples=samples,
            confidence=confidence,
            rng=rng,
        )
    return {"study": _with_intervals(study, study_ci), "image": _with_intervals(image, image_ci)}


def evaluate_predictions(
    study_ids: Sequence[str] | np.ndarray,
    probs: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    *,
    aggregation: str = "mean",
    threshold: float = 0.5,
    bootstrap_samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    group_names: Sequence[str] = (),
    calibrate: Calibrate | None = None,
) -> tuple[Scores, Arrays]:
    """Scores binary image predictions per study and per image, overall and per group
    (MURA's body parts, named by `group_names`).

    `calibrate` (e.g. temperature scaling, `murajax.calibration`) maps probabilities to the
    calibrated ones: it is applied to each study's aggregated probability and to each image's,
    and every score is then of the calibrated values.

    Returns the scores part of `metrics.json`, `{"study": {...}, "image": {...},
    "by_group": {name: {study-level scores..., "image": {...}}}}` (groups without studies
    are left out; the caller names the key after the dataset's grouping feature, MURA's
    `by_body_part`), and the per-study table of `aggregate_studies` with `pred` added. Each
    score `x` comes with `x_ci`, its bootstrap interval over studies (NaNs when
    `bootstrap_samples` is 0); every group draws its own seeded resamples.
    """
    calibrate = calibrate or _identity
    studies = aggregate_studies(study_ids, probs, labels, groups, aggregation)
    studies["prob"] = calibrate(studies["prob"])
    studies["pred"] = predict(studies["prob"], threshold)
    _, _, image_study = study_index(study_ids)
    images = {
        "label": np.asarray(labels).astype(np.int64).reshape(-1),
        "prob": calibrate(np.asarray(probs, dtype=np.float64).reshape(-1)),
    }
    options = {"threshold": threshold, "samples": bootstrap_samples, "confidence": confidence}
    score = functools.partial(score_group, **options)
    return score_overall_and_groups(score, studies, images, image_study, group_names, seed), studies


def score_overall_and_groups(
    score: Callable[..., Scores],
    studies: Arrays,
    images: Arrays,
    image_study: np.ndarray,
    group_names: Sequence[str],
    seed: int,
) -> Scores:
    """`{"study", "image", "by_group": {name: {study scores..., "image": {...}}}}`: `score`
    (`score_group` with its options bound: `score(studies, images, image_study, rng=...)`)
    of all studies and of each group's (groups without studies left out), every one with its
    own seeded bootstrap generator (`_group_rng(seed, 0)` overall, `1 + index` per group)."""
    overall = score(studies, images, image_study, rng=_group_rng(seed, 0))
    result: Scores = {"study": overall["study"], "image": overall["image"], "by_group": {}}
    for index, name in enumerate(group_names):
        study_rows = np.flatnonzero(studies["group"] == index)
        if len(study_rows) == 0:
            continue
        image_rows = np.flatnonzero(np.isin(image_study, study_rows))
        renumber = np.full(len(studies["label"]), -1)
        renumber[study_rows] = np.arange(len(study_rows))
        group = score(
            {k: studies[k][study_rows] for k in ("label", "prob")},
            {k: v[image_rows] for k, v in images.items()},
            renumber[image_study[image_rows]],
            rng=_group_rng(seed, 1 + index),
        )
        result["by_group"][name] = {**group["study"], "image": group["image"]}
    return result


# --------------------------------------------------------------------------- mergeable state

_STATE_FIELDS = ("study_id", "group", "label", "prob", "image_path", "loss")


def _column(values: Any, dtype: Any) -> np.ndarray:
    array = np.asarray(values)
    if dtype is str:
        return np.asarray([v.decode() if isinstance(v, bytes) else str(v) for v in array.ravel()])
    return array.astype(dtype).reshape(-1)


@dataclasses.dataclass(frozen=True, eq=False)  # arrays: compare columns, not states
class EvalState:
    """Image-level predictions that merge: the state of an evaluation, kauldron style.

    Each batch, device or host makes its own state (`from_batch`), states combine with
    `merge` (associative; results do not depend on the order, since studies are sorted by
    id), and `compute` scores the gathered whole. `loss` is optional (None for predictions
    without one, e.g. an ensemble's averaged probabilities).
    """

    study_id: np.ndarray  # str (N,)
    group: np.ndarray  # int64 (N,), the dataset's group (MURA's body part); 0 without groups
    label: np.ndarray  # int64 (N,), the class (MURA: 1 = abnormal)
    prob: np.ndarray  # float64 (N,) probability of class 1 (abnormal), or (N, K) per class
    image_path: np.ndarray  # str (N,)
    loss: np.ndarray | None = None  # float64 (N,), per-image loss

    def __post_init__(self) -> None:
        lengths = {f: len(getattr(self, f)) for f in _STATE_FIELDS if getattr(self, f) is not None}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"EvalState columns differ in length: {lengths}")

    @classmethod
    def create(
        cls,
        *,
        study_id: Any,
        group: Any,
        label: Any,
        prob: Any,
        image_path: Any = None,
        loss: Any = None,
    ) -> "EvalState":
        """A state from array-likes (converted to the canonical dtypes)."""
        study_id = _column(study_id, str)
        if image_path is None:
            image_path = np.full(len(study_id), "", dtype=str)
        return cls(
            study_id=study_id,
            group=_column(group, np.int64),
            label=_column(label, np.int64),
            prob=as_probs(prob),
            image_path=_column(image_path, str),
            loss=None if loss is None else _column(loss, np.float64),
        )

    @classmethod
    def empty(cls, *, with_loss: bool = True) -> "EvalState":
        """A state with no images (the identity of `merge`)."""
        return cls.create(
            study_id=[],
            group=[],
            label=[],
            prob=[],
            image_path=[],
            loss=[] if with_loss else None,
        )

    @classmethod
    def from_batch(
        cls, batch: Mapping[str, Any], outputs: Mapping[str, Any] | None = None
    ) -> "EvalState":
        """The state of one eval batch: its rows where `batch['mask']` is true (all if absent).

        `batch` holds `study_id`, `group`, `label`, `image_path` (and `mask`); `prob`
        (and optionally `loss`) come from `outputs` (the eval step's) or else from `batch`.
        """
        merged = {**batch, **(outputs or {})}
        mask = np.asarray(merged.get("mask", np.ones(len(merged["label"]), bool)), bool)
        mask = mask.reshape(-1)

        def rows(key: str) -> Any:
            value = merged.get(key)
            return None if value is None else np.asarray(value).reshape(-1)[mask]

        return cls.create(
            study_id=rows("study_id"),
            group=rows("group"),
            label=rows("label"),
            prob=as_probs(merged["prob"])[mask],
            image_path=rows("image_path"),
            loss=rows("loss"),
        )

    @classmethod
    def from_dict(cls, predictions: Mapping[str, Any]) -> "EvalState":
        """A state from a dict of image-level arrays (as `as_dict` or `predict_split` give)."""
        if isinstance(predictions, EvalState):
            return predictions
        return cls.create(**{k: predictions.get(k) for k in _STATE_FIELDS})

    def as_dict(self) -> Arrays:
        """The columns as a dict of arrays (`loss` only if present)."""
        return {f: getattr(self, f) for f in _STATE_FIELDS if getattr(self, f) is not None}

    def __len__(self) -> int:
        return len(self.label)

    @property
    def multiclass(self) -> bool:
        """Whether the predictions are class-probability vectors (more than two classes)."""
        return self.prob.ndim == 2

    def merge(self, other: "EvalState") -> "EvalState":
        """Both states' images; `loss` survives only if both have it."""
        with_loss = self.loss is not None and other.loss is not None
        probs = [p for p in (self.prob, other.prob) if len(p)] or [self.prob]
        return EvalState(
            study_id=np.concatenate([self.study_id, other.study_id]).astype(str),
            group=np.concatenate([self.group, other.group]),
            label=np.concatenate([self.label, other.label]),
            prob=np.concatenate(probs),
            image_path=np.concatenate([self.image_path, other.image_path]).astype(str),
            loss=np.concatenate([self.loss, other.loss]) if with_loss else None,
        )

    @classmethod
    def merge_all(cls, states: Iterable["EvalState"]) -> "EvalState":
        """The merge of any number of states (an empty state if none)."""
        result: EvalState | None = None
        for state in states:
            result = state if result is None else result.merge(state)
        return result if result is not None else cls.empty()

    def mean_loss(self) -> float:
        """The mean per-image loss (NaN without losses or images)."""
        if self.loss is None or len(self.loss) == 0:
            return float("nan")
        return float(np.mean(self.loss))

    def studies(self, aggregation: str = "mean", threshold: float = 0.5) -> Arrays:
        """The per-study table (see `aggregate_studies`) with hard predictions `pred`."""
        studies = aggregate_studies(self.study_id, self.prob, self.label, self.group, aggregation)
        studies["pred"] = predict(studies["prob"], threshold)
        return studies

    def compute(
        self,
        *,
        aggregation: str = "mean",
        threshold: float = 0.5,
        bootstrap_samples: int = 1000,
        confidence: float = 0.95,
        seed: int = 0,
        group_names: Sequence[str] = (),
        calibrate: Calibrate | None = None,
    ) -> Scores:
        """The binary scores part of `metrics.json` (see `evaluate_predictions`; class
        vectors are scored by `murajax.multiclass_metrics`)."""
        result, _ = evaluate_predictions(
            self.study_id,
            self.prob,
            self.label,
            self.group,
            aggregation=aggregation,
            threshold=threshold,
            bootstrap_samples=bootstrap_samples,
            confidence=confidence,
            seed=seed,
            group_names=group_names,
            calibrate=calibrate,
        )
        return result


def average_states(states: Sequence[EvalState]) -> EvalState:
    """The ensemble of several models' predictions on the same images: mean probabilities.

    Images are matched by `image_path` (which must be unique and the same set in every
    state); the result follows the first state's order and has no loss.
    """
    if not states:
        raise ValueError("average_states needs at least one state")
    first = states[0]
    if len(np.unique(first.image_path)) != len(first):
        raise ValueError("average_states matches images by image_path, which must be unique")
    order = np.argsort(first.image_path)
    total = first.prob.copy()
    for state in states[1:]:
        if len(state) != len(first):
            raise ValueError("average_states: the states hold different numbers of images")
        other = np.argsort(state.image_path)
        if not np.array_equal(state.image_path[other], first.image_path[order]):
            raise ValueError("average_states: the states hold different images")
        if not np.array_equal(state.label[other], first.label[order]):
            raise ValueError("average_states: the states disagree on labels of the same images")
        aligned = np.empty_like(total)
        aligned[order] = state.prob[other]
        total += aligned
    return dataclasses.replace(first, prob=total / len(states), loss=None)


# --------------------------------------------------------------------------- across hosts


def encode_strings(values: np.ndarray, width: int) -> np.ndarray:
    """UTF-8 strings as a zero-padded uint8 (N, width) array (for collective gathers)."""
    out = np.zeros((len(values), width), dtype=np.uint8)
    for i, value in enumerate(values):
        raw = str(value).encode("utf-8")
        out[i, : len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    return out


def decode_strings(codes: np.ndarray) -> np.ndarray:
    """The inverse of `encode_strings`."""
    return np.asarray([bytes(row).rstrip(b"\0").decode("utf-8") for row in codes], dtype=str)


def _string_width(values: np.ndarray) -> int:
    return max((len(str(v).encode("utf-8")) for v in values), default=0)


def pack_state(state: EvalState, rows: int, width: int) -> Arrays:
    """`state` as fixed-shape numeric arrays of `rows` rows (zero-padded), for a gather."""

    def pad(values: np.ndarray) -> np.ndarray:
        out = np.zeros((rows, *values.shape[1:]), dtype=values.dtype)
        out[: len(values)] = values
        return out

    loss = state.loss if state.loss is not None else np.full(len(state), np.nan)
    return {
        "count": np.asarray([len(state)], dtype=np.int64),
        "study_id": pad(encode_strings(state.study_id, width)),
        "image_path": pad(encode_strings(state.image_path, width)),
        "group": pad(state.group),
        "label": pad(state.label),
        "prob": pad(state.prob),
        "loss": pad(loss),
        "has_loss": np.asarray([state.loss is not None], dtype=np.int64),
    }


def unpack_states(gathered: Mapping[str, np.ndarray]) -> EvalState:
    """Merges the packed states of all processes (arrays with a leading process axis)."""
    states = []
    for p in range(len(gathered["count"])):
        n = int(np.asarray(gathered["count"][p]).reshape(-1)[0])
        has_loss = bool(np.asarray(gathered["has_loss"][p]).reshape(-1)[0])
        states.append(
            EvalState(
                study_id=decode_strings(gathered["study_id"][p][:n]),
                group=np.asarray(gathered["group"][p][:n], np.int64),
                label=np.asarray(gathered["label"][p][:n], np.int64),
                prob=np.asarray(gathered["prob"][p][:n], np.float64),
                image_path=decode_strings(gathered["image_path"][p][:n]),
                loss=np.asarray(gathered["loss"][p][:n], np.float64) if has_loss else None,
            )
        )
    return EvalState.merge_all(states)


def gather_state(
    state: EvalState, allgather: Callable[[Any], Any] | None = None, process_count: int = 1
) -> EvalState:
    """Every process's `state`, merged, on every process (identity on a single process).

    `allgather` maps a pytree of per-process arrays to the same pytree with a leading
    process axis (default: `jax.experimental.multihost_utils.process_allgather`). States
    are padded to a common shape first, strings travel as UTF-8 bytes, and float64 travels
    as float32 if the gather cannot hold float64 (jax without x64).
    """
    if process_count <= 1 and allgather is None:
        return state
    if allgather is None:
        allgather = multihost_utils.process_allgather
    sizes = np.asarray(
        allgather(
            np.asarray(
                [len(state), max(_string_width(state.study_id), _string_width(state.image_path))]
            )
        )
    ).reshape(-1, 2)
    rows, width = int(sizes[:, 0].max()), int(sizes[:, 1].max())
    packed = pack_state(state, rows, width)
    gathered = allgather(packed)
    return unpack_states({k: np.asarray(v) for k, v in gathered.items()})
