"""Referral (selective prediction): hand the least certain studies back to a reader.

    curve = referral_curve(labels, probs, threshold, fractions=np.linspace(0, 0.5, 11))
    area = aurc(labels, probs, threshold)

A study's uncertainty is the distance of its (calibrated) probability from the decision
threshold: the closer, the less certain. For more than two classes ((N, K) probability
vectors, the most probable class predicted) it is one minus the top class's probability, and
the kept studies' kappa (`kappa_weights`), accuracy and macro one-vs-rest AUROC are scored.

Referring the most uncertain fraction f, the model keeps the rest; `referral_curve` scores
the kept studies (kappa, accuracy, AUROC) at each f. The risk-coverage curve is the error
rate of the kept studies against the share kept;
`aurc`, its area over every coverage from one study to all, is lower for a model whose
errors are the uncertain ones (a perfect ranking of its errors gives the least it can).
"""

import numpy as np
from sklearn import metrics as skm

from murajax import metrics, multiclass_metrics


def certainty(probs: np.ndarray, threshold: float) -> np.ndarray:
    """Each study's certainty: |p - threshold| for (N,) probabilities, the top class's
    probability for (N, K) vectors."""
    probs = np.asarray(probs, np.float64)
    return probs.max(axis=1) if probs.ndim == 2 else np.abs(probs - threshold)


def kept_order(probs: np.ndarray, threshold: float) -> np.ndarray:
    """Study indices from the most certain to the least (ties in index order)."""
    return np.argsort(-certainty(probs, threshold), kind="stable")


def referred(probs: np.ndarray, threshold: float, fraction: float) -> np.ndarray:
    """bool (N,): the `fraction` of studies (rounded) that are the least certain."""
    order = kept_order(probs, threshold)
    out = np.zeros(len(order), bool)
    out[order[len(order) - int(round(fraction * len(order))) :]] = True
    return out


def _kept_scores(y: np.ndarray, p: np.ndarray, threshold: float, kappa_weights: str) -> dict:
    """kappa, accuracy and AUROC of kept studies (NaN where undefined)."""
    if not len(y):
        return {}
    if p.ndim == 1:
        scores = metrics.point_scores(y, p, threshold)
        both = len(np.unique(y)) == 2
        scores["auroc"] = float(skm.roc_auc_score(y, p)) if both else float("nan")
        return scores
    return multiclass_metrics.point_scores(y, p, kappa_weights=kappa_weights)


def referral_curve(
    labels: np.ndarray,
    probs: np.ndarray,
    threshold: float,
    fractions: np.ndarray,
    kappa_weights: str = "none",
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
        scores = _kept_scores(labels[kept], probs[kept], threshold, kappa_weights)
        curve["referred"].append(float(fraction))
        curve["kept"].append(int(len(kept)))
        for name in ("kappa", "accuracy", "auroc"):
            curve[name].append(float(scores.get(name, np.nan)))
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
