"""Low-level operations: convolutions that pick the fastest implementation for the platform.

`conv2d` is an NHWC x HWIO convolution with an optional bias and ReLU. On CPU it runs
oneDNN's kernels (the ones TensorFlow uses) through XLA's FFI when the extension is built
(`python -m murajax.ops.build`, part of `make install`); elsewhere, or when the extension is
missing, it is `lax.conv_general_dilated`, with the same values and gradients.
`conv2d_relu_max_pool` is `conv2d(..., relu=True)` and `max_pool_2x2` in one op with a
leaner backward pass. `max_pool` is `nn.max_pool` ("VALID") as strided slices. `conv2d_grads`
is `conv2d`'s gradient alone, for code that writes its own backward pass. `batchnorm` holds
BatchNorm + ReLU with a hand-written gradient, in XLA and in the extension's kernels.
"""

from murajax.ops.conv import (
    CONV_IMPLS,
    check_conv_impl,
    conv2d,
    conv2d_grads,
    conv2d_relu_max_pool,
    resolve_conv_impl,
)
from murajax.ops.onednn import onednn_status
from murajax.ops.pool import max_pool, max_pool_2x2

__all__ = [
    "CONV_IMPLS",
    "check_conv_impl",
    "conv2d",
    "conv2d_grads",
    "conv2d_relu_max_pool",
    "max_pool",
    "max_pool_2x2",
    "onednn_status",
    "resolve_conv_impl",
]
