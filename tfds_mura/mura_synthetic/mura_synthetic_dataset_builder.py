"""`mura_synthetic`: MURA's features and splits, drawn procedurally and offline.

The embedded default dataset of murajax: it builds in seconds with no download and no
TensorFlow, and a small CNN learns it, so every part of the library runs anywhere.
Each study is rendered from a `numpy.random.Generator` seeded by (split, patient index,
study index) only, so every build gives bit-identical examples.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from tfds_mura.features import BODY_PARTS, PAPER_REFERENCE, mura_features
from tfds_mura.mura_synthetic import render

SEED = 171206957
"""Root of every random stream (MURA's arXiv number, 1712.06957)."""

SPLIT_FOLDERS: dict[str, str] = {"train": "train", "validation": "valid"}
"""TFDS split name -> MURA's folder name."""

STUDIES_PER_PATIENT = ((1, 2, 3), (0.45, 0.35, 0.2))
VIEWS_PER_STUDY = ((1, 2, 3, 4, 5), (0.15, 0.3, 0.3, 0.15, 0.1))
ABNORMAL_FRACTION = 0.4
VISIBILITY = 0.8
"""Probability that a view of an abnormal study shows its anomaly (at least one view does)."""


@dataclasses.dataclass(eq=False, kw_only=True)
class MuraSyntheticConfig(tfds.core.BuilderConfig):
    """How many patients each split draws (each has 1-3 studies of 1-5 views)."""

    num_train_patients: int = 0
    num_validation_patients: int = 0


@dataclasses.dataclass(frozen=True)
class StudySpec:
    """One study of the manifest: everything but its pixels."""

    split: str
    patient_index: int
    patient_id: int
    study_index: int
    body_part: str
    study_number: int
    abnormal: bool
    num_views: int

    @property
    def study_id(self) -> str:
        """E.g. `train/XR_WRIST/patient00001/study1_positive`, unique in the dataset."""
        outcome = "positive" if self.abnormal else "negative"
        return (
            f"{SPLIT_FOLDERS[self.split]}/{self.body_part}/patient{self.patient_id:05d}/"
            f"study{self.study_number}_{outcome}"
        )

    def image_path(self, view: int) -> str:
        """MURA's path of view `view` (0-based), e.g. `MURA-v1.1/train/.../image1.png`."""
        return f"MURA-v1.1/{self.study_id}/image{view + 1}.png"


def split_rng(split: str, *key: int) -> np.random.Generator:
    """A generator seeded by (SEED, split, *key) only: no global state, no clock.

    Patients use the key (patient index, 0) and studies (patient index, 1, study index), so a
    config with fewer patients draws a prefix of a bigger config's patients.
    """
    return np.random.default_rng([SEED, list(SPLIT_FOLDERS).index(split), *key])


def first_patient_id(config: MuraSyntheticConfig, split: str) -> int:
    """Validation patients are numbered after train's, as in MURA, so the splits are disjoint."""
    return 1 if split == "train" else config.num_train_patients + 1


def make_patient(split: str, patient_index: int, patient_id: int) -> list[StudySpec]:
    """The studies of one patient: 1-3 studies, each of a random body part, label and size.

    Repeat studies of one body part are numbered study1, study2, ... as in MURA.
    """
    rng = split_rng(split, patient_index, 0)
    counts, p = STUDIES_PER_PATIENT
    views, q = VIEWS_PER_STUDY
    studies: list[StudySpec] = []
    for study_index in range(int(rng.choice(counts, p=p))):
        body_part = str(rng.choice(BODY_PARTS))
        number = 1 + sum(s.body_part == body_part for s in studies)
        abnormal = bool(rng.random() < ABNORMAL_FRACTION)
        num_views = int(rng.choice(views, p=q))
        studies.append(
            StudySpec(
                split=split,
                patient_index=patient_index,
                patient_id=patient_id,
                study_index=study_index,
                body_part=body_part,
                study_number=number,
                abnormal=abnormal,
                num_views=num_views,
            )
        )
    return studies


def make_manifest(config: MuraSyntheticConfig, split: str) -> list[StudySpec]:
    """All studies of a split, in patient order."""
    num = config.num_train_patients if split == "train" else config.num_validation_patients
    first = first_patient_id(config, split)
    return [study for i in range(num) for study in make_patient(split, i, first + i)]


def make_study(spec: StudySpec) -> list[np.ndarray]:
    """The (H, W) uint8 views of a study, drawn from its own seeded generator."""
    rng = split_rng(spec.split, spec.patient_index, 1, spec.study_index)
    return render.make_study(rng, spec.body_part, spec.abnormal, spec.num_views, VISIBILITY)


def encode_png(image: np.ndarray) -> bytes:
    """8-bit grayscale PNG bytes of an (H, W) uint8 array (TFDS stores them as they are)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def generate_examples(config: MuraSyntheticConfig, split: str) -> Iterator[tuple[str, dict]]:
    """(key, example) pairs of a split, keyed by image path."""
    for spec in make_manifest(config, split):
        for view, image in enumerate(make_study(spec)):
            path = spec.image_path(view)
            yield (
                path,
                {
                    "image": encode_png(image),
                    "label": int(spec.abnormal),
                    "body_part": spec.body_part,
                    "patient_id": spec.patient_id,
                    "study_id": spec.study_id,
                    "image_path": path,
                },
            )


class Builder(tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for `mura_synthetic`: procedural radiographs with MURA's features."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    REFERENCE_SCORES = PAPER_REFERENCE  # what murajax shows beside its scores
    BUILDER_CONFIGS = [
        MuraSyntheticConfig(
            name="default",
            description="About 7,750 train / 980 validation images (1,600 / 220 patients).",
            num_train_patients=1600,
            num_validation_patients=220,
        ),
        MuraSyntheticConfig(
            name="small",
            description="About 790 train / 210 validation images (160 / 50 patients).",
            num_train_patients=160,
            num_validation_patients=50,
        ),
        MuraSyntheticConfig(
            name="tiny",
            description="About 140 train / 80 validation images (30 / 16 patients), for tests.",
            num_train_patients=30,
            num_validation_patients=16,
        ),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=mura_features(),
            supervised_keys=("image", "label"),
            homepage="https://stanfordmlgroup.github.io/competitions/mura/",
        )

    def _split_generators(
        self, dl_manager: tfds.download.DownloadManager
    ) -> dict[str, Iterator[tuple[str, dict]]]:
        del dl_manager  # nothing to download
        return {split: self._generate_examples(split) for split in SPLIT_FOLDERS}

    def _generate_examples(self, split: str) -> Iterator[tuple[str, dict]]:
        yield from generate_examples(self.builder_config, split)
