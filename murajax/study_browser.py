"""An evaluation's study browser: `eval/<split>/browser/index.html` (`murajax.browser`).

    write_split_browser(config, workdir, split, spec, dataset, model, variables)

Written by the end of training and by `experiments.evaluate` after `eval/<split>/`'s files,
from them: the worklist is `predictions.csv` (label, probability, decision, `referred`,
`conformal_set`), the summary panel is `metrics.json` and the plots. The views are the
split's images as the model saw them (its preprocessed inputs, each stretched to the full
gray range for display), each with the heatmaps of `eval.attributions` (Grad-CAM by default;
"ig" and "occlusion" cost one pass per path step or occluded square, see
`murajax.attribution_maps`). An ensemble's heatmaps are its first member's.
"""

import csv
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from murajax import attribution_maps, data
from murajax import workdir as workdir_lib
from murajax.browser import Study, Summary, View, write_browser
from murajax.config import Config
from murajax.data import DatasetSpec, ModelInputs

SUMMARY_PLOTS: tuple[tuple[str, str], ...] = (
    ("roc", "ROC with operating points"),
    ("referral", "Referral"),
    ("calibration", "Reliability"),
    ("kappa_by_group", "Kappa by group"),
)


def browser_dir(workdir: str, split: str) -> str:
    """`W/eval/<split>/browser`."""
    return os.path.join(workdir_lib.eval_dir(workdir, split), workdir_lib.BROWSER_DIR)


def display_image(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W) of a preprocessed (H, W, C) model input: its channel mean stretched to
    0..255 (a constant image is black)."""
    gray = np.asarray(image, np.float32).mean(axis=-1)
    low, high = float(gray.min()), float(gray.max())
    scale = 255.0 / (high - low) if high > low else 0.0
    return np.round((gray - low) * scale).astype(np.uint8)


def _image_batches(
    config: Config, split: str, spec: ModelInputs
) -> Iterator[tuple[np.ndarray, list[str], list[str]]]:
    """(images (N, H, W, C), study ids, view names) of `split`, every image once; a study
    model's views are flattened (its padding views dropped)."""
    batches = data.make_eval_batches(
        config.data, split, model=spec, batch_size=config.eval.batch_size
    )
    for batch in batches:
        rows = np.flatnonzero(batch["mask"])
        if "view_mask" in batch:  # (B, V, H, W, C) studies
            images, ids, names = [], [], []
            for row in rows:
                for view in np.flatnonzero(batch["view_mask"][row]):
                    images.append(batch["image"][row, view])
                    ids.append(str(batch["study_id"][row]))
                    names.append(f"view {view + 1}")
            if images:
                yield np.stack(images), ids, names
        elif len(rows):
            paths = [str(p) for p in batch["image_path"][rows]]
            ids = [str(s) for s in batch["study_id"][rows]]
            yield batch["image"][rows], ids, [os.path.basename(p) or p for p in paths]


def collect_views(
    config: Config,
    split: str,
    spec: ModelInputs,
    model: nn.Module,
    variables: Any,
    num_classes: int,
) -> dict[str, list[View]]:
    """{study id: its views with their heatmaps} of `split` (see the module docstring)."""
    methods = attribution_maps.check_methods(config.eval.attributions)
    black = attribution_maps.black_value(config.data, spec)
    functions = {
        method: attribution_maps.make_attribution_fn(
            model, variables, method, config.eval, num_classes=num_classes, black=black
        )
        for method in methods
    }
    views: dict[str, list[View]] = {}
    for images, ids, names in _image_batches(config, split, spec):
        maps = _maps(functions, images)
        for i, (study_id, name) in enumerate(zip(ids, names, strict=True)):
            heatmaps = {method: maps[method][i] for method in maps}
            view = View(name=name, image=display_image(images[i]), heatmaps=heatmaps)
            views.setdefault(study_id, []).append(view)
    return views


def _maps(functions: dict[str, Any], images: np.ndarray) -> dict[str, np.ndarray]:
    """Each method's maps of `images`; a method the model cannot give (e.g. Grad-CAM of a
    user's module that marks no feature map) is named once and dropped from `functions`,
    and the browser shows the views without it."""
    maps = {}
    for method, fn in list(functions.items()):
        try:
            maps[method] = np.asarray(fn(images))
        except ValueError as error:
            print(f"[murajax] warning: the study browser draws no {method} heatmaps: {error}")
            del functions[method]
    return maps


def read_studies(path: str) -> list[dict[str, str]]:
    """The rows of an evaluation's `predictions.csv`."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def study_of(row: Mapping[str, str], dataset: DatasetSpec, views: Sequence[View]) -> Study:
    """A worklist entry of one `predictions.csv` row."""
    names = dataset.label_names
    label, decision = int(row["label"]), int(row["pred"])
    if "prob" in row:  # binary: the positive class's probability
        prob = float(row["prob"])
    else:  # more classes: the decided class's
        prob = float(row[f"prob_{names[decision]}"])
    conformal_set = tuple(n for n in row.get("conformal_set", "").split("|") if n)
    return Study(
        study_id=row["study_id"],
        group=row.get(dataset.group_column) if dataset.group_column else None,
        label=names[label],
        prob=prob,
        decision=names[decision],
        conformal_set=conformal_set,
        referred=row.get("referred") == "1",
        correct=label == decision,
        views=views,
    )


def _ci(body: Mapping[str, Any], key: str) -> tuple[float, float] | None:
    ci = body.get(f"{key}_ci")
    return (float(ci[0]), float(ci[1])) if ci and None not in ci else None


def summary_of(config: Config, body: Mapping[str, Any], out: str, dataset: DatasetSpec) -> Summary:
    """The summary panel: study-level scores with CIs, the triage figures as notes, and the
    evaluation's plots."""
    study = body["study"]
    keys = {
        "kappa": "kappa",
        "auroc": "AUROC",
        "accuracy": "accuracy",
        "sensitivity": "sensitivity",
        "specificity": "specificity",
    }
    rows = [
        (f"study {name}", float(study[k]), _ci(study, k)) for k, name in keys.items() if k in study
    ]
    rows.append(("studies", float(study["n"]), None))
    notes = []
    if "threshold" in body:
        notes.append(
            f"Decision: {dataset.label_names[1]} at probability >= {body['threshold']:.3g}"
            f" ({body['threshold_method']})"
        )
    section = body.get("triage", {})
    for name, point in section.get("operating_points", {}).items():
        notes.append(
            f"Operating point {name} (chosen on holdout, threshold {point['threshold']:.3g}):"
            f" sensitivity {point['sensitivity']:.3f}, specificity {point['specificity']:.3f},"
            f" {point['flagged']:.0f} of {point['n']:.0f} studies flagged"
        )
    for alpha, entry in section.get("conformal", {}).items():
        split = entry["split"]
        notes.append(
            f"Conformal sets, alpha {alpha}: coverage {split['coverage']:.3f}"
            f" (guaranteed >= {1 - float(alpha):.2f} if exchangeable)"
        )
        break  # the browser shows the first alpha's sets
    referral = section.get("referral")
    if referral:
        notes.append(
            f"Referred: the {referral['fraction']:.0%} least certain studies;"
            f" AURC {referral['aurc']:.3f}"
        )
    temperature = body.get("calibration", {}).get("temperature")
    if temperature is not None:
        notes.append(f"Probabilities temperature-scaled (T = {temperature:.3f}, fitted on holdout)")
    files = workdir_lib.plot_files(dataset.group_feature, binary=dataset.binary)
    files["referral"] = workdir_lib.REFERRAL_PLOT
    plots = {}
    for name, caption in SUMMARY_PLOTS:
        path = os.path.join(out, files.get(name, ""))
        if name in files and os.path.isfile(path):
            plots[caption] = path
    title = f"{config.model.name} on {dataset.name}: {body['split']}, step {body['step']}"
    return Summary(title=title, metrics=rows, plots=plots, notes=notes)


def write_split_browser(
    config: Config,
    workdir: str,
    split: str,
    spec: ModelInputs,
    dataset: DatasetSpec,
    model: nn.Module,
    variables: Any,
) -> str:
    """Writes `eval/<split>/browser/` from the evaluation's files (written first) and the
    split's images; returns the path of its index.html."""
    started = time.perf_counter()
    out = workdir_lib.eval_dir(workdir, split)
    body = workdir_lib.read_json(os.path.join(out, workdir_lib.METRICS_FILE))
    rows = read_studies(os.path.join(out, workdir_lib.STUDY_PREDICTIONS_FILE))
    views = collect_views(config, split, spec, model, variables, dataset.num_classes)
    studies = [study_of(row, dataset, views.get(row["study_id"], [])) for row in rows]
    index = write_browser(
        browser_dir(workdir, split), studies, summary_of(config, body, out, dataset)
    )
    seconds = time.perf_counter() - started
    n_views = sum(len(s.views) for s in studies)
    print(
        f"[murajax] study browser: {len(studies)} studies, {n_views} views"
        f" ({', '.join(config.eval.attributions)}) in {seconds:.1f} s -> {index}"
    )
    return index


def write_if_wanted(
    config: Config,
    workdir: str,
    split: str,
    spec: ModelInputs,
    dataset: DatasetSpec,
    model: nn.Module,
    variables: Any,
) -> str | None:
    """`write_split_browser` when `eval.browser` asks for it, on process 0; a failure is
    reported and returns None (the evaluation's files are written already)."""
    if not config.eval.browser or jax.process_index() != 0:
        return None
    try:
        return write_split_browser(config, workdir, split, spec, dataset, model, variables)
    except (OSError, ValueError) as error:
        print(f"[murajax] warning: the study browser of {split} failed: {error}")
        return None
