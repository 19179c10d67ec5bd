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

from murajax import calibration, conformal, operating_points, referral
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


def _calibration(holdout: Studies, split: Studies, method: str, samples: int, rng) -> tuple:
    """(the split's probabilities to use, the holdout's, the calibration report)."""
    report: dict[str, Any] = {"method": method}
    temperature = 1.0
    if method == "temperature":
        temperature = calibration.fit_temperature(holdout["label"], holdout["prob"])
        report["temperature"] = temperature
    split_probs = calibration.apply_temperature(split["prob"], temperature)
    holdout_probs = calibration.apply_temperature(holdout["prob"], temperature)
    for name, probs in (("before", split["prob"]), ("after", split_probs)):
        if name == "after" and method == "none":
            continue
        for strategy in calibration.STRATEGIES:
            key = f"ece_{strategy}"
            report.setdefault(name, {})[key] = calibration.ece(
                split["label"], probs, strategy=strategy
            )
            report[name][f"{key}_ci"] = list(
                calibration.ece_interval(
                    split["label"], probs, strategy=strategy, samples=samples, rng=rng
                )
            )
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


def _conformal(config, holdout, holdout_probs, split, split_probs, dataset, groups):
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
            entry[name] = {
                "coverage": conformal.coverage(split["label"], sets),
                "set_sizes": conformal.size_shares(sets),
                "by_group": {
                    g: conformal.coverage(split["label"][mask], sets[mask])
                    for g, mask in groups.items()
                },
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
    split_probs, holdout_probs, report = _calibration(holdout, split, e.calibration, samples, rng)
    section: dict[str, Any] = {"chosen_on": "holdout", "calibration": report}
    if e.operating_points:
        section["operating_points"] = _operating_points(
            config, holdout, holdout_probs, split, split_probs, groups, samples, rng
        )
    if e.conformal_alphas:
        section["conformal"] = _conformal(
            config, holdout, holdout_probs, split, split_probs, dataset, groups
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
