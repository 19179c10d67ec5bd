"""Study-level evaluation as radiology judges it: Cohen's kappa and AUROC per study.

Image probabilities are aggregated into one probability per study (mean of its images, as in
the MURA paper, or max), thresholded, and scored with scikit-learn's metric functions.
Confidence intervals come from a seeded bootstrap over studies.
"""

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sklearn import metrics as skm

from tfds_mura.features import BODY_PARTS

Scores = dict[str, Any]


def aggregate_studies(
    study_ids: Sequence[str],
    probs: np.ndarray,
    labels: np.ndarray,
    body_parts: np.ndarray,
    aggregation: str = "mean",
) -> dict[str, np.ndarray]:
    """Groups image predictions by study: one row per study, in order of first appearance.

    Returns `study_id`, `prob` (mean or max of the study's image probabilities), `label`,
    `body_part` and `n_images` arrays. A study whose images disagree on label raises.
    """
    study_ids = np.asarray(study_ids).astype(str)
    unique, first, inverse = np.unique(study_ids, return_index=True, return_inverse=True)
    order = np.argsort(first)  # keep first-appearance order, not alphabetical
    n = len(unique)
    counts = np.bincount(inverse, minlength=n)
    probs = np.asarray(probs, dtype=np.float64)
    if aggregation == "mean":
        agg = np.bincount(inverse, weights=probs, minlength=n) / counts
    elif aggregation == "max":
        agg = np.full(n, -np.inf)
        np.maximum.at(agg, inverse, probs)
    else:
        raise ValueError(f"unknown aggregation {aggregation!r}: expected 'mean' or 'max'")
    labels = np.asarray(labels)
    study_labels = labels[first]
    if np.any(labels != study_labels[inverse]):
        bad = unique[np.flatnonzero(np.bincount(inverse, weights=labels != study_labels[inverse]))]
        raise ValueError(f"images of study {bad[0]!r} carry different labels")
    return {
        "study_id": unique[order],
        "prob": agg[order],
        "label": study_labels[order].astype(np.int64),
        "body_part": np.asarray(body_parts)[first][order].astype(np.int64),
        "n_images": counts[order],
    }


def binary_scores(labels: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> Scores:
    """Kappa, AUROC, accuracy, sensitivity and specificity of thresholded probabilities."""
    labels = np.asarray(labels).astype(np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    preds = (probs >= threshold).astype(np.int64)
    tn, fp, fn, tp = skm.confusion_matrix(labels, preds, labels=[0, 1]).ravel()
    both_classes = len(np.unique(labels)) == 2
    return {
        "kappa": _kappa(labels, preds),
        "auroc": float(skm.roc_auc_score(labels, probs)) if both_classes else float("nan"),
        "accuracy": float(skm.accuracy_score(labels, preds)),
        "sensitivity": float(tp / (tp + fn)) if tp + fn else float("nan"),
        "specificity": float(tn / (tn + fp)) if tn + fp else float("nan"),
        "n": int(len(labels)),
    }


def _kappa(labels: np.ndarray, preds: np.ndarray) -> float:
    """Cohen's kappa; 1.0 when both raters agree perfectly on a single class."""
    if np.array_equal(labels, preds):
        return 1.0
    return float(skm.cohen_kappa_score(labels, preds))


def bootstrap_ci(
    labels: np.ndarray,
    probs: np.ndarray,
    metric: Callable[[np.ndarray, np.ndarray], float],
    *,
    samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of `metric(labels, probs)`, resampling rows with replacement.

    Resamples with a single class (where AUROC is undefined) are skipped. Returns (nan, nan)
    when `samples` is 0 or no resample is usable.
    """
    labels, probs = np.asarray(labels), np.asarray(probs)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(samples):
        idx = rng.integers(0, len(labels), len(labels))
        if len(np.unique(labels[idx])) < 2:
            continue
        values.append(metric(labels[idx], probs[idx]))
    if not values:
        return (float("nan"), float("nan"))
    alpha = (1.0 - confidence) / 2
    low, high = np.nanquantile(values, [alpha, 1 - alpha])
    return (float(low), float(high))


def scores_with_ci(
    labels: np.ndarray,
    probs: np.ndarray,
    *,
    threshold: float = 0.5,
    samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Scores:
    """`binary_scores` plus bootstrap CIs (`kappa_ci`, `auroc_ci`)."""
    scores = binary_scores(labels, probs, threshold)

    def kappa(y: np.ndarray, p: np.ndarray) -> float:
        return _kappa(y, (p >= threshold).astype(np.int64))

    def auroc(y: np.ndarray, p: np.ndarray) -> float:
        return float(skm.roc_auc_score(y, p))

    options = {"samples": samples, "confidence": confidence, "seed": seed}
    scores["kappa_ci"] = bootstrap_ci(labels, probs, kappa, **options)
    scores["auroc_ci"] = bootstrap_ci(labels, probs, auroc, **options)
    return scores


def evaluate_predictions(
    study_ids: Sequence[str],
    probs: np.ndarray,
    labels: np.ndarray,
    body_parts: np.ndarray,
    *,
    aggregation: str = "mean",
    threshold: float = 0.5,
    bootstrap_samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[Scores, dict[str, np.ndarray]]:
    """Scores image predictions per study, per image and per body part.

    Returns the `metrics.json` body (`study`, `image`, `by_body_part`) and the per-study table
    of `aggregate_studies` with a `pred` column added.
    """
    studies = aggregate_studies(study_ids, probs, labels, body_parts, aggregation)
    studies["pred"] = (studies["prob"] >= threshold).astype(np.int64)
    options = {
        "threshold": threshold,
        "samples": bootstrap_samples,
        "confidence": confidence,
        "seed": seed,
    }
    result: Scores = {
        "study": scores_with_ci(studies["label"], studies["prob"], **options),
        "image": binary_scores(labels, probs, threshold),
        "by_body_part": {},
    }
    for index, name in enumerate(BODY_PARTS):
        rows = studies["body_part"] == index
        if rows.any():
            result["by_body_part"][name] = scores_with_ci(
                studies["label"][rows], studies["prob"][rows], **options
            )
    return result, studies
