"""Re-evaluates a workdir's checkpoints without training.

    python -m experiments.evaluate --workdir=W [--split=validation|holdout]
        [--checkpoint=best|latest|STEP] [--ensemble=K]

Reads `W/config.json`, restores the checkpoint(s) read-only (a run may still be training
beside it) and writes `W/eval/<split>/` (metrics.json, predictions.csv,
image_predictions.csv, plots) like the end of training does. `--ensemble=K` averages the
image probabilities of the K checkpoints with the best holdout kappa (the MURA paper's final
model is an ensemble of 5; a run keeps its `train.keep_best` best checkpoints, 5 by default,
besides the `train.keep_checkpoints` latest). Prints one summary line.
"""

import json
import os
from typing import Any

from absl import flags, logging

from experiments import cli
from murajax import errors, inference

SPLITS = ("validation", "holdout")


def predict_images(loaded: inference.Loaded, split: str) -> Any:
    """Image-level predictions (`metrics.EvalState`) of the loaded checkpoint(s) on `split`;
    an ensemble's probability is the mean of its members' (one pass over the data)."""
    from murajax import evaluation  # local: keeps `--help` fast

    if split not in SPLITS:
        raise inference.WorkdirError(f"split={split!r}: expected one of {', '.join(SPLITS)}")
    eval_fn = inference.make_eval_fn(loaded.model, len(loaded.states))
    return evaluation.predict_state(loaded.config, loaded.states, eval_fn, split)


def evaluate(
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
    is chosen on the holdout predictions of the same checkpoint(s).
    """
    from murajax import evaluation  # local: keeps `--help` fast

    if split not in SPLITS:
        raise inference.WorkdirError(f"split={split!r}: expected one of {', '.join(SPLITS)}")
    out = evaluation.eval_dir(workdir, split)
    if os.path.isdir(workdir):  # (one that does not exist is named by `inference.load`)
        cli.check_writable(out, f"{out} (the evaluation's folder in --workdir={workdir})")
    loaded = inference.load(workdir, checkpoint, ensemble)
    if loaded.note:
        print(f"[murajax] note: {loaded.note}")
    config = loaded.config
    predictions = predict_images(loaded, split)
    threshold = None
    if config.eval.threshold_method == "youden" and split != "holdout":
        threshold = evaluation.choose_threshold(config, predict_images(loaded, "holdout"))
    body = evaluation.write_evaluation(
        config, workdir, split, predictions, loaded.steps[0], threshold=threshold, plots=plots
    )
    body.update(steps=list(loaded.steps), checkpoint=checkpoint, ensemble=len(loaded.steps))
    if loaded.note:
        body["note"] = loaded.note
    path = os.path.join(evaluation.eval_dir(workdir, split), evaluation.METRICS_FILE)
    if os.path.exists(path):  # only process 0 writes files
        with open(path, "w") as f:
            json.dump(evaluation.json_safe(body), f, indent=2)
            f.write("\n")
    return body


def summary_line(body: dict[str, Any], workdir: str) -> str:
    """`validation (checkpoint 24): study kappa 0.712 [0.68, 0.74], AUROC 0.88 [...] ...`."""
    study = body["study"]
    steps = body.get("steps", [body["step"]])
    which = f"checkpoint {steps[0]}" if len(steps) == 1 else f"ensemble of checkpoints {steps}"
    return (
        f"{body['split']} ({which}): study kappa {_number(study['kappa'])}"
        f" {_interval(study.get('kappa_ci'))}, AUROC {_number(study['auroc'])}"
        f" {_interval(study.get('auroc_ci'))}, n={study['n']} studies"
        f" -> {os.path.join(workdir, 'eval', body['split'])}"
    )


def _number(value: Any) -> str:
    return "nan" if value is None or value != value else f"{value:.3f}"


def _interval(ci: Any) -> str:
    if not ci:
        return "[no CI]"
    return f"[{_number(ci[0])}, {_number(ci[1])}]"


def define_flags() -> None:
    """Defines the command's flags (only when run as a program: importing the module
    defines none, so that it can be imported beside other commands)."""
    flags.DEFINE_string("workdir", None, "A training run's directory.")
    flags.DEFINE_string("split", "validation", f"Split to evaluate: {', '.join(SPLITS)}.")
    flags.DEFINE_string("checkpoint", "best", "'best' (holdout kappa), 'latest' or a step number.")
    flags.DEFINE_integer(
        "ensemble", 1, "Average the K checkpoints with the best holdout kappa.", lower_bound=1
    )
    cli.define_compilation_cache_flag()
    flags.mark_flags_as_required(["workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    args = flags.FLAGS
    logging.set_verbosity(logging.ERROR)  # orbax warns about read-only managers
    cli.enable_compilation_cache()
    body = evaluate(args.workdir, args.split, args.checkpoint, args.ensemble)
    print(summary_line(body, args.workdir))


if __name__ == "__main__":
    define_flags()
    cli.run_main(main, errors.USER_ERRORS + inference.USER_ERRORS)
