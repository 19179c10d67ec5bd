"""Thesis section 5.2, image size: the quickstart CNN trained at several input sizes.

    python -m experiments.sweep --config=experiments/configs/image_size.py --workdir=W

Runs (one per size, everything else as `quickstart.py`: 1500 steps of batch 32, Adam 3e-3
with warmup + cosine, flips, batch norm):

    image_size.py          `data.image_size` 32, 64 and 128 on `mura_synthetic`. On 2 CPU
                           cores about 1.5, 4 and 12 minutes (875, 280 and 78 images/s):
                           about 20 minutes in all.
    image_size.py:mura     the same question on real MURA with `default.py`'s CNN (20,000
                           steps, a GPU run each): 128, 224 and 320 px (320 is the MURA
                           paper's size). `data.manual_dir` is `$MURA_MANUAL_DIR` (the folder
                           holding MURA-v1.1/), needed only the first time the dataset is built.
    image_size.py:smoke    seconds-long, 16 and 32 px on `mura_synthetic/tiny` (tests).

Larger images show smaller features (a hairline fracture, a screw) but cost quadratically
more compute, and from scratch a small CNN may not use the extra detail: the sweep's
`sweep.md` compares validation kappa and AUROC per size, `sweep_roc.png` their ROC curves.
"""

from typing import Any

from experiments.configs.thesis import base_config, check_variant
from murajax.config import Config

SIZES = {None: (32, 64, 128), "mura": (128, 224, 320), "smoke": (16, 32)}


def get_config(arg: str | None = None) -> Config:
    """The base every run starts from: quickstart (or `default.py` for 'mura')."""
    check_variant("image_size.py", arg, tuple(SIZES))
    return base_config(arg)


def get_sweep(arg: str | None = None) -> list[dict[str, Any]]:
    """One run per image size."""
    check_variant("image_size.py", arg, tuple(SIZES))
    return [{"data.image_size": size} for size in SIZES[arg]]
