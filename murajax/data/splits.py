"""The splits murajax trains and evaluates on, carved from the TFDS splits by patient.

- 'train': the TFDS `train` split without the holdout patients.
- 'holdout': a patient-disjoint, deterministic slice of TFDS `train` (about
  `holdout_fraction` of its patients), for model selection and early stopping.
- 'validation': the TFDS `validation` split, MURA's official valid set: the test set of
  everyone's papers, only ever evaluated, never used to select models.

The holdout patients are the `round(holdout_fraction * P)` patients (at least one, at most
P - 1) of the P train patients whose stable hash (BLAKE2b of the decimal patient id) is
smallest. The choice depends only on the set of patient ids, not on record order, Python's
hash seed or the machine; a larger fraction keeps the smaller fraction's patients.
"""

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from murajax.data.sources import Metadata

SPLITS: tuple[str, ...] = ("train", "holdout", "validation")


def patient_hash(patient_ids: np.ndarray) -> np.ndarray:
    """A stable 64-bit hash (BLAKE2b of the decimal id) of each patient id, as uint64."""
    digests = [hashlib.blake2b(str(int(p)).encode(), digest_size=8).digest() for p in patient_ids]
    return np.frombuffer(b"".join(digests), dtype=">u8").astype(np.uint64)


def holdout_count(num_patients: int, fraction: float) -> int:
    """How many patients go to the holdout: round(fraction * P), kept within [1, P - 1]
    when 0 < fraction and P >= 2 (so that neither side is empty); 0 when fraction is 0."""
    if fraction <= 0 or num_patients == 0:
        return 0
    if num_patients == 1:
        return 0
    return int(min(max(round(fraction * num_patients), 1), num_patients - 1))


def holdout_patients(patient_ids: np.ndarray, fraction: float) -> np.ndarray:
    """The sorted ids of the holdout patients among `patient_ids` (see the module docstring)."""
    unique = np.unique(np.asarray(patient_ids, dtype=np.int64))
    count = holdout_count(len(unique), fraction)
    order = np.lexsort((unique, patient_hash(unique)))  # by hash, ties by id
    return np.sort(unique[order[:count]])


def train_holdout_positions(
    patient_ids: np.ndarray, fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """Record positions (into TFDS `train`) of the 'train' and 'holdout' splits, ascending."""
    in_holdout = np.isin(patient_ids, holdout_patients(patient_ids, fraction))
    return np.flatnonzero(~in_holdout), np.flatnonzero(in_holdout)


def _label_counts(labels: np.ndarray, label_names: Sequence[str]) -> dict[str, int]:
    counts = np.bincount(labels, minlength=len(label_names))
    return {name: int(counts[i]) for i, name in enumerate(label_names)}


def _counts(meta: Metadata, label_names: Sequence[str]) -> dict[str, Any]:
    """Image, study and patient counts and label counts, per image and per study.

    The image label counts appear twice: as `label_counts` and flat by label name (MURA's
    `normal` / `abnormal`).
    """
    _, first = np.unique(meta.study_id, return_index=True)
    image_labels = _label_counts(meta.label, label_names)
    study_labels = _label_counts(meta.label[first], label_names)
    return {
        "num_images": int(len(meta)),
        "num_studies": int(len(first)),
        "num_patients": int(len(np.unique(meta.patient_id))),
        **image_labels,
        "label_counts": image_labels,
        "study_label_counts": study_labels,
    }


def summarize(
    meta: Metadata, label_names: Sequence[str], group_names: Sequence[str] = ()
) -> dict[str, Any]:
    """Counts of a split, overall and per group (MURA's body parts; see
    `murajax.data.split_info`). `by_group` is empty for a dataset without groups."""
    info = _counts(meta, label_names)
    info["by_group"] = {
        name: _counts(meta.take(np.flatnonzero(meta.group == i)), label_names)
        for i, name in enumerate(group_names)
    }
    return info
