"""Low-level operations: convolutions that pick the fastest implementation for the platform.

`conv2d` is an NHWC x HWIO convolution with an optional bias and ReLU. On CPU it runs
oneDNN's kernels (the ones TensorFlow uses) through XLA's FFI when the extension is built
(`python -m murajax.ops.build`, part of `make install`); elsewhere, or when the extension is
missing, it is `lax.conv_general_dilated`, with the same values and gradients.
"""

from murajax.ops.conv import check_conv_impl, conv2d, resolve_conv_impl
from murajax.ops.onednn import onednn_status

__all__ = ["check_conv_impl", "conv2d", "onednn_status", "resolve_conv_impl"]
