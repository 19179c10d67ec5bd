"""Evaluation: image predictions over a split, and `eval/<split>/` in the contract's format.

Two halves that meet in image-level predictions (a `metrics.EvalState`, or a dict of its
arrays):

    predict_state(config, state, eval_fn, split, model) -> EvalState   run a model on a split
    write_evaluation(config, workdir, split, predictions, step) -> metrics.json body

`eval_fn(state, batch) -> {'prob', 'loss'}` is handed in (`murajax.steps.make_eval_fn`), so
evaluation never imports the trainer; `model` is the `ModelSpec` that says how to prepare
its images and whether it predicts images or studies, and `dataset` the `DatasetSpec` that
names the labels and groups. A binary dataset (MURA) is scored by `murajax.metrics`, one with
more classes by `murajax.multiclass_metrics` (probability vectors, no threshold). One
`resolve_threshold` decides the threshold for training, `experiments.evaluate` and
`experiments.predict`.

so that predictions from elsewhere (an ensemble's averaged probabilities, another tool's
model) are scored and written the same way. `write_evaluation` writes, into
`eval/<split>/`: `metrics.json`, `predictions.csv` (one row per study),
`image_predictions.csv` (one row per image) and the plots `roc.png`,
`confusion_matrix.png`, `calibration.png` (binary) and `kappa_by_<group>.png`
(`kappa_by_body_part.png` for MURA; see `workdir.plot_files`).

Thresholds: `eval.threshold_method='fixed'` uses `eval.threshold` (0.5, the MURA paper's);
'youden' chooses the threshold on the *holdout* (Youden's J on study probabilities, see
`choose_threshold`) and uses it for every split, so that the validation split, everyone's
test set, never picks its own threshold.
"""

import csv
import dataclasses
import functools
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from murajax import calibration as calibration_lib
from murajax import data, files, metrics, multiclass_metrics, triage
from murajax import workdir as workdir_lib
from murajax.config import Config, ConfigError
from murajax.data import DatasetSpec, ModelInputs
from murajax.errors import NonFinitePredictions
from murajax.metrics import EvalState

THRESHOLD_METHODS: tuple[str, ...] = ("fixed", "youden")
EVAL_SPLITS: tuple[str, ...] = ("holdout", "validation")  # what `eval.splits` may name

EvalFn = Callable[[Any, dict[str, Any]], dict[str, jax.Array]]
Predictions = EvalState | Mapping[str, np.ndarray]


# --------------------------------------------------------------------------- predicting


def predict_state(
    config: Config, state: Any, eval_fn: EvalFn, split: str, model: ModelInputs | None
) -> EvalState:
    """Predictions of `eval_fn` over every example of `split` exactly once.

    Each process predicts its share of every batch; the shares are merged batch by batch and
    gathered across processes, so every process returns the whole split (padding dropped).
    `eval_fn(state, {'image', 'label'})` returns per-image `prob` (abnormal) and `loss`.
    `model` (a `murajax.models.ModelSpec`) says how to prepare the images.

    A study-level `model` ("multiview") predicts whole studies: `eval_fn` gets study batches
    (`{'image', 'label', 'view_mask'}`) and each row of the result is a study, with the study's
    folder as its `image_path`; its study-level metrics are then its own predictions'.
    """
    batches = data.make_eval_batches(
        config.data,
        split,
        model=model,
        batch_size=config.eval.batch_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    parts = []
    for batch in batches:
        inputs = {k: batch[k] for k in ("image", "label", "view_mask") if k in batch}
        outputs = eval_fn(state, inputs)
        outputs = {k: np.asarray(outputs[k]) for k in ("prob", "loss") if k in outputs}
        parts.append(EvalState.from_batch(batch, outputs))
    local = EvalState.merge_all(parts)
    return check_finite(metrics.gather_state(local, process_count=jax.process_count()), split)


def check_finite(predictions: EvalState, split: str) -> EvalState:
    """`predictions` if every probability is finite; else `NonFinitePredictions`, one line
    naming how many and the first image (scikit-learn's scores would fail on them)."""
    bad = ~np.isfinite(predictions.prob)
    bad = bad.any(axis=1) if bad.ndim == 2 else bad
    if bad.any():
        first = predictions.image_path[bad][0] or predictions.study_id[bad][0]
        raise NonFinitePredictions(
            f"the model's probabilities are not finite for {int(bad.sum())} of"
            f" {len(predictions)} {split} predictions (the first: {first}): its parameters"
            " diverged; evaluate an earlier checkpoint"
        )
    return predictions


def predict_split(
    config: Config, state: Any, eval_fn: EvalFn, split: str, model: ModelInputs | None
) -> dict[str, np.ndarray]:
    """`predict_state` as a dict of arrays: `prob`, `loss`, `label`, `group`,
    `study_id`, `image_path` (every process gets the whole split)."""
    return predict_state(config, state, eval_fn, split, model).as_dict()


# --------------------------------------------------------------------------- thresholds


def choose_threshold(config: Config, holdout: Predictions) -> float:
    """The decision threshold that `config.eval` asks for, given holdout predictions.

    'fixed': `eval.threshold`. 'youden': the threshold maximising Youden's J on the
    holdout's study probabilities (aggregated as `eval.aggregation` says). Multi-class
    predictions have no threshold (the most probable class is predicted): `eval.threshold`.
    """
    if config.eval.threshold_method == "fixed" or EvalState.from_dict(holdout).multiclass:
        return float(config.eval.threshold)
    studies = EvalState.from_dict(holdout).studies(config.eval.aggregation)
    return metrics.youden_threshold(studies["label"], studies["prob"])


def resolve_threshold(
    config: Config,
    split: str | None,
    *,
    predictions: Predictions | None = None,
    holdout: Callable[[], Predictions] | None = None,
    recorded: float | None = None,
) -> float:
    """The one decision of which threshold scores `split` (training, `evaluate`, `predict`).

    'fixed': `eval.threshold`. 'youden': chosen on the holdout, never on the split scored
    (the validation split is everyone's test set): on `predictions` when they are the
    holdout's (`split == 'holdout'`), else `recorded` (a threshold an evaluation of the same
    checkpoints already chose on the holdout), else on `holdout()`, which predicts the holdout
    and is called only then. `split=None`: predictions of no split (new images).
    """
    if config.eval.threshold_method == "fixed":
        return float(config.eval.threshold)
    if split == "holdout" and predictions is not None:
        return choose_threshold(config, predictions)
    if recorded is not None:
        return float(recorded)
    if holdout is None:
        raise ValueError(
            f"eval.threshold_method='youden' chooses the threshold on the holdout: pass its"
            f" predictions (holdout=) or threshold= to score {split or 'new images'!r}"
        )
    return choose_threshold(config, holdout())


# --------------------------------------------------------------------------- scoring


def check_dataset(config: Config, dataset: DatasetSpec) -> None:
    """Raises a one-line `ConfigError` for `eval` fields that `dataset` cannot use: a
    Youden threshold on more than two classes (they predict the most probable class)."""
    if not dataset.binary and config.eval.threshold_method != "fixed":
        raise ConfigError(
            f"config.eval.threshold_method={config.eval.threshold_method!r} is invalid for"
            f" dataset {dataset.name!r} with {dataset.num_classes} classes: expected 'fixed'"
            " (a multi-class model predicts its most probable class; there is no threshold)"
        )


def evaluate_holdout(
    config: Config,
    state: Any,
    eval_fn: EvalFn,
    model: ModelInputs | None,
    dataset: DatasetSpec | None = None,
) -> dict[str, float]:
    """Holdout loss and study-level kappa/AUROC/accuracy for model selection (no CIs).

    With `threshold_method='youden'` the holdout chooses its own threshold (reported as
    `threshold`), so that checkpoints are compared at their best operating point.
    Multi-class: kappa (`eval.kappa_weights`), macro one-vs-rest AUROC and accuracy.
    """
    predictions = predict_state(config, state, eval_fn, "holdout", model)
    if predictions.multiclass:
        return _multiclass_holdout(config, predictions)
    threshold = resolve_threshold(config, "holdout", predictions=predictions)
    studies = predictions.studies(config.eval.aggregation, threshold)
    study = metrics.point_scores(studies["label"], studies["prob"], threshold)
    return {
        "loss": predictions.mean_loss(),
        "kappa": study["kappa"],
        "auroc": study["auroc"],
        "accuracy": study["accuracy"],
        "sensitivity": study["sensitivity"],
        "specificity": study["specificity"],
        "image_accuracy": _image_accuracy(predictions, threshold),
        "threshold": threshold,
    }


def _multiclass_holdout(config: Config, predictions: EvalState) -> dict[str, float]:
    studies = predictions.studies(config.eval.aggregation)
    study = multiclass_metrics.point_scores(
        studies["label"], studies["prob"], kappa_weights=config.eval.kappa_weights
    )
    return {
        "loss": predictions.mean_loss(),
        "kappa": study["kappa"],
        "auroc": study["auroc"],
        "accuracy": study["accuracy"],
        "image_accuracy": _image_accuracy(predictions, config.eval.threshold),
    }


def _image_accuracy(predictions: EvalState, threshold: float) -> float:
    """The share of images whose prediction (at `threshold`; the most probable class for
    more than two classes) is their label; NaN without images."""
    if not len(predictions):
        return float("nan")
    return float(np.mean(metrics.predict(predictions.prob, threshold) == predictions.label))


def _scores(
    config: Config, state: EvalState, threshold: float, dataset: DatasetSpec, temperature: float
) -> dict:
    """The scores part of `metrics.json`: binary (`murajax.metrics`) or multi-class
    (`murajax.multiclass_metrics`), the per-group part under the dataset's key (MURA's
    `by_body_part`; none without groups); of probabilities scaled by `temperature`."""
    e = config.eval
    options = {
        "aggregation": e.aggregation,
        "bootstrap_samples": e.bootstrap_samples,
        "confidence": e.confidence,
        "seed": config.seed,
        "calibrate": triage.calibrator(temperature),
    }
    if state.multiclass:
        scores, _ = multiclass_metrics.evaluate_predictions(
            state.study_id,
            state.prob,
            state.label,
            state.group,
            class_names=dataset.label_names,
            group_names=dataset.group_names,
            kappa_weights=e.kappa_weights,
            **options,
        )
    else:
        scores = state.compute(threshold=threshold, group_names=dataset.group_names, **options)
    by_group = scores.pop("by_group", {})
    if dataset.by_group_key:
        scores[dataset.by_group_key] = by_group
    return scores


def default_dataset(predictions: Predictions) -> DatasetSpec:
    """The spec assumed for predictions given without one: MURA-shaped labels where they
    are binary ("normal", "abnormal"), else class numbers; no groups. Only `prob` is read."""
    is_state = isinstance(predictions, EvalState)
    prob = np.asarray(predictions.prob if is_state else predictions["prob"])
    if prob.ndim == 2:  # multi-class: (N, K) probability vectors
        names = tuple(str(k) for k in range(prob.shape[1]))
    else:
        names = ("normal", "abnormal")
    return DatasetSpec(name="predictions", label_names=names)


def metrics_body(
    config: Config,
    split: str,
    predictions: Predictions,
    step: int,
    threshold: float,
    model: ModelInputs | None = None,
    dataset: DatasetSpec | None = None,
    *,
    temperature: float = 1.0,
) -> dict[str, Any]:
    """The `metrics.json` body of `predictions` scored at `threshold` (see module doc);
    `model` (its `ModelSpec`) says whether a prediction is of an image or of a study,
    `dataset` (its `DatasetSpec`) names the labels and groups. `temperature` != 1: every
    score is of the temperature-scaled probabilities, `threshold` is on them (recorded with
    the uncalibrated one under `calibration`)."""
    state = EvalState.from_dict(predictions)
    dataset = dataset or default_dataset(state)
    e = config.eval
    scores = _scores(config, state, threshold, dataset, temperature)
    loss = state.mean_loss()
    scores["study"]["loss"] = loss  # the mean image loss, also under "image"
    scores["image"]["loss"] = loss
    body: dict[str, Any] = {
        "step": int(step),
        "split": split,
        "aggregation": e.aggregation,
        "threshold": float(threshold),
        "threshold_method": e.threshold_method,
    }
    if state.multiclass:
        del body["threshold"], body["threshold_method"]  # the most probable class
        body["classes"] = list(dataset.label_names)
        body["kappa_weights"] = e.kappa_weights
    if model is not None and model.study_level:
        # One prediction per study: its "image" scores are its study scores (one row each).
        body["predicts"] = "studies"
        body["view_pooling"] = config.model.options.get("view_pooling")  # a study model's
    else:
        body["predicts"] = "images"
    if e.threshold_method == "youden":
        body["threshold_chosen_on"] = "holdout"
    if temperature != 1.0:
        body["calibration"] = {"method": "temperature", "temperature": temperature}
        body["calibration"]["fitted_on"] = "holdout"
        if not state.multiclass:
            body["calibration"]["threshold_uncalibrated"] = _uncalibrated(threshold, temperature)
    body["bootstrap"] = {
        "samples": e.bootstrap_samples,
        "confidence": e.confidence,
        "seed": config.seed,
        "resampled": "studies",
    }
    body.update(scores)
    return body


def write_evaluation(
    config: Config,
    workdir: str,
    split: str,
    predictions: Predictions,
    step: int,
    *,
    threshold: float | None = None,
    writer: Any | None = None,
    plots: bool = True,
    model: ModelInputs | None = None,
    dataset: DatasetSpec | None = None,
    holdout: Callable[[], Predictions] | None = None,
) -> dict[str, Any]:
    """Scores image-level `predictions` of `split` and writes `eval/<split>/` (process 0).

    `predictions`: an `EvalState` or a dict of image arrays `study_id`, `group`,
    `label`, `prob`, optionally `image_path` and `loss` (all processes must pass the whole
    split, e.g. from `predict_state`). `threshold`: None takes `eval.threshold` ('fixed'),
    or with 'youden' chooses it on `predictions` if `split == 'holdout'` and otherwise
    raises (pass `choose_threshold(config, holdout_predictions)`). `writer`: a
    `writers.MetricWriter` that also logs the study-level scalars to `metrics.jsonl`.
    `model`: the `ModelSpec` that predicted (None: an image model); `dataset`: the
    `DatasetSpec` of the labels and groups (None: `default_dataset`). `holdout()` gives the
    holdout's predictions when the config asks for the `triage` section (`murajax.triage`;
    on the holdout split its own). Returns the `metrics.json` body.
    """
    state = check_finite(EvalState.from_dict(predictions), split)
    dataset = dataset or default_dataset(state)
    if threshold is None:
        threshold = resolve_threshold(config, split, predictions=state, holdout=holdout)
    raw_studies = state.studies(config.eval.aggregation, threshold)
    chosen_on = _holdout_studies(config, split, raw_studies, holdout)
    temperature = triage.fit_temperature(config, chosen_on) if chosen_on is not None else 1.0
    decision = triage.calibrated_threshold(threshold, temperature)
    body = metrics_body(
        config, split, state, step, decision, model, dataset, temperature=temperature
    )
    columns: dict[str, np.ndarray] = {}
    if chosen_on is not None:
        body["triage"] = triage.triage_section(
            config, chosen_on, raw_studies, threshold, dataset, temperature=temperature
        )
        columns = triage.study_columns(
            config, chosen_on, raw_studies, threshold, temperature=temperature
        )
    if jax.process_index() != 0:
        return body
    out = workdir_lib.eval_dir(workdir, split)
    os.makedirs(out, exist_ok=True)
    workdir_lib.write_json(os.path.join(out, workdir_lib.METRICS_FILE), body)
    studies = {**_calibrated_studies(raw_studies, temperature, decision), **columns}
    write_study_predictions(os.path.join(out, workdir_lib.STUDY_PREDICTIONS_FILE), studies, dataset)
    calibrated = _calibrated_state(state, temperature)
    write_image_predictions(
        os.path.join(out, workdir_lib.IMAGE_PREDICTIONS_FILE), calibrated, dataset
    )
    if plots:
        write_plots(out, calibrated, studies, body, dataset, uncalibrated=raw_studies)
    if writer is not None:
        scalars = {k: v for k, v in body["study"].items() if _scalar(v)}
        writer.write(step, split, {**scalars, "threshold": decision})
    return body


def _holdout_studies(
    config: Config,
    split: str,
    own: dict[str, np.ndarray],
    holdout: Callable[[], Predictions] | None,
) -> dict[str, np.ndarray] | None:
    """The holdout's study table that the triage section and the calibration are chosen on:
    `own` (the split's studies) on the holdout, else `holdout()`'s; None when there is none
    to choose on (predictions scored on their own: no `triage` section; `eval.calibration`
    then refused)."""
    if split == "holdout":
        return own
    if holdout is None:
        if config.eval.calibration != "none":
            raise ValueError(
                f"eval.calibration={config.eval.calibration!r} is fitted on the holdout: pass"
                f" holdout= to score {split!r}"
            )
        return None
    return EvalState.from_dict(holdout()).studies(config.eval.aggregation)


def _calibrated_studies(
    studies: dict[str, np.ndarray], temperature: float, threshold: float
) -> dict[str, np.ndarray]:
    """The study table with its probabilities scaled by `temperature` and `pred` decided at
    `threshold` (on the scaled probabilities)."""
    calibrate = triage.calibrator(temperature)  # None: unchanged
    prob = studies["prob"] if calibrate is None else calibrate(studies["prob"])
    return {**studies, "prob": prob, "pred": metrics.predict(prob, threshold)}


def _calibrated_state(state: EvalState, temperature: float) -> EvalState:
    """`state` with each image's probability scaled by `temperature` (itself for 1)."""
    if temperature == 1.0:
        return state
    prob = calibration_lib.apply_temperature(state.prob, temperature)
    return dataclasses.replace(state, prob=prob)


def _uncalibrated(threshold: float, temperature: float) -> float:
    """The inverse of `triage.calibrated_threshold`: the threshold on the raw probabilities."""
    return triage.calibrated_threshold(threshold, 1.0 / temperature)


def evaluate_and_write(
    config: Config,
    workdir: str,
    split: str,
    state: Any,
    eval_fn: EvalFn,
    model: ModelInputs | None,
    dataset: DatasetSpec | None = None,
    *,
    step: int,
    writer: Any | None = None,
    threshold: float | None = None,
) -> dict[str, Any]:
    """Evaluates `state` of `model` (its `ModelSpec`) with `eval_fn` on `split` and writes
    `eval/<split>/` (see `write_evaluation`). With `threshold_method='youden'` and no
    `threshold`, the threshold is chosen on the holdout predictions of `state`."""
    predictions = predict_state(config, state, eval_fn, split, model)
    holdout = functools.cache(lambda: predict_state(config, state, eval_fn, "holdout", model))
    if threshold is None:
        threshold = resolve_threshold(config, split, predictions=predictions, holdout=holdout)
    return write_evaluation(
        config,
        workdir,
        split,
        predictions,
        step,
        threshold=threshold,
        writer=writer,
        model=model,
        dataset=dataset,
        holdout=holdout,
    )


# --------------------------------------------------------------------------- files


def _group_columns(dataset: DatasetSpec) -> list[str]:
    return [dataset.group_column] if dataset.group_column else []


def _prob_header(dataset: DatasetSpec, multiclass: bool) -> list[str]:
    """`prob` (of class 1) for a binary dataset; `prob_<class>` per class for more."""
    return [f"prob_{name}" for name in dataset.label_names] if multiclass else ["prob"]


def _prob_cells(probs: np.ndarray) -> list[str]:
    return [f"{p:.6f}" for p in np.atleast_1d(probs)]


def write_study_predictions(
    path: str, studies: Mapping[str, np.ndarray], dataset: DatasetSpec | None = None
) -> None:
    """One row per study: study_id, the group (MURA's body_part), label, prob, pred, n_images
    (1 = abnormal). Multi-class: label and pred are class indices, followed by their names
    (`label_name`, `pred_name`) and one `prob_<class>` column per class. Where `studies`
    has them (`triage.study_columns`), `referred` (1 = among the least certain, handed to a
    reader) and `conformal_set` (its class names joined by '|') follow."""
    multiclass = np.ndim(studies["prob"]) == 2
    dataset = dataset or default_dataset({"prob": studies["prob"]})
    extra = [name for name in ("referred", "conformal_set") if name in studies]
    with files.replacing(path) as part, open(part, "w", newline="") as f:
        out = csv.writer(f)
        if multiclass:
            header = ["study_id", *_group_columns(dataset), "label", "label_name", "pred"]
            header += ["pred_name", *_prob_header(dataset, True), "n_images"]
        else:
            header = ["study_id", *_group_columns(dataset), "label", "prob", "pred", "n_images"]
        out.writerow(header + extra)
        for i in range(len(studies["study_id"])):
            group = [dataset.group_name(int(studies["group"][i]))] if dataset.group_column else []
            label, pred = int(studies["label"][i]), int(studies["pred"][i])
            if multiclass:
                names = [dataset.label_names[label], pred, dataset.label_names[pred]]
                row = [studies["study_id"][i], *group, label, *names]
                row += [*_prob_cells(studies["prob"][i]), int(studies["n_images"][i])]
            else:
                row = [studies["study_id"][i], *group, label, f"{studies['prob'][i]:.6f}", pred]
                row += [int(studies["n_images"][i])]
            out.writerow(row + [_extra_cell(name, studies[name][i], dataset) for name in extra])


def _extra_cell(name: str, value: np.ndarray, dataset: DatasetSpec) -> str | int:
    """`referred` as 0/1; `conformal_set` (bool per class) as its class names joined by '|'."""
    if name == "conformal_set":
        return "|".join(n for n, inside in zip(dataset.label_names, value, strict=True) if inside)
    return int(value)


def write_image_predictions(
    path: str, predictions: Predictions, dataset: DatasetSpec | None = None
) -> None:
    """One row per image: image_path, study_id, the group (MURA's body_part), label, prob
    (1 = abnormal); multi-class: `prob_<class>` per class."""
    state = EvalState.from_dict(predictions)
    dataset = dataset or default_dataset(state)
    with files.replacing(path) as part, open(part, "w", newline="") as f:
        out = csv.writer(f)
        probs = _prob_header(dataset, state.multiclass)
        out.writerow(["image_path", "study_id", *_group_columns(dataset), "label", *probs])
        for i in range(len(state)):
            group = [dataset.group_name(int(state.group[i]))] if dataset.group_column else []
            out.writerow(
                [
                    state.image_path[i],
                    state.study_id[i],
                    *group,
                    int(state.label[i]),
                    *_prob_cells(state.prob[i]),
                ]
            )


def write_plots(
    directory: str,
    state: EvalState,
    studies: Mapping[str, np.ndarray],
    body: Mapping[str, Any],
    dataset: DatasetSpec | None = None,
    *,
    uncalibrated: Mapping[str, np.ndarray] | None = None,
) -> dict[str, str]:
    """The evaluation's plots (see `workdir.plot_files`) into `directory`; returns name -> path.
    `uncalibrated`: the studies before temperature scaling, drawn beside `studies` in the
    reliability plot (the metrics' `calibration` section says which temperature).

    A plot that fails is reported and skipped: the metrics are written already.
    """
    dataset = dataset or default_dataset(state)
    split = body["split"]
    if state.multiclass:
        jobs = _multiclass_plot_jobs(studies, body, dataset)
    else:
        jobs = _binary_plot_jobs(state, studies, body, dataset, uncalibrated)
    if dataset.by_group_key:
        names = list(body[dataset.by_group_key])
        groups = body[dataset.by_group_key]
        jobs["kappa_by_group"] = lambda p: _plots().kappa_by_group(
            ["overall", *names],
            [body["study"]["kappa"]] + [groups[n]["kappa"] for n in names],
            [body["study"]["kappa_ci"]] + [groups[n]["kappa_ci"] for n in names],
            p,
            reference=dataset.reference_kappa,
            reference_label=dataset.reference_label,
            title=f"Study kappa by {dataset.group_feature.replace('_', ' ')} ({split})",
        )
    files_by_name = workdir_lib.plot_files(dataset.group_feature, binary=not state.multiclass)
    if "triage" in body:
        files_by_name["referral"] = workdir_lib.REFERRAL_PLOT
        jobs["referral"] = lambda p: _plots().referral(
            body["triage"]["referral"],
            p,
            title=f"Referral ({split})",
            reference=dataset.reference_kappa.get("overall"),
            reference_label=dataset.reference_label.split(" (")[0],
        )
    written = {}
    for name, job in jobs.items():
        path = os.path.join(directory, files_by_name[name])
        try:
            written[name] = job(path)
        except Exception as error:  # noqa: BLE001  (a plot must not lose an evaluation)
            print(f"[murajax] warning: plot {name} failed: {type(error).__name__}: {error}")
    return written


def _plots() -> Any:
    from murajax import plots  # local: matplotlib only when plotting

    return plots


def _binary_plot_jobs(
    state: EvalState,
    studies: Mapping[str, np.ndarray],
    body: Mapping[str, Any],
    dataset: DatasetSpec,
    uncalibrated: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Callable[[str], str]]:
    plots = _plots()
    group = np.asarray(studies["group"])
    curves = {"overall": (studies["label"], studies["prob"])}
    for index, name in enumerate(dataset.group_names):
        rows = group == index
        if rows.any():
            curves[name] = (studies["label"][rows], studies["prob"][rows])
    split = body["split"]
    section = body.get("triage", {})
    points = {
        name: (1.0 - scores["specificity"], scores["sensitivity"])
        for name, scores in section.get("operating_points", {}).items()
    }
    temperature = body.get("calibration", {}).get("temperature")
    if temperature is not None and uncalibrated is not None:
        reliability = {
            "studies, uncalibrated": (uncalibrated["label"], uncalibrated["prob"]),
            f"studies, temperature {temperature:.2f}": curves["overall"],
        }
    else:
        reliability = {"studies": curves["overall"], "images": (state.label, state.prob)}
    return {
        "roc": lambda p: plots.roc_curves(
            curves, p, title=f"ROC, studies ({split})", points=points
        ),
        "confusion_matrix": lambda p: plots.confusion_matrix(
            studies["label"],
            studies["pred"],
            p,
            title=f"Studies ({split}), threshold {body['threshold']:.3g}",
            class_names=dataset.label_names,
        ),
        "calibration": lambda p: plots.calibration(
            reliability,
            p,
            title=f"Calibration ({split})",
            positive=dataset.label_names[1],
        ),
    }


def _multiclass_plot_jobs(
    studies: Mapping[str, np.ndarray], body: Mapping[str, Any], dataset: DatasetSpec
) -> dict[str, Callable[[str], str]]:
    from murajax import plots_multiclass  # local: matplotlib only when plotting

    split = body["split"]
    return {
        "roc": lambda p: plots_multiclass.roc_curves(
            studies["label"],
            studies["prob"],
            dataset.label_names,
            p,
            title=f"ROC one-vs-rest, studies ({split})",
        ),
        "confusion_matrix": lambda p: plots_multiclass.confusion_matrix(
            np.asarray(body["study"]["confusion"]),
            dataset.label_names,
            p,
            title=f"Studies ({split}), most probable class",
        ),
    }


def _scalar(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
