"""Thesis section 5.1, baseline performance: the chosen ab-initio CNN, as a one-run sweep.

    python -m experiments.sweep --config=experiments/configs/baseline.py --workdir=W

The thesis's baseline is its own CNN trained from scratch ("my chosen ab-initio model"). As a
sweep of one run (named `base`), it gets the same summary as every other section (`W/sweep.md`,
`W/sweep.csv`, `W/sweep_roc.png`), which `python -m experiments.results` puts on the results
page; `experiments.main` with the same config file trains the same run.

    baseline.py          `quickstart.py` itself on `mura_synthetic` (64 px, 1500 steps of
                         batch 32, Adam 3e-3 with warmup + cosine): about 4 minutes on 2 CPU
                         cores. Sections 5.2-5.4 and the optimisers vary this run.
    baseline.py:mura     `default.py` on real MURA (224 px, 20,000 steps, a GPU run);
                         `data.manual_dir` is $MURA_MANUAL_DIR (the folder holding MURA-v1.1/),
                         needed only the first time the dataset is built.
    baseline.py:smoke    `quickstart.py:smoke`, seconds long on `mura_synthetic/tiny` (tests).
"""

from typing import Any

from experiments.configs.thesis import base_config, check_variant
from murajax.config import Config

VARIANTS = (None, "mura", "smoke")


def get_config(arg: str | None = None) -> Config:
    """quickstart (or its smoke variant), or `default.py` on real MURA for 'mura'."""
    check_variant("baseline.py", arg, VARIANTS)
    return base_config(arg)


def get_sweep(arg: str | None = None) -> list[dict[str, Any]]:
    """One run, the config as it is."""
    check_variant("baseline.py", arg, VARIANTS)
    return [{}]
