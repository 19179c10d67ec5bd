"""MURA as TensorFlow Datasets: importing this package registers `mura` and `mura_synthetic`,
`chest_synthetic` (a second, three-class offline dataset) and `image_folder` for your own
radiographs."""

from tfds_mura.chest_synthetic.chest_synthetic_dataset_builder import Builder as ChestSynthetic
from tfds_mura.features import BODY_PARTS, LABEL_NAMES, mura_features
from tfds_mura.image_folder.image_folder_dataset_builder import Builder as ImageFolder
from tfds_mura.mura.mura_dataset_builder import Builder as Mura
from tfds_mura.mura_synthetic.mura_synthetic_dataset_builder import Builder as MuraSynthetic

__all__ = [
    "BODY_PARTS",
    "ChestSynthetic",
    "LABEL_NAMES",
    "ImageFolder",
    "Mura",
    "MuraSynthetic",
    "mura_features",
]
