"""The attribution sanity check (Adebayo et al. 2018) on a trained workdir.

    python -m experiments.sanity_check --workdir=W [--split=validation] [--images=8]
        [--methods=gradcam,ig,occlusion] [--checkpoint=best|latest|STEP] [--seed=0]

Re-initialises the model's layers block by block from the top (cumulatively) and compares each
method's maps of the first `--images` images of the split with the trained model's (mean
Spearman rank correlation). Writes `W/eval/<split>/attribution_sanity.json` and
`attribution_sanity.png` (the report's "Attributions" section shows them) and prints one line
per method. A method whose maps do not change is not explaining the model. The work is
`murajax.attribution_sanity.check_workdir`.
"""

from absl import flags, logging

from experiments import cli
from murajax import errors


def define_flags() -> None:
    """Defines the command's flags (only when run as a program)."""
    flags.DEFINE_string("workdir", None, "A training run's directory.")
    flags.DEFINE_string("split", "validation", "Split whose first images are explained.")
    flags.DEFINE_integer("images", 8, "How many images.", lower_bound=1)
    flags.DEFINE_string("methods", "gradcam,ig,occlusion", "Attribution methods, comma-separated.")
    flags.DEFINE_integer("seed", 0, "Seed of the re-initialised parameters.")
    cli.define_checkpoint_flags(ensemble=False)
    cli.define_compilation_cache_flag()
    flags.mark_flags_as_required(["workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    args = flags.FLAGS
    logging.set_verbosity(logging.ERROR)  # orbax warns about read-only managers
    cli.enable_compilation_cache()
    from murajax import attribution_maps, attribution_sanity  # here: jax; --help is fast

    try:
        methods = attribution_maps.parse_methods(args.methods)
    except errors.ConfigError as e:
        cli.fail(f"--methods={args.methods}: {e}")
    result = attribution_sanity.check_workdir(
        args.workdir,
        split=args.split,
        count=args.images,
        methods=methods,
        checkpoint=args.checkpoint,
        seed=args.seed,
    )
    for line in attribution_sanity.summary_lines(result):
        print(line)


if __name__ == "__main__":
    define_flags()
    cli.run_main(main, errors.USER_ERRORS)
