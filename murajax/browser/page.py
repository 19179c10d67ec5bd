"""The study browser's data model: what `write_browser` turns into a static page.

A `Study` is one row of the worklist (its prediction, decision, conformal set and whether it
was referred to a reader) with its `View`s (the radiographs and their attribution heatmaps); a
`Summary` is the panel of metrics, notes and plots shown beside it. The classes only hold
data; `check_study` says in one line what is wrong with one before anything is written.
"""

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class View:
    """One radiograph of a study and its heatmaps.

    Attributes:
      name: the view's file name, e.g. "image1.png".
      image: uint8 (H, W) grayscale, any size ((H, W, 1) is taken too).
      heatmaps: method name ("gradcam", "ig", "occlusion") -> float (h, w) in [0, 1], any size.
    """

    name: str
    image: np.ndarray
    heatmaps: Mapping[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Study:
    """One study of the worklist.

    Attributes:
      study_id: the study's identifier.
      group: MURA's body part ("XR_WRIST"); None for datasets without groups.
      label: the true class name ("normal"/"abnormal").
      prob: the (calibrated) probability shown: of the positive class for two classes, of the
        decided class for more.
      decision: the class name decided at the chosen operating point.
      conformal_set: class names in the study's conformal prediction set (an empty tuple when
        none was computed).
      referred: among the most uncertain studies handed to a reader.
      correct: decision == label.
      views: the study's radiographs.
    """

    study_id: str
    group: str | None
    label: str
    prob: float
    decision: str
    conformal_set: tuple[str, ...]
    referred: bool
    correct: bool
    views: Sequence[View]


@dataclasses.dataclass(frozen=True)
class Summary:
    """The summary panel.

    Attributes:
      title: the page's title, e.g. "quickstart — validation, step 1500".
      metrics: (name, value, CI or None) rows, e.g. ("study kappa", 0.917, (0.875, 0.956)).
      plots: caption -> path of an existing image (PNG) that is copied into the browser.
      notes: short lines: the operating point used, conformal alpha, referral fraction.
    """

    title: str
    metrics: Sequence[tuple[str, float, tuple[float, float] | None]]
    plots: Mapping[str, str]
    notes: Sequence[str] = ()


def finite_or_none(value: float | None) -> float | None:
    """`value` as a float, or None where it is missing or not finite (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def view_problem(view: View) -> str | None:
    """What is wrong with `view`'s arrays (one phrase), or None when they can be written."""
    image = np.asarray(view.image)
    if image.ndim == 3 and image.shape[-1] == 1:  # (H, W, 1): one channel, as models take it
        image = image[..., 0]
    if image.ndim != 2 or image.dtype != np.uint8 or 0 in image.shape:
        return f"image must be a non-empty uint8 (H, W) array, got {image.dtype} {image.shape}"
    for method, heatmap in view.heatmaps.items():
        heatmap = np.asarray(heatmap)
        if heatmap.ndim != 2 or 0 in heatmap.shape or not np.issubdtype(heatmap.dtype, np.number):
            return (
                f"heatmap {method!r} must be a non-empty numeric (h, w) array, got {heatmap.shape}"
            )
    return None


def check_study(index: int, study: Study) -> None:
    """Raises ValueError (one line naming the study and view) when `study` cannot be written."""
    if not isinstance(study, Study):
        raise ValueError(f"study {index} is a {type(study).__name__}, not a murajax.browser.Study")
    for view_index, view in enumerate(study.views):
        problem = view_problem(view)
        if problem is not None:
            raise ValueError(
                f"study {study.study_id!r}, view {view_index} ({view.name!r}): {problem}"
            )


def methods_of(studies: Sequence[Study]) -> list[str]:
    """The heatmap methods present in any view, in order of first appearance."""
    seen: dict[str, None] = {}
    for study in studies:
        for view in study.views:
            for method in view.heatmaps:
                seen.setdefault(str(method), None)
    return list(seen)


def groups_of(studies: Sequence[Study]) -> list[str]:
    """The studies' groups (body parts), sorted; empty when no study has one."""
    return sorted({s.group for s in studies if s.group is not None})
