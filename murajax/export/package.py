"""Writing a model package: `export(workdir, output, ...)` is `python -m experiments.export`.

    PKG/model.stablehlo   jax.export, platforms cpu and cuda, symbolic batch
    PKG/model.onnx        jax2onnx, run by onnxruntime (the `export` extra)
    PKG/preprocess.json   from an image file to the input tensor
    PKG/metadata.json     model, checkpoints, dataset, threshold, scores, versions, sha256
    PKG/MODEL_CARD.md     intended use, data, scores with CIs, limits, ethics, licence
    PKG/predict.py        the standalone runtime (`murajax/export/runtime.py`)

The package is built in a temporary folder beside `output`; every artifact is run there
through the runtime a user runs and compared with the in-memory model (`verify`); only then
is the folder renamed to `output`. A failed export leaves nothing behind, and an existing
`output` that is not an empty folder is never written into.
"""

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from murajax import inference as inference_lib
from murajax import predict as predict_lib
from murajax import workdir as workdir_lib
from murajax.errors import ConfigError, ExportFailed, WorkdirError
from murajax.export import describe, function, model_card, runtime, stablehlo, verify
from murajax.export import onnx as onnx_lib

FORMATS = ("stablehlo", "onnx")
ARTIFACTS = runtime.ARTIFACTS
RUNTIME_FILE = "predict.py"

Progress = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class Exported:
    """What an export wrote: the package folder, its formats and each one's largest
    difference from the in-memory model's probability."""

    path: str
    formats: tuple[str, ...]
    differences: dict[str, float]
    verified_on: str
    metadata: dict[str, Any]


def parse_formats(formats: str | Sequence[str] | None) -> tuple[str, ...]:
    """The formats to write: given (comma-separated or a list), else both where the `export`
    extra is installed, else StableHLO. `ConfigError` for an unknown or uninstalled one."""
    if formats is None or formats == "" or formats == []:
        return FORMATS if onnx_lib.available() else ("stablehlo",)
    names = formats.split(",") if isinstance(formats, str) else list(formats)
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise ConfigError(
            f"--formats={','.join(names)}: expected one or more of {', '.join(FORMATS)}"
        )
    if "onnx" in names:
        onnx_lib.check_available()
    return tuple(n for n in FORMATS if n in names)


def check_output(output: str) -> None:
    """`WorkdirError` unless `output` is a new or empty folder that can be written."""
    if os.path.exists(output) and not (os.path.isdir(output) and not os.listdir(output)):
        what = "a file" if not os.path.isdir(output) else "a folder that is not empty"
        raise WorkdirError(
            f"--output={output} is {what}: an export writes a new package folder and never"
            " into existing files; choose a new path (or remove the old package)"
        )
    workdir_lib.check_writable(os.path.dirname(os.path.abspath(output)), f"--output={output}")


def sha256_of_files(folder: str, names: Sequence[str]) -> dict[str, str]:
    """{file name: hex sha256} of `names` in `folder`."""
    return {name: runtime.sha256_of(os.path.join(folder, name)) for name in names}


def _write(folder: str, name: str, data: bytes | str) -> None:
    mode = "wb" if isinstance(data, bytes) else "w"
    with open(os.path.join(folder, name), mode) as f:
        f.write(data)


def _json(value: Any) -> str:
    return json.dumps(workdir_lib.json_safe(value), indent=2, allow_nan=False) + "\n"


def serialize_formats(
    inference: function.Inference, formats: Sequence[str], progress: Progress
) -> dict[str, tuple[bytes, dict[str, Any]]]:
    """{format: (artifact bytes, facts)} for each of `formats`."""
    out = {}
    for fmt in formats:
        started = time.perf_counter()
        progress(f"  {ARTIFACTS[fmt]}: converting...")
        data, facts = (stablehlo.serialize if fmt == "stablehlo" else onnx_lib.serialize)(inference)
        facts["seconds_to_export"] = round(time.perf_counter() - started, 2)
        progress(
            f"  {ARTIFACTS[fmt]}: {len(data) / 1e6:.1f} MB in {facts['seconds_to_export']:.1f} s"
        )
        out[fmt] = (data, facts)
    return out


def verify_formats(
    folder: str,
    metadata: dict[str, Any],
    inference: function.Inference,
    inputs: list[np.ndarray],
    where: str,
) -> dict[str, float]:
    """{format: max |p_artifact - p_model|}, each artifact run from `folder` by the runtime;
    `ExportFailed` for the first beyond its `verify.TOLERANCE`."""
    reference = np.asarray(jax.jit(inference.fn)(*inputs)[0])
    differences = {}
    for fmt in metadata["formats"]:
        model = runtime.Model(folder, metadata, fmt)
        difference = verify.largest_difference(reference, model(*inputs)[0])
        tolerance = verify.TOLERANCE[fmt]
        if not difference <= tolerance:
            raise ExportFailed(
                f"{ARTIFACTS[fmt]} gives probabilities up to {difference:.3g} away from the"
                f" model's on {where} (tolerance {tolerance:g}): no package was written;"
                f" export without it (--formats={','.join(f for f in FORMATS if f != fmt)})"
                " and report the model"
            )
        differences[fmt] = difference
    return differences


def export(
    workdir: str,
    output: str,
    *,
    checkpoint: str = "best",
    ensemble: int = 1,
    formats: str | Sequence[str] | None = None,
    progress: Progress = print,
) -> Exported:
    """Exports `workdir`'s checkpoint(s) as a verified model package at `output`.

    `checkpoint` is 'best', 'latest' or a step; `ensemble=K` averages the K best
    checkpoints' probabilities inside the exported function. Raises `WorkdirError` (a
    workdir, checkpoint or output that cannot be used), `ConfigError` (a bad or uninstalled
    format) or `ExportFailed` (an artifact that does not reproduce the model), each before
    anything is written at `output`.
    """
    chosen = parse_formats(formats)
    check_output(output)
    if ensemble < 1:
        raise ConfigError(f"--ensemble={ensemble}: expected a number of checkpoints >= 1")
    loaded = inference_lib.load(workdir, checkpoint, ensemble)
    if loaded.note:
        progress(f"note: {loaded.note}")
    steps = ", ".join(str(s) for s in loaded.steps)
    progress(f"exporting {loaded.spec.name} (checkpoint {steps}) to {output}")
    inference = function.build(loaded)
    threshold = predict_lib.threshold_of(loaded, workdir)
    metadata = describe.describe(
        loaded, inference, workdir, checkpoint=checkpoint, threshold=threshold
    )
    artifacts = serialize_formats(inference, chosen, progress)
    metadata["formats"] = {fmt: facts for fmt, (_, facts) in artifacts.items()}
    inputs, where = verify.sample_inputs(loaded, inference)

    parent = os.path.dirname(os.path.abspath(output))
    staging = os.path.join(
        parent, f".{os.path.basename(os.path.abspath(output))}.partial-{os.getpid()}"
    )
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    try:
        for fmt, (data, _) in artifacts.items():
            _write(staging, ARTIFACTS[fmt], data)
        preprocess = describe.preprocess_json(inference, loaded.config.data)
        _write(staging, "preprocess.json", _json(preprocess))
        differences = verify_formats(
            staging, {**metadata, "preprocess": preprocess}, inference, inputs, where
        )
        metadata["verification"] = {
            "inputs": where,
            "tolerance": {fmt: verify.TOLERANCE[fmt] for fmt in differences},
            "max_abs_difference": differences,
        }
        progress(
            f"  verified on {where}: "
            + ", ".join(f"{fmt} max |dp| {d:.2g}" for fmt, d in differences.items())
        )
        _write(staging, "MODEL_CARD.md", model_card.render(metadata))
        shutil.copyfile(runtime.__file__, os.path.join(staging, RUNTIME_FILE))
        files = [
            *(ARTIFACTS[f] for f in artifacts),
            "preprocess.json",
            "MODEL_CARD.md",
            RUNTIME_FILE,
        ]
        metadata["sha256"] = sha256_of_files(staging, files)
        _write(staging, "metadata.json", _json(metadata))
        if os.path.isdir(output):
            os.rmdir(output)  # empty (`check_output`)
        os.rename(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Exported(output, tuple(artifacts), differences, where, metadata)
