"""metrics.json's `triage` section: operating points, calibration, conformal sets, referral.

    section = triage_section(config, holdout_studies, split_studies, threshold, dataset)

Computed when a config asks for any of `eval.operating_points`, `eval.calibration` or
`eval.conformal_alphas` (none by default, so a run's files stay as they were), for a binary
dataset. Everything is chosen on the holdout's studies and reported on the evaluated split's:
the temperature (`eval.calibration='temperature'`: fitted by the holdout's NLL; the section's
probabilities are then the calibrated ones), each operating point's threshold, and the
conformal quantiles; the referral curve ranks the split's studies by their distance from the
decision threshold. Per group (MURA's body parts) too, where the dataset has groups.
"""

from collections.abc import Mapping
from typing import Any

import numpy as np

from murajax import calibration, conformal, metrics, operating_points, referral
from murajax.config import Config, ConfigError
from murajax.data import DatasetSpec

CALIBRATIONS: tuple[str, ...] = ("none", "temperature")
REFERRAL_FRACTIONS = np.round(np.linspace(0.0, 0.5, 11), 2)

Studies = Mapping[str, np.ndarray]


def wanted(config: Config) -> bool:
    """Whether the config asks for the section."""
    e = config.eval
    return bool(e.operating_points or e.conformal_alphas or e.calibration != "none")


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


def check_dataset(config: Config, dataset: DatasetSpec) -> None:
    """`ConfigError` when the section is asked for on more than two classes (not yet)."""
    if wanted(config) and not dataset.binary:
        raise ConfigError(
            f"eval.operating_points, eval.calibration and eval.conformal_alphas are for two"
            f" classes: dataset {dataset.name!r} has {dataset.num_classes}; leave them unset"
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


def _calibration(holdout, split, groups, method: str, samples: int, rng) -> tuple:
    """(the split's probabilities to use, the holdout's, the calibration report: ECE before
    and, with a method, after, overall and per group)."""
    report: dict[str, Any] = {"method": method}
    temperature = 1.0
    if method == "temperature":
        temperature = calibration.fit_temperature(holdout["label"], holdout["prob"])
        report["temperature"] = temperature
    split_probs = calibration.apply_temperature(split["prob"], temperature)
    holdout_probs = calibration.apply_temperature(holdout["prob"], temperature)
    stages = [("before", split["prob"])] + ([("after", split_probs)] if method != "none" else [])
    for name, probs in stages:
        report[name] = _ece_report(split["label"], probs, samples, rng)
        report[name]["by_group"] = {
            g: _ece_report(split["label"][mask], probs[mask], samples, rng)
            for g, mask in groups.items()
        }
    return split_probs, holdout_probs, report


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
    for alpha in config.eval.conformal_alphas:
        q = conformal.calibrate(holdout["label"], holdout_probs, float(alpha))
        table = conformal.calibrate_mondrian(
            holdout["label"], holdout_probs, float(alpha), holdout["group"], num_groups
        )
        entry: dict[str, Any] = {"quantile": q}
        for name, sets in (
            ("split", conformal.prediction_sets(split_probs, q)),
            ("mondrian", conformal.prediction_sets(split_probs, table, split["group"])),
        ):
            entry[name] = _coverage_report(split["label"], sets, samples, rng)
            entry[name]["by_group"] = {
                g: _coverage_report(split["label"][mask], sets[mask], samples, rng)
                for g, mask in groups.items()
            }
        out[f"{float(alpha):g}"] = entry
    return out


def triage_section(
    config: Config, holdout: Studies, split: Studies, threshold: float, dataset: DatasetSpec
) -> dict[str, Any]:
    """The section (module docstring) from holdout and split study tables
    (`EvalState.studies`: `label`, `prob`, `group`)."""
    e = config.eval
    rng = np.random.default_rng(config.seed)
    samples = e.bootstrap_samples
    groups = _groups(dataset, split)
    split_probs, holdout_probs, report = _calibration(
        holdout, split, groups, e.calibration, samples, rng
    )
    section: dict[str, Any] = {"chosen_on": "holdout", "calibration": report}
    if e.operating_points:
        section["operating_points"] = _operating_points(
            config, holdout, holdout_probs, split, split_probs, groups, samples, rng
        )
    if e.conformal_alphas:
        section["conformal"] = _conformal(
            config, holdout, holdout_probs, split, split_probs, dataset, groups, samples, rng
        )
    # The decision threshold on the section's probabilities (temperature scaling moves it).
    decision = float(
        calibration.apply_temperature(np.array([threshold]), report.get("temperature", 1.0))[0]
    )
    curve = referral.referral_curve(split["label"], split_probs, decision, REFERRAL_FRACTIONS)
    section["referral"] = {
        **curve,
        "threshold": decision,
        "aurc": referral.aurc(split["label"], split_probs, decision),
        "reference_kappa": dataset.reference_kappa.get("overall"),
        "reference": dataset.reference_label or None,
    }
    return section
