"""Checking each artifact of a package against the model it came from, before it is kept.

    inputs, where = sample_inputs(loaded, inference)    # holdout images at the model's size
    difference = compare(reference, artifact_outputs)   # largest |p_artifact - p_model|

The exporter runs every artifact, through the same `runtime.Model` that a package's
`predict.py` uses, on up to `SAMPLE_IMAGES` holdout images and compares its probabilities with
the in-memory function's: StableHLO within `TOLERANCE['stablehlo']`, ONNX within
`TOLERANCE['onnx']`. Where the dataset cannot be opened (a workdir copied without it), seeded
random images stand in, and the package's metadata says so.
"""

from typing import Any

import numpy as np

from murajax import inference as inference_lib
from murajax.data import pipeline, preprocess
from murajax.export.function import Inference

SAMPLE_IMAGES = 16
TOLERANCE = {"stablehlo": 1e-5, "onnx": 1e-4}
VIEWS = 2  # views per study of a study model's sample (the second masked out in half of them)


def holdout_squares(loaded: inference_lib.Loaded, count: int) -> np.ndarray:
    """uint8 (n, S, S, 1): the first `count` holdout images, resized as evaluation does."""
    data_config = loaded.config.data
    source, positions = pipeline.split_source(data_config, "holdout")
    images = [
        preprocess.resize_to_square(
            preprocess.decode_image(source[int(p)]["image"]),
            data_config.image_size,
            data_config.resize,
        )
        for p in positions[:count]
    ]
    if not images:
        raise ValueError("the holdout split is empty")
    return np.stack(images)


def random_squares(count: int, size: int, seed: int = 0) -> np.ndarray:
    """uint8 (count, S, S, 1) seeded random images."""
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 1), dtype=np.uint8)


def sample_inputs(loaded: inference_lib.Loaded, inference: Inference) -> tuple[list, str]:
    """The inputs to compare the artifacts on, and what they are (for metadata.json)."""
    try:
        squares = holdout_squares(loaded, SAMPLE_IMAGES)
        where = f"{len(squares)} holdout images of {loaded.config.data.dataset}"
    except Exception as error:  # noqa: BLE001 (any failure to read the data: use random ones)
        squares = random_squares(SAMPLE_IMAGES, inference.image_size)
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        where = f"{SAMPLE_IMAGES} seeded random images (the dataset could not be read: {reason})"
    if not inference.study_level:
        return [squares], where
    studies = len(squares) // VIEWS or 1
    squares = np.resize(squares, (studies * VIEWS, *squares.shape[1:]))
    mask = np.ones((studies, VIEWS), bool)
    mask[1::2, 1:] = False  # every other study has one real view
    return [squares.reshape(studies, VIEWS, *squares.shape[1:]), mask], where + " as studies"


def largest_difference(reference: Any, outputs: Any) -> float:
    """max |reference - outputs| over the probabilities (inf if any is not finite)."""
    reference, outputs = np.asarray(reference, np.float64), np.asarray(outputs, np.float64)
    if reference.shape != outputs.shape:
        raise ValueError(f"probabilities of shape {outputs.shape}, expected {reference.shape}")
    if not np.isfinite(outputs).all():
        return float("inf")
    return float(np.max(np.abs(reference - outputs))) if reference.size else 0.0
