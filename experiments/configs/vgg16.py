"""VGG16 from ImageNet weights, the thesis's pretrained baseline.

224x224 images with Keras's 'caffe' normalisation (the model's own: BGR, minus the ImageNet
mean), flips and rotations up to 30 degrees, Adam at 1e-4 with the plateau schedule,
class-weighted cross-entropy.

ImageNet weights: `--config.model.weights=imagenet` loads Keras's own file
(vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5), downloaded once into
$MURAJAX_CACHE/weights and hash-checked (murajax.models.weights_hub; offline, place it there
by hand or pass a path). Without weights (`model.weights` = None, the default) the network
starts random:

    python -m experiments.main --config=experiments/configs/vgg16.py --workdir=W \
        --config.data.manual_dir=/path/holding/MURA-v1.1 --config.model.weights=imagenet

`vgg16.py:smoke` is a seconds-long variant on `mura_synthetic/tiny` for tests.
"""

from experiments.configs import default, densenet169
from murajax.config import Config


def get_config(arg: str | None = None) -> Config:
    """`default` with VGG16 and a fine-tuning recipe; `arg='smoke'` for a tiny run."""
    config = default.get_config()
    config.data.image_size = 224
    config.data.flip = True
    config.data.rotation = 30.0
    config.model.name = "vgg16"
    config.model.weights = None  # "imagenet" or a Keras .h5 file (PATH)
    config.model.dropout_rate = 0.5
    config.optim.name = "adam"
    config.optim.learning_rate = 1e-4
    config.optim.schedule = "plateau"
    config.optim.decay_factor = 0.1
    config.train.batch_size = 32
    config.train.class_weighting = "global"
    if arg == "smoke":
        densenet169.smoke(config)
    elif arg is not None:
        raise ValueError(f"vgg16.py:{arg}: unknown variant, expected nothing or 'smoke'")
    return config
