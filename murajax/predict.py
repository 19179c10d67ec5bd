"""Scoring radiographs from disk with a trained workdir: one CSV row per study.

`predict(workdir, inputs, output)` is `python -m experiments.predict`. A study is the images
of one folder (`image_files.collect_studies`); each readable image is preprocessed exactly as
evaluation does and scored, and a study's probability is its images' mean (or
`eval.aggregation`); a study model ("multiview") scores all images of a study at once.
Columns: `study`, `n_images`, `prob`, `pred` (1 = abnormal at the config's threshold), `label`
('normal' / 'abnormal') and the group the path names (MURA's `body_part`, where the dataset has
groups). A dataset of more than two classes gives `pred` (the most probable class's index),
`label` (its name) and `prob_<class>` per class (`csv_columns`). Files that cannot be read are
warned about and skipped; with `heatmaps_dir`, an overlay per image and attribution method
(`attributions`: "gradcam", "ig", "occlusion", see `murajax.attribution_maps`; Grad-CAM by
default) is written in the inputs' folder structure (`<file name>_<method>.png`:
`image1.png_gradcam.png`, so that `image1.png` and `image1.jpg` have their own). Integrated
gradients' steps and baseline and occlusion's patch and stride are the workdir's `eval.*`.
The CSV and the heatmaps folder are never read as inputs, also where they lie inside an
input folder.
"""

import csv
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from murajax import (
    attribution_maps,
    evaluation,
    heatmaps,
    image_files,
    inference,
    metrics,
    reevaluate,
    steps,
)
from murajax import workdir as workdir_lib
from murajax.data import DatasetSpec
from murajax.errors import WorkdirError
from murajax.files import replacing

CSV_COLUMNS = ("study", "n_images", "prob", "pred", "label", "body_part")
"""The columns of a binary dataset grouped by body part (MURA's); see `csv_columns`."""
HEATMAP_SUFFIX = "_gradcam.png"
"""The overlay suffix of the default method; `_<method>.png` for each (`heatmap_path`)."""
DEFAULT_ATTRIBUTIONS: tuple[str, ...] = attribution_maps.DEFAULT_METHODS


def csv_columns(dataset: DatasetSpec) -> tuple[str, ...]:
    """The CSV's columns for `dataset`: MURA's `CSV_COLUMNS`; `prob_<class>` per class instead
    of `prob` for more than two classes; the group column named after the dataset's grouping
    feature, and none without groups."""
    probs = ("prob",) if dataset.binary else tuple(f"prob_{n}" for n in dataset.label_names)
    group = (dataset.group_column,) if dataset.group_column else ()
    return ("study", "n_images", *probs, "pred", "label", *group)


Warn = Callable[[str], None]


def warn_stderr(message: str) -> None:
    """Prints `warning: message` to stderr."""
    print(f"warning: {message}", file=sys.stderr)


# --------------------------------------------------------------------------- scoring


def read_all(paths: Sequence[str], warn: Warn) -> Iterator[tuple[str, np.ndarray]]:
    """(path, uint8 (H, W) grayscale) for each readable file; the others are warned about."""
    for path in paths:
        try:
            yield path, image_files.read_gray(path)
        except image_files.UnreadableImage as e:
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


def heatmap_path(path: str, root: str, heatmaps_dir: str, method: str = "gradcam") -> str:
    """Where the `method` overlay of image `path` goes: its path below `root`, under
    `heatmaps_dir`, with `_<method>.png` after its whole name (`image1.png_gradcam.png`, so
    that each file of a folder has its own, `image1.jpg`'s included)."""
    relative = os.path.relpath(os.path.abspath(path), root)
    return os.path.join(heatmaps_dir, f"{relative}_{method}.png")


def attribution_fns(
    loaded: inference.Loaded, methods: Sequence[str]
) -> dict[str, attribution_maps.AttributionFn]:
    """`murajax.attribution_maps` functions of the loaded model (ensemble member 0), one per
    method, with the workdir's `eval.*` settings; "black" is black as its pipeline
    normalises it."""
    config, variables = loaded.config, loaded.variables()
    black = attribution_maps.black_value(config.data, loaded.spec)
    return {
        method: attribution_maps.make_attribution_fn(
            loaded.model,
            variables,
            method,
            config.eval,
            num_classes=loaded.dataset.num_classes,
            black=black,
        )
        for method in methods
    }


def score_images(
    loaded: inference.Loaded,
    paths: Sequence[str],
    *,
    warn: Warn = warn_stderr,
    heatmaps_dir: str | None = None,
    root: str = "",
    attributions: Sequence[str] = DEFAULT_ATTRIBUTIONS,
) -> dict[str, Any]:
    """The probability of every readable image in `paths` (the others are warned about and
    left out): of class 1 (abnormal) for a binary dataset, else its class vector. With
    `heatmaps_dir`, an overlay of each image on its original pixels is written there per
    method of `attributions` (see `heatmap_path`): of the abnormal class, or of the predicted
    class for more classes (a progress bar counts the images)."""

    config = loaded.config
    batch_size = config.eval.batch_size
    eval_fn = None
    if not loaded.spec.study_level:
        eval_fn = steps.make_eval_fn(loaded.model, len(loaded.states))
    draw = attribution_fns(loaded, attributions) if heatmaps_dir is not None else {}
    progress = tqdm(
        total=len(paths), desc="heatmaps", disable=not draw, dynamic_ncols=True, leave=False
    )
    probs: dict[str, Any] = {}
    for chunk in _chunks(read_all(paths, warn), batch_size):
        images = _pad(
            image_files.prepare_batch(config, loaded.spec, [gray for _, gray in chunk]), batch_size
        )
        if eval_fn is not None:
            labels = np.zeros(batch_size, np.int32)
            out = eval_fn(loaded.states, {"image": images, "label": labels})
            for (path, _), prob in zip(chunk, np.asarray(out["prob"]), strict=False):
                probs[path] = _prob_value(prob)
        if heatmaps_dir is None:
            continue
        for method, attribution_fn in draw.items():
            maps = attribution_fn(images)  # the padded batch: one compiled shape
            for (path, gray), heat in zip(chunk, maps, strict=False):
                original = image_files.heatmap_to_original(
                    heat, gray.shape, config.data.image_size, config.data.resize
                )
                where = heatmap_path(path, root, heatmaps_dir, method)
                heatmaps.save_overlay(where, gray, original)
        progress.update(len(chunk))
    progress.close()
    return probs


def _prob_value(prob: np.ndarray) -> Any:
    """An image's probability: a float (class 1 of two), or a float64 class vector."""
    prob = np.asarray(prob)
    return float(prob) if prob.ndim == 0 else prob.astype(np.float64)


def score_studies(
    loaded: inference.Loaded, studies: dict[str, list[str]], *, warn: Warn = warn_stderr
) -> dict[str, Any]:
    """A study model's ("multiview") abnormality probability of each study, from all of
    its readable images at once (one study batch per study), given to each of those images
    (so that `study_rows` aggregates them to the study's own probability)."""
    eval_fn = steps.make_eval_fn(loaded.model, len(loaded.states))
    probs = {}
    for files in studies.values():
        readable = list(read_all(files, warn))
        if not readable:
            continue
        batch = {
            "image": image_files.prepare_batch(
                loaded.config, loaded.spec, [g for _, g in readable]
            )[None],
            "label": np.zeros(1, np.int32),
            "view_mask": np.ones((1, len(readable)), bool),
        }
        prob = _prob_value(np.asarray(eval_fn(loaded.states, batch)["prob"])[0])
        probs.update((path, prob) for path, _ in readable)
    return probs


# --------------------------------------------------------------------------- studies


def threshold_of(loaded: inference.Loaded, workdir: str) -> float:
    """The decision threshold for new images (`evaluation.resolve_threshold`, split None):
    `eval.threshold`, or for 'youden' the one an evaluation of the same checkpoints chose on
    the holdout (its metrics.json), else chosen on the holdout now (needs the dataset)."""
    return evaluation.resolve_threshold(
        loaded.config,
        None,
        recorded=workdir_lib.recorded_threshold(workdir, loaded.steps),
        holdout=lambda: reevaluate.predict_images(loaded, "holdout"),
    )


def aggregate(probs: Sequence[Any], how: str) -> Any:
    """A study's probability from its images': 'mean' (the MURA paper) or 'max'; class
    vectors as `metrics.aggregate_probs` aggregates them."""
    if how not in ("mean", "max"):
        raise ValueError(f"unknown aggregation {how!r}: expected 'mean' or 'max'")
    if np.ndim(probs[0]) == 1:
        inverse = np.zeros(len(probs), dtype=np.int64)
        return metrics.aggregate_probs(np.stack(probs), inverse, 1, how)[0]
    return float(np.mean(probs)) if how == "mean" else float(np.max(probs))


def study_rows(
    studies: dict[str, list[str]],
    probs: dict[str, Any],
    *,
    aggregation: str,
    threshold: float,
    dataset: DatasetSpec,
    warn: Warn = warn_stderr,
) -> list[dict[str, Any]]:
    """One row per study with at least one scored image (`csv_columns`). A folder with no
    scored image is no study; if its files were named like images, that is warned about.
    `dataset` (the workdir's `DatasetSpec`) names the labels and groups."""
    rows = []
    for study, files in studies.items():
        scored = [probs[f] for f in files if f in probs]
        if not scored:
            if any(image_files.looks_like_image(f) for f in files):
                warn(f"study {study} left out: none of its {len(files)} file(s) could be read")
            continue
        prob = aggregate(scored, aggregation)
        row: dict[str, Any] = {"study": study, "n_images": len(scored)}
        if np.ndim(prob) == 1:
            pred = int(np.argmax(prob))
            row |= {f"prob_{n}": p for n, p in zip(dataset.label_names, prob, strict=True)}
        else:
            pred = int(prob >= threshold)
            row["prob"] = prob
        row |= {"pred": pred, "label": dataset.label_names[pred]}
        if dataset.group_column:
            row[dataset.group_column] = image_files.group_of(study, dataset.group_names)
        rows.append(row)
    return rows


def write_csv(
    path: str, rows: Sequence[dict[str, Any]], columns: Sequence[str] = CSV_COLUMNS
) -> None:
    """Writes `rows` with `columns` (`csv_columns`; probabilities with 6 decimals)."""
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    with replacing(path) as part, open(part, "w", newline="") as f:
        out = csv.DictWriter(f, fieldnames=list(columns))
        out.writeheader()
        for row in rows:
            probs = {k: f"{v:.6f}" for k, v in row.items() if k.startswith("prob")}
            out.writerow({**row, **probs})


def check_outputs(output: str, heatmaps_dir: str | None = None) -> None:
    """Raises `WorkdirError` if the CSV `output` (a file path, not a folder) or the
    `heatmaps_dir` cannot be written; creates nothing."""
    if os.path.isdir(output):
        raise WorkdirError(
            f"--output={output} is a folder: expected the path of the CSV file to write"
        )
    workdir_lib.check_writable(os.path.dirname(os.path.abspath(output)), f"--output={output}")
    if heatmaps_dir is not None:
        workdir_lib.check_writable(heatmaps_dir, f"--heatmaps={heatmaps_dir}")


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
    attributions: Sequence[str] = DEFAULT_ATTRIBUTIONS,
) -> list[dict[str, Any]]:
    """Scores the studies of `inputs` with `workdir`'s checkpoint; writes the CSV `output`,
    and with `heatmaps_dir` the overlays of each method of `attributions`.

    Returns the rows. Raises `image_files.InputError` for inputs that hold no file or of which
    no image could be scored, and `WorkdirError` for an `output` or `heatmaps_dir` that
    cannot be written (both before the checkpoint is loaded, where they can be told). The
    `output` and `heatmaps_dir` are left out of the inputs (a previous run's heatmaps inside
    an input folder are not scored).
    """
    attributions = attribution_maps.check_methods(attributions)
    check_outputs(output, heatmaps_dir)
    outputs = [output] + ([heatmaps_dir] if heatmaps_dir is not None else [])
    studies = image_files.collect_studies(inputs, skip=outputs)
    paths = [path for files in studies.values() for path in files]
    if not paths:
        raise image_files.InputError(
            f"nothing to score: --input={','.join(inputs)} holds no files; expected image"
            " files, folders of them (a study is the images of one folder) or shell patterns"
        )
    loaded = inference.load(workdir, checkpoint)
    if loaded.note:
        warn(loaded.note)
    root = input_root(image_files.expand_inputs(inputs)) if studies else ""
    if loaded.spec.study_level:
        probs = score_studies(loaded, studies, warn=warn)
        if heatmaps_dir is not None:
            score_images(
                loaded,
                paths,
                warn=lambda _: None,
                heatmaps_dir=heatmaps_dir,
                root=root,
                attributions=attributions,
            )
    else:
        probs = score_images(
            loaded,
            paths,
            warn=warn,
            heatmaps_dir=heatmaps_dir,
            root=root,
            attributions=attributions,
        )
    if not probs:
        raise image_files.InputError(
            f"nothing to score: no readable image among the {len(paths)} file(s) in "
            f"{', '.join(inputs)}"
        )
    threshold = threshold_of(loaded, workdir)
    dataset = loaded.dataset
    rows = study_rows(
        studies,
        probs,
        aggregation=loaded.config.eval.aggregation,
        threshold=threshold,
        warn=warn,
        dataset=dataset,
    )
    write_csv(output, rows, csv_columns(dataset))
    return rows
