"""Model packages: a trained workdir as files that run without murajax.

    from murajax import export
    exported = export.export("workdirs/quickstart", "packages/quickstart")   # verified
    model, metadata = export.runtime.load("packages/quickstart")             # score with it

`package` writes the folder (`experiments.export`); `function` is the exported function
(uint8 images in, probabilities and logits out); `stablehlo` and `onnx` serialize it;
`verify` checks each artifact against the model; `describe` and `model_card` write what the
package says of itself; `runtime` is the package's standalone `predict.py`.
"""

from murajax.export import runtime
from murajax.export.package import FORMATS, Exported, export, parse_formats

__all__ = ["FORMATS", "Exported", "export", "parse_formats", "runtime"]
