"""Re-evaluates a workdir's checkpoints without training.

    python -m experiments.evaluate --workdir=W [--split=validation|holdout]
        [--checkpoint=best|latest|STEP] [--ensemble=K]

Reads `W/config.json`, restores the checkpoint(s) read-only and writes `W/eval/<split>/`
(metrics.json with its triage section, predictions.csv, image_predictions.csv, plots, and the
study browser `browser/index.html` unless `eval.browser=False`) like the end of training does,
holding W's lock (a run still training in W is named in one `error:` line: evaluate once it
is done). `--ensemble=K` averages the
image probabilities of the K checkpoints with the best holdout kappa (the MURA paper's final
model is an ensemble of 5; a run keeps its `train.keep_best` best checkpoints, 5 by default,
besides the `train.keep_checkpoints` latest). Prints one summary line. The work is
`murajax.reevaluate.reevaluate`.
"""

from absl import flags, logging

from experiments import cli
from murajax import errors


def define_flags() -> None:
    """Defines the command's flags (only when run as a program: importing the module
    defines none, so that it can be imported beside other commands)."""
    flags.DEFINE_string("workdir", None, "A training run's directory.")
    flags.DEFINE_string("split", "validation", "Split to evaluate: validation, holdout.")
    cli.define_checkpoint_flags()
    cli.define_compilation_cache_flag()
    flags.mark_flags_as_required(["workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    args = flags.FLAGS
    logging.set_verbosity(logging.ERROR)  # orbax warns about read-only managers
    cli.enable_compilation_cache()
    from murajax import reevaluate  # here, not at the top: jax takes seconds; --help is fast

    body = reevaluate.reevaluate(args.workdir, args.split, args.checkpoint, args.ensemble)
    print(reevaluate.summary_line(body, args.workdir))


if __name__ == "__main__":
    define_flags()
    cli.run_main(main, errors.USER_ERRORS)
