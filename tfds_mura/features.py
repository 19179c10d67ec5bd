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
