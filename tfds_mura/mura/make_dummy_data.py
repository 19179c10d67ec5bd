"""Writes `dummy_data/`: a tiny fake MURA-v1.1 tree with the real layout and its quirks.

Run `python tfds_mura/mura/make_dummy_data.py [OUT_DIR]` (default: `dummy_data/` beside this
file). Nothing here is MURA data: every image is a small procedural pattern whose 8-bit grey
levels `expected_gray` gives, stored in a different PNG mode per image (L, RGB, RGBA, LA,
palette, 16-bit) so that the builder's grayscale conversion can be checked pixel for pixel.
Junk files that no CSV names (`._image1.png`, `.DS_Store`) are added as a zip from a Mac has.
Only numpy and Pillow are needed; the output is deterministic.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = "MURA-v1.1"


@dataclasses.dataclass(frozen=True)
class DummyImage:
    """One fake radiograph: where it goes, how it is stored and its size."""

    path: str
    """Path as in the CSV, `MURA-v1.1/<split>/XR_<PART>/patientN/studyK_<x>/imageJ.png`."""
    mode: str
    """How it is stored: `L`, `RGB`, `RGBA`, `LA`, `P` or `I;16`."""
    height: int
    width: int

    @property
    def study(self) -> str:
        """The study folder with a trailing `/`, as in `*_labeled_studies.csv`."""
        return self.path.rsplit("/", 1)[0] + "/"

    @property
    def split(self) -> str:
        """`train` or `valid`."""
        return self.path.split("/")[1]

    @property
    def label(self) -> int:
        """1 for `_positive` (abnormal) studies, 0 for `_negative` (normal)."""
        return int(self.study.rstrip("/").endswith("_positive"))


def _image(rel: str, mode: str, height: int, width: int) -> DummyImage:
    return DummyImage(f"{ROOT}/{rel}", mode, height, width)


IMAGES: tuple[DummyImage, ...] = (
    # train: 9 images, 7 studies, 4 patients, 5 body parts.
    _image("train/XR_WRIST/patient00001/study1_positive/image1.png", "L", 24, 20),
    _image("train/XR_WRIST/patient00001/study1_positive/image2.png", "RGB", 16, 28),
    _image("train/XR_WRIST/patient00001/study2_negative/image1.png", "I;16", 20, 20),
    _image("train/XR_ELBOW/patient00002/study1_negative/image1.png", "LA", 12, 32),
    _image("train/XR_ELBOW/patient00002/study1_negative/image2.png", "L", 18, 14),
    _image("train/XR_HAND/patient00003/study1_positive/image1.png", "P", 32, 24),
    _image("train/XR_SHOULDER/patient00004/study1_positive/image1.png", "RGBA", 40, 30),
    _image("train/XR_FINGER/patient00004/study1_negative/image1.png", "L", 8, 8),
    _image("train/XR_FINGER/patient00004/study2_positive/image1.png", "L", 10, 14),
    # valid: 5 images, 4 studies, 3 patients, 3 body parts.
    _image("valid/XR_HUMERUS/patient11185/study1_positive/image1.png", "L", 36, 36),
    _image("valid/XR_HUMERUS/patient11185/study1_positive/image2.png", "I;16", 16, 12),
    _image("valid/XR_FOREARM/patient11186/study1_negative/image1.png", "RGB", 22, 18),
    _image("valid/XR_FOREARM/patient11186/study2_positive/image1.png", "P", 14, 26),
    _image("valid/XR_WRIST/patient11187/study1_negative/image1.png", "LA", 20, 16),
)

JUNK: dict[str, bytes] = {
    f"{ROOT}/.DS_Store": b"\x00\x00\x00\x01Bud1" + bytes(24),
    f"{ROOT}/train/XR_HAND/patient00003/.DS_Store": b"\x00\x00\x00\x01Bud1" + bytes(24),
    f"{ROOT}/train/XR_WRIST/patient00001/study1_positive/._image1.png": (
        b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(16)
    ),
    f"{ROOT}/valid/XR_HUMERUS/patient11185/study1_positive/._image2.png": (
        b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(16)
    ),
}
"""Files a MURA zip made on a Mac carries and no CSV names: the builder must ignore them."""


def expected_gray(index: int) -> np.ndarray:
    """The (H, W) uint8 grey levels that `IMAGES[index]` must become after conversion."""
    image = IMAGES[index]
    y, x = np.mgrid[: image.height, : image.width]
    return ((x * 37 + y * 11 + index * 53 + (x * y) % 7 * 29) % 256).astype(np.uint8)


def _palette_order(index: int) -> np.ndarray:
    """A permutation of the 256 grey levels, so palette indices differ from grey levels."""
    return np.random.default_rng(index).permutation(256).astype(np.uint8)


def encode(index: int) -> Image.Image:
    """Returns `IMAGES[index]` as a Pillow image in its storage mode (grey: `expected_gray`)."""
    gray = expected_gray(index)
    mode = IMAGES[index].mode
    alpha = ((np.arange(gray.size).reshape(gray.shape) * 13) % 256).astype(np.uint8)
    if mode == "L":
        return Image.fromarray(gray, mode="L")
    if mode == "RGB":
        return Image.fromarray(np.stack([gray] * 3, axis=-1), mode="RGB")
    if mode == "RGBA":
        return Image.fromarray(np.stack([gray, gray, gray, alpha], axis=-1), mode="RGBA")
    if mode == "LA":
        return Image.fromarray(np.stack([gray, alpha], axis=-1), mode="LA")
    if mode == "P":
        levels = _palette_order(index)  # palette entry i is grey level levels[i]
        indices = np.argsort(levels).astype(np.uint8)[gray]
        image = Image.fromarray(indices, mode="P")
        image.putpalette(np.repeat(levels, 3).tobytes())
        image.info["transparency"] = 0  # a tRNS chunk: alpha must be ignored
        return image
    if mode == "I;16":
        # High byte = grey level, low byte = noise: `value >> 8` must give `gray` back.
        low = np.random.default_rng(index).integers(0, 256, gray.shape)
        return Image.fromarray((gray.astype(np.uint16) << 8) | low.astype(np.uint16))
    raise ValueError(f"unknown mode {mode}")


def csv_text(split: str) -> tuple[str, str]:
    """Returns (`<split>_image_paths.csv`, `<split>_labeled_studies.csv`) contents: no header."""
    images = [image for image in IMAGES if image.split == split]
    studies = list(dict.fromkeys((image.study, image.label) for image in images))
    return (
        "".join(f"{image.path}\n" for image in images),
        "".join(f"{study},{label}\n" for study, label in studies),
    )


def write(out_dir: Path) -> None:
    """Writes the fake tree under `out_dir/MURA-v1.1/`."""
    for index, image in enumerate(IMAGES):
        path = out_dir / image.path
        path.parent.mkdir(parents=True, exist_ok=True)
        pil = encode(index)
        pil.save(path, format="PNG", optimize=True, **pil.info)
    for split in ("train", "valid"):
        image_paths, labeled_studies = csv_text(split)
        (out_dir / ROOT / f"{split}_image_paths.csv").write_text(image_paths)
        (out_dir / ROOT / f"{split}_labeled_studies.csv").write_text(labeled_studies)
    for rel, data in JUNK.items():
        (out_dir / rel).write_bytes(data)


if __name__ == "__main__":
    write(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "dummy_data")
