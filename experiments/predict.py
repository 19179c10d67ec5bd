"""Scores radiographs from disk with a trained workdir: one CSV row per study.

    python -m experiments.predict --workdir=W --input=DIR_OR_FILES --output=CSV
        [--heatmaps=DIR] [--checkpoint=best|latest|STEP]

A study is the images of one folder: `--input` folders are walked recursively (as MURA's
`XR_WRIST/patient00001/study1_positive/`), files given directly are grouped by their
parent folder; several inputs are separated by commas, and shell patterns (`dir/*.png`)
are expanded. Images are converted to 8-bit grayscale as the `mura` dataset builder does
and preprocessed exactly as evaluation does. Columns: `study` (the folder), `n_images`,
`prob` (the study's abnormality probability: the images' mean, or `eval.aggregation`; a
"multiview" model scores all images of the study at once),
`pred` (1 = abnormal, at the config's threshold), `label` ('normal' / 'abnormal') and
`body_part` (XR_ELBOW ... where the path names one). Files that cannot be read (not
images, truncated, junk such as `._image1.png`) are named on stderr and skipped; the
command fails only if nothing could be scored. `--heatmaps=DIR` writes a Grad-CAM overlay
per image, `<name>_gradcam.png`, in the inputs' folder structure under DIR.
"""

import csv
import glob
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from absl import flags, logging

from experiments import cli
from murajax import errors, inference, models
from tfds_mura.features import LABEL_NAMES

CSV_COLUMNS = ("study", "n_images", "prob", "pred", "label", "body_part")
HEATMAP_SUFFIX = "_gradcam.png"


Warn = Callable[[str], None]


def warn_stderr(message: str) -> None:
    """Prints `warning: message` to stderr."""
    print(f"warning: {message}", file=sys.stderr)


# --------------------------------------------------------------------------- scoring


def read_all(paths: Sequence[str], warn: Warn) -> Iterator[tuple[str, np.ndarray]]:
    """(path, uint8 (H, W) grayscale) for each readable file; the others are warned about."""
    for path in paths:
        try:
            yield path, inference.read_gray(path)
        except inference.UnreadableImage as e:
            warn(f"skipped {path}: {e}")


def _chunks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _pad(images: np.ndarray, size: int) -> np.ndarray:
    """Zero rows up to `size` (one compiled shape for every batch)."""
    if len(images) == size:
        return images
    padding = np.zeros((size - len(images), *images.shape[1:]), images.dtype)
    return np.concatenate([images, padding])


def heatmap_path(path: str, root: str, heatmaps_dir: str) -> str:
    """Where the overlay of image `path` goes: its path below `root`, under `heatmaps_dir`,
    with `_gradcam.png` in place of the extension."""
    relative = os.path.relpath(os.path.abspath(path), root)
    stem, _ = os.path.splitext(relative)
    return os.path.join(heatmaps_dir, stem + HEATMAP_SUFFIX)


def score_images(
    loaded: inference.Loaded,
    paths: Sequence[str],
    *,
    warn: Warn = warn_stderr,
    heatmaps_dir: str | None = None,
    root: str = "",
) -> dict[str, float]:
    """The abnormality probability of every readable image in `paths` (the others are
    warned about and left out). With `heatmaps_dir`, a Grad-CAM overlay of each image on
    its original pixels is written there (see `heatmap_path`)."""
    from murajax import heatmaps  # local: matplotlib is slow to import

    config = loaded.config
    batch_size = config.eval.batch_size
    study_model = models.is_study_model(config.model.name)
    eval_fn = None if study_model else inference.make_eval_fn(loaded.model, len(loaded.states))
    gradcam_fn = None
    probs: dict[str, float] = {}
    for chunk in _chunks(read_all(paths, warn), batch_size):
        images = _pad(inference.prepare_batch(config, [gray for _, gray in chunk]), batch_size)
        if eval_fn is not None:
            labels = np.zeros(batch_size, np.int32)
            out = eval_fn(loaded.states, {"image": images, "label": labels})
            for (path, _), prob in zip(chunk, np.asarray(out["prob"]), strict=False):
                probs[path] = float(prob)
        if heatmaps_dir is None:
            continue
        if gradcam_fn is None:
            gradcam_fn = heatmaps.make_gradcam_fn(loaded.model, loaded.variables(), images)
        maps, _ = gradcam_fn(loaded.variables(), images)
        for (path, gray), heat in zip(chunk, maps, strict=False):
            original = inference.heatmap_to_original(
                heat, gray.shape, config.data.image_size, config.data.resize
            )
            heatmaps.save_overlay(heatmap_path(path, root, heatmaps_dir), gray, original)
    return probs


def score_studies(
    loaded: inference.Loaded, studies: dict[str, list[str]], *, warn: Warn = warn_stderr
) -> dict[str, float]:
    """A study model's ("multiview") abnormality probability of each study, from all of
    its readable images at once (one study batch per study), given to each of those images
    (so that `study_rows` aggregates them to the study's own probability)."""
    eval_fn = inference.make_eval_fn(loaded.model, len(loaded.states))
    probs = {}
    for files in studies.values():
        readable = list(read_all(files, warn))
        if not readable:
            continue
        batch = {
            "image": inference.prepare_batch(loaded.config, [gray for _, gray in readable])[None],
            "label": np.zeros(1, np.int32),
            "view_mask": np.ones((1, len(readable)), bool),
        }
        prob = float(np.asarray(eval_fn(loaded.states, batch)["prob"])[0])
        probs.update((path, prob) for path, _ in readable)
    return probs


# --------------------------------------------------------------------------- studies


def resolve_threshold(loaded: inference.Loaded, workdir: str) -> float:
    """The decision threshold of the workdir's config: `eval.threshold` ('fixed'), or for
    'youden' the one an evaluation of the same checkpoint chose on the holdout (read from
    `eval/*/metrics.json`, else chosen now, which needs the dataset)."""
    config = loaded.config
    if config.eval.threshold_method == "fixed":
        return float(config.eval.threshold)
    for path in sorted(glob.glob(os.path.join(workdir, "eval", "*", "metrics.json"))):
        with open(path) as f:
            body = json.load(f)
        steps = body.get("steps", [body.get("step")])
        if body.get("threshold_method") == "youden" and list(steps) == list(loaded.steps):
            return float(body["threshold"])
    from murajax import evaluation

    eval_fn = inference.make_eval_fn(loaded.model, len(loaded.states))
    holdout = evaluation.predict_state(config, loaded.states, eval_fn, "holdout")
    return evaluation.choose_threshold(config, holdout)


def aggregate(probs: Sequence[float], how: str) -> float:
    """A study's probability from its images': 'mean' (the MURA paper) or 'max'."""
    if how == "mean":
        return float(np.mean(probs))
    if how == "max":
        return float(np.max(probs))
    raise ValueError(f"unknown aggregation {how!r}: expected 'mean' or 'max'")


def study_rows(
    studies: dict[str, list[str]],
    probs: dict[str, float],
    *,
    aggregation: str,
    threshold: float,
    warn: Warn = warn_stderr,
) -> list[dict[str, Any]]:
    """One row per study with at least one scored image (`CSV_COLUMNS`). A folder with no
    scored image is no study; if its files were named like images, that is warned about."""
    rows = []
    for study, files in studies.items():
        scored = [probs[f] for f in files if f in probs]
        if not scored:
            if any(inference.looks_like_image(f) for f in files):
                warn(f"study {study} left out: none of its {len(files)} file(s) could be read")
            continue
        prob = aggregate(scored, aggregation)
        pred = int(prob >= threshold)
        rows.append(
            {
                "study": study,
                "n_images": len(scored),
                "prob": prob,
                "pred": pred,
                "label": LABEL_NAMES[pred],
                "body_part": inference.body_part_of(study),
            }
        )
    return rows


def write_csv(path: str, rows: Sequence[dict[str, Any]]) -> None:
    """Writes `rows` with `CSV_COLUMNS` (probabilities with 6 decimals)."""
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    with open(path, "w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        out.writeheader()
        for row in rows:
            out.writerow({**row, "prob": f"{row['prob']:.6f}"})


def check_outputs(output: str, heatmaps_dir: str | None = None) -> None:
    """Raises `WorkdirError` if the CSV `output` (a file path, not a folder) or the
    `heatmaps_dir` cannot be written; creates nothing."""
    if os.path.isdir(output):
        raise inference.WorkdirError(
            f"--output={output} is a folder: expected the path of the CSV file to write"
        )
    cli.check_writable(os.path.dirname(os.path.abspath(output)), f"--output={output}")
    if heatmaps_dir is not None:
        cli.check_writable(heatmaps_dir, f"--heatmaps={heatmaps_dir}")


def input_root(inputs: Sequence[str]) -> str:
    """The folder that the heatmap tree mirrors: the common folder of the inputs (a folder
    input counts as itself, a file as its parent)."""
    folders = [
        os.path.abspath(p) if os.path.isdir(p) else os.path.dirname(os.path.abspath(p))
        for p in inputs
    ]
    return os.path.commonpath(folders)


def predict(
    workdir: str,
    inputs: Sequence[str],
    output: str,
    *,
    heatmaps_dir: str | None = None,
    checkpoint: str = "best",
    warn: Warn = warn_stderr,
) -> list[dict[str, Any]]:
    """Scores the studies of `inputs` with `workdir`'s checkpoint; writes the CSV `output`.

    Returns the rows. Raises `inference.InputError` for inputs that hold no file or of which
    no image could be scored, and `WorkdirError` for an `output` or `heatmaps_dir` that
    cannot be written (both before the checkpoint is loaded, where they can be told).
    """
    check_outputs(output, heatmaps_dir)
    studies = inference.collect_studies(inputs)
    paths = [path for files in studies.values() for path in files]
    if not paths:
        raise inference.InputError(
            f"nothing to score: --input={','.join(inputs)} holds no files; expected image"
            " files, folders of them (a study is the images of one folder) or shell patterns"
        )
    loaded = inference.load(workdir, checkpoint)
    if loaded.note:
        warn(loaded.note)
    root = input_root(inference.expand_inputs(inputs)) if studies else ""
    if models.is_study_model(loaded.config.model.name):
        probs = score_studies(loaded, studies, warn=warn)
        if heatmaps_dir is not None:
            score_images(loaded, paths, warn=lambda _: None, heatmaps_dir=heatmaps_dir, root=root)
    else:
        probs = score_images(loaded, paths, warn=warn, heatmaps_dir=heatmaps_dir, root=root)
    if not probs:
        raise inference.InputError(
            f"nothing to score: no readable image among the {len(paths)} file(s) in "
            f"{', '.join(inputs)}"
        )
    threshold = resolve_threshold(loaded, workdir)
    rows = study_rows(
        studies, probs, aggregation=loaded.config.eval.aggregation, threshold=threshold, warn=warn
    )
    write_csv(output, rows)
    return rows


def define_flags() -> None:
    """Defines the command's flags (only when run as a program: importing the module
    defines none, so that it can be imported beside other commands)."""
    flags.DEFINE_string("workdir", None, "A training run's directory.")
    flags.DEFINE_list("input", None, "Image folders and/or files (comma-separated).")
    flags.DEFINE_string("output", None, "The CSV to write (one row per study).")
    flags.DEFINE_string("heatmaps", None, "Folder for Grad-CAM overlays (optional).")
    flags.DEFINE_string("checkpoint", "best", "'best' (holdout kappa), 'latest' or a step number.")
    cli.define_compilation_cache_flag()
    flags.mark_flags_as_required(["workdir", "input", "output"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    args = flags.FLAGS
    logging.set_verbosity(logging.ERROR)  # orbax warns about read-only managers
    cli.enable_compilation_cache()
    rows = predict(
        args.workdir,
        args.input,
        args.output,
        heatmaps_dir=args.heatmaps,
        checkpoint=args.checkpoint,
    )
    images = sum(r["n_images"] for r in rows)
    abnormal = sum(r["pred"] for r in rows)
    where = f"; heatmaps in {args.heatmaps}" if args.heatmaps else ""
    print(
        f"{len(rows)} studies ({images} images) scored, {abnormal} abnormal -> {args.output}{where}"
    )


if __name__ == "__main__":
    define_flags()
    cli.run_main(main, errors.USER_ERRORS + inference.USER_ERRORS)
