"""Image conversion shared by the builders (and by murajax's `predict` for files on disk):
any image Pillow decodes, as 8-bit grayscale, and back to PNG bytes."""

import io

import numpy as np
from PIL import Image


def image_to_grayscale(image: Image.Image) -> np.ndarray:
    """Returns `image` as an (H, W) uint8 array of grey levels.

    Modes: `L` as is; `1` and `P`/`PA` via their palette; RGB-like modes as ITU-R 601-2
    luma (Pillow's `convert("L")`, exact for R = G = B); alpha is dropped (`LA`, `RGBA`,
    `PA`); 16-bit (`I;16*`, and `I` clipped to [0, 65535]) scaled to 8 bits by `value >> 8`.

    Raises:
      ValueError: a mode that has no grayscale meaning here (e.g. float `F`).
    """
    mode = image.mode
    if mode == "L":
        return np.asarray(image, dtype=np.uint8)
    if mode.startswith("I;16") or mode == "I":
        # In the image's own integer type: an int64 copy of a 100 Mpx image would take 800 MB.
        high = np.asarray(image) >> 8
        return np.clip(high, 0, 255, out=high).astype(np.uint8)
    if mode in ("LA", "La"):
        return np.asarray(image.getchannel("L"), dtype=np.uint8)
    if mode in ("P", "PA"):
        image = image.convert("RGBA")
    if mode == "F":
        raise ValueError("float images (mode F) are not supported")
    return np.asarray(image.convert("L"), dtype=np.uint8)


def encode_png(gray: np.ndarray) -> bytes:
    """Encodes an (H, W) uint8 array as an 8-bit grayscale PNG."""
    buffer = io.BytesIO()
    Image.fromarray(gray, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()
