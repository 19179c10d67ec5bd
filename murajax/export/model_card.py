"""`MODEL_CARD.md`: a package's model card, written from its metadata.

    text = render(metadata)

Intended use, the training data and splits, the validation scores with their confidence
intervals (overall and per group, the weakest groups named as the failure cases), the limits
and the professional and ethical points that the thesis raises, and MURA's licence.
"""

from typing import Any

SCORES = ("kappa", "auroc", "accuracy", "sensitivity", "specificity")
MULTICLASS_SCORES = ("kappa", "auroc", "accuracy")  # auroc: one-vs-rest macro

LIMITS = (
    "**Lower resolution than clinical images.** The model sees {size}x{size} 8-bit grayscale"
    " squares; radiologists read full-resolution images with a wide dynamic range, so findings"
    " of a few pixels (hairline fractures, early erosions) may be lost.",
    "**No patient history.** A radiologist may know the patient, their history and symptoms,"
    " earlier studies and the clinical question; the model sees the images of one study"
    " only.",
    '**"Abnormal" is not defined** as to type or severity: MURA labels a study abnormal for'
    " any finding (fracture, hardware, degenerative disease, lesion...), and the MURA paper"
    " does not say which, so the score says nothing about what is wrong or how urgent it is.",
    "**One dataset, one institution.** Trained on {dataset}; images from other scanners,"
    " hospitals, populations or body parts are outside what was validated.",
    "**Not calibrated for prevalence.** The probability reflects the training data's mix of"
    " normal and abnormal studies, not that of a given clinic's worklist.",
)

ETHICS = (
    "Deep-learning tools of this kind are meant to help triage and prioritise radiologists'"
    " work, not to replace them: every study still needs a qualified reader.",
    "Whether a diagnosis may be trusted to a computer program is a question for clinicians,"
    " patients and regulators, not for the model's scores; this package is not a medical"
    " device and has no regulatory clearance.",
    "Medical errors are frequent and costly, and a second reader that never tires may help"
    " reduce them; but a tool that is trusted too much can also add errors (automation"
    " bias). Monitor its effect on readers, not only its kappa.",
    "Patient data: run it where the images may be processed, and keep its outputs with the"
    " same care as the images.",
)

LICENCE = (
    "MURA is released by the Stanford ML Group under the Stanford University School of"
    " Medicine MURA Dataset Research Use Agreement: for personal, non-commercial research use"
    " only, without redistribution of the data. A model trained on it inherits those terms:"
    " do not use it commercially or clinically, and check the agreement"
    " (https://stanfordmlgroup.github.io/competitions/mura/) before sharing it."
)


OTHER_LICENCE = (
    "The model inherits the terms of the data it was trained on: check the dataset's licence"
    " and the consent its images were collected under before you share or deploy it. It is"
    " for research use, not clinical use."
)


def _number(value: Any) -> str:
    try:
        return "n/a" if value is None or value != value else f"{float(value):.3f}"
    except (TypeError, ValueError):
        return "n/a"


def _cell(scores: dict[str, Any], name: str) -> str:
    ci = scores.get(f"{name}_ci")
    interval = f" [{_number(ci[0])}, {_number(ci[1])}]" if isinstance(ci, list | tuple) else ""
    return _number(scores.get(name)) + interval


def metrics_table(metrics: dict[str, Any], group_key: str | None, binary: bool) -> list[str]:
    """Markdown rows: overall and per group, each score with its 95% interval."""
    names = SCORES if binary else MULTICLASS_SCORES
    rows = ["| | studies | " + " | ".join(names) + " |", "|---" * (len(names) + 2) + "|"]
    study = metrics.get("study") or {}
    rows.append(
        f"| **all** | {study.get('n', '')} | " + " | ".join(_cell(study, n) for n in names) + " |"
    )
    for group, scores in sorted((metrics.get(group_key) or {}).items() if group_key else []):
        rows.append(
            f"| {group} | {scores.get('n', '')} | "
            + " | ".join(_cell(scores, n) for n in names)
            + " |"
        )
    return rows


def failure_cases(metrics: dict[str, Any], group_key: str | None) -> list[str]:
    """The groups with the lowest kappa, weakest first (the model's failure cases)."""
    groups = metrics.get(group_key) or {} if group_key else {}
    ranked = sorted(
        (
            (scores.get("kappa"), name)
            for name, scores in groups.items()
            if scores.get("kappa") is not None
        ),
    )
    return [f"{name}: kappa {_number(kappa)}" for kappa, name in ranked[:3]]


def _is_mura(dataset: dict[str, Any]) -> bool:
    return "mura" in str(dataset["name"])  # mura, mura_synthetic (its stand-in), test copies


def _decision_line(decision: dict[str, Any], labels: list[str]) -> str:
    how = f"- Study score: the {decision['aggregation']} of its images' probabilities"
    if len(labels) != 2:
        return how + "; the most probable class is predicted."
    return (
        f"{how}; `{labels[1]}` at probability >= {decision['threshold']:.4g}"
        f" (threshold {decision['how']})."
    )


def _model_lines(metadata: dict[str, Any]) -> list[str]:
    model, dataset = metadata["model"], metadata["dataset"]
    size = model["image_size"]
    study = " (a study model: all views of a study at once)" if model["study_level"] else ""
    return [
        "## Model",
        "",
        f"- Architecture: `{model['name']}`{study}, {model['num_classes']} classes, input"
        f" {size}x{size} 8-bit grayscale.",
        f"- Trained in {model['trained_dtype']}; the package computes in"
        f" {model['compute_dtype']} with XLA's convolutions.",
        _decision_line(metadata["decision"], dataset["label_names"]),
        "",
    ]


def _data_lines(dataset: dict[str, Any], decision: dict[str, Any]) -> list[str]:
    version = f" version {dataset['version']}" if dataset.get("version") else ""
    chooses = "checkpoints and the threshold" if decision["method"] == "youden" else "checkpoints"
    official = ", MURA's official validation set," if _is_mura(dataset) else ""
    return [
        "## Training data",
        "",
        f"- Dataset: `{dataset['name']}`{version}.",
        f"- Splits: trained on `train` less {dataset['holdout_fraction']:.0%} of its patients"
        f" (the holdout, which chose the {chooses}); scored on `validation`{official} whose"
        " patients are in neither.",
        "",
    ]


def _score_lines(metadata: dict[str, Any]) -> list[str]:
    metrics, dataset = metadata["metrics"], metadata["dataset"]
    lines = ["## Validation scores", ""]
    if "study" not in metrics:
        return [*lines, metrics.get("note", "No validation scores were recorded."), ""]
    group_key = f"by_{dataset['group_feature']}" if dataset.get("group_feature") else None
    binary = len(dataset["label_names"]) == 2
    lines += [
        "Study level, with 95% bootstrap confidence intervals over studies:",
        "",
        *metrics_table(metrics, group_key, binary),
        "",
    ]
    weakest = failure_cases(metrics, group_key)
    if weakest:
        lines += [
            "Failure cases: the groups where it agrees least with the labels are "
            + "; ".join(weakest)
            + ". Expect more errors there.",
            "",
        ]
    return lines


def render(metadata: dict[str, Any]) -> str:
    """The model card's Markdown."""
    model, dataset, checkpoint = metadata["model"], metadata["dataset"], metadata["checkpoint"]
    steps = ", ".join(str(s) for s in checkpoint["steps"])
    members = f"checkpoint {steps}"
    if checkpoint["ensemble"] > 1:
        members = f"the mean of {checkpoint['ensemble']} checkpoints ({steps})"
    labels = " / ".join(f"`{n}`" for n in dataset["label_names"])
    licence = LICENCE if _is_mura(dataset) else OTHER_LICENCE
    lines = [
        f"# Model card: {model['name']} on {dataset['name']}",
        "",
        f"Exported by murajax {metadata['versions']['murajax']} on {metadata['exported_at']}"
        f" ({members}).",
        "",
        "## Intended use",
        "",
        f"A **research tool and triage aid**: it scores radiograph studies as {labels} so that"
        " a reading list can be ordered or a study flagged for a second look. It is **not a"
        " diagnosis**, not a medical device, and must not be used to decide a patient's care"
        " without a radiologist's reading.",
        "",
        *_model_lines(metadata),
        *_data_lines(dataset, metadata["decision"]),
        *_score_lines(metadata),
        "## Limits",
        "",
        *(f"- {text.format(size=model['image_size'], dataset=dataset['name'])}" for text in LIMITS),
        "",
        "## Professional and ethical considerations",
        "",
        *(f"- {text}" for text in ETHICS),
        "",
        "## Licence",
        "",
        licence,
        "",
    ]
    return "\n".join(lines)
