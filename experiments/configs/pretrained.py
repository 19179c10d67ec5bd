"""Thesis section 5.4, pre-trained models: the CNN from scratch against ImageNet backbones.

    python -m experiments.sweep --config=experiments/configs/pretrained.py --workdir=W

Four runs with the same budget (steps, batch, image size, data, augmentation, schedule):

    base                       the CNN from scratch, quickstart's recipe (Adam 3e-3,
                               per-image standardisation)
    model.name=vgg16,...,model.freeze=backbone
                               VGG16 from ImageNet, backbone frozen: feature extraction, as
                               the thesis does; only the new head trains, Adam 1e-3
    model.name=vgg16,...,optim.backbone_lr_multiplier=0.1
                               VGG16 from ImageNet fine-tuned: the head at Adam 1e-3, the
                               backbone at a tenth of it (1e-4, vgg16.py's rate)
    model.name=densenet169,...  DenseNet-169 from ImageNet fine-tuned, the MURA paper's recipe
                               (Adam 1e-4 everywhere; densenet169.py)

The pretrained runs set `data.normalization=None`, so that images are prepared as each model
wants them (the model registry: VGG16 'caffe', DenseNet-169 'imagenet', both 3 channels);
the CNN keeps quickstart's 1-channel standardisation. Every run uses the global class-weighted
loss, lateral flips, no dropout (quickstart's, and the MURA paper's head) and quickstart's
warmup + cosine schedule.

Variants:

    pretrained.py        `mura_synthetic` at 64 px, batch 16, 600 steps (CPU-sized), with
                         `model.weights=imagenet`: Keras's files, downloaded once into
                         $MURAJAX_CACHE/weights (murajax.models.weights_hub). Offline, and
                         without the files placed there by hand, the sweep stops before any
                         training with one `error:` line that names the URL and the path.
                         Measured on 2 CPU cores (2026-12, other jobs sharing them), 40 steps
                         at 64 px and batch 16 with random weights: VGG16 9-11 images/s
                         (~1.5 s a step), DenseNet-169 20-23 images/s (~0.7 s a step); the
                         CNN ~0.06 s a step (quickstart's ~280 images/s at 64 px). So 600 steps
                         are ~15 min for each VGG16 run, ~7-8 min for DenseNet-169 and under a
                         minute for the CNN, plus evaluations: about 40 min in all. 600 steps
                         of 16 are ~1.2 epochs of mura_synthetic's train split (7,749 images).
    pretrained.py:mura   the same question on real MURA (a GPU run each): 224 px (the
                         thesis's size, VGG16's and ImageNet's), batch 32, 20,000 steps,
                         `default.py`'s CNN and plateau schedule. `data.manual_dir` is
                         $MURA_MANUAL_DIR (the folder holding MURA-v1.1/), needed only the first
                         time the dataset is built. The MURA paper's 320 px:
                         edit BUDGETS["mura"] (the size is the sweep's, for every run).
    pretrained.py:smoke  3 steps of batch 4 per run on `mura_synthetic/tiny` at 32 px: seconds
                         for the CNN and each VGG16 run, 3-4 minutes for DenseNet-169 on 2 CPU
                         cores (its compilation; the whole sweep took 4 min 21 s on 2026-12-02).
                         Instead of ImageNet's files each pretrained run loads a GENERATED
                         stand-in: the model's backbone at a seeded random
                         init (numpy, seed 0; `seeded_backbone`), written once as a Keras .h5
                         file (murajax.models.save_keras_weights) into
                         $MURAJAX_CACHE/weights/smoke/ (`smoke_weights`; ~59 MB for VGG16,
                         ~52 MB for DenseNet-169, a few seconds). It exercises the whole path
                         (file -> variables -> frozen or fine-tuned training) in CI; it is not
                         ImageNet and its scores mean nothing. Its run names hold the file's
                         path (sanitised and cut), so they differ between caches.

Compare the runs' validation kappa and AUROC in `W/sweep.md`, their ROC curves in
`W/sweep_roc.png`; `python -m experiments.results` puts them on docs/results.md.
"""

import os
from typing import Any

from experiments.configs.thesis import base_config, check_variant
from murajax.config import Config

VARIANTS = (None, "mura", "smoke")
IMAGENET = "imagenet"
SMOKE_SEED = 0

# (image size, batch size, steps) of every run of each variant: the same budget per run.
BUDGETS: dict[str | None, tuple[int, int, int]] = {
    None: (64, 16, 600),
    "mura": (224, 32, 20_000),
    "smoke": (32, 4, 3),
}

# What each pretrained run changes from the CNN's base config, besides `model.weights` and
# `data.normalization=None` (`_pretrained` adds them), in the order its name shows them.
VGG16_FROZEN = {"model.name": "vgg16", "model.freeze": "backbone", "optim.learning_rate": 1e-3}
VGG16_FINE_TUNED = {
    "model.name": "vgg16",
    "optim.backbone_lr_multiplier": 0.1,
    "optim.learning_rate": 1e-3,
}
DENSENET169 = {"model.name": "densenet169", "optim.learning_rate": 1e-4}


def get_config(arg: str | None = None) -> Config:
    """The base: the CNN from scratch (quickstart, or `default.py` for 'mura') at the
    variant's budget."""
    check_variant("pretrained.py", arg, VARIANTS)
    config = base_config(arg)
    size, batch, steps = BUDGETS[arg]
    config.data.image_size = size
    config.train.batch_size = batch
    config.train.steps = steps
    if arg is None:
        config.optim.warmup_steps = 40
        config.train.eval_every = 150
        config.train.checkpoint_every = 150
        config.train.log_every = 25
    elif arg == "smoke":
        config.data.num_workers = 0
        config.optim.warmup_steps = 1
        config.train.eval_every = 3
        config.train.checkpoint_every = 3
        config.train.log_every = 1
        config.train.progress = False
    return config


def _seeded_value(rng: Any, collection: str, name: str, shape: tuple[int, ...]) -> Any:
    """A fresh layer's value: He-normal kernels, zero biases and BatchNorm shifts, unit
    BatchNorm scales and variances, zero means (what a model's own init draws, in numpy)."""
    import numpy as np

    if name == "kernel":
        fan_in = int(np.prod(shape[:-1]))
        return rng.standard_normal(shape, np.float32) * np.float32(np.sqrt(2.0 / fan_in))
    if name in ("scale", "var"):
        return np.ones(shape, np.float32)
    return np.zeros(shape, np.float32)  # bias, mean


def seeded_backbone(model_name: str, seed: int = SMOKE_SEED) -> dict[str, Any]:
    """`model_name`'s backbone variables (`create(name, num_classes=None)`), drawn with
    numpy from `seed`: the same values on every machine and jax version, in a second."""
    import numpy as np

    from murajax.models import keras_weights

    rng = np.random.default_rng(seed)
    shapes = keras_weights.backbone_shapes(model_name)
    return {
        collection: {
            layer: {
                name: _seeded_value(rng, collection, name, tuple(leaf.shape))
                for name, leaf in weights.items()
            }
            for layer, weights in layers.items()
        }
        for collection, layers in shapes.items()
    }


def smoke_weights(model_name: str, folder: str | None = None) -> str:
    """The smoke variant's stand-in for ImageNet's file: `model_name`'s backbone at a seeded
    random init (`seeded_backbone(model_name, SMOKE_SEED)`), written once as a Keras `.h5`
    weights file (`murajax.models.save_keras_weights`).

    The file is `<folder>/<model>_seed<seed>_<digest>_notop.h5` (`folder`:
    $MURAJAX_CACHE/weights/smoke), where the digest is of the backbone's variable shapes, so
    that a changed model gets a new file. Written atomically; an existing file is reused.
    """
    import hashlib

    import jax

    from murajax import models
    from murajax.compilation_cache import cache_root
    from murajax.models import keras_weights

    shapes = keras_weights.backbone_shapes(model_name)
    flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
    text = ";".join(f"{jax.tree_util.keystr(k)}={tuple(v.shape)}" for k, v in flat)
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    folder = folder or os.path.join(cache_root(), "weights", "smoke")
    path = os.path.join(folder, f"{model_name}_seed{SMOKE_SEED}_{digest}_notop.h5")
    if os.path.isfile(path):
        return path
    os.makedirs(folder, exist_ok=True)
    return models.save_keras_weights(model_name, seeded_backbone(model_name), path)


def _pretrained(recipe: dict[str, Any], arg: str | None) -> dict[str, Any]:
    """`recipe` with its model's weights and its own input normalisation; the distinguishing
    fields come first, so that a name cut to `murajax.sweep.MAX_NAME_LENGTH` still says
    which run it is."""
    model_name = recipe["model.name"]
    weights = smoke_weights(model_name) if arg == "smoke" else IMAGENET
    first, rest = list(recipe.items())[:2], list(recipe.items())[2:]
    return {**dict(first), "model.weights": weights, **dict(rest), "data.normalization": None}


def get_sweep(arg: str | None = None) -> list[dict[str, Any]]:
    """The CNN from scratch, VGG16 frozen, VGG16 fine-tuned and DenseNet-169 fine-tuned."""
    check_variant("pretrained.py", arg, VARIANTS)
    return [{}, *(_pretrained(r, arg) for r in (VGG16_FROZEN, VGG16_FINE_TUNED, DENSENET169))]
