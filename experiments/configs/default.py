"""The thesis's CNN trained from scratch on real MURA (a GPU run).

    python -m experiments.main --config=experiments/configs/default.py --workdir=W \
        --config.data.manual_dir=/path/holding/MURA-v1.1
"""

import murajax.models  # noqa: F401  (registers the models, whose own fields config.model sets)
from murajax.config import Config


def get_config(arg: str | None = None) -> Config:
    """Real MURA, 224 px, the ab-initio CNN with batch norm, Adam, weighted loss."""
    del arg
    config = Config(seed=0)
    config.data.dataset = "mura"
    config.data.image_size = 224
    config.data.holdout_fraction = 0.1
    config.data.num_workers = 4
    config.model.name = "cnn"
    config.model.widths = (32, 64, 128, 256, 256)
    config.model.convs_per_block = 2
    config.model.batch_norm = True
    config.model.dense = (256,)
    config.model.dropout_rate = 0.5
    config.optim.name = "adam"
    config.optim.learning_rate = 1e-3
    config.optim.schedule = "plateau"
    config.train.steps = 20_000
    config.train.batch_size = 32
    config.train.log_every = 100
    config.train.eval_every = 1000
    config.train.checkpoint_every = 1000
    config.train.class_weighting = "global"
    config.eval.batch_size = 64
    return config
