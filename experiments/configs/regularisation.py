"""Thesis section 5.3, regularisation: the quickstart CNN with one regulariser at a time.

    python -m experiments.sweep --config=experiments/configs/regularisation.py --workdir=W

The base is `quickstart.py` with every regulariser off (no dropout, no L2, no augmentation;
batch norm on, as in quickstart). The runs add one each, then all of them:

    base                                        nothing added
    model.dropout_rate=0.5                      dropout before the hidden dense layer
    train.l2_weight=0.0001                      L2 on every kernel (Keras's l2(1e-4))
    data.flip=True                              random lateral flips
    data.flip=True,data.rotation=15.0           flips and rotations up to 15 degrees
    model.batch_norm=False                      batch norm off (it also regularises)
    model.dropout_rate=0.5,...,data.rotation=15.0   dropout + L2 + flips + rotations

On 2 CPU cores about 4 minutes a run at quickstart's 64 px and 1500 steps (rotations make a
run about a minute slower): about 30 minutes in all. `regularisation.py:smoke` is the base and
the all-in run on `mura_synthetic/tiny`, seconds each (tests). Compare the runs' validation
kappa and AUROC in `sweep.md`, and over-fitting in each run's `report.md` training curves.
"""

from typing import Any

from experiments.configs.thesis import base_config, check_variant
from murajax.config import Config

DROPOUT = {"model.dropout_rate": 0.5}
L2 = {"train.l2_weight": 1e-4}
FLIP = {"data.flip": True}
FLIP_ROTATE = {"data.flip": True, "data.rotation": 15.0}
NO_BATCH_NORM = {"model.batch_norm": False}
ALL = {**DROPOUT, **L2, **FLIP_ROTATE}


def get_config(arg: str | None = None) -> Config:
    """quickstart (or its smoke variant) with every regulariser off."""
    check_variant("regularisation.py", arg, (None, "smoke"))
    config = base_config(arg)
    config.model.dropout_rate = 0.0
    config.train.l2_weight = 0.0
    config.data.flip = False
    config.data.rotation = 0.0
    config.data.zoom = 0.0
    config.data.brightness = 0.0
    config.data.contrast = 0.0
    return config


def get_sweep(arg: str | None = None) -> list[dict[str, Any]]:
    """The base, each regulariser on its own, and all of them together."""
    check_variant("regularisation.py", arg, (None, "smoke"))
    if arg == "smoke":
        return [{}, ALL]
    return [{}, DROPOUT, L2, FLIP, FLIP_ROTATE, NO_BATCH_NORM, ALL]
