"""The multi-view study model: one network sees every view of a study at once.

A shared encoder runs over all views of a study (padded to the batch's view count and
masked), the views' features are pooled ("mean", "max" or gated "attention") and one head
predicts the study. It is evaluated with the same study-level metrics as the image models, so
its kappa compares directly with the mean of image probabilities (`quickstart.py`).

    python -m experiments.main --config=experiments/configs/multiview.py --workdir=W

The argument picks the encoder and the view pooling, comma-separated, in any order:

    multiview.py                    quickstart's CNN, attention pooling, mura_synthetic (CPU)
    multiview.py:mean               the same with mean (or max) pooling of the views
    multiview.py:densenet169        the MURA paper's DenseNet-169 recipe as a study model (real
                                    MURA, 320 px, Adam 1e-4; `--config.model.weights=imagenet`)
    multiview.py:vgg16,max          VGG16 (Keras weights optional), max pooling
    multiview.py:smoke              seconds-long, on `mura_synthetic/tiny` (tests)

`train.batch_size` and `eval.batch_size` count studies. Training takes half the image
model's batch, e.g. 16 studies of at most 4 views (`data.max_views`) for quickstart's 32
images: about as many real radiographs a step (MURA's studies average 2.7 views), in up to
64 view slots (short studies are padded by repeating their views).
"""

from experiments.configs import densenet169, quickstart, vgg16
from murajax.config import Config
from murajax.models.multiview import VIEW_POOLINGS

BACKBONES = {"cnn": quickstart, "vgg16": vgg16, "densenet169": densenet169}


def parse(arg: str | None) -> tuple[str, str, bool]:
    """(backbone, view pooling, smoke) from `arg` such as "densenet169,attention,smoke"."""
    backbone, pooling, smoke = "cnn", "attention", False
    for token in filter(None, (arg or "").split(",")):
        if token in BACKBONES:
            backbone = token
        elif token in VIEW_POOLINGS:
            pooling = token
        elif token == "smoke":
            smoke = True
        else:
            valid = ", ".join([*BACKBONES, *VIEW_POOLINGS, "smoke"])
            raise ValueError(f"multiview.py:{arg}: unknown variant {token!r}, expected {valid}")
    return backbone, pooling, smoke


def get_config(arg: str | None = None) -> Config:
    """The backbone's own config (quickstart, vgg16 or densenet169) as a study model."""
    backbone, pooling, smoke = parse(arg)
    config = BACKBONES[backbone].get_config("smoke" if smoke else None)
    config.model.backbone = backbone
    config.model.name = "multiview"
    config.model.view_pooling = pooling
    config.model.attention_dim = 64 if backbone == "cnn" else 128
    config.data.max_views = 4
    # Studies, not images: half the image model's batch holds about as many radiographs
    # (MURA's studies have 2.7 views on average), in up to twice as many padded view slots.
    config.train.batch_size = max(1, config.train.batch_size // 2)
    config.eval.batch_size = max(1, config.eval.batch_size // config.data.max_views)
    return config
