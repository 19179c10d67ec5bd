"""`report.md` at the workdir root: one page that says what was trained, on what, and how well.

Sections: the configuration; the data (images, studies and patients per split, body part
and label, as the thesis's section 3.3 tabulates them); a grid of example radiographs per
body part and label (`report/examples.png`, the thesis's figures 2-4); the results of every
evaluation in `eval/<split>/metrics.json` (per body part: studies, kappa and AUROC with
their 95% bootstrap CIs, beside the MURA paper's kappas) with links to its plots; the
training curves (`report/training_curves.png`); and heatmaps of a few correctly and wrongly
classified validation studies (`report/heatmaps.png`) where a model is given; and the
attribution sanity check (`eval/<split>/attribution_sanity.json`, written by
`experiments.sanity_check`) where one was run.

Everything is read from the workdir and the dataset, so the report can be written again at
any time (`write_report(config, workdir)`), e.g. by `experiments.evaluate`. A section whose
inputs are missing says so instead of failing the report.
"""

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from murajax import attribution_maps, attribution_sanity, data, heatmaps, writers
from murajax import config as config_lib
from murajax import workdir as workdir_lib
from murajax.config import Config
from murajax.data import DatasetSpec, ModelInputs, pipeline, preprocess
from murajax.data import sources as sources_lib
from murajax.report.markdown import format_score, link, table

DATA_SPLITS: tuple[str, ...] = ("train", "holdout", "validation")
PLOT_TITLES = {
    "roc": "ROC curves",
    "confusion_matrix": "Confusion matrix (studies)",
    "calibration": "Calibration",
    "kappa_by_group": "Kappa by {group}",
    "referral": "Referral",
}


def group_title(dataset: DatasetSpec) -> str:
    """The grouping feature as a column title: "Body part" (MURA), "Group"."""
    return (dataset.group_feature or "group").replace("_", " ").capitalize()


def _slashed(counts: Mapping[str, Any], names: Sequence[str]) -> str:
    """`12 / 30` (MURA's normal / abnormal): counts in label order."""
    return " / ".join(str(counts.get(n, 0)) for n in names)


# --------------------------------------------------------------------------- sections


def config_section(config: Config) -> str:
    """The resolved config as a JSON block (as in `config.json`)."""
    return "## Configuration\n\n```json\n" + config_lib.to_json(config) + "\n```\n"


def data_tables(infos: Mapping[str, Mapping[str, Any]], dataset: DatasetSpec) -> str:
    """Markdown tables of `murajax.data.split_info` results, by split and by group (MURA's
    body parts; no second table without groups)."""
    splits = list(infos)
    names = dataset.label_names
    slashed = " / ".join(names)
    overall = [
        [
            split,
            info["num_images"],
            info["num_studies"],
            info["num_patients"],
            _slashed(info["study_label_counts"], names),
            _slashed(info["label_counts"], names),
        ]
        for split, info in infos.items()
    ]
    text = table(
        ["Split", "Images", "Studies", "Patients", f"Studies {slashed}", f"Images {slashed}"],
        overall,
    )
    rows = []
    groups = list(dict.fromkeys(n for info in infos.values() for n in info["by_group"]))
    for name in groups:
        row: list[Any] = [name]
        for split in splits:
            part = infos[split]["by_group"].get(name)
            if part is None:
                row.append("-")
                continue
            counts = _slashed(part["study_label_counts"], names)
            row.append(
                f"{part['num_studies']} ({counts}) · {part['num_images']} · {part['num_patients']}"
            )
        rows.append(row)
    if not rows:
        return text
    title = group_title(dataset)
    legend = f"By {title.lower()}: studies ({slashed}) · images · patients."
    return text + f"\n\n{legend}\n\n" + table([title, *splits], rows)


def data_section(config: Config, dataset: DatasetSpec, splits: Sequence[str] = DATA_SPLITS) -> str:
    """Images, studies and patients per split, group and label (no image decoded)."""
    infos, problems = {}, []
    for split in splits:
        try:
            infos[split] = data.split_info(
                config.data,
                split,
                label_names=dataset.label_names,
                group_names=dataset.group_names,
            )
        except Exception as error:  # noqa: BLE001  (the report says what it could not read)
            problems.append(f"{split}: {type(error).__name__}: {error}")
    lines = ["## Data", ""]
    labels = ", ".join(f"{i} = {n}" for i, n in enumerate(dataset.label_names))
    lines.append(
        f"Dataset `{config.data.dataset}`. The holdout is a patient-disjoint"
        f" {config.data.holdout_fraction:.0%} of the patients of TFDS train, used for model"
        " selection; validation is the dataset's validation split (MURA's official valid"
        f" set), never used to choose anything. Labels: {labels}."
    )
    lines.append("")
    if infos:
        lines.append(data_tables(infos, dataset))
        lines.append("")
    for problem in problems:
        lines.append(f"> Not available: {problem}")
        lines.append("")
    return "\n".join(lines)


def example_radiographs(
    config: Config, dataset: DatasetSpec, split: str = "validation", per_cell: int = 2
) -> tuple[list[list[np.ndarray | None]], list[str], list[str]]:
    """Up to `per_cell` radiographs per group (rows: MURA's body parts; one row "all" without
    groups) and label (columns) of `split`.

    Each from a different study, the first ones in record order (deterministic). Returns the
    image grid (uint8 (H, W) arrays, None where a cell has no image), row and column labels.
    """
    source, positions = data.split_source(config.data, split)
    meta = sources_lib.metadata(source).take(positions)
    names = dataset.group_names or ("all",)
    rows, row_labels = [], []
    for part, name in enumerate(names):
        if not np.any(meta.group == part):
            continue
        row: list[np.ndarray | None] = []
        for label in range(dataset.num_classes):
            chosen, seen = [], set()
            for k in np.flatnonzero((meta.group == part) & (meta.label == label)):
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
    columns = [f"{label} {i + 1}" for label in dataset.label_names for i in range(per_cell)]
    return rows, row_labels, columns


def examples_section(
    config: Config, workdir: str, dataset: DatasetSpec, split: str = "validation"
) -> str:
    """The example grid (`report/examples.png`) and its caption."""
    from murajax import plots  # here: matplotlib is slow to import

    lines = ["## Example radiographs", ""]
    by_what = group_title(dataset).lower() if dataset.group_names else "split"
    try:
        grid, row_labels, columns = example_radiographs(config, dataset, split)
        path = plots.image_grid(
            grid,
            workdir_lib.report_asset(workdir, workdir_lib.EXAMPLES_FILE),
            row_labels=row_labels,
            column_labels=columns,
            title=f"{config.data.dataset} {split}: examples per {by_what} and label",
        )
    except Exception as error:  # noqa: BLE001
        lines += [f"> Not available: {type(error).__name__}: {error}", ""]
        return "\n".join(lines)
    lines += [
        f"Radiographs of the {split} split, rows by {by_what}, columns"
        f" {' then '.join(dataset.label_names)} (each from a different study):",
        "",
        f"![Example radiographs]({link(path, workdir)})",
        "",
    ]
    return "\n".join(lines)


def metrics_table(body: Mapping[str, Any], dataset: DatasetSpec) -> str:
    """The paper-style table: per group (MURA's body parts) and overall, studies, kappa and
    AUROC with CIs, sensitivity, specificity, and the reference kappa where the dataset has
    one (the MURA paper's). More than two classes: see `multiclass_tables`."""
    reference = dataset.reference_kappa

    def row(name: str, scores: Mapping[str, Any]) -> list[Any]:
        cells = [
            name,
            f"{scores.get('n', '-')} ({scores.get('normal', '-')} / {scores.get('abnormal', '-')})",
            format_score(scores.get("kappa"), scores.get("kappa_ci")),
            format_score(scores.get("auroc"), scores.get("auroc_ci")),
            format_score(scores.get("sensitivity"), scores.get("sensitivity_ci")),
            format_score(scores.get("specificity"), scores.get("specificity_ci")),
        ]
        return cells + ([format_score(reference.get(name))] if reference else [])

    rows = [row(name, scores) for name, scores in _by_group(body, dataset).items()]
    rows.append(row("overall", body["study"]))
    rows[-1][0] = "**overall**"
    negative, positive = dataset.label_names
    header = [
        group_title(dataset) if dataset.group_names else "",
        f"Studies ({negative} / {positive})",
        "Kappa [95% CI]",
        "AUROC [95% CI]",
        "Sensitivity [95% CI]",
        "Specificity [95% CI]",
    ]
    return table(header + (["Reference kappa*"] if reference else []), rows)


def _by_group(body: Mapping[str, Any], dataset: DatasetSpec) -> Mapping[str, Any]:
    return body.get(dataset.by_group_key, {}) if dataset.by_group_key else {}


def multiclass_tables(body: Mapping[str, Any], dataset: DatasetSpec) -> str:
    """More than two classes: kappa, macro AUROC and accuracy per group and overall, then
    each class's one-vs-rest AUROC and sensitivity with CIs, and the confusion matrix."""

    def row(name: str, scores: Mapping[str, Any]) -> list[Any]:
        return [
            name,
            scores.get("n", "-"),
            format_score(scores.get("kappa"), scores.get("kappa_ci")),
            format_score(scores.get("auroc"), scores.get("auroc_ci")),
            format_score(scores.get("accuracy"), scores.get("accuracy_ci")),
        ]

    rows = [row(name, scores) for name, scores in _by_group(body, dataset).items()]
    rows.append(row("overall", body["study"]))
    rows[-1][0] = "**overall**"
    weights = body.get("kappa_weights", "none")
    kappa = "Kappa [95% CI]" if weights == "none" else f"Kappa ({weights}-weighted) [95% CI]"
    first = group_title(dataset) if dataset.group_names else ""
    text = table([first, "Studies", kappa, "AUROC macro, one-vs-rest [95% CI]", "Accuracy"], rows)
    study = body["study"]
    aurocs, sensitivities = study.get("auroc_by_class", {}), study.get("sensitivity_by_class", {})
    counts = study.get("class_counts", {})
    per_class = [
        [
            name,
            counts.get(name, "-") if isinstance(counts, Mapping) else "-",
            format_score(aurocs.get(name), study.get("auroc_by_class_ci", {}).get(name)),
            format_score(
                sensitivities.get(name), study.get("sensitivity_by_class_ci", {}).get(name)
            ),
        ]
        for name in dataset.label_names
    ]
    text += "\n\n" + table(
        ["Class", "Studies", "AUROC [95% CI]", "Sensitivity [95% CI]"], per_class
    )
    confusion = study.get("confusion")
    if confusion:
        names = dataset.label_names
        matrix = [[f"true {names[i]}", *row] for i, row in enumerate(confusion)]
        text += "\n\n" + table(["", *(f"predicted {n}" for n in names)], matrix)
    return text


def levels_table(body: Mapping[str, Any]) -> str:
    """Every score at the study and the image level, overall, with CIs (the study level only
    for a model that predicts whole studies)."""
    names = ["kappa", "auroc", "accuracy", "sensitivity", "specificity", "precision", "f1"]
    if "classes" in body:  # more than two classes
        names = ["kappa", "auroc", "accuracy"]
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


def _with_ci(scores: Mapping[str, Any], name: str) -> str:
    return format_score(scores.get(name), scores.get(f"{name}_ci"))


def triage_tables(section: Mapping[str, Any]) -> str:
    """metrics.json's `triage` section (`murajax.triage`) as Markdown: the operating points,
    calibration, conformal coverage and referral, each chosen on the holdout."""
    lines = ["#### Operating points, calibration, conformal sets, referral (chosen on holdout)", ""]
    cal = section.get("calibration", {})
    if "temperature" in cal:
        before, after = cal.get("before", {}), cal.get("after", {})
        lines += [
            f"Temperature scaling: T = {format_score(cal['temperature'])}; ECE (equal width)"
            f" {_with_ci(before, 'ece_width')} before, {_with_ci(after, 'ece_width')} after;"
            f" equal mass {_with_ci(before, 'ece_mass')} before,"
            f" {_with_ci(after, 'ece_mass')} after. The scores below use calibrated values.",
            "",
        ]
    else:
        before = cal.get("before", {})
        lines += [
            f"ECE: equal width {_with_ci(before, 'ece_width')}, equal mass"
            f" {_with_ci(before, 'ece_mass')}.",
            "",
        ]
    points = section.get("operating_points", {})
    if points:
        names = ("sensitivity", "specificity", "ppv", "npv", "kappa")
        rows = [
            [
                name,
                format_score(p["threshold"]),
                *(_with_ci(p, n) for n in names),
                f"{int(p['flagged'])} / {p['n']}",
            ]
            for name, p in points.items()
        ]
        lines += [
            table(
                [
                    "Operating point",
                    "Threshold",
                    "Sensitivity",
                    "Specificity",
                    "PPV",
                    "NPV",
                    "Kappa",
                    "Flagged",
                ],
                rows,
            ),
            "",
        ]
    for alpha, entry in section.get("conformal", {}).items():
        sizes, covered = entry["split"]["set_sizes"], entry["split"]["coverage"]
        lines.append(
            f"- Conformal sets at alpha {alpha}: coverage {format_score(covered)}"
            f" (Mondrian {format_score(entry['mondrian']['coverage'])}); one label for"
            f" {float(sizes.get('1', sizes.get(1, 0))):.0%} of studies, both for"
            f" {float(sizes.get('2', sizes.get(2, 0))):.0%}"
            + (
                f", none for {empty:.0%}"
                if (empty := float(sizes.get("0", sizes.get(0, 0))))
                else ""
            )
            + "."
        )
    referral_curve = section.get("referral", {})
    if referral_curve:
        kept = dict(zip(referral_curve["referred"], referral_curve["kappa"], strict=False))
        lines.append(
            f"- Referral: kappa {format_score(kept.get(0.0))} with none referred,"
            f" {format_score(kept.get(0.1))} at 10%, {format_score(kept.get(0.2))} at 20%;"
            f" area under the risk-coverage curve {format_score(referral_curve.get('aurc'))}."
        )
    return "\n".join(lines)


def results_section(
    workdir: str, evaluations: Mapping[str, Mapping[str, Any]], dataset: DatasetSpec
) -> str:
    """One subsection per evaluated split: the tables and links to its plots."""
    lines = ["## Results", ""]
    if not evaluations:
        lines += ["> No evaluation found (`eval/<split>/metrics.json`).", ""]
        return "\n".join(lines)
    for split, body in evaluations.items():
        multiclass = "classes" in body
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
        if multiclass:
            decision = "the predicted class is the most probable one"
            tables = [multiclass_tables(body, dataset)]
        else:
            decision = f"{dataset.label_names[1]} if >= {format_score(threshold)}{chosen}"
            tables = [metrics_table(body, dataset)]
            if dataset.reference_kappa:
                source = f": {dataset.reference_source}" if dataset.reference_source else ""
                tables += ["", f"\\* {dataset.reference_label}{source}."]
        lines += [
            f"### {split} (checkpoint step {body.get('step')})",
            "",
            f"Study probability = {how}; {decision}. 95% CIs:"
            f" percentile bootstrap over studies ({boot.get('samples', '?')} resamples,"
            f" seed {boot.get('seed', '?')}).",
            "",
            *tables,
            "",
            levels_table(body),
            "",
        ]
        if "triage" in body:
            lines += [triage_tables(body["triage"]), ""]
        directory = workdir_lib.eval_dir(workdir, split)
        plot_files = workdir_lib.plot_files(dataset.group_feature, binary=not multiclass)
        if "triage" in body:
            plot_files["referral"] = workdir_lib.REFERRAL_PLOT
        files = [
            (
                title.format(group=group_title(dataset).lower()),
                os.path.join(directory, plot_files[name]),
            )
            for name, title in PLOT_TITLES.items()
            if name in plot_files
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
        browser = os.path.join(directory, workdir_lib.BROWSER_DIR, "index.html")
        if os.path.isfile(browser):
            lines += [
                f"Study browser (the worklist, each study's views with heatmaps; open it in a web"
                f" browser): [{link(browser, workdir)}]({link(browser, workdir)}).",
                "",
            ]
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
    positive', 'false negative' (more than two classes: 'correct <class>', 'wrong <class>',
    by the predicted class): the most confident of each kind first, the kinds taken in
    turn; missing wrong (or correct) studies are made up for by the others.
    """

    def kind(row: Mapping[str, str]) -> str:
        label, pred = int(row["label"]), int(row["pred"])
        if "prob" not in row:
            return ("correct " if label == pred else "wrong ") + row["pred_name"]
        return ("true " if label == pred else "false ") + ("positive" if pred else "negative")

    def confidence(row: Mapping[str, str]) -> float:
        return study_probability(row)

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

    correct = tuple(k for k in ranked if k.startswith(("true", "correct")))
    wrong = tuple(k for k in ranked if k.startswith(("false", "wrong")))
    if not any(k.startswith(("correct", "wrong")) for k in ranked):  # binary: a fixed order
        correct, wrong = ("true positive", "true negative"), ("false positive", "false negative")
    take(correct, count // 2)
    take(wrong, count - len(chosen))
    take(correct + wrong, count - len(chosen))  # too few of one kind: more of the other
    return chosen


def _shown_probability(row: Mapping[str, str]) -> float:
    """The probability shown beside a heatmap: binary, the study's `prob` (of class 1); more
    classes, that of its predicted class."""
    return float(row["prob"]) if "prob" in row else study_probability(row)


def study_probability(row: Mapping[str, str]) -> float:
    """The probability of a `predictions.csv` row's predicted class (binary: of class 1 where
    it is predicted, else of class 0; more classes: `prob_<predicted class>`)."""
    if "prob" in row:
        prob = float(row["prob"])
        return prob if int(row["pred"]) else 1 - prob
    return float(row[f"prob_{row['pred_name']}"])


def heatmap_grid(
    config: Config,
    spec: ModelInputs,
    model: Any,
    variables: Any,
    studies: Sequence[tuple[str, str, float]],
    dataset: DatasetSpec,
    split: str = "validation",
) -> tuple[list[list[np.ndarray | None]], list[str]]:
    """For each (study_id, kind, prob): its first image and an overlay per method of
    `eval.attributions` (`murajax.attribution_maps`: of class 1, MURA's abnormal, or of the
    predicted class for more classes; `spec`, the model's `models.ModelSpec`, says how to
    prepare the image), and the row labels."""
    source, positions = data.split_source(config.data, split)
    meta = sources_lib.metadata(source).take(positions)
    preprocessing = pipeline.preprocess_spec(config.data, spec)
    records, labels = [], []
    for study_id, kind, prob in studies:
        found = np.flatnonzero(meta.study_id == study_id)
        if len(found) == 0:
            continue
        records += pipeline.read_records(source, [int(positions[found[0]])])
        group = dataset.group_name(int(meta.group[found[0]])) + ", " if dataset.group_names else ""
        if kind.startswith("wrong"):  # more classes: say what it was
            group = f"true {dataset.label_names[int(meta.label[found[0]])]}, {group}"
        labels.append(f"{kind}\n{group}p={prob:.2f}")
    if not records:
        return [], []
    images = pipeline.prepare_images(records, preprocessing)
    black = attribution_maps.black_value(config.data, spec)
    maps = [
        attribution_maps.make_attribution_fn(
            model, variables, method, config.eval, num_classes=dataset.num_classes, black=black
        )(images)
        for method in attribution_maps.check_methods(config.eval.attributions)
    ]
    grid = []
    for index, record in enumerate(records):
        picture = preprocess.resize_to_square(
            preprocess.decode_image(record["image"]), preprocessing.image_size, preprocessing.resize
        )[..., 0]
        overlays = [np.asarray(heatmaps.overlay(picture, m[index])) for m in maps]
        grid.append([picture, *overlays])
    return grid, labels


def heatmaps_section(
    config: Config,
    workdir: str,
    *,
    spec: ModelInputs | None = None,
    model: Any | None = None,
    variables: Any | None = None,
    dataset: DatasetSpec,
    count: int = 4,
    split: str = "validation",
) -> str:
    """Heatmaps (`eval.attributions`: Grad-CAM by default) of a few correct and wrong studies
    of `split`, or why there are none."""
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
    probs = {r["study_id"]: _shown_probability(r) for r in rows}
    chosen = [(sid, kind, probs[sid]) for sid, kind in pick_studies(rows, count)]
    titles = [attribution_maps.TITLES.get(m, m) for m in config.eval.attributions]
    try:
        from murajax import plots  # here: matplotlib is slow to import

        grid, labels = heatmap_grid(config, spec, model, variables, chosen, dataset, split)
        path = plots.image_grid(
            grid,
            workdir_lib.report_asset(workdir, workdir_lib.HEATMAPS_FILE),
            row_labels=labels,
            column_labels=["radiograph (first view)", *titles],
            title=f"{split}: where the model looks",
            cell_inches=2.4,
        )
    except Exception as error:  # noqa: BLE001
        lines += [f"> Heatmaps not drawn: {type(error).__name__}: {error}", ""]
        return "\n".join(lines)
    wrong = sum(label.startswith(("false", "wrong")) for label in labels)
    if dataset.binary:
        explained = (
            f"p = the study's probability of {dataset.label_names[1]}; the map explains the"
            f" {dataset.label_names[1]} logit"
        )
    else:
        explained = (
            "p = the study's probability of its predicted class; the map explains the"
            " predicted class's logit"
        )
    lines += [
        f"{', '.join(titles)} (`eval.attributions`) of the first image of {len(grid)} {split}"
        f" studies, {len(grid) - wrong}"
        f" correct and {wrong} wrong, the most confident of each kind ({explained}).",
        "",
        f"![Heatmaps]({link(path, workdir)})",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- attributions


def sanity_table(result: Mapping[str, Any]) -> str:
    """The sanity check's mean rank correlations as a Markdown table: one row per step
    (blocks re-initialised from the top, cumulatively), one column per method."""
    methods = list(result.get("correlation", {}))
    header = [
        "Re-initialised down to",
        *(attribution_maps.TITLES.get(m, m) for m in methods),
    ]
    names = ["(trained)", *result.get("layers", [])]
    rows = [
        [
            f"{step}: {names[step]}" if step else names[0],
            *(f"{result['correlation'][m][k]:.2f}" for m in methods),
        ]
        for k, step in enumerate(result.get("randomized", []))
    ]
    return table(header, rows)


def attributions_section(workdir: str) -> str:
    """The attribution sanity check of each split that has one, or "" where none was run."""
    lines = ["## Attributions", ""]
    root = os.path.join(workdir, workdir_lib.EVAL_DIR)
    splits = workdir_lib.in_split_order(os.listdir(root)) if os.path.isdir(root) else []
    found = False
    for split in splits:
        path = workdir_lib.eval_file(workdir, split, attribution_sanity.RESULT_FILE)
        if not os.path.isfile(path):
            continue
        found = True
        result = workdir_lib.read_json(path)
        lines += [
            f"### Sanity check: {split} (checkpoint step {result.get('step')})",
            "",
            "Cascading randomisation (Adebayo et al. 2018): the model's layers are"
            " re-initialised block by block from the output down, and each method's maps of"
            f" the first {result.get('images')} {split} images are compared with the trained"
            " model's (mean Spearman rank correlation). A method that explains the model"
            " gives other maps once its weights are gone: values well below 1.",
            "",
            sanity_table(result),
            "",
        ]
        plot = workdir_lib.eval_file(workdir, split, attribution_sanity.PLOT_FILE)
        if os.path.isfile(plot):
            lines += [f"![Sanity check]({link(plot, workdir)})", ""]
    return "\n".join(lines) if found else ""


# --------------------------------------------------------------------------- the report


def write_report(
    config: Config,
    workdir: str,
    *,
    spec: ModelInputs | None = None,
    model: Any | None = None,
    variables: Any | None = None,
    dataset: DatasetSpec | None = None,
    examples: bool = True,
    heatmaps: int = 4,
) -> str:
    """Writes `<workdir>/report.md` (and its images under `<workdir>/report/`); returns its
    path.

    `spec`, `model` and `variables` (the `models.ModelSpec` of `config.model`, the Flax
    module and its variables) enable the heatmaps section; `dataset` is the run's
    `DatasetSpec` (None: the workdir's `dataset.json`, else resolved from the config, else,
    where that dataset cannot be opened, two classes without groups: the data section says
    why); `examples=False` skips the example grid, `heatmaps=0` the heatmaps.
    """
    if dataset is None:
        try:
            dataset = data.spec_for_workdir(workdir, config.data)
        except data.DataError:  # a report is still written (see the module docstring)
            dataset = DatasetSpec(name=config.data.dataset, label_names=("normal", "abnormal"))
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
    sections = ["\n".join(summary), results_section(workdir, evaluations, dataset)]
    if heatmaps:
        sections.append(
            heatmaps_section(
                config,
                workdir,
                spec=spec,
                model=model,
                variables=variables,
                dataset=dataset,
                count=heatmaps,
            )
        )
    sections += [s for s in (attributions_section(workdir),) if s]
    sections += [training_section(workdir), data_section(config, dataset)]
    if examples:
        sections.append(examples_section(config, workdir, dataset))
    sections.append(config_section(config))
    contents = [s.splitlines()[0].removeprefix("## ") for s in sections[1:]]
    sections[0] += "\n\nContents: " + " · ".join(contents) + "\n"
    path = os.path.join(workdir, workdir_lib.REPORT_FILE)
    return workdir_lib.write_text(path, "\n".join(s.rstrip() + "\n" for s in sections))
