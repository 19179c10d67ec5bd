"""`report.md` at the workdir root: one page that says what was trained, on what, and how well.

Sections: the configuration; the data (images, studies and patients per split, body part
and label, as the thesis's section 3.3 tabulates them); a grid of example radiographs per
body part and label (`report/examples.png`, the thesis's figures 2-4); the results of every
evaluation in `eval/<split>/metrics.json` (per body part: studies, kappa and AUROC with
their 95% bootstrap CIs, beside the MURA paper's kappas) with links to its plots; the
training curves (`report/training_curves.png`); and heatmaps of a few correctly and wrongly
classified validation studies (`report/heatmaps.png`) where a model is given.

Everything is read from the workdir and the dataset, so the report can be written again at
any time (`write_report(config, workdir)`), e.g. by `experiments.evaluate`. A section whose
inputs are missing says so instead of failing the report.
"""

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from murajax import config as config_lib
from murajax import data, heatmaps, writers
from murajax import workdir as workdir_lib
from murajax.config import Config
from murajax.data import ModelInputs, pipeline, preprocess
from murajax.data import sources as sources_lib
from murajax.report.markdown import format_score, link, table
from tfds_mura.features import BODY_PARTS, LABEL_NAMES

DATA_SPLITS: tuple[str, ...] = ("train", "holdout", "validation")
PLOT_TITLES = {
    "roc": "ROC curves",
    "confusion_matrix": "Confusion matrix (studies)",
    "calibration": "Calibration",
    "kappa_by_body_part": "Kappa by body part",
}


# --------------------------------------------------------------------------- sections


def config_section(config: Config) -> str:
    """The resolved config as a JSON block (as in `config.json`)."""
    return "## Configuration\n\n```json\n" + config_lib.to_json(config) + "\n```\n"


def data_tables(infos: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown tables of `murajax.data.split_info` results, by split and by body part."""
    splits = list(infos)
    overall = [
        [
            split,
            info["num_images"],
            info["num_studies"],
            info["num_patients"],
            "{normal} / {abnormal}".format(**info["study_label_counts"]),
            "{normal} / {abnormal}".format(**info["label_counts"]),
        ]
        for split, info in infos.items()
    ]
    text = table(
        [
            "Split",
            "Images",
            "Studies",
            "Patients",
            "Studies normal / abnormal",
            "Images normal / abnormal",
        ],
        overall,
    )
    rows = []
    names = list(dict.fromkeys(n for info in infos.values() for n in info["by_body_part"]))
    for name in names:
        row: list[Any] = [name]
        for split in splits:
            part = infos[split]["by_body_part"].get(name)
            if part is None:
                row.append("-")
                continue
            counts = part["study_label_counts"]
            row.append(
                f"{part['num_studies']} ({counts['normal']} / {counts['abnormal']})"
                f" · {part['num_images']} · {part['num_patients']}"
            )
        rows.append(row)
    legend = "By body part: studies (normal / abnormal) · images · patients."
    return text + f"\n\n{legend}\n\n" + table(["Body part", *splits], rows)


def data_section(config: Config, splits: Sequence[str] = DATA_SPLITS) -> str:
    """Images, studies and patients per split, body part and label (no image decoded)."""
    infos, problems = {}, []
    for split in splits:
        try:
            infos[split] = data.split_info(config.data, split)
        except Exception as error:  # noqa: BLE001  (the report says what it could not read)
            problems.append(f"{split}: {type(error).__name__}: {error}")
    lines = ["## Data", ""]
    lines.append(
        f"Dataset `{config.data.dataset}`. The holdout is a patient-disjoint"
        f" {config.data.holdout_fraction:.0%} of the patients of TFDS train, used for model"
        " selection; validation is the official MURA valid set, never used to choose"
        " anything. Labels: 1 = abnormal."
    )
    lines.append("")
    if infos:
        lines.append(data_tables(infos))
        lines.append("")
    for problem in problems:
        lines.append(f"> Not available: {problem}")
        lines.append("")
    return "\n".join(lines)


def example_radiographs(
    config: Config, split: str = "validation", per_cell: int = 2
) -> tuple[list[list[np.ndarray | None]], list[str], list[str]]:
    """Up to `per_cell` radiographs per body part (rows) and label (columns) of `split`.

    Each from a different study, the first ones in record order (deterministic). Returns the
    image grid (uint8 (H, W) arrays, None where a cell has no image), row and column labels.
    """
    source, positions = data.split_source(config.data, split)
    meta = sources_lib.metadata(source).take(positions)
    names = sources_lib.class_names(source, "body_part") or BODY_PARTS
    rows, row_labels = [], []
    for part, name in enumerate(names):
        if not np.any(meta.body_part == part):
            continue
        row: list[np.ndarray | None] = []
        for label in range(len(LABEL_NAMES)):
            chosen, seen = [], set()
            for k in np.flatnonzero((meta.body_part == part) & (meta.label == label)):
                if meta.study_id[k] not in seen:
                    seen.add(meta.study_id[k])
                    chosen.append(int(positions[k]))
                if len(chosen) == per_cell:
                    break
            records = pipeline.read_records(source, chosen) if chosen else []
            images = [preprocess.decode_image(r["image"])[..., 0] for r in records]
            row += images + [None] * (per_cell - len(images))
        rows.append(row)
        row_labels.append(name)
    columns = [f"{label} {i + 1}" for label in LABEL_NAMES for i in range(per_cell)]
    return rows, row_labels, columns


def examples_section(config: Config, workdir: str, split: str = "validation") -> str:
    """The example grid (`report/examples.png`) and its caption."""
    from murajax import plots  # here: matplotlib is slow to import

    lines = ["## Example radiographs", ""]
    try:
        grid, row_labels, columns = example_radiographs(config, split)
        path = plots.image_grid(
            grid,
            workdir_lib.report_asset(workdir, workdir_lib.EXAMPLES_FILE),
            row_labels=row_labels,
            column_labels=columns,
            title=f"{config.data.dataset} {split}: examples per body part and label",
        )
    except Exception as error:  # noqa: BLE001
        lines += [f"> Not available: {type(error).__name__}: {error}", ""]
        return "\n".join(lines)
    lines += [
        f"Radiographs of the {split} split, rows by body part, columns normal then abnormal"
        " (each from a different study):",
        "",
        f"![Example radiographs]({link(path, workdir)})",
        "",
    ]
    return "\n".join(lines)


def metrics_table(body: Mapping[str, Any]) -> str:
    """The paper-style table: per body part and overall, studies, kappa and AUROC with CIs,
    sensitivity, specificity, and the MURA paper's kappa for reference."""
    from murajax.plots import PAPER_KAPPA  # here: plots imports matplotlib, slow to import

    def row(name: str, scores: Mapping[str, Any]) -> list[Any]:
        return [
            name,
            f"{scores.get('n', '-')} ({scores.get('normal', '-')} / {scores.get('abnormal', '-')})",
            format_score(scores.get("kappa"), scores.get("kappa_ci")),
            format_score(scores.get("auroc"), scores.get("auroc_ci")),
            format_score(scores.get("sensitivity"), scores.get("sensitivity_ci")),
            format_score(scores.get("specificity"), scores.get("specificity_ci")),
            format_score(PAPER_KAPPA.get(name)),
        ]

    rows = [row(name, scores) for name, scores in body.get("by_body_part", {}).items()]
    rows.append(row("overall", body["study"]))
    rows[-1][0] = "**overall**"
    return table(
        [
            "Body part",
            "Studies (normal / abnormal)",
            "Kappa [95% CI]",
            "AUROC [95% CI]",
            "Sensitivity [95% CI]",
            "Specificity [95% CI]",
            "Paper's kappa*",
        ],
        rows,
    )


def levels_table(body: Mapping[str, Any]) -> str:
    """Every score at the study and the image level, overall, with CIs (the study level only
    for a model that predicts whole studies)."""
    names = ["kappa", "auroc", "accuracy", "sensitivity", "specificity", "precision", "f1"]
    rows = []
    levels = ("study",) if body.get("predicts") == "studies" else ("study", "image")
    for level in levels:
        scores = body.get(level)
        if scores:
            rows.append(
                [level, scores.get("n", "-")]
                + [format_score(scores.get(n), scores.get(f"{n}_ci")) for n in names]
            )
    return table(["Level", "n"] + [n.capitalize() for n in names], rows)


def results_section(workdir: str, evaluations: Mapping[str, Mapping[str, Any]]) -> str:
    """One subsection per evaluated split: the tables and links to its plots."""
    from murajax.plots import PAPER_LABEL  # here: plots imports matplotlib, slow to import

    lines = ["## Results", ""]
    if not evaluations:
        lines += ["> No evaluation found (`eval/<split>/metrics.json`).", ""]
        return "\n".join(lines)
    for split, body in evaluations.items():
        threshold = body.get("threshold")
        method = body.get("threshold_method", "fixed")
        chosen = " (chosen on the holdout by Youden's J)" if method == "youden" else ""
        boot = body.get("bootstrap", {})
        if body.get("predicts") == "studies":
            how = (
                "the model's own prediction from all of the study's views (view pooling:"
                f" {body.get('view_pooling', '?')})"
            )
        else:
            how = f"{body.get('aggregation', 'mean')} of its images' probabilities"
        lines += [
            f"### {split} (checkpoint step {body.get('step')})",
            "",
            f"Study probability = {how}; abnormal if >= {format_score(threshold)}{chosen}. 95% CIs:"
            f" percentile bootstrap over studies ({boot.get('samples', '?')} resamples,"
            f" seed {boot.get('seed', '?')}).",
            "",
            metrics_table(body),
            "",
            f"\\* {PAPER_LABEL}: Rajpurkar et al. 2017, Table 2.",
            "",
            levels_table(body),
            "",
        ]
        directory = workdir_lib.eval_dir(workdir, split)
        files = [
            (title, os.path.join(directory, workdir_lib.PLOT_FILES[name]))
            for name, title in PLOT_TITLES.items()
        ]
        present = [(t, p) for t, p in files if os.path.isfile(p)]
        if present:
            lines += [" ".join(f"![{t}]({link(p, workdir)})" for t, p in present), ""]
        tables = [workdir_lib.STUDY_PREDICTIONS_FILE, workdir_lib.IMAGE_PREDICTIONS_FILE]
        links = [
            f"[{name}]({link(os.path.join(directory, name), workdir)})"
            for name in tables
            if os.path.isfile(os.path.join(directory, name))
        ]
        if links:
            lines += ["Predictions: " + ", ".join(links) + ".", ""]
    return "\n".join(lines)


def training_section(workdir: str) -> str:
    """Train and holdout loss and holdout kappa against step (`report/training_curves.png`)."""
    from murajax import plots  # here: matplotlib is slow to import

    lines = ["## Training curves", ""]
    rows = writers.read_metrics(workdir)
    if not rows:
        lines += ["> No training logged (`metrics.jsonl` is missing or empty).", ""]
        return "\n".join(lines)
    path = plots.training_curves(
        rows, workdir_lib.report_asset(workdir, workdir_lib.TRAINING_CURVES_FILE)
    )
    holdout = [r for r in rows if r.get("split") == "holdout" and r.get("kappa") is not None]
    if holdout:
        best = max(holdout, key=lambda r: r["kappa"])
        lines += [
            f"Best holdout study kappa {best['kappa']:.3f} at step {best['step']}"
            f" (of {len(holdout)} holdout evaluations).",
            "",
        ]
    lines += [f"![Training curves]({link(path, workdir)})", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- heatmaps


def pick_studies(rows: Sequence[Mapping[str, str]], count: int = 4) -> list[tuple[str, str]]:
    """`count` studies of `predictions.csv` rows (fewer if there are fewer), half correct
    and half wrong where there are enough of each.

    Returns (study_id, kind) pairs, kind in 'true positive', 'true negative', 'false
    positive', 'false negative': the most confident of each kind first, the kinds taken in
    turn; missing wrong (or correct) studies are made up for by the others.
    """

    def kind(row: Mapping[str, str]) -> str:
        label, pred = int(row["label"]), int(row["pred"])
        return ("true " if label == pred else "false ") + ("positive" if pred else "negative")

    def confidence(row: Mapping[str, str]) -> float:
        prob = float(row["prob"])
        return prob if int(row["pred"]) else 1 - prob

    ranked: dict[str, list[str]] = {}
    for row in sorted(rows, key=confidence, reverse=True):
        ranked.setdefault(kind(row), []).append(row["study_id"])
    pools = {k: list(v) for k, v in ranked.items()}
    chosen: list[tuple[str, str]] = []

    def take(kinds: Sequence[str], want: int) -> None:
        while want > 0 and any(pools.get(k) for k in kinds):
            for k in kinds:
                if pools.get(k) and want > 0:
                    chosen.append((pools[k].pop(0), k))
                    want -= 1

    correct, wrong = ("true positive", "true negative"), ("false positive", "false negative")
    take(correct, count // 2)
    take(wrong, count - len(chosen))
    take(correct + wrong, count - len(chosen))  # too few of one kind: more of the other
    return chosen


def heatmap_grid(
    config: Config,
    spec: ModelInputs,
    model: Any,
    variables: Any,
    studies: Sequence[tuple[str, str, float]],
    split: str = "validation",
) -> tuple[list[list[np.ndarray | None]], list[str]]:
    """For each (study_id, kind, prob): its first image and the overlay of its Grad-CAM
    (`murajax.heatmaps`; `spec`, the model's `models.ModelSpec`, says how to prepare the
    image), and the row labels."""
    source, positions = data.split_source(config.data, split)
    meta = sources_lib.metadata(source).take(positions)
    preprocessing = pipeline.preprocess_spec(config.data, spec)
    records, labels = [], []
    for study_id, kind, prob in studies:
        found = np.flatnonzero(meta.study_id == study_id)
        if len(found) == 0:
            continue
        records += pipeline.read_records(source, [int(positions[found[0]])])
        part = BODY_PARTS[int(meta.body_part[found[0]])]
        labels.append(f"{kind}\n{part}, p={prob:.2f}")
    if not records:
        return [], []
    maps = np.asarray(
        heatmaps.gradcam(model, variables, pipeline.prepare_images(records, preprocessing))
    )
    grid = []
    for record, heatmap in zip(records, maps, strict=True):
        picture = preprocess.resize_to_square(
            preprocess.decode_image(record["image"]), preprocessing.image_size, preprocessing.resize
        )[..., 0]
        grid.append([picture, np.asarray(heatmaps.overlay(picture, heatmap))])
    return grid, labels


def heatmaps_section(
    config: Config,
    workdir: str,
    *,
    spec: ModelInputs | None = None,
    model: Any | None = None,
    variables: Any | None = None,
    count: int = 4,
    split: str = "validation",
) -> str:
    """Grad-CAM heatmaps of a few correct and wrong studies of `split`, or why there are none."""
    lines = ["## Heatmaps", ""]
    predictions = workdir_lib.eval_file(workdir, split, workdir_lib.STUDY_PREDICTIONS_FILE)
    if spec is None or model is None or variables is None:
        reason = (
            "no model was given to `write_report` (pass `spec=`, `model=` and `variables=`,"
            " as `train_and_evaluate` does)."
        )
    elif not os.path.isfile(predictions):
        reason = f"no `{link(predictions, workdir)}` to choose studies from."
    else:
        reason = ""
    if reason:
        lines += [f"> Heatmaps not drawn: {reason}", ""]
        return "\n".join(lines)
    rows = workdir_lib.read_csv(predictions)
    probs = {r["study_id"]: float(r["prob"]) for r in rows}
    chosen = [(sid, kind, probs[sid]) for sid, kind in pick_studies(rows, count)]
    try:
        from murajax import plots  # here: matplotlib is slow to import

        grid, labels = heatmap_grid(config, spec, model, variables, chosen, split)
        path = plots.image_grid(
            grid,
            workdir_lib.report_asset(workdir, workdir_lib.HEATMAPS_FILE),
            row_labels=labels,
            column_labels=["radiograph (first view)", "Grad-CAM"],
            title=f"{split}: where the model looks",
            cell_inches=2.4,
        )
    except Exception as error:  # noqa: BLE001
        lines += [f"> Heatmaps not drawn: {type(error).__name__}: {error}", ""]
        return "\n".join(lines)
    wrong = sum(label.startswith("false") for label in labels)
    lines += [
        f"Grad-CAM of the first image of {len(grid)} {split} studies, {len(grid) - wrong}"
        f" correct and {wrong} wrong, the most confident of each kind (p = the study's"
        " probability of abnormal; the map explains the abnormal logit).",
        "",
        f"![Heatmaps]({link(path, workdir)})",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the report


def write_report(
    config: Config,
    workdir: str,
    *,
    spec: ModelInputs | None = None,
    model: Any | None = None,
    variables: Any | None = None,
    examples: bool = True,
    heatmaps: int = 4,
) -> str:
    """Writes `<workdir>/report.md` (and its images under `<workdir>/report/`); returns its
    path.

    `spec`, `model` and `variables` (the `models.ModelSpec` of `config.model`, the Flax
    module and its variables) enable the heatmaps section; `examples=False` skips the
    example grid, `heatmaps=0` the heatmaps.
    """
    evaluations = workdir_lib.read_evaluations(workdir)
    steps = [body.get("step") for body in evaluations.values()]
    title = f"# murajax report: `{config.model.name}` on `{config.data.dataset}`"
    summary = [title]
    if "validation" in evaluations:
        study = evaluations["validation"]["study"]
        summary += [
            "",
            f"Validation (checkpoint step {evaluations['validation'].get('step')}): study"
            f" kappa {format_score(study.get('kappa'), study.get('kappa_ci'))}, AUROC"
            f" {format_score(study.get('auroc'), study.get('auroc_ci'))},"
            f" {study.get('n')} studies.",
        ]
    elif steps:
        summary += ["", f"Evaluated at step(s) {', '.join(map(str, steps))}."]
    sections = ["\n".join(summary), results_section(workdir, evaluations)]
    if heatmaps:
        sections.append(
            heatmaps_section(
                config, workdir, spec=spec, model=model, variables=variables, count=heatmaps
            )
        )
    sections += [training_section(workdir), data_section(config)]
    if examples:
        sections.append(examples_section(config, workdir))
    sections.append(config_section(config))
    contents = [s.splitlines()[0].removeprefix("## ") for s in sections[1:]]
    sections[0] += "\n\nContents: " + " · ".join(contents) + "\n"
    path = os.path.join(workdir, workdir_lib.REPORT_FILE)
    return workdir_lib.write_text(path, "\n".join(s.rstrip() + "\n" for s in sections))
