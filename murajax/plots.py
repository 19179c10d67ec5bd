"""Evaluation plots as small pure functions: arrays in, one PNG out (returns its path).

Figures are drawn with matplotlib's object API (`matplotlib.figure.Figure`, rendered by
Agg), never through pyplot, so that plotting neither needs a display nor changes the
global backend of a user's notebook, and figures are freed when they go out of scope.
"""

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from sklearn import calibration as sk_calibration
from sklearn import metrics as skm

from murajax import files

DPI = 100


def _save(figure: Figure, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with files.replacing(path) as part:
        figure.savefig(part, format="png", dpi=DPI, bbox_inches="tight")
    return path


def _short(name: str) -> str:
    """'XR_WRIST' -> 'wrist'."""
    return name.removeprefix("XR_").lower()


def roc_curves(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: str,
    *,
    title: str = "ROC",
    points: Mapping[str, tuple[float, float]] | None = None,
) -> str:
    """ROC curves of `{name: (labels, probs)}`, AUROC in the legend; 'overall' drawn bold.

    Curves without both classes are listed in the legend as undefined. `points` marks
    operating points, `{name: (1 - specificity, sensitivity)}`, on the overall curve.
    """
    figure = Figure(figsize=(6.5, 6))
    ax = figure.subplots()
    ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1, label="chance")
    for name, (labels, probs) in curves.items():
        labels = np.asarray(labels).astype(int)
        overall = name == "overall"
        style: dict[str, Any] = {"linewidth": 2.5, "color": "black"} if overall else {"lw": 1.2}
        if len(np.unique(labels)) < 2:
            ax.plot([], [], label=f"{_short(name)}: AUROC undefined (one class)", **style)
            continue
        fpr, tpr, _ = skm.roc_curve(labels, probs)
        auroc = skm.roc_auc_score(labels, probs)
        ax.plot(fpr, tpr, label=f"{_short(name)}: AUROC {auroc:.3f} (n={len(labels)})", **style)
    markers = iter("os^Dvp*")
    for name, (fpr_point, tpr_point) in (points or {}).items():
        ax.plot(
            [fpr_point],
            [tpr_point],
            linestyle="none",
            marker=next(markers, "o"),
            markersize=9,
            markeredgecolor="black",
            label=f"{name}: sens {tpr_point:.2f}, spec {1 - fpr_point:.2f}",
        )
    ax.set(xlabel="1 - specificity (false positive rate)", ylabel="sensitivity", title=title)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize=8)
    return _save(figure, path)


def confusion_matrix(
    labels: np.ndarray,
    preds: np.ndarray,
    path: str,
    *,
    title: str = "Confusion matrix",
    class_names: Sequence[str] = ("normal", "abnormal"),
) -> str:
    """The 2x2 confusion matrix (rows: truth, columns: prediction), counts and row shares;
    `class_names` are the dataset's two labels (MURA's by default)."""
    matrix = skm.confusion_matrix(np.asarray(labels), np.asarray(preds), labels=[0, 1])
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    figure = Figure(figsize=(4.5, 4))
    ax = figure.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(matrix):
        color = "white" if shares[i, j] > 0.5 else "black"
        ax.text(j, i, f"{count}\n({shares[i, j]:.0%})", ha="center", va="center", color=color)
    ax.set_xticks([0, 1], list(class_names))
    ax.set_yticks([0, 1], list(class_names))
    ax.set(xlabel="predicted", ylabel="radiologist's label", title=title)
    figure.colorbar(image, ax=ax, fraction=0.046, label="share of the row")
    return _save(figure, path)


def calibration(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: str,
    *,
    n_bins: int = 10,
    title: str = "Calibration",
    positive: str = "abnormal",
) -> str:
    """Reliability diagram (`sklearn.calibration.calibration_curve`, uniform bins) of
    `{name: (labels, probs)}`, with the Brier score in the legend; `probs` are of the class
    named `positive` (label 1)."""
    figure = Figure(figsize=(6, 6))
    ax = figure.subplots()
    ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1, label="perfectly calibrated")
    for name, (labels, probs) in curves.items():
        labels = np.asarray(labels).astype(int)
        probs = np.clip(np.asarray(probs, dtype=np.float64), 0, 1)
        if len(labels) == 0:
            continue
        true, predicted = sk_calibration.calibration_curve(labels, probs, n_bins=n_bins)
        brier = skm.brier_score_loss(labels, probs, labels=[0, 1])
        ax.plot(predicted, true, marker="o", label=f"{name}: Brier {brier:.3f} (n={len(labels)})")
    ax.set(
        xlabel=f"mean predicted probability of {positive}",
        ylabel=f"fraction {positive}",
        title=title,
    )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.legend(loc="upper left", fontsize=8)
    return _save(figure, path)


def referral(
    curve: Mapping[str, Sequence[float]],
    path: str,
    *,
    title: str = "Referral",
    reference: float | None = None,
    reference_label: str = "",
) -> str:
    """Kappa, accuracy and AUROC of the studies kept against the share referred to a reader
    (`murajax.referral.referral_curve`), with a reference kappa as a dashed line."""
    figure = Figure(figsize=(6.5, 4.5))
    ax = figure.subplots()
    referred = 100 * np.asarray(curve["referred"], np.float64)
    for key, style in (("kappa", "o-"), ("accuracy", "s-"), ("auroc", "^-")):
        ax.plot(
            referred, np.asarray(curve[key], np.float64), style, label=key.replace("auroc", "AUROC")
        )
    if reference is not None:
        ax.axhline(
            reference,
            color="0.4",
            linestyle="--",
            linewidth=1,
            label=f"reference kappa {reference:.3f}"
            + (f" ({reference_label})" if reference_label else ""),
        )
    ax.set(
        xlabel="studies referred to a reader (%, the least certain first)",
        ylabel="score of the studies kept",
        title=title,
    )
    ax.set_xlim(0, max(referred.max(initial=0), 1))
    ax.set_ylim(min(0, np.nanmin(np.asarray(curve["kappa"], np.float64), initial=0)), 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(figure, path)


def kappa_by_group(
    names: Sequence[str],
    kappas: Sequence[float | None],
    intervals: Sequence[Sequence[float | None]],
    path: str,
    *,
    reference: Mapping[str, float] | None = None,
    reference_label: str = "",
    title: str = "Cohen's kappa by body part",
) -> str:
    """Kappa with CI error bars per group (MURA's body parts), beside `reference` values
    where known (`DatasetSpec.reference_kappa`: the MURA paper's DenseNet-169 test kappas);
    undefined (None/NaN) kappas are marked 'n/a'.
    """
    reference = reference or {}
    x = np.arange(len(names), dtype=np.float64)
    values = np.array([np.nan if k is None else k for k in kappas], dtype=np.float64)
    low = np.array([np.nan if c[0] is None else c[0] for c in intervals], dtype=np.float64)
    high = np.array([np.nan if c[1] is None else c[1] for c in intervals], dtype=np.float64)
    has_ci = ~np.isnan(low) & ~np.isnan(high) & ~np.isnan(values)
    errors = np.vstack([np.where(has_ci, values - low, 0), np.where(has_ci, high - values, 0)])
    figure = Figure(figsize=(max(6.0, 0.9 * len(names) + 2), 4.5))
    ax = figure.subplots()
    ax.errorbar(
        x - 0.12,
        values,
        yerr=np.maximum(errors, 0),
        fmt="o",
        capsize=4,
        color="tab:blue",
        label="this model (95% bootstrap CI)",
    )
    known = [i for i, n in enumerate(names) if n in reference]
    if known:
        ax.scatter(
            x[known] + 0.12,
            [reference[names[i]] for i in known],
            marker="D",
            color="tab:orange",
            label=reference_label,
        )
    for i in np.flatnonzero(np.isnan(values)):
        ax.text(x[i] - 0.12, 0.0, "n/a", ha="center", va="bottom", fontsize=8)
    ax.axhline(0, color="0.8", linewidth=0.8)
    ax.set_xticks(x, [_short(n) for n in names], rotation=30)
    finite = np.concatenate([values[~np.isnan(values)], low[has_ci], [0.0, 1.0]])
    ax.set_ylim(min(-0.05, float(finite.min()) - 0.05), 1.05)
    ax.set(ylabel="Cohen's kappa (studies)", title=title)
    ax.legend(loc="best", fontsize=8)
    return _save(figure, path)


def training_curves(
    rows: Sequence[Mapping[str, Any]], path: str, *, title: str = "Training curves"
) -> str:
    """Train and holdout loss, and holdout study kappa, against step (`metrics.jsonl` rows).

    The step of the best holdout kappa is marked: where it stops rising while the train
    loss keeps falling, over-fitting has started.
    """

    def series(split: str, key: str) -> tuple[np.ndarray, np.ndarray]:
        points = [
            (r["step"], r[key]) for r in rows if r.get("split") == split and r.get(key) is not None
        ]
        return (
            np.array([p[0] for p in points], dtype=np.float64),
            np.array([p[1] for p in points], dtype=np.float64),
        )

    figure = Figure(figsize=(10, 4))
    loss_ax, kappa_ax = figure.subplots(1, 2)
    for split, label, style in (
        ("train", "train loss (as optimised: class weights, L2)", {"alpha": 0.8}),
        ("holdout", "holdout loss (unweighted)", {"marker": "o"}),
    ):
        steps, values = series(split, "loss")
        if len(steps):
            loss_ax.plot(steps, values, label=label, **style)
    loss_ax.set(xlabel="step", ylabel="cross-entropy", title="loss")
    steps, kappa = series("holdout", "kappa")
    if len(steps):
        kappa_ax.plot(steps, kappa, marker="o", color="tab:green", label="holdout study kappa")
        defined = ~np.isnan(kappa)
        if defined.any():
            best = int(np.nanargmax(kappa))
            kappa_ax.axvline(
                steps[best], color="0.6", linestyle=":", label=f"best: step {steps[best]:.0f}"
            )
    steps, auroc = series("holdout", "auroc")
    if len(steps):
        kappa_ax.plot(steps, auroc, marker=".", color="tab:purple", label="holdout study AUROC")
    kappa_ax.set(xlabel="step", ylabel="score", title="holdout (model selection)")
    for ax in (loss_ax, kappa_ax):
        if ax.lines:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no rows logged", ha="center", va="center", transform=ax.transAxes)
    figure.suptitle(title)
    return _save(figure, path)


def image_grid(
    images: Sequence[Sequence[np.ndarray | None]],
    path: str,
    *,
    row_labels: Sequence[str] = (),
    column_labels: Sequence[str] = (),
    captions: Sequence[Sequence[str]] | None = None,
    title: str = "",
    cell_inches: float = 1.8,
) -> str:
    """A grid of images (rows x columns; None leaves a cell empty): grayscale 2-D arrays or
    RGB (H, W, 3), with optional row and column labels and per-cell captions."""
    rows = len(images)
    columns = max((len(r) for r in images), default=0)
    if rows == 0 or columns == 0:
        raise ValueError("image_grid needs at least one image")
    figure = Figure(figsize=(cell_inches * columns + 1.0, cell_inches * rows + 0.6))
    axes = np.asarray(figure.subplots(rows, columns, squeeze=False))
    shapes = [np.shape(image)[:2] for row in images for image in row if image is not None]
    blank = np.ones(shapes[0] if shapes else (8, 8))  # keeps the layout of empty cells
    for i in range(rows):
        for j in range(columns):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            image = images[i][j] if j < len(images[i]) else None
            if image is not None:
                image = np.asarray(image)
                if image.ndim == 3 and image.shape[-1] == 1:
                    image = image[..., 0]
                ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
            else:
                ax.imshow(blank, cmap="gray", vmin=0, vmax=1)
            if captions is not None and j < len(captions[i]) and captions[i][j]:
                ax.set_title(captions[i][j], fontsize=7)
            if j == 0 and i < len(row_labels):
                ax.set_ylabel(row_labels[i], fontsize=9)
            if i == 0 and j < len(column_labels) and not (captions and captions[i][j]):
                ax.set_title(column_labels[j], fontsize=9)
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def overlaid_roc_curves(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: str,
    *,
    title: str = "ROC curves",
) -> str:
    """The ROC curves of several models, `{label: (labels, probs)}`, on one axis, each in the
    legend as given (not shortened) with its AUROC and n: e.g. the runs of a sweep.

    A curve without both classes is listed in the legend as undefined.
    """
    figure = Figure(figsize=(7, 6.5))
    ax = figure.subplots()
    ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1, label="chance")
    for name, (labels, probs) in curves.items():
        labels = np.asarray(labels).astype(int)
        if len(np.unique(labels)) < 2:
            ax.plot([], [], label=f"{name}: AUROC undefined (one class)")
            continue
        fpr, tpr, _ = skm.roc_curve(labels, np.asarray(probs, dtype=np.float64))
        auroc = skm.roc_auc_score(labels, np.asarray(probs, dtype=np.float64))
        ax.plot(fpr, tpr, linewidth=1.5, label=f"{name}: AUROC {auroc:.3f} (n={len(labels)})")
    ax.set(xlabel="1 - specificity (false positive rate)", ylabel="sensitivity", title=title)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize=7)
    return _save(figure, path)
