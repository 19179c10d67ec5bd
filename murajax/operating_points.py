"""Operating points: decision thresholds a radiology group chooses by what it may miss.

    point = parse("sensitivity=0.95")              # or "specificity=0.90", "youden"
    threshold = choose_threshold(point, holdout_labels, holdout_probs)
    scores = scores_at(labels, probs, threshold, samples=1000, rng=rng)   # on another split

A threshold is chosen on holdout studies and reported on the evaluated split: at
`sensitivity=0.95` the highest threshold that still flags at least 95% of the holdout's
abnormal studies (so the fewest false alarms that costs), at `specificity=0.90` the lowest
that keeps at least 90% of its normal studies unflagged, at `youden` the one that maximises
sensitivity + specificity - 1. A threshold lies half-way between two neighbouring holdout
probabilities, so that a new study's probability equal to a holdout one is classed as that one
was. `scores_at` gives sensitivity, specificity, PPV, NPV, kappa and the number flagged, each
with a bootstrap interval over studies. Pure functions of numpy arrays.
"""

import dataclasses
import math

import numpy as np

from murajax import metrics
from murajax.errors import ConfigError

KINDS: tuple[str, ...] = ("sensitivity", "specificity", "youden")
SCORES: tuple[str, ...] = ("sensitivity", "specificity", "ppv", "npv", "kappa", "flagged")


@dataclasses.dataclass(frozen=True)
class OperatingPoint:
    """What a threshold is chosen for: a `kind` of `KINDS` and, but for 'youden', its target."""

    kind: str
    target: float | None = None

    @property
    def name(self) -> str:
        """As written in a config: `sensitivity=0.95`, `youden`."""
        return self.kind if self.target is None else f"{self.kind}={self.target:g}"


def parse(text: str) -> OperatingPoint:
    """An operating point from its config text; `ConfigError` naming it and what is valid."""
    valid = "'sensitivity=T', 'specificity=T' (0 < T <= 1) or 'youden'"
    kind, _, value = str(text).strip().partition("=")
    if kind == "youden" and not value:
        return OperatingPoint("youden")
    if kind in ("sensitivity", "specificity"):
        try:
            target = float(value)
        except ValueError:
            target = float("nan")
        if 0 < target <= 1:
            return OperatingPoint(kind, target)
    raise ConfigError(f"config.eval.operating_points: {text!r} is invalid: expected {valid}")


def _between(value: float, probs: np.ndarray, above: bool) -> float:
    """Half-way from `value` to the nearest distinct probability above (or below) it; the
    value itself where there is none."""
    others = probs[probs > value] if above else probs[probs < value]
    if not len(others):
        return float(value)
    return float((value + (others.min() if above else others.max())) / 2)


def choose_threshold(point: OperatingPoint, labels: np.ndarray, probs: np.ndarray) -> float:
    """The threshold of `point` on (holdout) studies: `pred = prob >= threshold`.

    Raises `ValueError` when the studies lack the class the point is defined on.
    """
    labels = np.asarray(labels).astype(bool)
    probs = np.asarray(probs, np.float64)
    if point.kind == "youden":
        return metrics.youden_threshold(labels, probs)
    if point.kind == "sensitivity":
        positives = np.sort(probs[labels])[::-1]
        if not len(positives):
            raise ValueError(f"{point.name}: the holdout has no abnormal study")
        needed = max(1, math.ceil(point.target * len(positives) - 1e-9))
        return _between(float(positives[needed - 1]), probs, above=False)
    negatives = np.sort(probs[~labels])
    if not len(negatives):
        raise ValueError(f"{point.name}: the holdout has no normal study")
    needed = max(1, math.ceil(point.target * len(negatives) - 1e-9))
    return _between(float(negatives[needed - 1]), probs, above=True)


def _scores(weights: np.ndarray, labels: np.ndarray, preds: np.ndarray) -> dict[str, np.ndarray]:
    """Each score of `SCORES` for each row of study multiplicities `weights`."""
    tn, fp, fn, tp = metrics.weighted_confusion(weights, labels, preds)
    base = metrics.scores_from_confusion(tn, fp, fn, tp)
    return {
        "sensitivity": base["sensitivity"],
        "specificity": base["specificity"],
        "ppv": base["precision"],
        "npv": np.divide(tn, tn + fn, out=np.full_like(tn, np.nan), where=(tn + fn) > 0),
        "kappa": base["kappa"],
        "flagged": tp + fp,
    }


def scores_at(
    labels: np.ndarray,
    probs: np.ndarray,
    threshold: float,
    *,
    samples: int = 1000,
    confidence: float = 0.95,
    rng: np.random.Generator | None = None,
) -> dict[str, float | list[float]]:
    """`SCORES` of studies flagged at `prob >= threshold`, each `x` with `x_ci`: its
    percentile interval over `samples` bootstrap resamples of the studies."""
    labels = np.asarray(labels).astype(bool)
    preds = metrics.predict(np.asarray(probs, np.float64), threshold)
    point = _scores(np.ones((1, len(labels))), labels, preds)
    counts = metrics.bootstrap_counts(len(labels), samples, rng or np.random.default_rng(0))
    resampled = _scores(counts.astype(np.float64), labels, preds)
    out: dict[str, float | list[float]] = {"threshold": float(threshold), "n": int(len(labels))}
    for name in SCORES:
        out[name] = float(point[name][0])
        out[f"{name}_ci"] = list(metrics.percentile_interval(resampled[name], confidence))
    return out
