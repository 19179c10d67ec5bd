"""Exports a trained workdir as a model package that runs without murajax.

    python -m experiments.export --workdir=W --output=PKG [--checkpoint=best|latest|STEP]
        [--ensemble=K] [--formats=stablehlo,onnx]

PKG is a new folder with `model.stablehlo` (jax.export: platforms cpu and cuda, a symbolic
batch), `model.onnx` (jax2onnx: the `export` extra), `preprocess.json`, `metadata.json`
(model, checkpoints, dataset, threshold, validation scores with CIs, versions, and the
sha256 of every file), `MODEL_CARD.md` and `predict.py`, a standalone runtime:

    python PKG/predict.py --input=DIR --output=CSV [--format=onnx|stablehlo]

The exported function takes uint8 (B, S, S, 1) grayscale squares and returns the probability
and the logits; normalisation is inside it, BatchNorm and dropout in inference mode, and
`--ensemble=K` averages the K best checkpoints inside it. murajax's oneDNN convolutions are
custom calls that cannot be exported: the package is traced with XLA's, in float32. Each
artifact is run on holdout images and compared with the model (StableHLO within 1e-5, ONNX
within 1e-4 of the probability) before the package is written; on a larger difference
nothing is written. `--formats` defaults to both where the export extra is installed, else
StableHLO. The work is `murajax.export.export`.
"""

from absl import flags, logging

from experiments import cli
from murajax import errors


def define_flags() -> None:
    """Defines the command's flags (only when run as a program)."""
    flags.DEFINE_string("workdir", None, "A training run's directory.")
    flags.DEFINE_string("output", None, "The package folder to create (new or empty).")
    cli.define_checkpoint_flags()
    flags.DEFINE_string(
        "formats", None, "stablehlo, onnx or both (default: both where the export extra is)."
    )
    cli.define_compilation_cache_flag()
    flags.mark_flags_as_required(["workdir", "output"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    args = flags.FLAGS
    logging.set_verbosity(logging.ERROR)  # orbax warns about read-only managers
    cli.enable_compilation_cache()
    from murajax import export  # here, not at the top: jax takes seconds; --help is fast

    exported = export.export(
        args.workdir,
        args.output,
        checkpoint=args.checkpoint,
        ensemble=args.ensemble,
        formats=args.formats,
    )
    print(
        f"package {exported.path} ({', '.join(exported.formats)}); score with:"
        f" python {exported.path}/predict.py --input=DIR --output=predictions.csv"
    )


if __name__ == "__main__":
    define_flags()
    cli.run_main(main, errors.USER_ERRORS)
