"""What the benchmark trains: murajax's real models at fixed sizes, and their FLOP counts.

Each `Workload` builds the murajax `Config` of its train step (`Workload.config`); the peers
(Keras, PyTorch) read the same architecture from that config's `model` section, so that every
framework trains the same network on the same batch. Importing this module imports neither
jax nor TensorFlow nor torch (the configs are plain dataclasses).
"""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from experiments.bench.arch import DENSENET169_BLOCKS, GROWTH_RATE, VGG16_BLOCKS
from experiments.configs import densenet169 as densenet169_config
from experiments.configs import multiview as multiview_config
from experiments.configs import quickstart as quickstart_config
from experiments.configs import vgg16 as vgg16_config
from murajax.config import Config, ModelConfig, OptimConfig

DTYPES: tuple[str, ...] = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class Workload:
    """One train step to measure: a model at an image size and batch.

    Attributes:
      key: the name `--models=` selects it by ("C", "quickstart", "A", "A224", ...).
      model: the row's `model` label.
      image_size: square input side in pixels.
      batch_size: images per step (studies for "multiview", see `views`).
      channels: input channels (1 for murajax's CNN, 3 for the Keras ports).
      quick: part of `--quick`.
      description: one line for the table's legend.
      views: view slots per study (a study model's batch is (batch, views, H, W, C)).
    """

    key: str
    model: str
    image_size: int
    batch_size: int
    channels: int
    quick: bool
    description: str
    views: int = 1

    @property
    def images_per_step(self) -> int:
        """Images the model processes per step (a study batch counts its view slots)."""
        return self.batch_size * self.views

    def config(self, dtype: str = "float32", conv_impl: str | None = None) -> Config:
        """The murajax config of this train step in `dtype`, with `model.conv_impl` set when
        given (else the config's default)."""
        config = _BUILDERS[self.key]()
        config.model.dtype = dtype
        # Binary logits, as the benchmark's random labels (`model.num_classes=None` would be
        # the dataset's number of labels, which the FLOP counts and the peers do not read).
        config.model.num_classes = 2
        if conv_impl is not None:
            config.model.conv_impl = conv_impl
        # Every framework trains with plain Adam at a constant learning rate.
        config.optim = OptimConfig(name="adam", learning_rate=config.optim.learning_rate)
        config.data.image_size = self.image_size
        config.train.batch_size = self.batch_size
        return config


def _cnn_c() -> Config:
    """Workload C of issue 9: 4 x [conv3x3 32/64/128/256 + ReLU + 2x2 max-pool], GAP, Dense(2)."""
    config = Config()
    config.model = ModelConfig(
        name="cnn",
        widths=(32, 64, 128, 256),
        convs_per_block=1,
        batch_norm=False,
        pooling="avg",
        dense=(),
        dropout_rate=0.0,
    )
    return config


def _multiview() -> Config:
    config = multiview_config.get_config()
    config.data.max_views = 4
    return config


_BUILDERS: dict[str, Callable[[], Config]] = {
    "C": _cnn_c,
    "quickstart": quickstart_config.get_config,
    "A": vgg16_config.get_config,
    "A224": vgg16_config.get_config,
    "densenet169": densenet169_config.get_config,
    "multiview": _multiview,
}

WORKLOADS: tuple[Workload, ...] = (
    Workload("C", "cnn_c", 128, 32, 1, True, "cnn 4x[conv3x3 + 2x2 max-pool], GAP, Dense(2)"),
    Workload("quickstart", "quickstart", 64, 32, 1, False, "quickstart.py's CNN (batch norm)"),
    Workload("A", "vgg16", 128, 16, 3, True, "VGG16 backbone, GAP, dropout, Dense(2)"),
    Workload("A224", "vgg16", 224, 16, 3, False, "VGG16 backbone, GAP, dropout, Dense(2)"),
    Workload("densenet169", "densenet169", 224, 8, 3, False, "DenseNet-169, GAP, Dense(2)"),
    Workload(
        "multiview", "multiview", 64, 16, 1, False, "quickstart CNN per view, attention", views=4
    ),
)
"""Every workload, in the order the benchmark measures them."""


def by_key(key: str) -> Workload:
    """The workload named `key` (or its `model` label, if that is unique)."""
    for workload in WORKLOADS:
        if workload.key == key:
            return workload
    matches = [w for w in WORKLOADS if w.model == key]
    if len(matches) == 1:
        return matches[0]
    valid = ", ".join(w.key for w in WORKLOADS)
    raise ValueError(f"unknown workload {key!r}: expected one of {valid}")


def select(quick: bool, keys: Sequence[str] | None = None) -> list[Workload]:
    """The workloads to run: `keys` (in `WORKLOADS` order) if given, else the quick ones under
    `quick`, else all."""
    if keys:
        wanted = {by_key(k).key for k in keys}
        return [w for w in WORKLOADS if w.key in wanted]
    return [w for w in WORKLOADS if w.quick or not quick]


# --------------------------------------------------------------------------- FLOP counts


def _conv(size: int, kernel: int, cin: int, cout: int) -> int:
    """Multiply-adds x 2 of a convolution producing a `size` x `size` map."""
    return 2 * size * size * kernel * kernel * cin * cout


def cnn_forward_flops(model: ModelConfig, image_size: int, channels: int) -> int:
    """Forward FLOPs per image of murajax's CNN (convolutions and dense layers)."""
    flops, size, cin = 0, image_size, channels
    for width in model.widths:
        for _ in range(model.convs_per_block):
            flops += _conv(size, 3, cin, width)
            cin = width
        size //= 2
    features = cin * size * size if model.pooling == "flatten" else cin
    for width in (*model.dense, model.num_classes):
        flops += 2 * features * width
        features = width
    return flops


def vgg16_forward_flops(image_size: int, num_classes: int = 2) -> int:
    """Forward FLOPs per image of VGG16's backbone and a GAP + Dense(num_classes) head."""
    flops, size, cin = 0, image_size, 3
    for width, convs in VGG16_BLOCKS:
        for _ in range(convs):
            flops += _conv(size, 3, cin, width)
            cin = width
        size //= 2
    return flops + 2 * cin * num_classes


def densenet169_forward_flops(image_size: int, num_classes: int = 2) -> int:
    """Forward FLOPs per image of DenseNet-169 (Keras's layout) and a GAP + Dense head."""
    size = (image_size + 6 - 7) // 2 + 1  # conv1: 7x7 stride 2 on 3-padded input
    flops = _conv(size, 7, 3, 64)
    size = (size + 2 - 3) // 2 + 1  # pool1: 3x3 max-pool stride 2 on 1-padded input
    channels = 64
    for stage, count in enumerate(DENSENET169_BLOCKS):
        for _ in range(count):
            flops += _conv(size, 1, channels, 4 * GROWTH_RATE)
            flops += _conv(size, 3, 4 * GROWTH_RATE, GROWTH_RATE)
            channels += GROWTH_RATE
        if stage < len(DENSENET169_BLOCKS) - 1:
            flops += _conv(size, 1, channels, channels // 2)
            channels //= 2
            size //= 2
    return flops + 2 * channels * num_classes


def densenet169_features() -> int:
    """Channels of DenseNet-169's last feature map (1664)."""
    channels = 64
    for stage, count in enumerate(DENSENET169_BLOCKS):
        channels += count * GROWTH_RATE
        if stage < len(DENSENET169_BLOCKS) - 1:
            channels //= 2
    return channels


def multiview_forward_flops(model: ModelConfig, image_size: int, channels: int, views: int) -> int:
    """Forward FLOPs per view slot of the multi-view model: its encoder (the backbone without
    its head) on the view, and a `views`-th of the study's head (attention pooling, logits)."""
    if model.backbone == "cnn":
        encoder = dataclasses.replace(model, dense=(), num_classes=0)
        view, features = cnn_forward_flops(encoder, image_size, channels), model.widths[-1]
    elif model.backbone == "vgg16":
        view, features = vgg16_forward_flops(image_size, 0), VGG16_BLOCKS[-1][0]
    elif model.backbone == "densenet169":
        view, features = densenet169_forward_flops(image_size, 0), densenet169_features()
    else:
        raise ValueError(f"no FLOP count for the multi-view backbone {model.backbone!r}")
    head = 2 * features * model.num_classes
    if model.view_pooling == "attention":
        width = model.attention_dim
        head += views * (2 * 2 * features * width + 2 * width)  # attention_V, _U; then _w
    return view + round(head / views)


def forward_flops(workload: Workload) -> int | None:
    """Analytic forward FLOPs per image (convolutions and dense layers; None if not counted);
    for the multi-view model, per view slot."""
    model = workload.config().model
    if model.name == "cnn":
        return cnn_forward_flops(model, workload.image_size, workload.channels)
    if model.name == "vgg16":
        return vgg16_forward_flops(workload.image_size, model.num_classes)
    if model.name == "densenet169":
        return densenet169_forward_flops(workload.image_size, model.num_classes)
    if model.name == "multiview":
        return multiview_forward_flops(
            model, workload.image_size, workload.channels, workload.views
        )
    return None


def train_step_flops(workload: Workload) -> int | None:
    """Analytic FLOPs of one train step: 3 x forward (forward, input and weight gradients)
    over the batch's images; the first layer's unneeded input gradient is counted too."""
    forward = forward_flops(workload)
    return None if forward is None else 3 * forward * workload.images_per_step


# --------------------------------------------------------------------------- peers


def peer_spec(workload: Workload) -> dict[str, Any]:
    """What a peer (`keras_peer`, `torch_peer`) needs to train `workload`, as plain JSON data:
    the model's own fields from its murajax config (`config.model.options`: for the
    multi-view model its backbone, view pooling, attention width and its backbone's fields,
    and views per study), the input and batch,
    Adam's learning rate and the analytic FLOPs of a step."""
    config = workload.config()
    model = config.model
    spec = {
        "name": model.name,
        "num_classes": model.num_classes,
        # The model's own fields (`config.model.options`: a multi-view model's with its
        # backbone's), tuples as lists.
        **{k: list(v) if isinstance(v, tuple) else v for k, v in model.options.items()},
        "image_size": workload.image_size,
        "batch_size": workload.batch_size,
        "channels": workload.channels,
        "images_per_step": workload.images_per_step,
        "learning_rate": config.optim.learning_rate,
        "step_flops": train_step_flops(workload),
    }
    if model.name == "multiview":
        spec.update(views=workload.views)
    return spec
