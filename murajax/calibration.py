"""Can the probabilities be trusted? Expected calibration error and temperature scaling.

    ece(labels, probs, bins=10, strategy="width")        # or "mass": equal-count bins
    ece_interval(labels, probs, samples=1000, rng=rng)   # (low, high) over study resamples
    t = fit_temperature(holdout_labels, holdout_probs)   # by the holdout's NLL
    calibrated = apply_temperature(probs, t)

ECE is the mean, weighted by bin size, of |observed frequency - mean probability| over bins
of the probability: for two classes of the abnormal probability, for more classes of the
predicted class's (the "confidence" ECE). 'width' bins split [0, 1] evenly; 'mass' bins hold
equal numbers of cases (their edges are the sample's quantiles, fixed before resampling).

Temperature scaling divides the logits by one T > 0, fitted by minimising the negative
log-likelihood on holdout. From probabilities alone: log p are logits up to a constant per
case, which the softmax ignores, so `softmax(log p / T)` is the temperature-scaled softmax,
and for two classes `sigmoid(logit(p) / T)`. It is monotone in p, so it never changes a
ranking: AUROC is unchanged; thresholds chosen after it move with it.
"""

import numpy as np
from scipy import optimize

from murajax import metrics

STRATEGIES: tuple[str, ...] = ("width", "mass")
_EPS = 1e-12


def confidence_and_hits(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the probability that is judged, whether it came true) per case: the abnormal
    probability and label for (N,) probabilities; the top class's probability and whether it
    is the label for (N, K) vectors."""
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels).astype(np.int64)
    if probs.ndim == 1:
        return probs, labels.astype(np.float64)
    top = np.argmax(probs, axis=1)
    return probs[np.arange(len(probs)), top], (top == labels).astype(np.float64)


def bin_edges(confidence: np.ndarray, bins: int, strategy: str) -> np.ndarray:
    """The `bins + 1` edges of 'width' (even over [0, 1]) or 'mass' (quantiles) bins."""
    if strategy not in STRATEGIES:
        raise ValueError(f"ECE strategy {strategy!r}: expected one of {STRATEGIES}")
    if strategy == "width" or not len(confidence):
        return np.linspace(0.0, 1.0, bins + 1)
    edges = np.quantile(confidence, np.linspace(0.0, 1.0, bins + 1))
    edges[0], edges[-1] = 0.0, 1.0
    return edges


def _bin_index(confidence: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Each case's bin: edges[b] <= c < edges[b + 1], the last bin closed."""
    return np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, len(edges) - 2)


def weighted_ece(
    weights: np.ndarray, confidence: np.ndarray, hits: np.ndarray, edges: np.ndarray
) -> np.ndarray:
    """ECE of each row of case multiplicities `weights` (resamples x cases)."""
    weights = np.atleast_2d(np.asarray(weights, np.float64))
    index = _bin_index(confidence, edges)
    members = np.zeros((len(confidence), len(edges) - 1))
    members[np.arange(len(confidence)), index] = 1.0
    count = weights @ members
    gap = np.abs(weights @ (members * hits[:, None]) - weights @ (members * confidence[:, None]))
    total = count.sum(axis=1)
    return np.divide(gap.sum(axis=1), total, out=np.full(len(total), np.nan), where=total > 0)


def ece(labels: np.ndarray, probs: np.ndarray, bins: int = 10, strategy: str = "width") -> float:
    """The expected calibration error of `probs` (see the module docstring)."""
    confidence, hits = confidence_and_hits(labels, probs)
    edges = bin_edges(confidence, bins, strategy)
    return float(weighted_ece(np.ones((1, len(hits))), confidence, hits, edges)[0])


def ece_interval(
    labels: np.ndarray,
    probs: np.ndarray,
    *,
    bins: int = 10,
    strategy: str = "width",
    samples: int = 1000,
    confidence: float = 0.95,
    rng: np.random.Generator | None = None,
) -> tuple[float, float]:
    """The percentile bootstrap interval of `ece`, resampling cases (studies)."""
    conf, hits = confidence_and_hits(labels, probs)
    edges = bin_edges(conf, bins, strategy)
    counts = metrics.bootstrap_counts(len(hits), samples, rng or np.random.default_rng(0))
    values = weighted_ece(counts, conf, hits, edges) if samples else np.array([])
    return metrics.percentile_interval(values, confidence)


def _log_probs(probs: np.ndarray) -> np.ndarray:
    """(N, K) log-probabilities of (N,) abnormal probabilities or (N, K) vectors."""
    probs = np.asarray(probs, np.float64)
    if probs.ndim == 1:
        probs = np.stack([1.0 - probs, probs], axis=1)
    return np.log(np.clip(probs, _EPS, 1.0))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """`probs` (N,) or (N, K) with their logits divided by `temperature`, same shape."""
    scaled = _log_probs(probs) / float(temperature)
    scaled -= scaled.max(axis=1, keepdims=True)
    out = np.exp(scaled)
    out /= out.sum(axis=1, keepdims=True)
    return out[:, 1] if np.ndim(probs) == 1 else out


def nll(labels: np.ndarray, probs: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of `labels` under `probs` scaled by `temperature`."""
    scaled = _log_probs(probs) / float(temperature)
    log_norm = np.log(np.exp(scaled - scaled.max(axis=1, keepdims=True)).sum(axis=1))
    log_norm += scaled.max(axis=1)
    picked = scaled[np.arange(len(scaled)), np.asarray(labels).astype(np.int64)]
    return float(np.mean(log_norm - picked))


def fit_temperature(labels: np.ndarray, probs: np.ndarray) -> float:
    """The T in [0.05, 20] that minimises the NLL of `labels` (bounded search on log T);
    1.0 for fewer than two cases or a single class."""
    labels = np.asarray(labels).astype(np.int64)
    if len(labels) < 2 or len(np.unique(labels)) < 2:
        return 1.0
    result = optimize.minimize_scalar(
        lambda log_t: nll(labels, probs, float(np.exp(log_t))),
        bounds=(np.log(0.05), np.log(20.0)),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(np.exp(result.x))
