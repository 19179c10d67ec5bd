"""Split conformal prediction sets: {normal}, {abnormal} or {normal, abnormal} per study.

    q = calibrate(holdout_labels, holdout_probs, alpha=0.10)      # split conformal
    sets = prediction_sets(probs, q)                               # bool (N, K)
    q = calibrate_mondrian(labels, probs, alpha, groups, num_groups)   # per class and group
    sets = prediction_sets(probs, q, groups)

The guarantee: if the holdout (calibration) studies and a new study are exchangeable (drawn
alike, in any order), the new study's set holds its true label with probability at least
1 - alpha, averaged over calibration sets and new studies; it says nothing about one study,
and nothing when the new studies come from elsewhere (another hospital, scanner, or mix of
body parts). The Mondrian variant calibrates each (body part, true class) cell on its own, so
that the guarantee holds within each cell: abnormal wrists are covered as often as normal
shoulders. A cell with too few calibration studies for its quantile keeps every class in its
sets (the honest answer; `calibrate_mondrian` counts them).

The nonconformity score is 1 - p(class); class k enters the set when 1 - p_k <= q, with q the
ceil((n + 1)(1 - alpha)) / n empirical quantile of the calibration scores.
"""

import math

import numpy as np


def as_vectors(probs: np.ndarray) -> np.ndarray:
    """(N, K) class probabilities of (N,) abnormal probabilities or (N, K) vectors."""
    probs = np.asarray(probs, np.float64)
    return np.stack([1.0 - probs, probs], axis=1) if probs.ndim == 1 else probs


def scores(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Each case's nonconformity score: 1 - the probability of its true class."""
    vectors = as_vectors(probs)
    return 1.0 - vectors[np.arange(len(vectors)), np.asarray(labels).astype(np.int64)]


def quantile(values: np.ndarray, alpha: float) -> float:
    """The conformal quantile of calibration scores: the ceil((n + 1)(1 - alpha))-th smallest,
    or +inf when that rank exceeds n (too few scores: every class enters every set)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha={alpha}: expected 0 < alpha < 1")
    values = np.sort(np.asarray(values, np.float64))
    rank = math.ceil((len(values) + 1) * (1 - alpha))
    return float(values[rank - 1]) if rank <= len(values) else math.inf


def calibrate(labels: np.ndarray, probs: np.ndarray, alpha: float) -> float:
    """The split-conformal threshold q of calibration (holdout) studies at level `alpha`."""
    return quantile(scores(labels, probs), alpha)


def calibrate_mondrian(
    labels: np.ndarray,
    probs: np.ndarray,
    alpha: float,
    groups: np.ndarray | None = None,
    num_groups: int = 1,
) -> np.ndarray:
    """q per (group, class): (num_groups, K), each from its own cell's calibration scores
    (+inf for a cell too small for its quantile). Without `groups`, per class only."""
    labels = np.asarray(labels).astype(np.int64)
    groups = np.zeros(len(labels), np.int64) if groups is None else np.asarray(groups, np.int64)
    values = scores(labels, probs)
    classes = as_vectors(probs).shape[1]
    table = np.full((num_groups, classes), math.inf)
    for g in range(num_groups):
        for k in range(classes):
            cell = values[(groups == g) & (labels == k)]
            table[g, k] = quantile(cell, alpha)
    return table


def prediction_sets(
    probs: np.ndarray, q: float | np.ndarray, groups: np.ndarray | None = None
) -> np.ndarray:
    """bool (N, K): class k is in case i's set when 1 - p_ik <= q (a scalar), or <=
    q[group_i, k] for a Mondrian table."""
    vectors = as_vectors(probs)
    if np.ndim(q) == 0:
        return (1.0 - vectors) <= q
    table = np.asarray(q, np.float64)
    rows = np.zeros(len(vectors), np.int64) if groups is None else np.asarray(groups, np.int64)
    return (1.0 - vectors) <= table[rows]


def coverage(labels: np.ndarray, sets: np.ndarray) -> float:
    """The share of cases whose set holds their label."""
    labels = np.asarray(labels).astype(np.int64)
    return float(np.mean(sets[np.arange(len(labels)), labels])) if len(labels) else math.nan


def size_shares(sets: np.ndarray) -> dict[int, float]:
    """{set size: share of cases} for sizes 0..K."""
    sizes = sets.sum(axis=1)
    return {
        k: float(np.mean(sizes == k)) if len(sizes) else math.nan for k in range(sets.shape[1] + 1)
    }
