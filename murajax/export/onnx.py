"""`model.onnx`: a package's function as an ONNX graph (jax2onnx), run by onnxruntime.

    data, facts = serialize(inference)          # bytes, and what metadata.json records

jax2onnx turns the function's jaxpr into ONNX operators (opset `OPSET`), with the symbolic
batch (and views) as named dimensions and the weights as initializers. It is the `export`
extra (`pip install 'murajax[export]'`, then jax2onnx without its own dependencies: see the
README); `available()` says whether it is installed.
"""

import importlib.util
import logging
from importlib.metadata import version
from typing import Any

from murajax.errors import ConfigError
from murajax.export.function import OUTPUT_NAMES, Inference
from murajax.ops import graph_style

OPSET = 21
REQUIRED = ("jax2onnx", "onnx", "onnxruntime")
INSTALL_HINT = (
    "pip install -c constraints.txt '.[export]' && pip install --no-deps -c constraints.txt"
    " jax2onnx (or: make install-export)"
)

# jax2onnx announces the example plugins it cannot import (their own optional packages) and
# onnx_ir the shapes it leaves untyped, as warnings with tracebacks: neither affects the graph.
_QUIET_LOGGERS = ("jax2onnx", "onnx_ir")


def available() -> bool:
    """Whether jax2onnx, onnx and onnxruntime are installed."""
    return all(importlib.util.find_spec(name) is not None for name in REQUIRED)


def check_available() -> None:
    """Raises `ConfigError` naming what to install when the ONNX format cannot be written."""
    missing = [name for name in REQUIRED if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"--formats=onnx needs {', '.join(missing)} (the export extra): {INSTALL_HINT}"
        )


def serialize(inference: Inference) -> tuple[bytes, dict[str, Any]]:
    """The ONNX model of `inference.fn` and its facts (opset, the converter's version)."""
    check_available()
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    import jax2onnx  # late: it imports its plugins (seconds) and is optional
    import onnx  # the export extra's, as jax2onnx

    with graph_style.for_onnx():  # the graph onnxruntime runs fastest
        model = jax2onnx.to_onnx(
            inference.fn,
            inference.input_specs(),
            model_name="murajax",
            opset=OPSET,
            input_names=list(inference.input_names()),
            output_names=list(OUTPUT_NAMES),
        )
    facts = {
        "opset": OPSET,
        "written_by": {"jax2onnx": _version("jax2onnx"), "onnx": onnx.__version__},
    }
    return model.SerializeToString(), facts


def _version(package: str) -> str:
    return version(package)
