"""The quickstart's small CNN on `chest_synthetic` (three classes: normal, opacity, effusion).

    python -m experiments.main --config=experiments/configs/chest_synthetic.py --workdir=W

murajax's second offline dataset, trained with the quickstart's recipe unchanged: a few minutes
on 2 CPU cores (1500 steps, 102 s of training on an AMD EPYC; study kappa 0.924
[0.897, 0.952], AUROC 0.988, accuracy 0.950 on `validation`; see
tfds_mura/chest_synthetic/README.md). The model's head gets the dataset's three classes
(`model.num_classes=None`).

`chest_synthetic.py:smoke` is a seconds-long variant on `chest_synthetic/tiny` for tests.
"""

from experiments.configs import quickstart
from murajax.config import Config


def get_config(arg: str | None = None) -> Config:
    """`quickstart` on `chest_synthetic`; `arg='smoke'` for a tiny run."""
    if arg not in (None, "smoke"):
        raise ValueError(f"chest_synthetic.py:{arg}: unknown variant, expected nothing or 'smoke'")
    config = quickstart.get_config(arg)
    config.data.dataset = "chest_synthetic/tiny" if arg == "smoke" else "chest_synthetic"
    return config
