"""Re-evaluating a trained workdir's checkpoints without training (`experiments.evaluate`).

`reevaluate(workdir, split, checkpoint, ensemble)` restores the checkpoint(s) read-only and
writes `eval/<split>/` (metrics.json, predictions.csv, image_predictions.csv, plots) as the
end of training does, holding the workdir's lock (`murajax.workdir_lock`): while a run
trains in the workdir (and will write the same files at its end) it is refused at once. An
ensemble's image probability is the mean of its members' (one pass over the data; the MURA
paper's final model averages the 5 checkpoints with the best holdout kappa).
"""

import functools
import os
from typing import Any

from murajax import evaluation, inference, steps, study_browser, workdir_lock
from murajax import workdir as workdir_lib
from murajax.errors import WorkdirError
from murajax.metrics import EvalState

SPLITS = ("validation", "holdout")


def check_split(split: str) -> None:
    """Raises `WorkdirError` for a split that cannot be evaluated (not in `SPLITS`)."""
    if split not in SPLITS:
        raise WorkdirError(f"split={split!r}: expected one of {', '.join(SPLITS)}")


def predict_images(loaded: inference.Loaded, split: str) -> EvalState:
    """Image-level predictions of the loaded checkpoint(s) on `split`; an ensemble's
    probability is the mean of its members' (one pass over the data)."""
    check_split(split)
    eval_fn = steps.make_eval_fn(loaded.model, len(loaded.states))
    return evaluation.predict_state(loaded.config, loaded.states, eval_fn, split, loaded.spec)


def reevaluate(
    workdir: str,
    split: str = "validation",
    checkpoint: str = "best",
    ensemble: int = 1,
    *,
    plots: bool = True,
) -> dict[str, Any]:
    """Evaluates the selected checkpoint(s) of `workdir` on `split`; writes `eval/<split>/`.

    Returns the `metrics.json` body, which also records `steps` (the checkpoints used, best
    first; `step` is the first of them), `checkpoint`, `ensemble` and, where the request
    could not be met exactly, `note`. With `eval.threshold_method='youden'` the threshold
    is chosen on the holdout predictions of the same checkpoint(s). Holds the workdir's lock
    throughout (`WorkdirInUse` if a run is training there); a folder that is not a murajax
    workdir is refused before anything is written (`workdir.read_config`).
    """
    check_split(split)
    out = workdir_lib.eval_dir(workdir, split)
    if os.path.isdir(workdir):  # (one that does not exist is named by `read_config`)
        workdir_lib.check_writable(out, f"{out} (the evaluation's folder in --workdir={workdir})")
    workdir_lib.read_config(workdir)  # a missing or someone else's folder: before the lock
    with workdir_lock.holding(workdir):
        return _reevaluate(workdir, split, checkpoint, ensemble, plots=plots)


def _reevaluate(
    workdir: str, split: str, checkpoint: str, ensemble: int, *, plots: bool
) -> dict[str, Any]:
    """`reevaluate` once the workdir is checked and locked."""
    loaded = inference.load(workdir, checkpoint, ensemble)
    if loaded.note:
        print(f"[murajax] note: {loaded.note}")
    config = loaded.config
    predictions = predict_images(loaded, split)
    holdout = functools.cache(lambda: predict_images(loaded, "holdout"))
    threshold = evaluation.resolve_threshold(
        config, split, predictions=predictions, holdout=holdout
    )
    body = evaluation.write_evaluation(
        config,
        workdir,
        split,
        predictions,
        loaded.steps[0],
        threshold=threshold,
        plots=plots,
        model=loaded.spec,
        dataset=loaded.dataset,
        holdout=holdout,
    )
    body.update(steps=list(loaded.steps), checkpoint=checkpoint, ensemble=len(loaded.steps))
    if loaded.note:
        body["note"] = loaded.note
    path = workdir_lib.eval_file(workdir, split)
    if os.path.exists(path):  # only process 0 writes files
        workdir_lib.write_json(path, body)
    if plots:
        study_browser.write_if_wanted(
            config, workdir, split, loaded.spec, loaded.dataset, loaded.model, loaded.variables()
        )
    return body


def summary_line(body: dict[str, Any], workdir: str) -> str:
    """`validation (checkpoint 24): study kappa 0.712 [0.68, 0.74], AUROC 0.88 [...] ...`."""
    study = body["study"]
    steps_used = body.get("steps", [body["step"]])
    which = (
        f"checkpoint {steps_used[0]}"
        if len(steps_used) == 1
        else f"ensemble of checkpoints {steps_used}"
    )
    return (
        f"{body['split']} ({which}): study kappa {_number(study['kappa'])}"
        f" {_interval(study.get('kappa_ci'))}, AUROC {_number(study['auroc'])}"
        f" {_interval(study.get('auroc_ci'))}, n={study['n']} studies"
        f" -> {workdir_lib.eval_dir(workdir, body['split'])}"
    )


def _number(value: Any) -> str:
    return "nan" if value is None or value != value else f"{value:.3f}"


def _interval(ci: Any) -> str:
    if not ci:
        return "[no CI]"
    return f"[{_number(ci[0])}, {_number(ci[1])}]"
