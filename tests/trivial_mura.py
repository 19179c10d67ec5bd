"""A trivially separable MURA-shaped TFDS dataset and a tiny config that trains on it.

Shared by the end-to-end tests; `conftest.py` builds it once per session (`data_dir`).
"""

import io

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from experiments.configs import quickstart
from tfds_mura.features import BODY_PARTS, PAPER_REFERENCE, mura_features


class TrivialMura(tfds.core.GeneratorBasedBuilder):
    """MURA-shaped toy data: abnormal images are bright, normal ones dark (trivially separable)."""

    VERSION = tfds.core.Version("1.0.0")
    REFERENCE_SCORES = PAPER_REFERENCE  # as `mura` and `mura_synthetic`: shown beside scores

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(features=mura_features())

    def _split_generators(self, dl_manager):
        del dl_manager
        return {
            "train": self._generate_examples("train", 48),
            "validation": self._generate_examples("valid", 16),
        }

    def _generate_examples(self, split: str, num_studies: int):
        rng = np.random.default_rng(0 if split == "train" else 1)
        for study in range(num_studies):
            label = study % 2
            patient = study // 2 + (0 if split == "train" else 1000)
            part = BODY_PARTS[study % len(BODY_PARTS)]
            kind = "positive" if label else "negative"
            study_id = f"{split}/{part}/patient{patient:05d}/study{study}_{kind}"
            for view in range(1 + study % 3):
                level = 180 if label else 60
                pixels = rng.normal(level, 20, size=(20, 24)).clip(0, 255).astype(np.uint8)
                buffer = io.BytesIO()
                Image.fromarray(pixels).save(buffer, format="PNG")
                path = f"MURA-v1.1/{study_id}/image{view + 1}.png"
                yield (
                    path,
                    {
                        "image": buffer.getvalue(),
                        "label": label,
                        "body_part": part,
                        "patient_id": patient,
                        "study_id": study_id,
                        "image_path": path,
                    },
                )


def trivial_config(data_dir: str, **train_overrides):
    config = quickstart.get_config("smoke")
    config.data.dataset = "trivial_mura"
    config.data.data_dir = data_dir
    config.data.image_size = 16
    config.data.holdout_fraction = 0.25
    config.data.rotation = 10.0
    config.model.widths = (4, 8)
    config.model.dense = (8,)
    config.optim.learning_rate = 1e-2
    config.train.steps = 24
    config.train.eval_every = 12
    config.train.checkpoint_every = 8
    config.train.log_every = 4
    config.train.progress = False
    for name, value in train_overrides.items():
        setattr(config.train, name, value)
    return config
