"""The MURA paper's recipe (Rajpurkar et al. 2017): DenseNet-169 from ImageNet weights.

320x320 images with ImageNet normalisation (the model's own), random lateral flips and
rotations up to 30 degrees, Adam (lr 1e-4, b1 0.9, b2 0.999) on batches of 8, the learning
rate divided by 10 when the holdout loss plateaus, class-weighted cross-entropy ('global').

ImageNet weights: `--config.model.weights=imagenet` loads Keras's own file
(densenet169_weights_tf_dim_ordering_tf_kernels_notop.h5), downloaded once into
$MURAJAX_CACHE/weights and hash-checked (murajax.models.weights_hub; offline, place it there
by hand or pass a path). Without weights (`model.weights` = None, the default) the network
starts random:

    python -m experiments.main --config=experiments/configs/densenet169.py --workdir=W \
        --config.data.manual_dir=/path/holding/MURA-v1.1 --config.model.weights=imagenet

`densenet169.py:smoke` is a seconds-long variant on `mura_synthetic/tiny` for tests.
"""

from experiments.configs import default
from murajax.config import Config


def get_config(arg: str | None = None) -> Config:
    """`default` with the MURA paper's model and recipe; `arg='smoke'` for a tiny run."""
    config = default.get_config()
    config.data.image_size = 320
    config.data.flip = True
    config.data.rotation = 30.0
    config.model.name = "densenet169"
    config.model.weights = None  # "imagenet" or a Keras .h5 file (PATH)
    config.model.dropout_rate = 0.0  # the paper's head has no dropout
    config.optim.name = "adam"
    config.optim.learning_rate = 1e-4
    config.optim.b1 = 0.9
    config.optim.b2 = 0.999
    config.optim.schedule = "plateau"
    config.optim.decay_factor = 0.1
    config.train.batch_size = 8
    config.train.class_weighting = "global"
    config.eval.batch_size = 32
    if arg == "smoke":
        smoke(config)
    elif arg is not None:
        raise ValueError(f"densenet169.py:{arg}: unknown variant, expected nothing or 'smoke'")
    return config


def smoke(config: Config) -> Config:
    """A few CPU-sized steps on `mura_synthetic/tiny` at 32 px (the tests' end-to-end run)."""
    config.data.dataset = "mura_synthetic/tiny"
    config.data.image_size = 32
    config.data.num_workers = 0
    config.train.steps = 3
    config.train.batch_size = 4
    config.train.log_every = 1
    config.train.eval_every = 3
    config.train.checkpoint_every = 3
    config.train.progress = False
    config.eval.batch_size = 16
    config.eval.bootstrap_samples = 20
    return config
