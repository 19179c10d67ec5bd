"""A small CNN on `chest_synthetic` (three classes: normal, opacity, effusion), on 2 CPU cores.

    python -m experiments.main --config=experiments/configs/chest_synthetic.py --workdir=W

The quickstart's recipe on murajax's second offline dataset, about 2 minutes on 2 CPU cores:
study accuracy 0.95, Cohen's kappa 0.92 (95% CI 0.90-0.95), AUROC 0.99 on `validation`
(tfds_mura/chest_synthetic/README.md).

`chest_synthetic.py:smoke` is a seconds-long variant on `chest_synthetic/tiny` for tests.
"""

from experiments.configs import default
from murajax.config import Config


def get_config(arg: str | None = None) -> Config:
    """`default` on `chest_synthetic`, small enough for a CPU; `arg='smoke'` for a tiny run."""
    config = default.get_config()
    config.data.dataset = "chest_synthetic"
    config.data.image_size = 64
    config.data.num_workers = 0
    config.data.cache = "memory"  # decode and resize each image once (as the quickstart)
    config.data.normalization = "standardize"  # per image: exposure varies between views
    config.data.rotation = 0.0  # flips only: the views are already rotated by up to 6 degrees
    config.model.num_classes = None  # the dataset's three
    config.model.widths = (16, 32, 64, 64)
    config.model.convs_per_block = 1
    config.model.batch_norm = True
    config.model.bn_momentum = 0.9  # running statistics must keep up in a short run
    config.model.pooling = "max"  # a patch of opacity is small and local
    config.model.dense = (64,)
    config.model.dropout_rate = 0.0
    config.optim.learning_rate = 3e-3
    config.optim.schedule = "warmup_cosine"
    config.optim.warmup_steps = 100
    config.train.steps = 1500
    config.train.batch_size = 32
    config.train.log_every = 50
    config.train.eval_every = 300
    config.train.checkpoint_every = 300
    config.eval.bootstrap_samples = 1000
    if arg == "smoke":
        config.data.dataset = "chest_synthetic/tiny"
        config.data.cache = "none"  # seconds-long: nothing to gain
        config.data.image_size = 32
        config.model.widths = (8, 16)
        config.model.dense = (16,)
        config.optim.warmup_steps = 2
        config.train.steps = 20
        config.train.batch_size = 8
        config.train.log_every = 5
        config.train.eval_every = 10
        config.train.checkpoint_every = 10
        config.eval.bootstrap_samples = 20
        config.eval.batch_size = 16
    elif arg is not None:
        raise ValueError(f"chest_synthetic.py:{arg}: unknown variant, expected nothing or 'smoke'")
    return config
