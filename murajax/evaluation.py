"""Evaluation: image predictions over a split, and `eval/<split>/` in the contract's format.

Two halves that meet in image-level predictions (a `metrics.EvalState`, or a dict of its
arrays):

    predict_state(config, state, eval_fn, split, model) -> EvalState   run a model on a split
    write_evaluation(config, workdir, split, predictions, step) -> metrics.json body

`eval_fn(state, batch) -> {'prob', 'loss'}` is handed in (`murajax.steps.make_eval_fn`), so
evaluation never imports the trainer; `model` is the `ModelSpec` that says how to prepare
its images and whether it predicts images or studies. One `resolve_threshold` decides the
threshold for training, `experiments.evaluate` and `experiments.predict`.

so that predictions from elsewhere (an ensemble's averaged probabilities, another tool's
model) are scored and written the same way. `write_evaluation` writes, into
`eval/<split>/`: `metrics.json`, `predictions.csv` (one row per study),
`image_predictions.csv` (one row per image) and the plots `roc.png`,
`confusion_matrix.png`, `calibration.png` and `kappa_by_body_part.png`.

Thresholds: `eval.threshold_method='fixed'` uses `eval.threshold` (0.5, the MURA paper's);
'youden' chooses the threshold on the *holdout* (Youden's J on study probabilities, see
`choose_threshold`) and uses it for every split, so that the validation split, everyone's
test set, never picks its own threshold.
"""

import csv
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from murajax import data, files, metrics
from murajax import workdir as workdir_lib
from murajax.config import Config
from murajax.data import ModelInputs
from murajax.errors import NonFinitePredictions
from murajax.metrics import EvalState
from tfds_mura.features import BODY_PARTS

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
    """`predict_state` as a dict of arrays: `prob`, `loss`, `label`, `body_part`,
    `study_id`, `image_path` (every process gets the whole split)."""
    return predict_state(config, state, eval_fn, split, model).as_dict()


# --------------------------------------------------------------------------- thresholds


def choose_threshold(config: Config, holdout: Predictions) -> float:
    """The decision threshold that `config.eval` asks for, given holdout predictions.

    'fixed': `eval.threshold`. 'youden': the threshold maximising Youden's J on the
    holdout's study probabilities (aggregated as `eval.aggregation` says).
    """
    if config.eval.threshold_method == "fixed":
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


def evaluate_holdout(
    config: Config, state: Any, eval_fn: EvalFn, model: ModelInputs | None
) -> dict[str, float]:
    """Holdout loss and study-level kappa/AUROC/accuracy for model selection (no CIs).

    With `threshold_method='youden'` the holdout chooses its own threshold (reported as
    `threshold`), so that checkpoints are compared at their best operating point.
    """
    predictions = predict_state(config, state, eval_fn, "holdout", model)
    threshold = resolve_threshold(config, "holdout", predictions=predictions)
    studies = predictions.studies(config.eval.aggregation, threshold)
    study = metrics.point_scores(studies["label"], studies["prob"], threshold)
    image_preds = metrics.predict(predictions.prob, threshold)
    return {
        "loss": predictions.mean_loss(),
        "kappa": study["kappa"],
        "auroc": study["auroc"],
        "accuracy": study["accuracy"],
        "sensitivity": study["sensitivity"],
        "specificity": study["specificity"],
        "image_accuracy": float(np.mean(image_preds == predictions.label))
        if len(predictions)
        else float("nan"),
        "threshold": threshold,
    }


def metrics_body(
    config: Config,
    split: str,
    predictions: Predictions,
    step: int,
    threshold: float,
    model: ModelInputs | None = None,
) -> dict[str, Any]:
    """The `metrics.json` body of `predictions` scored at `threshold` (see module doc);
    `model` (its `ModelSpec`) says whether a prediction is of an image or of a study."""
    state = EvalState.from_dict(predictions)
    e = config.eval
    scores = state.compute(
        aggregation=e.aggregation,
        threshold=threshold,
        bootstrap_samples=e.bootstrap_samples,
        confidence=e.confidence,
        seed=config.seed,
    )
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
    if model is not None and model.study_level:
        # One prediction per study: its "image" scores are its study scores (one row each).
        body["predicts"] = "studies"
        body["view_pooling"] = config.model.view_pooling
    else:
        body["predicts"] = "images"
    if e.threshold_method == "youden":
        body["threshold_chosen_on"] = "holdout"
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
) -> dict[str, Any]:
    """Scores image-level `predictions` of `split` and writes `eval/<split>/` (process 0).

    `predictions`: an `EvalState` or a dict of image arrays `study_id`, `body_part`,
    `label`, `prob`, optionally `image_path` and `loss` (all processes must pass the whole
    split, e.g. from `predict_state`). `threshold`: None takes `eval.threshold` ('fixed'),
    or with 'youden' chooses it on `predictions` if `split == 'holdout'` and otherwise
    raises (pass `choose_threshold(config, holdout_predictions)`). `writer`: a
    `writers.MetricWriter` that also logs the study-level scalars to `metrics.jsonl`.
    `model`: the `ModelSpec` that predicted (None: an image model). Returns the
    `metrics.json` body.
    """
    state = check_finite(EvalState.from_dict(predictions), split)
    if threshold is None:
        threshold = resolve_threshold(config, split, predictions=state)
    body = metrics_body(config, split, state, step, threshold, model)
    if jax.process_index() != 0:
        return body
    out = workdir_lib.eval_dir(workdir, split)
    os.makedirs(out, exist_ok=True)
    workdir_lib.write_json(os.path.join(out, workdir_lib.METRICS_FILE), body)
    studies = state.studies(config.eval.aggregation, threshold)
    write_study_predictions(os.path.join(out, workdir_lib.STUDY_PREDICTIONS_FILE), studies)
    write_image_predictions(os.path.join(out, workdir_lib.IMAGE_PREDICTIONS_FILE), state)
    if plots:
        write_plots(out, state, studies, body)
    if writer is not None:
        scalars = {k: v for k, v in body["study"].items() if _scalar(v)}
        writer.write(step, split, {**scalars, "threshold": threshold})
    return body


def evaluate_and_write(
    config: Config,
    workdir: str,
    split: str,
    state: Any,
    eval_fn: EvalFn,
    model: ModelInputs | None,
    *,
    step: int,
    writer: Any | None = None,
    threshold: float | None = None,
) -> dict[str, Any]:
    """Evaluates `state` of `model` (its `ModelSpec`) with `eval_fn` on `split` and writes
    `eval/<split>/` (see `write_evaluation`). With `threshold_method='youden'` and no
    `threshold`, the threshold is chosen on the holdout predictions of `state`."""
    predictions = predict_state(config, state, eval_fn, split, model)
    if threshold is None:
        threshold = resolve_threshold(
            config,
            split,
            predictions=predictions,
            holdout=lambda: predict_state(config, state, eval_fn, "holdout", model),
        )
    return write_evaluation(
        config, workdir, split, predictions, step, threshold=threshold, writer=writer, model=model
    )


# --------------------------------------------------------------------------- files


def write_study_predictions(path: str, studies: Mapping[str, np.ndarray]) -> None:
    """One row per study: study_id, body_part, label, prob, pred, n_images (1 = abnormal)."""
    with files.replacing(path) as part, open(part, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["study_id", "body_part", "label", "prob", "pred", "n_images"])
        for i in range(len(studies["study_id"])):
            out.writerow(
                [
                    studies["study_id"][i],
                    _body_part_name(studies["body_part"][i]),
                    int(studies["label"][i]),
                    f"{studies['prob'][i]:.6f}",
                    int(studies["pred"][i]),
                    int(studies["n_images"][i]),
                ]
            )


def write_image_predictions(path: str, predictions: Predictions) -> None:
    """One row per image: image_path, study_id, body_part, label, prob (1 = abnormal)."""
    state = EvalState.from_dict(predictions)
    with files.replacing(path) as part, open(part, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["image_path", "study_id", "body_part", "label", "prob"])
        for i in range(len(state)):
            out.writerow(
                [
                    state.image_path[i],
                    state.study_id[i],
                    _body_part_name(state.body_part[i]),
                    int(state.label[i]),
                    f"{state.prob[i]:.6f}",
                ]
            )


def write_plots(
    directory: str, state: EvalState, studies: Mapping[str, np.ndarray], body: Mapping[str, Any]
) -> dict[str, str]:
    """The evaluation's plots (see `workdir.PLOT_FILES`) into `directory`; returns name -> path.

    A plot that fails is reported and skipped: the metrics are written already.
    """
    from murajax import plots  # local: matplotlib only when plotting

    part = np.asarray(studies["body_part"])
    curves = {"overall": (studies["label"], studies["prob"])}
    for index, name in enumerate(BODY_PARTS):
        rows = part == index
        if rows.any():
            curves[name] = (studies["label"][rows], studies["prob"][rows])
    image_curve = {"images": (state.label, state.prob)}
    names = list(body["by_body_part"])
    split = body["split"]
    jobs: dict[str, Callable[[str], str]] = {
        "roc": lambda p: plots.roc_curves(curves, p, title=f"ROC, studies ({split})"),
        "confusion_matrix": lambda p: plots.confusion_matrix(
            studies["label"],
            studies["pred"],
            p,
            title=f"Studies ({split}), threshold {body['threshold']:.3g}",
        ),
        "calibration": lambda p: plots.calibration(
            {"studies": curves["overall"], **image_curve}, p, title=f"Calibration ({split})"
        ),
        "kappa_by_body_part": lambda p: plots.kappa_by_body_part(
            ["overall", *names],
            [body["study"]["kappa"]] + [body["by_body_part"][n]["kappa"] for n in names],
            [body["study"]["kappa_ci"]] + [body["by_body_part"][n]["kappa_ci"] for n in names],
            p,
            title=f"Study kappa by body part ({split})",
        ),
    }
    written = {}
    for name, job in jobs.items():
        path = os.path.join(directory, workdir_lib.PLOT_FILES[name])
        try:
            written[name] = job(path)
        except Exception as error:  # noqa: BLE001  (a plot must not lose an evaluation)
            print(f"[murajax] warning: plot {name} failed: {type(error).__name__}: {error}")
    return written


def _body_part_name(index: Any) -> str:
    index = int(index)
    return BODY_PARTS[index] if 0 <= index < len(BODY_PARTS) else str(index)


def _scalar(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
