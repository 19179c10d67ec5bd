"""`chest_synthetic`: chest-radiograph look-alikes in three classes, drawn procedurally offline.

murajax's second embedded dataset, the proof that its code is not MURA-only: three classes
(normal, opacity, effusion), no body parts, patients with 1-2 studies of 1-2 views (frontal,
sometimes a lateral). It builds in seconds with no download and no TensorFlow. Each patient's
chest is drawn from a `numpy.random.Generator` seeded by (split, patient index) and each study
from one seeded by (split, patient index, study index), so every build gives bit-identical
examples.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from tfds_mura.chest_synthetic import render

SEED = 190107031
"""Root of every random stream (CheXpert's arXiv number, 1901.07031)."""

LABEL_NAMES: tuple[str, ...] = render.FINDINGS
"""Class names in label order: normal (0), opacity (1), effusion (2)."""

CLASS_FRACTIONS: tuple[float, ...] = (0.4, 0.3, 0.3)
"""How often a study is normal, shows an opacity, or an effusion."""

SPLIT_FOLDERS: dict[str, str] = {"train": "train", "validation": "valid"}
"""TFDS split name -> the folder name in `image_path` (CheXpert's layout)."""

STUDIES_PER_PATIENT = ((1, 2), (0.7, 0.3))
VIEWS_PER_STUDY = ((1, 2), (0.6, 0.4))
"""A study is a frontal view, or a frontal and a lateral one."""
VISIBILITY = 0.85
"""Probability that a view of a study with a finding shows it (at least one view does)."""
VIEW_NAMES: tuple[str, ...] = ("frontal", "lateral")


@dataclasses.dataclass(eq=False, kw_only=True)
class ChestSyntheticConfig(tfds.core.BuilderConfig):
    """How many patients each split draws (each has 1-2 studies of 1-2 views)."""

    num_train_patients: int = 0
    num_validation_patients: int = 0


@dataclasses.dataclass(frozen=True)
class StudySpec:
    """One study of the manifest: everything but its pixels."""

    split: str
    patient_index: int
    patient_id: int
    study_index: int
    label: int
    num_views: int

    @property
    def study_id(self) -> str:
        """E.g. `train/patient00001/study1`, unique in the dataset."""
        folder = SPLIT_FOLDERS[self.split]
        return f"{folder}/patient{self.patient_id:05d}/study{self.study_index + 1}"

    def image_path(self, view: int) -> str:
        """The made-up path of view `view` (0-based), e.g. `.../study1/view1_frontal.png`."""
        return f"{self.study_id}/view{view + 1}_{VIEW_NAMES[view]}.png"


def chest_features() -> tfds.features.FeaturesDict:
    """The feature spec of one image: `image` (H, W, 1) uint8 PNG, `label` one of
    LABEL_NAMES, `patient_id`, `study_id` (unique in the dataset) and `image_path`."""
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(
                shape=(None, None, 1), dtype=np.uint8, encoding_format="png"
            ),
            "label": tfds.features.ClassLabel(names=list(LABEL_NAMES)),
            "patient_id": tfds.features.Scalar(dtype=np.int64),
            "study_id": tfds.features.Text(),
            "image_path": tfds.features.Text(),
        }
    )


def split_rng(split: str, *key: int) -> np.random.Generator:
    """A generator seeded by (SEED, split, *key) only: no global state, no clock.

    Patients use the key (patient index, 0), their chest (patient index, 2) and studies
    (patient index, 1, study index), so a config with fewer patients draws a prefix of a
    bigger config's patients.
    """
    return np.random.default_rng([SEED, list(SPLIT_FOLDERS).index(split), *key])


def first_patient_id(config: ChestSyntheticConfig, split: str) -> int:
    """Validation patients are numbered after train's, so the splits are patient-disjoint."""
    return 1 if split == "train" else config.num_train_patients + 1


def make_patient(split: str, patient_index: int, patient_id: int) -> list[StudySpec]:
    """The studies of one patient: 1-2 studies, each with its own label and 1-2 views."""
    rng = split_rng(split, patient_index, 0)
    counts, p = STUDIES_PER_PATIENT
    views, q = VIEWS_PER_STUDY
    return [
        StudySpec(
            split=split,
            patient_index=patient_index,
            patient_id=patient_id,
            study_index=study_index,
            label=int(rng.choice(len(LABEL_NAMES), p=CLASS_FRACTIONS)),
            num_views=int(rng.choice(views, p=q)),
        )
        for study_index in range(int(rng.choice(counts, p=p)))
    ]


def make_manifest(config: ChestSyntheticConfig, split: str) -> list[StudySpec]:
    """All studies of a split, in patient order."""
    num = config.num_train_patients if split == "train" else config.num_validation_patients
    first = first_patient_id(config, split)
    return [study for i in range(num) for study in make_patient(split, i, first + i)]


def make_study(spec: StudySpec) -> list[np.ndarray]:
    """The (H, W) uint8 views of a study: the patient's chest, the study's own finding."""
    thorax = render.sample_thorax(split_rng(spec.split, spec.patient_index, 2))
    rng = split_rng(spec.split, spec.patient_index, 1, spec.study_index)
    kind = LABEL_NAMES[spec.label]
    return render.make_study(rng, thorax, kind, spec.num_views, VISIBILITY)


def encode_png(image: np.ndarray) -> bytes:
    """8-bit grayscale PNG bytes of an (H, W) uint8 array (TFDS stores them as they are)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def generate_examples(config: ChestSyntheticConfig, split: str) -> Iterator[tuple[str, dict]]:
    """(key, example) pairs of a split, keyed by image path."""
    for spec in make_manifest(config, split):
        for view, image in enumerate(make_study(spec)):
            path = spec.image_path(view)
            yield (
                path,
                {
                    "image": encode_png(image),
                    "label": spec.label,
                    "patient_id": spec.patient_id,
                    "study_id": spec.study_id,
                    "image_path": path,
                },
            )


class Builder(tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for `chest_synthetic`: procedural chest radiographs in three classes."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        ChestSyntheticConfig(
            name="default",
            description="About 4,380 train / 710 validation images (2,400 / 400 patients).",
            num_train_patients=2400,
            num_validation_patients=400,
        ),
        ChestSyntheticConfig(
            name="small",
            description="About 530 train / 165 validation images (300 / 100 patients).",
            num_train_patients=300,
            num_validation_patients=100,
        ),
        ChestSyntheticConfig(
            name="tiny",
            description="About 50 train / 35 validation images (30 / 20 patients), for tests.",
            num_train_patients=30,
            num_validation_patients=20,
        ),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=chest_features(),
            supervised_keys=("image", "label"),
            homepage="https://stanfordmlgroup.github.io/competitions/chexpert/",
        )

    def _split_generators(
        self, dl_manager: tfds.download.DownloadManager
    ) -> dict[str, Iterator[tuple[str, dict]]]:
        del dl_manager  # nothing to download
        return {split: self._generate_examples(split) for split in SPLIT_FOLDERS}

    def _generate_examples(self, split: str) -> Iterator[tuple[str, dict]]:
        yield from generate_examples(self.builder_config, split)
