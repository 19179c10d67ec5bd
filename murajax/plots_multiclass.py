"""Plots of k-class evaluations, in the look of `murajax.plots` (and saved by its `_save`).

Each plot is a `*_figure` function that returns the `matplotlib.figure.Figure` (rendered
by Agg, never through pyplot; for notebooks and tests) and a function that saves it as one
PNG and returns its path. Long class names are wrapped onto several lines at spaces and
hyphens, underscores and slashes; the confusion matrix grows with the number of classes,
and an ROC legend of many classes or long names moves beside the axes.
"""

import re
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from sklearn import metrics as skm

from murajax.plots import _save

_WRAP = 18  # characters per line of a class name on an axis (twice that in a legend)
_LEGEND_INSIDE = 5  # ROC legends with up to this many classes of short names sit inside


def _wrapped(name: str, width: int = _WRAP) -> str:
    """`name` on lines of at most `width` characters, broken after spaces, hyphens,
    underscores and slashes (a longer run without them stays whole on its line)."""
    lines = [""]
    for token in re.findall(r"[^\s_/-]*[\s_/-]*", str(name)):
        if not token:
            continue
        if lines[-1] and len(lines[-1].rstrip()) + len(token.rstrip()) > width:
            lines.append("")
        lines[-1] += token
    return "\n".join(line.rstrip() for line in lines)


def _check_names(class_names: Sequence[str], k: int, what: str) -> list[str]:
    names = [str(name) for name in class_names]
    if len(names) != k:
        raise ValueError(f"{len(names)} class_names for {what} of {k} classes: expected {k}")
    return names


def confusion_figure(
    confusion: Sequence[Sequence[int]] | np.ndarray,
    class_names: Sequence[str],
    *,
    title: str = "Confusion matrix",
) -> Figure:
    """The k x k confusion matrix (rows: true class, columns: predicted class): each cell's
    count, with its share of the row below it, coloured by that share."""
    matrix = np.asarray(confusion, dtype=np.int64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"confusion of shape {matrix.shape} is invalid: expected k x k")
    k = len(matrix)
    names = [_wrapped(n) for n in _check_names(class_names, k, "a confusion matrix")]
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    side = max(4.5, 0.75 * k + 2.0)
    figure = Figure(figsize=(side + 1.0, side))
    ax = figure.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fontsize = 10 if k <= 5 else 8 if k <= 10 else 6
    for (i, j), count in np.ndenumerate(matrix):
        color = "white" if shares[i, j] > 0.5 else "black"
        ax.text(
            j,
            i,
            f"{count}\n({shares[i, j]:.0%})",
            ha="center",
            va="center",
            color=color,
            fontsize=fontsize,
        )
    rotate = k > 3 or max(len(n) for n in names) > 8
    ax.set_xticks(
        np.arange(k),
        names,
        rotation=40 if rotate else 0,
        ha="right" if rotate else "center",
        rotation_mode="anchor",
        fontsize=9,
    )
    ax.set_yticks(np.arange(k), names, fontsize=9)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the row")
    return figure


def confusion_matrix(
    confusion: Sequence[Sequence[int]] | np.ndarray,
    class_names: Sequence[str],
    path: str,
    *,
    title: str = "Confusion matrix",
) -> str:
    """Saves `confusion_figure` as a PNG at `path` and returns `path`."""
    return _save(confusion_figure(confusion, class_names, title=title), path)


def roc_figure(
    labels: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    *,
    title: str = "ROC, each class against the rest",
) -> Figure:
    """One-vs-rest ROC curves, one per class (its cases against all others, on its
    probability), with each AUROC and number of cases in the legend, the macro AUROC (over
    the classes with both outcomes) as the legend's title, and the chance diagonal. A class
    without both outcomes is listed in the legend as undefined."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"probs of shape {probs.shape} is invalid: expected (cases, classes)")
    k = probs.shape[1]
    names = _check_names(class_names, k, "probabilities")
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if len(labels) != len(probs):
        raise ValueError(f"{len(labels)} labels for {len(probs)} rows of probs: expected one each")
    figure = Figure(figsize=(6.5, 6))
    ax = figure.subplots()
    ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1, label="chance")
    colors = [f"C{c % 10}" for c in range(k)] if k <= 10 else None
    aurocs = []
    for c, name in enumerate(names):
        positive = labels == c
        cases = int(positive.sum())
        color = {"color": colors[c]} if colors else {}
        label = _wrapped(name, 2 * _WRAP)
        if cases in (0, len(labels)):
            why = "no cases" if cases == 0 else "no other classes"
            ax.plot([], [], label=f"{label}: AUROC undefined ({why})", **color)
            continue
        fpr, tpr, _ = skm.roc_curve(positive, probs[:, c])
        auroc = float(skm.roc_auc_score(positive, probs[:, c]))
        aurocs.append(auroc)
        ax.plot(fpr, tpr, linewidth=1.5, label=f"{label}: AUROC {auroc:.3f} (n={cases})", **color)
    ax.set(xlabel="1 - specificity (false positive rate)", ylabel="sensitivity", title=title)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    legend_title = f"macro AUROC {np.mean(aurocs):.3f}" if aurocs else "macro AUROC undefined"
    legend = {"fontsize": 8, "title": legend_title, "title_fontsize": 8}
    if k <= _LEGEND_INSIDE and max(len(n) for n in names) <= _WRAP:
        ax.legend(loc="lower right", **legend)
    else:  # beside the axes, where it cannot hide a curve
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, **legend)
    return figure


def roc_curves(
    labels: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    path: str,
    *,
    title: str = "ROC, each class against the rest",
) -> str:
    """Saves `roc_figure` as a PNG at `path` and returns `path`."""
    return _save(roc_figure(labels, probs, class_names, title=title), path)
