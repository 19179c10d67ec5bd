"""The PyTorch peer: the same networks in plain `torch.nn`, channels_last, eager or compiled.

torchvision is not used (it does not work on these machines): murajax's CNN, VGG16 and
DenseNet-169 are written here layer for layer as Keras builds them (3x3 'same' convolutions,
2x2 max-pools, BatchNorm epsilon and momentum as Keras's), with global average pooling
(+ dropout) and a Dense(2) head. A step is `torch.optim.Adam` on the cross-entropy of the
float32 logits; bfloat16 runs the forward pass under `torch.autocast(device, torch.bfloat16)`.
On a machine with a CUDA GPU the peer trains on it (the card murajax's jax uses).
"""

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from . import arch, timing  # relative: a peer's process never imports `experiments` (peer.py)

MODES = ("eager", "compile")


def _cnn(spec: dict[str, Any]) -> nn.Module:
    layers: list[nn.Module] = []
    cin = spec["channels"]
    for width in spec["widths"]:
        for _ in range(spec["convs_per_block"]):
            layers.append(nn.Conv2d(cin, width, 3, padding=1, bias=not spec["batch_norm"]))
            if spec["batch_norm"]:
                momentum = 1 - spec["bn_momentum"]  # torch's is Keras's 1 - momentum
                layers.append(nn.BatchNorm2d(width, eps=1e-3, momentum=momentum))
            layers.append(nn.ReLU(inplace=True))
            cin = width
        layers.append(nn.MaxPool2d(2))
    features = cin
    if spec["pooling"] == "avg":
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    elif spec["pooling"] == "max":
        layers += [nn.AdaptiveMaxPool2d(1), nn.Flatten()]
    else:
        size = spec["image_size"] // 2 ** len(spec["widths"])
        layers.append(nn.Flatten())
        features = cin * size * size
    for width in spec["dense"]:
        layers += [nn.Linear(features, width), nn.ReLU(inplace=True)]
        if spec["dropout_rate"]:
            layers.append(nn.Dropout(spec["dropout_rate"]))
        features = width
    layers.append(nn.Linear(features, spec["num_classes"]))
    return nn.Sequential(*layers)


def _head(features: int, dropout_rate: float, num_classes: int) -> list[nn.Module]:
    """Global average pooling, optional dropout and the logits layer."""
    head: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if dropout_rate:
        head.append(nn.Dropout(dropout_rate))
    return [*head, nn.Linear(features, num_classes)]


def _vgg16(spec: dict[str, Any]) -> nn.Module:
    layers: list[nn.Module] = []
    cin = spec["channels"]
    for width, convs in arch.VGG16_BLOCKS:
        for _ in range(convs):
            layers += [nn.Conv2d(cin, width, 3, padding=1), nn.ReLU(inplace=True)]
            cin = width
        layers.append(nn.MaxPool2d(2))
    layers += _head(cin, spec["dropout_rate"], spec["num_classes"])
    return nn.Sequential(*layers)


_DENSENET_EPS = 1.001e-5
_DENSENET_MOMENTUM = 0.01  # Keras's momentum 0.99


def _bn_relu(channels: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(channels, _DENSENET_EPS, _DENSENET_MOMENTUM), nn.ReLU(inplace=True)]


class _DenseBlock(nn.Module):
    """`count` conv blocks (BN-ReLU-1x1 conv-BN-ReLU-3x3 conv), each concatenated to its input."""

    def __init__(self, channels: int, count: int, growth: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Sequential(
                *_bn_relu(channels + i * growth),
                nn.Conv2d(channels + i * growth, 4 * growth, 1, bias=False),
                *_bn_relu(4 * growth),
                nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False),
            )
            for i in range(count)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Keras's `dense_block`: concatenate each block's new channels to the input."""
        for layer in self.layers:
            x = torch.cat([x, layer(x)], 1)
        return x


def _densenet169(spec: dict[str, Any]) -> nn.Module:
    growth = arch.GROWTH_RATE
    layers: list[nn.Module] = [
        nn.Conv2d(spec["channels"], 64, 7, stride=2, padding=3, bias=False),
        *_bn_relu(64),
        nn.MaxPool2d(3, stride=2, padding=1),
    ]
    channels = 64
    for stage, count in enumerate(arch.DENSENET169_BLOCKS):
        layers.append(_DenseBlock(channels, count, growth))
        channels += count * growth
        if stage < len(arch.DENSENET169_BLOCKS) - 1:
            layers += [*_bn_relu(channels), nn.Conv2d(channels, channels // 2, 1, bias=False)]
            layers.append(nn.AvgPool2d(2))
            channels //= 2
    layers += _bn_relu(channels)
    layers += _head(channels, spec["dropout_rate"], spec["num_classes"])
    return nn.Sequential(*layers)


_BUILDERS = {"cnn": _cnn, "vgg16": _vgg16, "densenet169": _densenet169}


def device() -> str:
    """'cuda' where torch sees a GPU (the same card murajax's jax uses), else 'cpu'."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def build_model(spec: dict[str, Any]) -> nn.Module:
    """The torch.nn model of a workload's `spec` (`workloads.peer_spec`): NCHW images,
    channels_last in memory, to logits."""
    if spec["name"] not in _BUILDERS:
        raise ValueError(f"no PyTorch peer for model {spec['name']!r}")
    torch.manual_seed(0)
    return _BUILDERS[spec["name"]](spec).to(memory_format=torch.channels_last)


def measure(
    spec: dict[str, Any],
    dtype: str,
    mode: str,
    *,
    min_seconds: float,
    min_steps: int = 5,
    warmup_steps: int = 2,
    turns: bool = False,
    deadline: float | None = None,
) -> dict[str, Any]:
    """Times a PyTorch train step of a workload's `spec` in `dtype`, `mode` 'eager' or 'compile'
    (`torch.compile` of the model; Adam stays eager); returns the row's measured fields."""
    if mode not in MODES:
        raise ValueError(f"unknown torch mode {mode!r}: expected one of {MODES}")
    where = device()
    model = build_model(spec).to(where)
    model.train()
    forward = torch.compile(model) if mode == "compile" else model
    optimizer = torch.optim.Adam(model.parameters(), lr=spec["learning_rate"])
    rng = np.random.default_rng(0)
    shape = (spec["batch_size"], spec["image_size"], spec["image_size"], spec["channels"])
    images = rng.random(shape, dtype=np.float32)  # NHWC on the host, as the other frameworks
    labels = torch.from_numpy(rng.integers(0, 2, spec["batch_size"]).astype(np.int64))
    labels = labels.to(where)

    def step() -> None:
        # NHWC from the host each step (as the other frameworks): an NCHW view with
        # channels_last strides, copied to the GPU if there is one.
        x = torch.from_numpy(images).permute(0, 3, 1, 2).to(where)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(where, dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            logits = forward(x)
        loss = F.cross_entropy(logits.float(), labels)
        loss.backward()
        optimizer.step()
        loss.item()  # waits for the step

    result = timing.time_steps(
        step,
        min_seconds=min_seconds,
        min_steps=min_steps,
        warmup_steps=warmup_steps,
        turns=turns,
        deadline=deadline,
    )
    row = timing.measurement_row(result, spec["images_per_step"], spec["step_flops"])
    row["flops_source"] = "analytic"
    row["device"] = where
    if where == "cuda":
        row["device_peak_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    row["threads"] = torch.get_num_threads()
    row["params"] = timing.parameter_count(p.shape for p in model.parameters() if p.requires_grad)
    return row
