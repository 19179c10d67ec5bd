"""Runs a model over an evaluation split and writes `eval/<split>/` in the contract's format."""

import csv
import functools
import json
import os
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from murajax import data, metrics
from murajax.config import Config
from tfds_mura.features import BODY_PARTS

EvalFn = Callable[[Any, dict[str, Any]], dict[str, jax.Array]]


def predict_split(config: Config, state: Any, eval_fn: EvalFn, split: str) -> dict[str, np.ndarray]:
    """Image-level predictions over every example of `split` exactly once (padding dropped).

    Returns arrays `prob`, `loss`, `label`, `body_part`, `study_id`, `image_path`.
    """
    columns: dict[str, list[np.ndarray]] = {
        k: [] for k in ("prob", "loss", "label", "body_part", "study_id", "image_path")
    }
    batches = data.make_eval_batches(
        config.data,
        split,
        model_name=config.model.name,
        batch_size=config.eval.batch_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    for batch in batches:
        mask = np.asarray(batch["mask"], bool)
        outputs = eval_fn(state, {"image": batch["image"], "label": batch["label"]})
        for key in ("prob", "loss"):
            columns[key].append(np.asarray(outputs[key])[mask])
        for key in ("label", "body_part", "study_id", "image_path"):
            columns[key].append(np.asarray(batch[key])[mask])
    return {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in columns.items()}


def evaluate_holdout(config: Config, state: Any, eval_fn: EvalFn) -> dict[str, float]:
    """Holdout loss and study-level kappa/AUROC/accuracy for model selection (no CIs)."""
    preds = predict_split(config, state, eval_fn, "holdout")
    result, _ = metrics.evaluate_predictions(
        preds["study_id"],
        preds["prob"],
        preds["label"],
        preds["body_part"],
        aggregation=config.eval.aggregation,
        threshold=config.eval.threshold,
        bootstrap_samples=0,
    )
    study = result["study"]
    return {
        "loss": float(np.mean(preds["loss"])),
        "kappa": study["kappa"],
        "auroc": study["auroc"],
        "accuracy": study["accuracy"],
        "image_accuracy": result["image"]["accuracy"],
    }


def evaluate_and_write(
    config: Config,
    workdir: str,
    split: str,
    state: Any,
    model: nn.Module,
    *,
    step: int,
    writer: Any | None = None,
) -> dict[str, Any]:
    """Evaluates `state` on `split`; writes `eval/<split>/metrics.json` and `predictions.csv`."""
    from murajax.train import eval_step  # local: train imports this module

    eval_fn = jax.jit(functools.partial(eval_step, model=model))
    preds = predict_split(config, state, eval_fn, split)
    result, studies = metrics.evaluate_predictions(
        preds["study_id"],
        preds["prob"],
        preds["label"],
        preds["body_part"],
        aggregation=config.eval.aggregation,
        threshold=config.eval.threshold,
        bootstrap_samples=config.eval.bootstrap_samples,
        confidence=config.eval.confidence,
        seed=config.seed,
    )
    body = {"step": step, "split": split, **result}
    body["study"]["loss"] = float(np.mean(preds["loss"]))
    if jax.process_index() == 0:
        out = os.path.join(workdir, "eval", split)
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "metrics.json"), "w") as f:
            json.dump(_json_safe(body), f, indent=2)
        write_study_predictions(os.path.join(out, "predictions.csv"), studies)
        if writer is not None:
            writer.write(step, split, {k: v for k, v in body["study"].items() if _scalar(v)})
    return body


def write_study_predictions(path: str, studies: dict[str, np.ndarray]) -> None:
    """One row per study: study_id, body_part, label, prob, pred, n_images (1 = abnormal)."""
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["study_id", "body_part", "label", "prob", "pred", "n_images"])
        for i in range(len(studies["study_id"])):
            out.writerow(
                [
                    studies["study_id"][i],
                    BODY_PARTS[studies["body_part"][i]],
                    int(studies["label"][i]),
                    f"{studies['prob'][i]:.6f}",
                    int(studies["pred"][i]),
                    int(studies["n_images"][i]),
                ]
            )


def _scalar(value: Any) -> bool:
    return isinstance(value, int | float)


def _json_safe(value: Any) -> Any:
    """NaN becomes null; tuples become lists; numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value
