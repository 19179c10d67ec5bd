"""Referral (selective prediction): hand the least certain studies back to a reader.

    curve = referral_curve(labels, probs, threshold, fractions=np.linspace(0, 0.5, 11))
    area = aurc(labels, probs, threshold)

A study's uncertainty is the distance of its (calibrated) probability from the decision
threshold: the closer, the less certain. Referring the most uncertain fraction f, the model
keeps the rest; `referral_curve` scores the kept studies (kappa, accuracy, AUROC) at each f.
The risk-coverage curve is the error rate of the kept studies against the share kept;
`aurc`, its area over every coverage from one study to all, is lower for a model whose
errors are the uncertain ones (a perfect ranking of its errors gives the least it can).
"""

import numpy as np
from sklearn import metrics as skm

from murajax import metrics


def kept_order(probs: np.ndarray, threshold: float) -> np.ndarray:
    """Study indices from the most certain to the least (ties in index order)."""
    distance = np.abs(np.asarray(probs, np.float64) - threshold)
    return np.argsort(-distance, kind="stable")


def referral_curve(
    labels: np.ndarray, probs: np.ndarray, threshold: float, fractions: np.ndarray
) -> dict[str, list[float]]:
    """For each fraction referred: the share referred, studies kept, and their kappa,
    accuracy and AUROC (NaN where undefined, e.g. one class left)."""
    labels = np.asarray(labels).astype(np.int64)
    probs = np.asarray(probs, np.float64)
    order = kept_order(probs, threshold)
    curve: dict[str, list[float]] = {
        k: [] for k in ("referred", "kept", "kappa", "accuracy", "auroc")
    }
    for fraction in fractions:
        kept = order[: len(order) - int(round(fraction * len(order)))]
        y, p = labels[kept], probs[kept]
        both = len(np.unique(y)) == 2
        scores = metrics.point_scores(y, p, threshold) if len(kept) else {}
        curve["referred"].append(float(fraction))
        curve["kept"].append(int(len(kept)))
        curve["kappa"].append(float(scores.get("kappa", np.nan)))
        curve["accuracy"].append(float(scores.get("accuracy", np.nan)))
        curve["auroc"].append(float(skm.roc_auc_score(y, p)) if both else float("nan"))
    return curve


def aurc(labels: np.ndarray, probs: np.ndarray, threshold: float) -> float:
    """The area under the risk-coverage curve: the mean, over keeping the k most certain
    studies for k = 1..n, of their error rate."""
    labels = np.asarray(labels).astype(np.int64)
    order = kept_order(probs, threshold)
    errors = (metrics.predict(np.asarray(probs, np.float64), threshold) != labels)[order]
    if not len(errors):
        return float("nan")
    risk = np.cumsum(errors) / np.arange(1, len(errors) + 1)
    return float(np.mean(risk))
