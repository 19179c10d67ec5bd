"""The 5-minute quickstart: a small CNN on `mura_synthetic`, on 2 CPU cores.

    make demo    # = python -m experiments.main --config=experiments/configs/quickstart.py ...

`quickstart.py:smoke` is a seconds-long variant on `mura_synthetic/tiny` for tests.
"""

from experiments.configs import default
from murajax.config import Config


def get_config(arg: str | None = None) -> Config:
    """`default` on synthetic data, small enough for a CPU; `arg='smoke'` for a tiny run."""
    config = default.get_config()
    config.data.dataset = "mura_synthetic"
    config.data.image_size = 64
    config.data.num_workers = 0
    # Decode and resize each image once (identical batches): the pipeline then runs ~7x faster
    # than the step it feeds instead of ~1x (README, Performance).
    config.data.cache = "memory"
    config.data.normalization = "standardize"  # per image: exposure varies between views
    config.data.rotation = 0.0  # flips only: rotations slow a 4-minute run down too much
    config.model.widths = (16, 32, 64, 64)
    config.model.convs_per_block = 1
    config.model.batch_norm = True
    config.model.bn_momentum = 0.9  # running statistics must keep up in a short run
    config.model.pooling = "max"  # a fracture or a plate is small and local
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
    # The study browser shows all three attributions (seconds at 64 px); occlusion slides a
    # quarter-image square by an eighth.
    config.eval.attributions = ("gradcam", "ig", "occlusion")
    config.eval.occlusion_patch = 16
    config.eval.occlusion_stride = 8
    if arg == "smoke":
        config.data.dataset = "mura_synthetic/tiny"
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
        raise ValueError(f"quickstart.py:{arg}: unknown variant, expected nothing or 'smoke'")
    return config
