"""Architecture constants the peers rebuild murajax's models from (standard library only, so
that a peer's process imports nothing of murajax or `experiments`; see `peer`)."""

VGG16_BLOCKS: tuple[tuple[int, int], ...] = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
"""(width, convolutions) of VGG16's five blocks (as `murajax.models.vgg.VGG16_BLOCKS`)."""

DENSENET169_BLOCKS: tuple[int, ...] = (6, 12, 32, 32)
"""Building blocks in DenseNet-169's four dense blocks (as `murajax.models.densenet`)."""

GROWTH_RATE = 32
"""Channels each DenseNet building block adds."""

PEER_MODELS: dict[str, tuple[str, ...]] = {
    "keras": ("cnn", "vgg16", "densenet169", "multiview"),
    "torch": ("cnn", "vgg16", "densenet169"),
}
"""The models each kind of peer has (the multi-view study model: Keras only)."""
