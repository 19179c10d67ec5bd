"""Radiographs on disk as model inputs: image files, studies, and heatmaps back onto them.

    read_gray(path) -> uint8 (H, W)                        8-bit grayscale like the `mura` builder
    prepare_batch(config, model, grays) -> float32 (N, S, S, C)   as the eval pipeline does
    model_view(config, gray) -> uint8 (S, S)               the square the model sees
    heatmap_to_original(heatmap, shape, size, mode)        an (S, S) map back onto (H, W)
    collect_studies(inputs, skip) -> {study folder: [files]}   a study = the images of one folder
    group_of(path, names) -> 'XR_WRIST' | ''

Used by `murajax.predict`; reads files, writes none. An image is opened lazily (Pillow reads
its header) and refused before decoding if it has more than `MAX_IMAGE_PIXELS` pixels, so
neither a huge non-image nor a small file that declares a huge image costs memory.
"""

import glob
import os
import re
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from murajax.config import Config
from murajax.data import ModelInputs, pipeline, preprocess
from murajax.errors import WorkdirError


class InputError(WorkdirError):
    """The input files cannot be scored (none given, none readable); one-line message. A
    `WorkdirError` (a file a command reads lacks what it needs), so a user error."""


class UnreadableImage(ValueError):
    """A file that is not an image Pillow can decode fully (junk, truncated, another format,
    more than `MAX_IMAGE_PIXELS` pixels)."""


MAX_IMAGE_PIXELS = 8192 * 8192
"""Images with more pixels (67 Mpx; MURA's are under 0.3 Mpx) are refused before decoding."""


# --------------------------------------------------------------------------- image files


def gray_of(image: Image.Image) -> np.ndarray:
    """A decoded image as uint8 (H, W) grayscale: the builders' `image_to_grayscale`
    (16-bit and 32-bit `I` images by their high byte, clipped to [0, 255], in the image's own
    integer type, with no int64 copy of a large image)."""
    from tfds_mura.images import image_to_grayscale  # late: `tfds_mura` imports its builders

    return image_to_grayscale(image)


def _check_size(image: Image.Image) -> None:
    """Raises `UnreadableImage` for an image of more than `MAX_IMAGE_PIXELS` pixels."""
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise UnreadableImage(
            f"image of {width}x{height} pixels, more than the {MAX_IMAGE_PIXELS} that murajax"
            " reads (image_files.MAX_IMAGE_PIXELS)"
        )


def read_gray(path: str) -> np.ndarray:
    """Reads an image file as uint8 (H, W) grayscale, converted as the `mura` builder does
    (colour to ITU-R 601-2 luma, alpha dropped, 16-bit to 8 by the high byte).

    Pillow identifies the file from its first bytes and the size from its header; nothing
    more is read before the size is checked. Raises `UnreadableImage` for anything Pillow
    cannot decode fully (not an image, a truncated file, AppleDouble junk such as
    `._image1.png`, an unsupported mode) and for images over `MAX_IMAGE_PIXELS`.
    """
    try:
        with warnings.catch_warnings():  # Pillow's own bomb warning: the check below says it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:  # lazy: reads the header only
                _check_size(image)
                image.load()  # decodes fully, so a truncated file fails here
                gray = gray_of(image)
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


def prepare_batch(config: Config, model: ModelInputs, grays: Sequence[np.ndarray]) -> np.ndarray:
    """float32 (N, S, S, C) inputs of `model` (its `models.ModelSpec`), preprocessed exactly
    as the eval pipeline does (`murajax.data.pipeline.prepare_images`)."""
    spec = pipeline.preprocess_spec(config.data, model)
    return pipeline.prepare_images([{"image": g[:, :, None]} for g in grays], spec)


def model_view(config: Config, gray: np.ndarray) -> np.ndarray:
    """The uint8 (S, S) square the model sees of `gray` (resized, padded or cropped)."""
    image = preprocess.resize_to_square(
        gray[:, :, None], config.data.image_size, config.data.resize
    )
    return image[:, :, 0]


def heatmap_to_original(
    heatmap: np.ndarray, shape: tuple[int, int], size: int, mode: str
) -> np.ndarray:
    """Maps an (S, S) heatmap over the model's square input back onto the (H, W) original.

    Undoes `resize_to_square`: 'pad' drops the padding, 'crop' puts the map on the centre
    crop (zero outside it); then a bilinear resize to `shape`. Values stay in [0, 1].
    """
    height, width = shape
    new_h, new_w = preprocess.resized_shape(height, width, size, mode)
    heatmap = np.asarray(heatmap, np.float32)
    if mode == "pad":
        top, left = (size - new_h) // 2, (size - new_w) // 2
        resized = heatmap[top : top + new_h, left : left + new_w]
    else:
        top, left = (new_h - size) // 2, (new_w - size) // 2
        resized = np.zeros((new_h, new_w), np.float32)
        resized[top : top + size, left : left + size] = heatmap
    pil = Image.fromarray(np.ascontiguousarray(resized), mode="F")
    out = np.asarray(pil.resize((width, height), Image.Resampling.BILINEAR), np.float32)
    return np.clip(out, 0.0, 1.0)


# --------------------------------------------------------------------------- studies


_GLOB_CHARS = re.compile(r"[*?\[]")


def expand_inputs(inputs: Iterable[str]) -> list[str]:
    """Input paths with shell-style patterns expanded (a pattern that matches nothing stays)."""
    out = []
    for item in inputs:
        matches = sorted(glob.glob(item)) if _GLOB_CHARS.search(item) else []
        out.extend(matches or [item])
    return out


def _is_within(path: str, places: Iterable[str]) -> bool:
    """Whether the real path `path` is one of `places` (real paths) or lies inside one."""
    return any(path == place or path.startswith(place.rstrip(os.sep) + os.sep) for place in places)


def collect_studies(inputs: Iterable[str], skip: Iterable[str] = ()) -> dict[str, list[str]]:
    """Groups the files of `inputs` into studies: {study folder: [file paths]}.

    A folder is walked recursively and every folder that holds files is one study (MURA's
    `XR_WRIST/patient00001/study1_positive/`); files given directly are grouped by their
    parent folder. Every regular file is listed (junk is sorted out when it fails to
    read); hidden folders are walked too, and folders that are symbolic links are followed,
    each real folder once (a link to a folder already walked, such as a parent, adds
    nothing). The folders and files of `skip` (a command's own outputs) are left out
    wherever they lie. Studies and files come back sorted.
    """
    skipped = {os.path.realpath(p) for p in skip}
    walked: set[str] = set()
    studies: dict[str, set[str]] = {}
    for item in expand_inputs(inputs):
        if os.path.isdir(item):
            for folder, subfolders, files in os.walk(item, followlinks=True):
                real = os.path.realpath(folder)
                if real in walked or _is_within(real, skipped):
                    subfolders.clear()  # a loop, a second path to a folder, or an output
                    continue
                walked.add(real)
                subfolders.sort()
                for name in files:
                    path = os.path.join(folder, name)
                    if os.path.isfile(path) and not _is_within(os.path.realpath(path), skipped):
                        studies.setdefault(os.path.normpath(folder), set()).add(path)
        elif os.path.isfile(item):
            if _is_within(os.path.realpath(item), skipped):
                continue
            folder = os.path.normpath(os.path.dirname(item) or ".")
            studies.setdefault(folder, set()).add(item)
        else:
            raise FileNotFoundError(
                f"input {item} does not exist (expected image files, folders of them or shell"
                " patterns that match some)"
            )
    return {folder: sorted(files) for folder, files in sorted(studies.items())}


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp")


def looks_like_image(path: str) -> bool:
    """Whether a file's name says it is an image (an image extension, not `._` junk)."""
    name = os.path.basename(path)
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("._")


def group_of(path: str, names: Sequence[str]) -> str:
    """The group a path names (one of `names`, the dataset's groups: MURA's `XR_ELBOW` ...
    `XR_WRIST`), case-insensitively as a whole word of the path; the last one if several,
    '' if none."""
    found = []
    for name in names:
        pattern = rf"(?<![A-Za-z0-9]){re.escape(name)}(?![A-Za-z0-9])"
        found += [(m.start(), name) for m in re.finditer(pattern, path, re.IGNORECASE)]
    return max(found)[1] if found else ""
