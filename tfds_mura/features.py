"""The features shared by `mura` and `mura_synthetic`: one place that says what an example is."""

import numpy as np
import tensorflow_datasets as tfds

LABEL_NAMES: tuple[str, ...] = ("normal", "abnormal")
"""Class names; index 1 (`abnormal`) is MURA's `positive`, i.e. label 1 in the CSVs."""

BODY_PARTS: tuple[str, ...] = (
    "XR_ELBOW",
    "XR_FINGER",
    "XR_FOREARM",
    "XR_HAND",
    "XR_HUMERUS",
    "XR_SHOULDER",
    "XR_WRIST",
)
"""The seven upper-extremity study types, in MURA's alphabetical order."""

SPLITS: tuple[str, ...] = ("train", "validation")

PAPER_REFERENCE: dict = {
    "kappa": {
        "overall": 0.705,
        "XR_ELBOW": 0.710,
        "XR_FINGER": 0.389,
        "XR_FOREARM": 0.737,
        "XR_HAND": 0.851,
        "XR_HUMERUS": 0.600,
        "XR_SHOULDER": 0.729,
        "XR_WRIST": 0.931,
    },
    "auroc": 0.929,
    "label": "MURA paper, DenseNet-169 (its test set: a reference, not the same data)",
    "source": "Rajpurkar et al. 2017, Table 2",
}
"""Cohen's kappa (per body part and overall) and AUROC of the MURA paper's DenseNet-169 on
its hidden test set: Rajpurkar et al. 2017, "MURA: Large Dataset for Abnormality Detection in
Musculoskeletal Radiographs", Table 2 (model row). murajax's plots and reports show them beside
its own scores (the builders' `REFERENCE_SCORES`): a reference only, not the same data."""


def mura_features() -> tfds.features.FeaturesDict:
    """Returns the feature spec of one MURA image (one row of `*_image_paths.csv`).

    `image` is an (H, W, 1) uint8 PNG, `label` is 0 = normal, 1 = abnormal, `study_id`
    is unique across the whole dataset and `image_path` is the path exactly as in the CSV.
    """
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(
                shape=(None, None, 1), dtype=np.uint8, encoding_format="png"
            ),
            "label": tfds.features.ClassLabel(names=list(LABEL_NAMES)),
            "body_part": tfds.features.ClassLabel(names=list(BODY_PARTS)),
            "patient_id": tfds.features.Scalar(dtype=np.int64),
            "study_id": tfds.features.Text(),
            "image_path": tfds.features.Text(),
        }
    )
