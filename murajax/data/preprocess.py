"""Preprocessing ops: small pure functions on numpy arrays (Pillow does the resampling).

An image goes through them in this order (`pipeline.py` strings them together):

    decode_image          PNG bytes or uint8 array -> uint8 (H, W, 1)
    resize_to_square      aspect-preserving resize, then centre pad or centre crop -> (S, S, 1)
    [train only]
    flip_lateral          mirror left <-> right
    rotate_and_zoom       one bilinear affine resampling: rotation, zoom and window shift
    to_unit               uint8 -> float32 in [0, 1]
    [train only]
    adjust_brightness     additive
    adjust_contrast       multiplicative about the image mean
    clip_unit             back into [0, 1]
    normalize             'unit' | 'imagenet' | 'caffe', 1 -> 3 channels if the model wants RGB

Geometric ops keep uint8 (Pillow resamples 8-bit images fastest); photometric ops and
`normalize` broadcast over any leading batch axes, so the pipeline applies them to a whole
batch at once. Every op returns a new array and never changes its input.
"""

import dataclasses
import io
import math

import numpy as np
from PIL import Image

RESIZE_MODES: tuple[str, ...] = ("pad", "crop")  # after an aspect-preserving resize
NORMALIZATIONS: tuple[str, ...] = ("unit", "imagenet", "caffe", "standardize")

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
"""ImageNet per-channel mean of RGB images in [0, 1] (torchvision / Keras 'torch' mode)."""
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
"""ImageNet per-channel standard deviation of RGB images in [0, 1]."""
CAFFE_MEAN_BGR: tuple[float, float, float] = (103.939, 116.779, 123.68)
"""Keras VGG16 ('caffe' mode) per-channel mean of BGR images in [0, 255]."""


def decode_image(value: bytes | np.ndarray) -> np.ndarray:
    """Returns an image as uint8 (H, W, 1) grayscale.

    `value` is either encoded bytes (PNG, as `tfds.decode.SkipDecoding()` gives them) or an
    already decoded array of shape (H, W) or (H, W, C). Colour images (C = 3 or 4, or a PNG
    in RGB/palette mode) become grayscale with Pillow's ITU-R 601-2 luma transform.
    """
    if isinstance(value, bytes | bytearray | memoryview):
        with Image.open(io.BytesIO(value)) as pil:
            if pil.mode != "L":
                pil = pil.convert("L")
            array = np.asarray(pil)
        return array[:, :, None]
    array = np.asarray(value)
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        array = np.asarray(Image.fromarray(array[..., :3].astype(np.uint8)).convert("L"))
    elif array.ndim == 3:
        array = array[..., 0]
    if array.ndim != 2:
        raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {array.shape}")
    return array.astype(np.uint8, copy=False)[:, :, None]


def resized_shape(height: int, width: int, size: int, mode: str) -> tuple[int, int]:
    """The (height, width) an image is resized to before padding or cropping to `size`.

    'pad' fits the longer side to `size` (the whole image stays visible); 'crop' fits the
    shorter side (the square is filled). The aspect ratio is kept up to rounding; both sides
    are at least 1.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode {mode!r}: expected one of {RESIZE_MODES}")
    side = max(height, width) if mode == "pad" else min(height, width)
    scale = size / side
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_to_square(image: np.ndarray, size: int, mode: str = "pad") -> np.ndarray:
    """Aspect-preserving bilinear resize, then centre zero-pad ('pad') or centre crop ('crop').

    `image` is uint8 (H, W, 1); the result is uint8 (size, size, 1). Pillow's bilinear
    filter widens its support when shrinking, so downscaling is antialiased.
    """
    height, width = image.shape[:2]
    new_h, new_w = resized_shape(height, width, size, mode)
    plane = image[:, :, 0]
    if (new_h, new_w) != (height, width):
        pil = Image.fromarray(np.ascontiguousarray(plane))
        plane = np.asarray(pil.resize((new_w, new_h), Image.Resampling.BILINEAR))
    if mode == "crop":
        top, left = (new_h - size) // 2, (new_w - size) // 2
        return np.ascontiguousarray(plane[top : top + size, left : left + size, None])
    out = np.zeros((size, size, 1), dtype=np.uint8)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    out[top : top + new_h, left : left + new_w, 0] = plane
    return out


def flip_lateral(image: np.ndarray) -> np.ndarray:
    """Mirrors an (..., H, W, C) image left <-> right (a lateral flip)."""
    return np.ascontiguousarray(np.flip(image, axis=-2))


def affine_coefficients(
    height: int, width: int, angle: float, scale: float = 1.0, shift: tuple[float, float] = (0, 0)
) -> tuple[float, ...]:
    """Pillow AFFINE coefficients (a, b, c, d, e, f) for `rotate_and_zoom`.

    Output pixel (x, y) samples input (a x + b y + c, d x + e y + f): the input is rotated
    by `angle` degrees counter-clockwise about the image centre (as `PIL.Image.rotate`),
    magnified by `scale` (> 1 zooms in) and the sampled window's centre is moved by `shift`
    = (dy, dx) input pixels.
    """
    theta = -math.radians(angle)
    cos, sin = math.cos(theta) / scale, math.sin(theta) / scale
    cx, cy = width / 2.0, height / 2.0
    in_cx, in_cy = cx + shift[1], cy + shift[0]
    return (cos, sin, in_cx - cos * cx - sin * cy, -sin, cos, in_cy + sin * cx - cos * cy)


def rotate_and_zoom(
    image: np.ndarray, angle: float, scale: float = 1.0, shift: tuple[float, float] = (0, 0)
) -> np.ndarray:
    """Rotates by `angle` degrees, zooms in by `scale` >= 1 and shifts the window, in one pass.

    `image` is (H, W, C), uint8 or float32; the result has the same shape and dtype.
    Bilinear resampling; pixels from outside the input are 0 (like the padding of
    `resize_to_square`). See `affine_coefficients` for the exact geometry.
    """
    if angle == 0 and scale == 1 and shift == (0, 0):
        return image.copy()
    height, width = image.shape[:2]
    coefficients = affine_coefficients(height, width, angle, scale, shift)
    planes = []
    for c in range(image.shape[2]):
        pil = Image.fromarray(np.ascontiguousarray(image[:, :, c]))
        out = pil.transform(
            (width, height),
            Image.Transform.AFFINE,
            coefficients,
            resample=Image.Resampling.BILINEAR,
            fillcolor=0,
        )
        planes.append(np.asarray(out, dtype=image.dtype))
    return np.stack(planes, axis=-1)


def to_unit(image: np.ndarray) -> np.ndarray:
    """uint8 in [0, 255] -> float32 in [0, 1]."""
    return image.astype(np.float32) * np.float32(1.0 / 255.0)


def adjust_brightness(image: np.ndarray, delta: float | np.ndarray) -> np.ndarray:
    """Adds `delta` (a scalar, or one value per image broadcastable to (B, 1, 1, 1))."""
    return (image + np.asarray(delta, dtype=np.float32)).astype(np.float32)


def adjust_contrast(image: np.ndarray, factor: float | np.ndarray) -> np.ndarray:
    """Scales each image's deviation from its own mean by `factor` (as `tf.image.adjust_contrast`).

    `image` is (..., H, W, C); the mean is taken over (H, W, C) per leading index, and
    `factor` is a scalar or broadcastable to (..., 1, 1, 1).
    """
    mean = image.mean(axis=(-3, -2, -1), keepdims=True, dtype=np.float32)
    return ((image - mean) * np.asarray(factor, dtype=np.float32) + mean).astype(np.float32)


def clip_unit(image: np.ndarray) -> np.ndarray:
    """Clips values into [0, 1]."""
    return np.clip(image, 0.0, 1.0).astype(np.float32, copy=False)


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """Repeats a grayscale (..., 1) image to (..., 3) when `channels` is 3; 1 keeps it as is."""
    if channels not in (1, 3):
        raise ValueError(f"channels={channels}: expected 1 or 3")
    if image.shape[-1] == channels:
        return image
    if image.shape[-1] != 1:
        raise ValueError(f"cannot turn {image.shape[-1]} channels into {channels}")
    return np.repeat(image, channels, axis=-1)


def normalization_affine(method: str, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """(scale, offset), each float32 (channels,), such that a normalised channel c of a
    gray image x in [0, 1] is `x * scale[c] + offset[c]` (see `normalize`)."""
    if method not in NORMALIZATIONS:
        raise ValueError(f"normalization {method!r}: expected one of {NORMALIZATIONS}")
    if method == "standardize":
        raise ValueError("'standardize' depends on each image, it has no fixed (scale, offset)")
    if channels not in (1, 3):
        raise ValueError(f"channels={channels}: expected 1 or 3")
    if method == "unit":
        scale, offset = np.ones(3), np.zeros(3)
    elif method == "imagenet":
        scale = 1.0 / np.asarray(IMAGENET_STD)
        offset = -np.asarray(IMAGENET_MEAN) * scale
    else:  # caffe: output channel c is BGR channel c of the RGB = (x, x, x) image
        scale, offset = np.full(3, 255.0), -np.asarray(CAFFE_MEAN_BGR)
    if channels == 1:
        if method == "imagenet":
            mean, std = np.mean(IMAGENET_MEAN), np.mean(IMAGENET_STD)
            scale, offset = np.asarray([1.0 / std]), np.asarray([-mean / std])
        else:
            scale, offset = scale[:1], offset.mean(keepdims=True)
    return scale.astype(np.float32), offset.astype(np.float32)


def standardize(image: np.ndarray, eps: float = 1e-3) -> np.ndarray:
    """Per-image z-score: (x - mean) / max(std, eps) over each image's (H, W, C), float32.

    Removes exposure and window differences between radiographs; uint8 input is first
    scaled to [0, 1] (which does not change the result beyond `eps`).
    """
    x = np.asarray(image, np.float32)
    if image.dtype == np.uint8:
        x = x / 255.0
    mean = x.mean(axis=(-3, -2, -1), keepdims=True)
    std = x.std(axis=(-3, -2, -1), keepdims=True)
    return ((x - mean) / np.maximum(std, eps)).astype(np.float32)


def normalize(image: np.ndarray, method: str, channels: int = 1) -> np.ndarray:
    """Maps (..., H, W, 1) images in [0, 1] to the model's input convention, float32.

    - 'unit': unchanged, [0, 1].
    - 'imagenet': (x - IMAGENET_MEAN) / IMAGENET_STD per RGB channel (Keras 'torch' mode).
    - 'caffe': Keras VGG16 'caffe' mode: RGB -> BGR, x * 255 - CAFFE_MEAN_BGR per channel.
    - 'standardize': per-image zero mean and unit variance (see `standardize`).
    With `channels` = 3 the gray plane becomes R = G = B; with `channels` = 1 'imagenet' and
    'caffe' use the mean of their three per-channel constants. `image` is float in [0, 1], or
    uint8 in [0, 255] (then a 256-entry lookup table does `to_unit` and the normalisation in
    one gather, the fastest path). A 3-channel RGB input needs `channels` = 3.
    """
    image = np.asarray(image)
    if method == "standardize":
        if image.shape[-1] != 1:
            raise ValueError("'standardize' expects grayscale (..., 1) images")
        return to_channels(standardize(image), channels)
    scale, offset = normalization_affine(method, channels)
    if image.shape[-1] == 3:
        if channels != 3:
            raise ValueError("a 3-channel image needs channels=3")
        rgb = image.astype(np.float32) / (255.0 if image.dtype == np.uint8 else 1.0)
        return ((rgb[..., ::-1] if method == "caffe" else rgb) * scale + offset).astype(np.float32)
    if image.shape[-1] != 1:
        raise ValueError(f"expected 1 or 3 channels, got shape {image.shape}")
    if image.dtype == np.uint8:
        lut = (np.arange(256)[:, None] / 255.0 * scale + offset).astype(np.float32)
        return np.take(lut, image[..., 0], axis=0)
    gray = image[..., 0].astype(np.float32, copy=False)
    return np.stack([gray * scale[c] + offset[c] for c in range(channels)], axis=-1)


# --------------------------------------------------------------------------- augmentation


@dataclasses.dataclass(frozen=True)
class AugmentParams:
    """One image's random augmentation, drawn by `sample_augment_params`."""

    flip: bool = False
    angle: float = 0.0  # degrees
    scale: float = 1.0  # >= 1: zoom in
    shift: tuple[float, float] = (0.0, 0.0)  # (dy, dx) of the zoomed window, in pixels
    brightness: float = 0.0  # added to [0, 1] values
    contrast: float = 1.0  # deviation-from-mean multiplier


def sample_augment_params(
    rng: np.random.Generator,
    size: int,
    *,
    flip: bool = True,
    rotation: float = 0.0,
    zoom: float = 0.0,
    brightness: float = 0.0,
    contrast: float = 0.0,
) -> AugmentParams:
    """Draws one image's augmentation: a fair-coin lateral flip (if `flip`), an angle uniform
    in [-rotation, rotation], a zoom scale uniform in [1, 1 + zoom] with the zoomed window
    placed uniformly inside the image, a brightness offset uniform in [-brightness,
    brightness] and a contrast factor uniform in [1 - contrast, 1 + contrast].

    Always consumes the same 7 uniforms from `rng`, whatever is enabled.
    """
    u = rng.random(7)
    scale = 1.0 + zoom * u[2]
    max_shift = (size - size / scale) / 2.0
    return AugmentParams(
        flip=bool(flip and u[0] < 0.5),
        angle=float(rotation * (2.0 * u[1] - 1.0)),
        scale=float(scale),
        shift=(float(max_shift * (2.0 * u[3] - 1.0)), float(max_shift * (2.0 * u[4] - 1.0))),
        brightness=float(brightness * (2.0 * u[5] - 1.0)),
        contrast=float(1.0 + contrast * (2.0 * u[6] - 1.0)),
    )


def augment_geometry(image: np.ndarray, params: AugmentParams) -> np.ndarray:
    """Applies `params`' flip, then rotation/zoom/shift, to an (H, W, C) image; keeps dtype."""
    if params.flip:
        image = flip_lateral(image)
    return rotate_and_zoom(image, params.angle, params.scale, params.shift)


def augment_photometric(
    images: np.ndarray, brightness: np.ndarray, contrast: np.ndarray
) -> np.ndarray:
    """Per-image brightness offsets and contrast factors (shape (B,)) on (B, H, W, C) float
    images in [0, 1], then clips back into [0, 1]."""
    shape = (-1,) + (1,) * (images.ndim - 1)
    images = adjust_brightness(images, np.reshape(brightness, shape))
    images = adjust_contrast(images, np.reshape(contrast, shape))
    return clip_unit(images)
