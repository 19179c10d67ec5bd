#!/usr/bin/env python3
"""Scores folders of radiograph studies with a murajax model package, without murajax.

    python PKG/predict.py --input=DIR_OR_FILES --output=CSV [--format=onnx|stablehlo]

This file is a package's `predict.py` (murajax writes it there as `murajax/export/runtime.py`
is); it needs numpy, Pillow and either onnxruntime (`--format=onnx`) or jax
(`--format=stablehlo`), and imports nothing of murajax. `experiments.predict --model=PKG`
runs the same code.

A study is the images of one folder: input folders are walked recursively, files given
directly are grouped by their folder; several inputs are separated by commas. Each image is
read as 8-bit grayscale and resized onto the model's square as `preprocess.json` says (the
steps of murajax's own pipeline), scored, and a study's probability is its images' mean (or
max: `metadata.json`'s `aggregation`); a study model scores all of a study's images at once.
The CSV has murajax's `experiments.predict` columns: `study`, `n_images`, `prob` (or
`prob_<class>` per class), `pred`, `label`, and the group column (`body_part`) where the
dataset has groups. Files that cannot be read are named on stderr and skipped.

Before anything is scored the package is checked: every file's sha256 against
`metadata.json`, the format's runtime installed, and for StableHLO the artifact's calling
convention within what the installed jax loads. Each failure is one line, exit status 2.
"""

import argparse
import csv
import hashlib
import importlib.util
import json
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

PACKAGE_FORMAT = 1  # metadata.json's `package_format` that this runtime reads
MAX_IMAGE_PIXELS = 8192 * 8192  # larger files are refused before decoding (as murajax does)
FORMATS = ("onnx", "stablehlo")
RUNTIMES = {"onnx": "onnxruntime", "stablehlo": "jax"}
ARTIFACTS = {"onnx": "model.onnx", "stablehlo": "model.stablehlo"}

Warn = Callable[[str], None]


class PackageError(Exception):
    """A package, an input or an output that cannot be used; a one-line message."""


def warn_stderr(message: str) -> None:
    """Prints `warning: message` to stderr."""
    print(f"warning: {message}", file=sys.stderr)


# --------------------------------------------------------------------------- the package


def sha256_of(path: str) -> str:
    """The hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: str) -> dict[str, Any]:
    """A JSON file's object; `PackageError` naming the file if it is missing or not JSON."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise PackageError(
            f"{path} is missing: not a murajax model package, or an incomplete"
            " one (export it again with python -m experiments.export)"
        ) from None
    except (OSError, ValueError) as e:
        raise PackageError(f"{path} cannot be read ({e}): export the package again") from None


def check_package(package: str) -> dict[str, Any]:
    """The package's metadata, once every file it lists is present with its recorded
    sha256; `PackageError` naming the first file that is missing or changed."""
    if not os.path.isdir(package):
        raise PackageError(
            f"--model={package} is not a folder: expected a model package"
            " (python -m experiments.export --output=...)"
        )
    metadata = read_json(os.path.join(package, "metadata.json"))
    version = metadata.get("package_format")
    if version != PACKAGE_FORMAT:
        raise PackageError(
            f"{package}: package format {version!r}, but this runtime reads"
            f" format {PACKAGE_FORMAT}: score it with the predict.py inside it"
        )
    for name, expected in sorted(metadata.get("sha256", {}).items()):
        path = os.path.join(package, name)
        if not os.path.isfile(path):
            raise PackageError(
                f"{path} is missing: the package is incomplete; copy it whole or export it again"
            )
        if sha256_of(path) != expected:
            raise PackageError(
                f"{path} was changed after export (its sha256 differs from"
                " metadata.json's): restore the original or export again"
            )
    return metadata


def installed(module: str) -> bool:
    """Whether `module` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a blocked module (`sys.modules[name] = None`)
        return False


def choose_format(metadata: dict[str, Any], requested: str | None) -> str:
    """The format to score with: `requested`, else ONNX where onnxruntime is installed, else
    StableHLO where jax is. `PackageError` if the package lacks it or its runtime is missing."""
    present = [f for f in FORMATS if f in metadata.get("formats", {})]
    if requested is not None:
        if requested not in FORMATS:
            raise PackageError(f"--format={requested}: expected one of {', '.join(FORMATS)}")
        if requested not in present:
            raise PackageError(
                f"--format={requested}: this package holds only"
                f" {', '.join(present)}; export it with --formats={requested}"
            )
        if not installed(RUNTIMES[requested]):
            others = [f for f in present if f != requested]
            instead = f", or use --format={others[0]}" if others else ""
            raise PackageError(
                f"--format={requested} needs {RUNTIMES[requested]}, which is not installed:"
                f" pip install {RUNTIMES[requested]}{instead}"
            )
        return requested
    for name in present:
        if installed(RUNTIMES[name]):
            return name
    needed = " or ".join(RUNTIMES[f] for f in present)
    raise PackageError(
        f"this package ({', '.join(present)}) needs {needed} to run: pip install"
        f" {RUNTIMES[present[0]] if present else 'onnxruntime'}"
    )


class Model:
    """A package's model: `(images, view_mask=None) -> (prob, logits)` as numpy arrays.

    `images` are uint8 (B, S, S, 1) squares as `prepare` makes them ((B, V, S, S, 1) with a
    (B, V) bool `view_mask` for a study model); `prob` is (B,) for two classes (class 1's),
    else (B, K). Inputs of another shape or dtype get a `PackageError` naming the expected.
    """

    def __init__(self, package: str, metadata: dict[str, Any], fmt: str) -> None:
        self.format = fmt
        self.size = int(metadata["preprocess"]["image_size"])
        self.study_level = bool(metadata["model"]["study_level"])
        path = os.path.join(package, ARTIFACTS[fmt])
        if fmt == "onnx":
            self._run = _onnx_runner(path)
        else:
            self._run = _stablehlo_runner(path, metadata["formats"]["stablehlo"])

    def expected_shape(self) -> str:
        """The input shape this model takes, for messages."""
        views = "V, " if self.study_level else ""
        return f"uint8 (B, {views}{self.size}, {self.size}, 1)"

    def check(self, images: np.ndarray, view_mask: np.ndarray | None) -> None:
        """`PackageError` unless `images` (and `view_mask`) are what the model takes."""
        rank = 5 if self.study_level else 4
        shape = tuple(np.shape(images))
        if (
            np.asarray(images).dtype != np.uint8
            or len(shape) != rank
            or shape[-3:] != (self.size, self.size, 1)
        ):
            dtype = np.asarray(images).dtype
            raise PackageError(
                f"images of shape {shape} and dtype {dtype}: this package takes"
                f" {self.expected_shape()} grayscale squares (preprocess.json"
                " says how to make them from image files)"
            )
        if self.study_level and (view_mask is None or np.shape(view_mask) != shape[:2]):
            raise PackageError(f"a study model needs a bool view_mask of shape {shape[:2]}")

    def __call__(
        self, images: np.ndarray, view_mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        self.check(images, view_mask)
        inputs = [np.asarray(images)]
        if self.study_level:
            inputs.append(np.asarray(view_mask, bool))
        prob, logits = self._run(inputs)
        return np.asarray(prob, np.float32), np.asarray(logits, np.float32)


def _onnx_runner(path: str) -> Callable[[list[np.ndarray]], Sequence[np.ndarray]]:
    import onnxruntime  # only a package's ONNX user needs it

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: its shape-merging notes are not ours
    session = onnxruntime.InferenceSession(
        path, sess_options=options, providers=["CPUExecutionProvider"]
    )
    names = [i.name for i in session.get_inputs()]
    return lambda inputs: session.run(None, dict(zip(names, inputs, strict=True)))


def _stablehlo_runner(
    path: str, facts: dict[str, Any]
) -> Callable[[list[np.ndarray]], Sequence[np.ndarray]]:
    import jax  # only a package's StableHLO user needs it

    version = facts.get("calling_convention_version")
    low = jax.export.minimum_supported_calling_convention_version
    high = jax.export.maximum_supported_calling_convention_version
    if not isinstance(version, int) or not low <= version <= high:
        written = facts.get("written_by", {}).get("jax", "?")
        raise PackageError(
            f"model.stablehlo uses calling convention {version} (written by jax"
            f" {written}), outside the {low}..{high} that the installed jax"
            f" {jax.__version__} loads: install a jax released before"
            f" {facts.get('loads_in_jax_released_until', '?')}, or use"
            " --format=onnx"
        )
    with open(path, "rb") as f:
        try:
            exported = jax.export.deserialize(bytearray(f.read()))
        except Exception as e:  # noqa: BLE001 (any failure means this jax cannot load it)
            raise PackageError(
                f"{path} cannot be loaded by jax {jax.__version__}"
                f" ({type(e).__name__}): use --format=onnx"
            ) from None
    call = jax.jit(exported.call)
    return lambda inputs: call(*inputs)


def load(package: str, fmt: str | None = None) -> tuple[Model, dict[str, Any]]:
    """The checked package's model in format `fmt` (or the one `choose_format` picks) and
    its metadata."""
    metadata = check_package(package)
    metadata["preprocess"] = read_json(os.path.join(package, "preprocess.json"))
    return Model(package, metadata, choose_format(metadata, fmt)), metadata


# --------------------------------------------------------------------------- images


def to_gray(image: Image.Image) -> np.ndarray:
    """A decoded image as uint8 (H, W) grayscale (preprocess.json's `gray`): 8-bit gray as
    it is; palette via RGBA; colour as ITU-R 601-2 luma; alpha dropped; 16-bit by its high
    byte (`value >> 8`, clipped to [0, 255])."""
    mode = image.mode
    if mode == "L":
        return np.asarray(image, dtype=np.uint8)
    if mode.startswith("I;16") or mode == "I":
        high = np.asarray(image) >> 8
        return np.clip(high, 0, 255, out=high).astype(np.uint8)
    if mode in ("LA", "La"):
        return np.asarray(image.getchannel("L"), dtype=np.uint8)
    if mode in ("P", "PA"):
        image = image.convert("RGBA")
    if mode == "F":
        raise ValueError("float images (mode F) are not supported")
    return np.asarray(image.convert("L"), dtype=np.uint8)


class UnreadableImage(ValueError):
    """A file that is not an image Pillow decodes fully, or one too large."""


def read_gray(path: str) -> np.ndarray:
    """An image file as uint8 (H, W) grayscale; `UnreadableImage` saying why not."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise UnreadableImage(
                        f"image of {width}x{height} pixels, more than {MAX_IMAGE_PIXELS}"
                    )
                image.load()
                gray = to_gray(image)
    except UnreadableImage:
        raise
    except UnidentifiedImageError:
        raise UnreadableImage("not an image") from None
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UnreadableImage(f"unreadable image ({reason})") from None
    if gray.ndim != 2 or gray.size == 0:
        raise UnreadableImage(f"unexpected image shape {gray.shape}")
    return gray


def resized_shape(height: int, width: int, size: int, mode: str) -> tuple[int, int]:
    """(height, width) after the aspect-preserving resize: the longer side to `size` for
    'pad', the shorter for 'crop'; rounded, at least 1."""
    side = max(height, width) if mode == "pad" else min(height, width)
    scale = size / side
    return max(1, round(height * scale)), max(1, round(width * scale))


def prepare(gray: np.ndarray, preprocess: dict[str, Any]) -> np.ndarray:
    """uint8 (H, W) -> the model's uint8 (S, S, 1) square, as preprocess.json says: Pillow's
    bilinear resize keeping the aspect ratio, then centred zero padding ('pad') or a centred
    crop ('crop')."""
    size, mode = int(preprocess["image_size"]), preprocess["resize"]
    height, width = gray.shape
    new_h, new_w = resized_shape(height, width, size, mode)
    plane = gray
    if (new_h, new_w) != (height, width):
        pil = Image.fromarray(np.ascontiguousarray(gray))
        plane = np.asarray(pil.resize((new_w, new_h), Image.Resampling.BILINEAR))
    if mode == "crop":
        top, left = (new_h - size) // 2, (new_w - size) // 2
        return np.ascontiguousarray(plane[top : top + size, left : left + size, None])
    out = np.zeros((size, size, 1), dtype=np.uint8)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    out[top : top + new_h, left : left + new_w, 0] = plane
    return out


# --------------------------------------------------------------------------- studies


def _within(path: str, places: Iterable[str]) -> bool:
    return any(path == p or path.startswith(p.rstrip(os.sep) + os.sep) for p in places)


def collect_studies(inputs: Iterable[str], skip: Iterable[str] = ()) -> dict[str, list[str]]:
    """{study folder: sorted files}: every folder below an input folder that holds files is a
    study (links followed, each real folder once); a file given directly belongs to its
    folder's study. Paths in `skip` (the output) are left out. `PackageError` for an input
    that does not exist."""
    skipped = {os.path.realpath(p) for p in skip}
    walked: set[str] = set()
    studies: dict[str, set[str]] = {}
    for item in inputs:
        if os.path.isdir(item):
            for folder, subfolders, files in os.walk(item, followlinks=True):
                real = os.path.realpath(folder)
                if real in walked or _within(real, skipped):
                    subfolders.clear()
                    continue
                walked.add(real)
                subfolders.sort()
                for name in files:
                    path = os.path.join(folder, name)
                    if os.path.isfile(path) and not _within(os.path.realpath(path), skipped):
                        studies.setdefault(os.path.normpath(folder), set()).add(path)
        elif os.path.isfile(item):
            if not _within(os.path.realpath(item), skipped):
                folder = os.path.normpath(os.path.dirname(item) or ".")
                studies.setdefault(folder, set()).add(item)
        else:
            raise PackageError(
                f"input {item} does not exist (expected image files or folders of them)"
            )
    return {folder: sorted(files) for folder, files in sorted(studies.items())}


def group_of(path: str, names: Sequence[str]) -> str:
    """The group a path names (one of `names`, as a whole word, case-insensitively; the last
    one if several), '' if none."""
    found = []
    for name in names:
        pattern = rf"(?<![A-Za-z0-9]){re.escape(name)}(?![A-Za-z0-9])"
        found += [(m.start(), name) for m in re.finditer(pattern, path, re.IGNORECASE)]
    return max(found)[1] if found else ""


def _readable(
    paths: Iterable[str], preprocess: dict[str, Any], warn: Warn
) -> Iterable[tuple[str, np.ndarray]]:
    for path in paths:
        try:
            yield path, prepare(read_gray(path), preprocess)
        except UnreadableImage as e:
            warn(f"skipped {path}: {e}")


def _value(prob: np.ndarray) -> Any:
    prob = np.asarray(prob)
    return float(prob) if prob.ndim == 0 else prob.astype(np.float64)


def score_images(
    model: Model,
    paths: Sequence[str],
    preprocess: dict[str, Any],
    batch_size: int = 32,
    warn: Warn = warn_stderr,
) -> dict[str, Any]:
    """{path: probability} of every readable image (class 1's, or the class vector), scored
    in batches of `batch_size` (the last padded with zeros, so one shape is compiled)."""
    probs: dict[str, Any] = {}
    chunk: list[tuple[str, np.ndarray]] = []

    def flush() -> None:
        images = np.zeros((batch_size, *chunk[0][1].shape), np.uint8)
        images[: len(chunk)] = [image for _, image in chunk]
        prob, _ = model(images)
        probs.update((path, _value(p)) for (path, _), p in zip(chunk, prob, strict=False))
        chunk.clear()

    for item in _readable(paths, preprocess, warn):
        chunk.append(item)
        if len(chunk) == batch_size:
            flush()
    if chunk:
        flush()
    return probs


def score_studies(
    model: Model,
    studies: dict[str, list[str]],
    preprocess: dict[str, Any],
    warn: Warn = warn_stderr,
) -> dict[str, Any]:
    """A study model's probability of each study from all its readable images at once,
    given to each of those images."""
    probs: dict[str, Any] = {}
    for files in studies.values():
        readable = list(_readable(files, preprocess, warn))
        if not readable:
            continue
        images = np.stack([image for _, image in readable])[None]
        prob, _ = model(images, np.ones(images.shape[:2], bool))
        probs.update((path, _value(prob[0])) for path, _ in readable)
    return probs


def aggregate(probs: Sequence[Any], how: str) -> Any:
    """A study's probability from its images': 'mean' or 'max' (class vectors class by
    class, the max renormalised to sum to 1)."""
    if np.ndim(probs[0]) == 1:
        stacked = np.stack(probs)
        if how == "mean":
            return stacked.mean(axis=0)
        top = stacked.max(axis=0)
        return top / top.sum() if top.sum() > 0 else top
    return float(np.mean(probs)) if how == "mean" else float(np.max(probs))


def csv_columns(dataset: dict[str, Any]) -> list[str]:
    """murajax's predict columns for the package's dataset."""
    names = dataset["label_names"]
    probs = ["prob"] if len(names) == 2 else [f"prob_{n}" for n in names]
    group = [dataset["group_column"]] if dataset.get("group_column") else []
    return ["study", "n_images", *probs, "pred", "label", *group]


def study_rows(
    studies: dict[str, list[str]],
    probs: dict[str, Any],
    metadata: dict[str, Any],
    warn: Warn = warn_stderr,
) -> list[dict[str, Any]]:
    """One row per study with at least one scored image (`csv_columns`)."""
    dataset = metadata["dataset"]
    threshold = float(metadata["decision"]["threshold"])
    rows = []
    for study, files in studies.items():
        scored = [probs[f] for f in files if f in probs]
        if not scored:
            if any(_looks_like_image(f) for f in files):
                warn(f"study {study} left out: none of its {len(files)} file(s) could be read")
            continue
        prob = aggregate(scored, metadata["decision"]["aggregation"])
        row: dict[str, Any] = {"study": study, "n_images": len(scored)}
        if np.ndim(prob) == 1:
            pred = int(np.argmax(prob))
            row.update((f"prob_{n}", p) for n, p in zip(dataset["label_names"], prob, strict=True))
        else:
            pred = int(prob >= threshold)
            row["prob"] = prob
        row.update(pred=pred, label=dataset["label_names"][pred])
        if dataset.get("group_column"):
            row[dataset["group_column"]] = group_of(study, dataset["group_names"])
        rows.append(row)
    return rows


def _looks_like_image(path: str) -> bool:
    name = os.path.basename(path)
    extensions = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp")
    return name.lower().endswith(extensions) and not name.startswith("._")


def write_csv(path: str, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """Writes `rows` (probabilities with 6 decimals) through a temporary file, so that an
    interrupted run leaves no half-written CSV."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    partial = f"{path}.partial-{os.getpid()}"
    try:
        with open(partial, "w", newline="") as f:
            out = csv.DictWriter(f, fieldnames=list(columns))
            out.writeheader()
            for row in rows:
                out.writerow(
                    {**row, **{k: f"{v:.6f}" for k, v in row.items() if k.startswith("prob")}}
                )
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def check_output(output: str) -> None:
    """`PackageError` unless the CSV `output` can be written (a file path in a folder that
    exists, or can be made, and takes new files); creates nothing."""
    if os.path.isdir(output):
        raise PackageError(f"--output={output} is a folder: expected the path of the CSV file")
    folder = os.path.dirname(os.path.abspath(output))
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
        raise PackageError(
            f"cannot write --output={output}: {folder} is not a folder you can write to"
        )


def predict(
    package: str,
    inputs: Sequence[str],
    output: str,
    *,
    fmt: str | None = None,
    batch_size: int = 32,
    warn: Warn = warn_stderr,
) -> list[dict[str, Any]]:
    """Scores the studies of `inputs` with the package; writes the CSV `output`; returns the
    rows. `PackageError` for a package, input or output that cannot be used."""
    check_output(output)
    model, metadata = load(package, fmt)
    studies = collect_studies(inputs, skip=[output])
    paths = [p for files in studies.values() for p in files]
    if not paths:
        raise PackageError(f"nothing to score: --input={','.join(inputs)} holds no files")
    prep = metadata["preprocess"]
    if model.study_level:
        probs = score_studies(model, studies, prep, warn)
    else:
        probs = score_images(model, paths, prep, batch_size, warn)
    if not probs:
        raise PackageError(
            f"nothing to score: no readable image among the {len(paths)}"
            f" file(s) in {', '.join(inputs)}"
        )
    rows = study_rows(studies, probs, metadata, warn)
    write_csv(output, rows, csv_columns(metadata["dataset"]))
    return rows


def main(argv: Sequence[str] | None = None, package: str | None = None) -> int:
    """The command line; returns the exit status (2 with one `error:` line for bad input)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--input", required=True, help="Image folders and/or files (commas).")
    parser.add_argument("--output", required=True, help="The CSV to write (one row per study).")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default=None,
        help="The artifact to run (default: onnx if onnxruntime is installed).",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="Images per model call.")
    if package is None:
        parser.add_argument(
            "--model",
            default=os.path.dirname(os.path.abspath(__file__)),
            help="The package folder (default: this file's).",
        )
    args = parser.parse_args(argv)
    try:
        rows = predict(
            package or args.model,
            [i for i in args.input.split(",") if i],
            args.output,
            fmt=args.format,
            batch_size=max(1, args.batch_size),
        )
    except PackageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    images = sum(r["n_images"] for r in rows)
    print(f"{len(rows)} studies ({images} images) scored -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
