"""Scores radiographs from disk with a trained workdir: one CSV row per study.

    python -m experiments.predict --workdir=W --input=DIR_OR_FILES --output=CSV
        [--heatmaps=DIR [--attribution=gradcam,ig,occlusion]] [--checkpoint=best|latest|STEP]
    python -m experiments.predict --model=PKG --input=DIR_OR_FILES --output=CSV
        [--format=onnx|stablehlo]

A study is the images of one folder: `--input` folders are walked recursively (as MURA's
`XR_WRIST/patient00001/study1_positive/`, following folders that are symbolic links, each
real folder once), files given directly are grouped by their parent folder; several inputs
are separated by commas, and shell patterns (`dir/*.png`) are expanded. The `--output` CSV
and the `--heatmaps` folder are never read as inputs, also inside an input folder. Images
are converted to 8-bit grayscale as the `mura` dataset builder does and preprocessed exactly
as evaluation does. Columns: `study` (the folder), `n_images`, `prob` (the study's
abnormality probability: the images' mean, or `eval.aggregation`; a "multiview" model
scores all images of the study at once), `pred` (1 = abnormal, at the config's threshold),
`label` ('normal' / 'abnormal') and `body_part` (XR_ELBOW ... where the path names one); for
another dataset its label names and group column (none without groups), and for more than two
classes `prob_<class>` per class with `pred` the most probable class.
Files that cannot be read (not images, truncated, junk such as `._image1.png`, images over
67 Mpx) are named on stderr and skipped; the command fails only if nothing could be scored.
`--heatmaps=DIR` writes an overlay per image, `<file name>_gradcam.png`
(`image1.png_gradcam.png`), in the inputs' folder structure under DIR; `--attribution` chooses
the methods (comma-separated: `gradcam`, `ig` integrated gradients, `occlusion`; one
`<file name>_<method>.png` each), whose settings are the workdir's `eval.ig_steps`,
`eval.ig_baseline`, `eval.occlusion_patch` and `eval.occlusion_stride`. The work is
`murajax.predict.predict`.
"""

from absl import flags, logging

from experiments import cli
from murajax import errors


def define_flags() -> None:
    """Defines the command's flags (only when run as a program: importing the module
    defines none, so that it can be imported beside other commands)."""
    flags.DEFINE_string("workdir", None, "A training run's directory (or --model).")
    flags.DEFINE_string("model", None, "A model package (experiments.export) instead.")
    flags.DEFINE_enum("format", None, ["onnx", "stablehlo"], "A package's artifact to run.")
    flags.DEFINE_list("input", None, "Image folders and/or files (comma-separated).")
    flags.DEFINE_string("output", None, "The CSV to write (one row per study).")
    flags.DEFINE_string("heatmaps", None, "Folder for attribution overlays (optional).")
    flags.DEFINE_string(
        "attribution",
        None,
        "With --heatmaps: the methods drawn, comma-separated, of gradcam, ig (integrated"
        " gradients) and occlusion. Default: gradcam.",
    )
    cli.define_checkpoint_flags(ensemble=False)
    cli.define_compilation_cache_flag()
    flags.mark_flags_as_required(["input", "output"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    args = flags.FLAGS
    logging.set_verbosity(logging.ERROR)  # orbax warns about read-only managers
    cli.enable_compilation_cache()
    if (args.workdir is None) == (args.model is None):
        cli.fail("give either --workdir=W (a training run) or --model=PKG (a model package)")
    if args.model is not None and args.heatmaps is not None:
        cli.fail("--heatmaps needs --workdir: a model package holds no gradients to draw from")
    if args.workdir is not None and args.format is not None:
        cli.fail("--format chooses a model package's artifact: use it with --model=PKG")
    if args.attribution is not None and args.heatmaps is None:
        cli.fail(f"--attribution={args.attribution} needs --heatmaps=DIR: the folder it draws in")
    from murajax import attribution_maps, predict  # here, not at the top: jax; --help is fast

    methods = attribution_maps.DEFAULT_METHODS
    if args.attribution is not None:
        try:
            methods = attribution_maps.parse_methods(args.attribution)
        except errors.ConfigError as e:
            cli.fail(f"--attribution={args.attribution}: {e}")

    if args.model is not None:
        from murajax.export import runtime  # the package's own runtime (its predict.py)

        try:
            rows = runtime.predict(args.model, args.input, args.output, fmt=args.format)
        except runtime.PackageError as e:
            cli.fail(str(e))
    else:
        rows = predict.predict(
            args.workdir,
            args.input,
            args.output,
            heatmaps_dir=args.heatmaps,
            checkpoint=args.checkpoint,
            attributions=methods,
        )
    images = sum(r["n_images"] for r in rows)
    abnormal = sum(r["pred"] for r in rows)
    where = f"; heatmaps in {args.heatmaps}" if args.heatmaps else ""
    print(
        f"{len(rows)} studies ({images} images) scored, {abnormal} abnormal -> {args.output}{where}"
    )


if __name__ == "__main__":
    define_flags()
    cli.run_main(main, errors.USER_ERRORS)
