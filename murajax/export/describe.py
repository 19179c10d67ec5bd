"""What a package says of itself: `preprocess.json` and `metadata.json`'s body.

    preprocess_json(inference, data_config)    from an image file to the input tensor
    describe(loaded, inference, workdir, ...)  metadata.json without its `formats` and sha256

Pure functions of a restored workdir; `murajax.export.package` adds each format's facts, the
verification's figures and the files' sha256 before it writes them.
"""

import datetime
import json
import os
import platform
from importlib.metadata import version
from typing import Any

import tensorflow_datasets as tfds

from murajax import __version__ as murajax_version
from murajax import inference as inference_lib
from murajax import workdir as workdir_lib
from murajax.config import DataConfig
from murajax.export.function import EXPORT_CONV_IMPL, EXPORT_DTYPE, OUTPUT_NAMES, Inference

PACKAGE_FORMAT = 1  # = runtime.PACKAGE_FORMAT (the runtime imports nothing of murajax)

GRAY_RULE = (
    "decode with Pillow; 8-bit gray as it is; palette images via RGBA; colour as ITU-R 601-2"
    " luma (Pillow's convert('L')); alpha dropped; 16-bit and 32-bit integer images by their"
    " high byte (value >> 8, clipped to 0..255)"
)


def preprocess_json(inference: Inference, data_config: DataConfig) -> dict[str, Any]:
    """From a PNG on disk to the model's input, as murajax's evaluation pipeline does it."""
    size, resize = inference.image_size, data_config.resize
    fit = "longer" if resize == "pad" else "shorter"
    place = "centred on a zero (black) square" if resize == "pad" else "centre-cropped"
    inputs: dict[str, Any] = {"images": {"dtype": "uint8", "shape": ["B", size, size, 1]}}
    if inference.study_level:
        inputs = {
            "images": {"dtype": "uint8", "shape": ["B", "V", size, size, 1]},
            "view_mask": {"dtype": "bool", "shape": ["B", "V"], "meaning": "True = a real view"},
        }
    return {
        "image_size": size,
        "resize": resize,
        "resample": "bilinear (Pillow's Image.resize, antialiased when shrinking)",
        "padding": 0 if resize == "pad" else None,
        "gray": GRAY_RULE,
        "channels": 1,
        "bits": 8,
        "steps": [
            f"read the file as 8-bit grayscale: {GRAY_RULE}",
            f"resize keeping the aspect ratio so that the {fit} side is {size} pixels"
            " (sides rounded to the nearest integer, at least 1), bilinear",
            f"{place} of {size}x{size}",
            f"add a channel axis: uint8 ({size}, {size}, 1); stack images into a batch",
        ],
        "inputs": inputs,
        "inside_the_model": {
            "normalization": inference.normalization,
            "channels": inference.channels,
            "note": "the uint8 gray levels are normalised (and repeated to RGB where the model"
            " takes 3 channels) inside the exported function: feed raw uint8 squares",
        },
    }


def read_evaluation(workdir: str, steps: tuple[int, ...]) -> dict[str, Any] | None:
    """`eval/validation/metrics.json` if it scored exactly these checkpoint(s), else None."""
    path = os.path.join(workdir_lib.eval_dir(workdir, "validation"), "metrics.json")
    try:
        with open(path) as f:
            body = json.load(f)
    except (OSError, ValueError):
        return None
    recorded = body.get("steps") or ([body["step"]] if "step" in body else [])
    return body if list(recorded) == list(steps) else None


def metrics_section(loaded: inference_lib.Loaded, workdir: str) -> dict[str, Any]:
    """The validation scores with CIs, overall and per group, of the exported checkpoints
    (or a note saying how to get them)."""
    body = read_evaluation(workdir, loaded.steps)
    if body is None:
        steps = ",".join(str(s) for s in loaded.steps)
        return {
            "note": f"no validation evaluation of checkpoint(s) {steps} in the workdir: run"
            f" python -m experiments.evaluate --workdir={workdir} and export again"
        }
    group_key = loaded.dataset.by_group_key
    section = {"split": "validation", "steps": list(loaded.steps), "study": body.get("study")}
    section["image"] = body.get("image")
    if group_key and group_key in body:
        section[group_key] = body[group_key]
    return section


def decision_section(loaded: inference_lib.Loaded, threshold: float) -> dict[str, Any]:
    """The decision threshold, how it was chosen, and how images make a study's score."""
    method = loaded.config.eval.threshold_method
    how = (
        "Youden's J on the holdout split (the training set's held-out patients)"
        if method == "youden"
        else "fixed (config eval.threshold)"
    )
    if not loaded.dataset.binary:
        how = "none: the most probable class is predicted"
    return {
        "threshold": threshold,
        "method": method,
        "how": how,
        "aggregation": loaded.config.eval.aggregation,
    }


def dataset_version(data_config: DataConfig) -> str | None:
    """The TFDS version of the dataset the model was trained on, where its files are here."""
    try:
        builder = tfds.builder(data_config.dataset, data_dir=data_config.data_dir)
        return str(builder.info.version)
    except Exception:  # noqa: BLE001 (not at hand: the package says it does not know)
        return None


def versions() -> dict[str, str]:
    """The versions of what built the package."""
    found = {"murajax": murajax_version, "python": platform.python_version()}
    for name in ("jax", "jaxlib", "flax", "numpy"):
        found[name] = version(name)
    return found


def describe(
    loaded: inference_lib.Loaded,
    inference: Inference,
    workdir: str,
    *,
    checkpoint: str,
    threshold: float,
    now: datetime.datetime | None = None,
) -> dict[str, Any]:
    """metadata.json's body without `formats`, `verification` and `sha256`."""
    config = workdir_lib.read_json(workdir_lib.config_path(workdir))  # as the run saved it
    dataset = loaded.dataset
    return {
        "package_format": PACKAGE_FORMAT,
        "exported_at": (now or datetime.datetime.now(datetime.UTC)).isoformat(timespec="seconds"),
        "model": {
            "name": loaded.spec.name,
            "study_level": inference.study_level,
            "num_classes": inference.num_classes,
            "image_size": inference.image_size,
            "compute_dtype": EXPORT_DTYPE,
            "trained_dtype": loaded.config.model.dtype,
            "convolutions": f"{EXPORT_CONV_IMPL} (murajax's oneDNN calls are custom calls that"
            " jax.export cannot serialize and ONNX does not know)",
            "config": config,
        },
        "checkpoint": {
            "requested": checkpoint,
            "steps": list(loaded.steps),
            "ensemble": len(loaded.steps),
            "note": loaded.note,
        },
        "dataset": {
            "name": dataset.name,
            "version": dataset_version(loaded.config.data),
            "label_names": list(dataset.label_names),
            "group_feature": dataset.group_feature,
            "group_column": dataset.group_column,
            "group_names": list(dataset.group_names),
            "holdout_fraction": loaded.config.data.holdout_fraction,
        },
        "outputs": {name: inference.output_shapes()[name] for name in OUTPUT_NAMES},
        "decision": decision_section(loaded, threshold),
        "metrics": metrics_section(loaded, workdir),
        "versions": versions(),
    }
