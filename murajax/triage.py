"""metrics.json's `triage` section: operating points, calibration, conformal sets, referral.

    temperature = fit_temperature(config, holdout_studies)           # 1.0 without calibration
    section = triage_section(config, holdout_studies, split_studies, threshold, dataset,
                             temperature=temperature)
    columns = study_columns(config, holdout_studies, split_studies, threshold,
                            temperature=temperature)   # each study's conformal set, referral

Computed by every evaluation (the defaults: four operating points, conformal sets at alpha
0.05 and 0.10, no calibration; `eval.operating_points=()` and `eval.conformal_alphas=()`
leave parts out). Everything is chosen on the holdout's studies and reported on the evaluated
split's: the temperature (`eval.calibration='temperature'`: fitted by the holdout's NLL; every
score of the evaluation then uses the calibrated probabilities), each operating point's
threshold, and the conformal quantiles; the referral curve ranks the split's studies by their
distance from the decision threshold. Per group (MURA's body parts) too, where the dataset
has groups. Operating points are for two classes; for more, the calibration is of the top
class's probability, the conformal sets are of classes, and the referral ranks studies by
their top class's probability. `threshold` is the decision threshold on the uncalibrated
probabilities (the section reports it moved by the temperature).
"""

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np

from murajax import calibration, conformal, metrics, operating_points, referral
from murajax.config import Config, ConfigError
from murajax.data import DatasetSpec

CALIBRATIONS: tuple[str, ...] = ("none", "temperature")
REFERRAL_FRACTIONS = np.round(np.linspace(0.0, 0.5, 11), 2)

Studies = Mapping[str, np.ndarray]


def check_config(config: Config) -> None:
    """One-line `ConfigError` for a bad operating point, calibration or alpha."""
    e = config.eval
    for text in e.operating_points:
        operating_points.parse(text)
    if e.calibration not in CALIBRATIONS:
        raise ConfigError(
            f"config.eval.calibration={e.calibration!r} is invalid: expected one of {CALIBRATIONS}"
        )
    for alpha in e.conformal_alphas:
        if not 0 < float(alpha) < 1:
            raise ConfigError(
                f"config.eval.conformal_alphas: {alpha!r} is invalid: expected 0 < alpha < 1"
            )
    if not 0 <= e.referral_fraction < 1:
        raise ConfigError(
            f"config.eval.referral_fraction={e.referral_fraction!r} is invalid: expected a share"
            " of studies, 0 <= fraction < 1"
        )


def _groups(dataset: DatasetSpec, studies: Studies) -> dict[str, np.ndarray]:
    """{group name: mask of `studies`} for the groups present."""
    if not dataset.group_feature:
        return {}
    groups = np.asarray(studies["group"])
    return {dataset.group_name(int(g)): groups == g for g in np.unique(groups)}


def _ece_report(labels: np.ndarray, probs: np.ndarray, samples: int, rng) -> dict[str, Any]:
    """ECE with equal-width and equal-mass bins, each with its bootstrap interval."""
    report: dict[str, Any] = {}
    for strategy in calibration.STRATEGIES:
        key = f"ece_{strategy}"
        report[key] = calibration.ece(labels, probs, strategy=strategy)
        interval = calibration.ece_interval(
            labels, probs, strategy=strategy, samples=samples, rng=rng
        )
        report[f"{key}_ci"] = list(interval)
    return report


def fit_temperature(config: Config, holdout: Studies) -> float:
    """The temperature `eval.calibration` asks for, fitted on the holdout's studies (their
    NLL); 1.0 for 'none'."""
    if config.eval.calibration != "temperature":
        return 1.0
    return calibration.fit_temperature(holdout["label"], holdout["prob"])


def calibrator(temperature: float) -> metrics.Calibrate | None:
    """The map from probabilities to calibrated ones (None for temperature 1: unchanged)."""
    if temperature == 1.0:
        return None
    return functools.partial(calibration.apply_temperature, temperature=temperature)


def calibrated_threshold(threshold: float, temperature: float) -> float:
    """The decision threshold on calibrated probabilities (temperature scaling is monotone,
    so the same studies fall on each side); `threshold` itself for temperature 1."""
    if temperature == 1.0:
        return float(threshold)
    return float(calibration.apply_temperature(np.array([threshold]), temperature)[0])


def _calibration(split, split_probs, groups, method: str, temperature: float, samples, rng):
    """ECE before and, with a method, after calibration, overall and per group."""
    report: dict[str, Any] = {"method": method}
    if method != "none":
        report["temperature"] = temperature
    stages = [("before", split["prob"])] + ([("after", split_probs)] if method != "none" else [])
    for name, probs in stages:
        report[name] = _ece_report(split["label"], probs, samples, rng)
        report[name]["by_group"] = {
            g: _ece_report(split["label"][mask], probs[mask], samples, rng)
            for g, mask in groups.items()
        }
    return report


def _operating_points(config, holdout, holdout_probs, split, split_probs, groups, samples, rng):
    points = {}
    for text in config.eval.operating_points:
        point = operating_points.parse(text)
        threshold = operating_points.choose_threshold(point, holdout["label"], holdout_probs)
        scores = operating_points.scores_at(
            split["label"], split_probs, threshold, samples=samples, rng=rng
        )
        scores["by_group"] = {
            name: operating_points.scores_at(
                split["label"][mask], split_probs[mask], threshold, samples=samples, rng=rng
            )
            for name, mask in groups.items()
        }
        points[point.name] = scores
    return points


def _coverage_report(labels: np.ndarray, sets: np.ndarray, samples: int, rng) -> dict[str, Any]:
    """Coverage with its bootstrap interval over studies, and the share of each set size."""
    hits = sets[np.arange(len(labels)), np.asarray(labels).astype(np.int64)].astype(np.float64)
    counts = metrics.bootstrap_counts(len(hits), samples, rng).astype(np.float64)
    resampled = counts @ hits / max(len(hits), 1)
    return {
        "coverage": conformal.coverage(labels, sets),
        "coverage_ci": list(metrics.percentile_interval(resampled)),
        "set_sizes": conformal.size_shares(sets),
    }


def _conformal(config, holdout, holdout_probs, split, split_probs, dataset, groups, samples, rng):
    out = {}
    num_groups = max(len(dataset.group_names), 1)
    grouped = bool(dataset.group_feature)  # else Mondrian by class only
    for alpha in config.eval.conformal_alphas:
        q = conformal.calibrate(holdout["label"], holdout_probs, float(alpha))
        table = conformal.calibrate_mondrian(
            holdout["label"],
            holdout_probs,
            float(alpha),
            holdout["group"] if grouped else None,
            num_groups,
        )
        entry: dict[str, Any] = {"quantile": q}
        for name, sets in (
            ("split", conformal.prediction_sets(split_probs, q)),
            (
                "mondrian",
                conformal.prediction_sets(split_probs, table, split["group"] if grouped else None),
            ),
        ):
            entry[name] = _coverage_report(split["label"], sets, samples, rng)
            entry[name]["by_group"] = {
                g: _coverage_report(split["label"][mask], sets[mask], samples, rng)
                for g, mask in groups.items()
            }
        out[f"{float(alpha):g}"] = entry
    return out


def triage_section(
    config: Config,
    holdout: Studies,
    split: Studies,
    threshold: float,
    dataset: DatasetSpec,
    *,
    temperature: float = 1.0,
) -> dict[str, Any]:
    """The section (module docstring) from holdout and split study tables
    (`EvalState.studies`: `label`, `prob`, `group`) of uncalibrated probabilities."""
    e = config.eval
    rng = np.random.default_rng(config.seed)
    samples = e.bootstrap_samples
    groups = _groups(dataset, split)
    split_probs = calibration.apply_temperature(split["prob"], temperature)
    holdout_probs = calibration.apply_temperature(holdout["prob"], temperature)
    report = _calibration(split, split_probs, groups, e.calibration, temperature, samples, rng)
    section: dict[str, Any] = {"chosen_on": "holdout", "calibration": report}
    if e.operating_points and dataset.binary:
        section["operating_points"] = _operating_points(
            config, holdout, holdout_probs, split, split_probs, groups, samples, rng
        )
    if e.conformal_alphas:
        section["conformal"] = _conformal(
            config, holdout, holdout_probs, split, split_probs, dataset, groups, samples, rng
        )
    decision = calibrated_threshold(threshold, temperature)
    curve = referral.referral_curve(
        split["label"], split_probs, decision, REFERRAL_FRACTIONS, e.kappa_weights
    )
    section["referral"] = {
        **curve,
        "threshold": decision,
        "aurc": referral.aurc(split["label"], split_probs, decision),
        "fraction": e.referral_fraction,
        "reference_kappa": dataset.reference_kappa.get("overall"),
        "reference": dataset.reference_label or None,
    }
    return section


def study_columns(
    config: Config,
    holdout: Studies,
    split: Studies,
    threshold: float,
    *,
    temperature: float = 1.0,
) -> dict[str, np.ndarray]:
    """Per study of `split`: `conformal_set` (bool (N, K): the split-conformal set at the
    first of `eval.conformal_alphas`; absent without alphas) and `referred` (bool (N,): among
    the `eval.referral_fraction` least certain)."""
    split_probs = calibration.apply_temperature(split["prob"], temperature)
    decision = calibrated_threshold(threshold, temperature)
    columns = {"referred": referral.referred(split_probs, decision, config.eval.referral_fraction)}
    if config.eval.conformal_alphas:
        alpha = float(config.eval.conformal_alphas[0])
        holdout_probs = calibration.apply_temperature(holdout["prob"], temperature)
        q = conformal.calibrate(holdout["label"], holdout_probs, alpha)
        columns["conformal_set"] = conformal.prediction_sets(split_probs, q)
    return columns
