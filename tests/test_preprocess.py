"""Tests of the pure preprocessing ops in `murajax.data.preprocess`."""

import io

import chex
import numpy as np
import pytest
from PIL import Image

from murajax.data import preprocess as pp


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def _gradient(height: int, width: int) -> np.ndarray:
    """uint8 (H, W, 1) whose value grows along rows and columns (orientation is visible)."""
    rows = np.linspace(0, 120, height)[:, None]
    cols = np.linspace(0, 120, width)[None, :]
    return (rows + cols).astype(np.uint8)[:, :, None]


# --------------------------------------------------------------------------- decode


def test_decode_png_gray_and_rgb():
    gray = np.arange(12 * 7, dtype=np.uint8).reshape(12, 7)
    np.testing.assert_array_equal(pp.decode_image(_png(gray)), gray[:, :, None])
    rgb = np.zeros((5, 6, 3), np.uint8)
    rgb[..., 0] = 255  # pure red: luma 0.299 * 255
    out = pp.decode_image(_png(rgb))
    chex.assert_shape(out, (5, 6, 1))
    assert out.dtype == np.uint8
    np.testing.assert_allclose(out, 76, atol=1)


@pytest.mark.parametrize("shape", [(9, 4), (9, 4, 1), (9, 4, 3)])
def test_decode_arrays(shape):
    out = pp.decode_image(np.full(shape, 77, np.uint8))
    chex.assert_shape(out, (9, 4, 1))
    np.testing.assert_array_equal(out, 77)


# --------------------------------------------------------------------------- resize


@pytest.mark.parametrize(
    "hw, mode, expected",
    [
        ((100, 50), "pad", (32, 16)),
        ((50, 100), "pad", (16, 32)),
        ((100, 50), "crop", (64, 32)),
        ((50, 100), "crop", (32, 64)),
        ((32, 32), "pad", (32, 32)),
        ((1000, 10), "pad", (32, 1)),  # never collapses to 0
    ],
)
def test_resized_shape_keeps_aspect(hw, mode, expected):
    assert pp.resized_shape(*hw, 32, mode) == expected


def test_resize_pad_centres_and_zero_fills():
    image = np.full((40, 20, 1), 200, np.uint8)  # portrait: 32 x 16 after resizing
    out = pp.resize_to_square(image, 32, "pad")
    chex.assert_shape(out, (32, 32, 1))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, 8:24], 200)
    np.testing.assert_array_equal(out[:, :8], 0)
    np.testing.assert_array_equal(out[:, 24:], 0)
    landscape = pp.resize_to_square(np.full((10, 30, 1), 9, np.uint8), 30, "pad")
    np.testing.assert_array_equal(landscape[10:20], 9)
    assert landscape[:10].sum() == 0 and landscape[20:].sum() == 0


def test_resize_pad_odd_margin_and_orientation():
    out = pp.resize_to_square(_gradient(30, 15), 16, "pad")  # 16 x 8 content, margins 4 + 4
    content = out[:, 4:12, 0].astype(int)
    assert out[:, :4].sum() == 0 and out[:, 12:].sum() == 0
    assert content[-1, -1] > content[0, -1] and content[-1, -1] > content[-1, 0]  # not flipped
    odd = pp.resize_to_square(np.full((21, 10, 1), 5, np.uint8), 16, "pad")  # content 16 x 8
    assert (odd[:, :, 0] > 0).sum() == 16 * 8


def test_resize_crop_fills_the_square_centre():
    image = np.zeros((20, 60, 1), np.uint8)
    image[:, 20:40] = 255  # the middle third; crop keeps exactly it after 32 x 96 resize
    out = pp.resize_to_square(image, 32, "crop")
    chex.assert_shape(out, (32, 32, 1))
    assert out[:, 2:30].min() == 255  # the centre third, up to the bilinear edge
    tall = pp.resize_to_square(_gradient(60, 20), 20, "crop")
    chex.assert_shape(tall, (20, 20, 1))


def test_resize_is_antialiased_bilinear():
    checker = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)[:, :, None]
    out = pp.resize_to_square(checker, 16, "pad")
    np.testing.assert_allclose(out.astype(float), 127.5, atol=2)  # averaged, not aliased


# --------------------------------------------------------------------------- geometry


def test_flip_lateral():
    image = _gradient(6, 5)
    np.testing.assert_array_equal(pp.flip_lateral(image), image[:, ::-1])
    batch = np.stack([image, image])
    np.testing.assert_array_equal(pp.flip_lateral(batch), batch[:, :, ::-1])


def test_rotate_identity_and_copy():
    image = _gradient(9, 7)
    out = pp.rotate_and_zoom(image, 0.0)
    np.testing.assert_array_equal(out, image)
    assert out is not image


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_rotate_matches_pillow_rotate(dtype):
    image = _gradient(24, 24).astype(dtype)
    out = pp.rotate_and_zoom(image, 17.0)
    chex.assert_shape(out, image.shape)
    assert out.dtype == dtype
    reference = Image.fromarray(image[:, :, 0]).rotate(17.0, Image.Resampling.BILINEAR)
    np.testing.assert_allclose(out[:, :, 0], np.asarray(reference), atol=1e-3)


def test_rotate_90_degrees_is_rot90():
    image = _gradient(16, 16)
    out = pp.rotate_and_zoom(image, 90.0)
    np.testing.assert_array_equal(out[:, :, 0], np.rot90(image[:, :, 0]))


def test_zoom_magnifies_about_the_centre():
    image = np.zeros((32, 32, 1), np.uint8)
    image[12:20, 12:20] = 255  # an 8-pixel centred square becomes 16 pixels at 2x
    out = pp.rotate_and_zoom(image, 0.0, scale=2.0)
    assert out[9:23, 9:23].min() == 255
    assert out[:6].max() == 0 and out[26:].max() == 0
    shifted = pp.rotate_and_zoom(image, 0.0, scale=2.0, shift=(4.0, 0.0))  # window moves down
    assert shifted[:, 16, 0].argmax() < out[:, 16, 0].argmax()


def test_rotation_fills_with_zeros():
    out = pp.rotate_and_zoom(np.full((20, 20, 1), 255, np.uint8), 45.0)
    assert out[0, 0, 0] == 0 and out[10, 10, 0] == 255


# --------------------------------------------------------------------------- photometric


def test_to_unit_and_clip():
    out = pp.to_unit(np.array([0, 51, 255], np.uint8))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.0, 0.2, 1.0], rtol=1e-6)
    np.testing.assert_array_equal(pp.clip_unit(np.array([-0.5, 0.5, 1.5])), [0.0, 0.5, 1.0])


def test_brightness_and_contrast_numbers():
    batch = np.stack([np.full((2, 2, 1), 0.2, np.float32), np.full((2, 2, 1), 0.6, np.float32)])
    batch[1, 0, 0, 0] = 0.2  # image 1: mean 0.5
    out = pp.adjust_brightness(batch, np.array([0.1, -0.1]).reshape(2, 1, 1, 1))
    np.testing.assert_allclose(out[0], 0.3, rtol=1e-6)
    out = pp.adjust_contrast(batch, np.array([2.0, 0.5]).reshape(2, 1, 1, 1))
    np.testing.assert_allclose(out[0], 0.2, rtol=1e-6)  # a flat image has no contrast
    np.testing.assert_allclose(out[1, 0, 0, 0], 0.5 + (0.2 - 0.5) * 0.5, rtol=1e-6)
    np.testing.assert_allclose(out[1].mean(), 0.5, rtol=1e-6)  # the mean is kept
    assert out.dtype == np.float32


def test_augment_photometric_keeps_range():
    rng = np.random.default_rng(0)
    batch = rng.random((4, 8, 8, 1), dtype=np.float32)
    out = pp.augment_photometric(batch, np.array([0.9, -0.9, 0.0, 0.3]), np.array([3, 0, 1, 2]))
    chex.assert_shape(out, batch.shape)
    assert out.dtype == np.float32 and out.min() >= 0.0 and out.max() <= 1.0


# --------------------------------------------------------------------------- augmentation


def test_sample_augment_params_ranges_and_determinism():
    draws = [
        pp.sample_augment_params(
            np.random.default_rng(i), 64, rotation=30, zoom=0.5, brightness=0.2, contrast=0.3
        )
        for i in range(200)
    ]
    assert all(-30 <= d.angle <= 30 for d in draws)
    assert all(1.0 <= d.scale <= 1.5 for d in draws)
    assert all(abs(s) <= (64 - 64 / d.scale) / 2 for d in draws for s in d.shift)
    assert all(abs(d.brightness) <= 0.2 and 0.7 <= d.contrast <= 1.3 for d in draws)
    assert 60 < sum(d.flip for d in draws) < 140
    again = pp.sample_augment_params(
        np.random.default_rng(3), 64, rotation=30, zoom=0.5, brightness=0.2, contrast=0.3
    )
    assert again == draws[3]
    off = pp.sample_augment_params(np.random.default_rng(3), 64, flip=False)
    assert off == pp.AugmentParams()


def test_augment_geometry_keeps_shape_dtype_range():
    image = pp.resize_to_square(_gradient(50, 30), 32, "pad")
    params = pp.AugmentParams(flip=True, angle=25.0, scale=1.3, shift=(2.0, -3.0))
    out = pp.augment_geometry(image, params)
    chex.assert_shape(out, image.shape)
    assert out.dtype == np.uint8
    flipped = pp.augment_geometry(image, pp.AugmentParams(flip=True))
    np.testing.assert_array_equal(flipped, image[:, ::-1])


# --------------------------------------------------------------------------- normalisation


def test_normalize_unit():
    x = np.array([[[[0.0], [0.5], [1.0]]]], np.float32)
    np.testing.assert_allclose(pp.normalize(x, "unit", 1), x)
    out = pp.normalize(x, "unit", 3)
    chex.assert_shape(out, (1, 1, 3, 3))
    np.testing.assert_allclose(out[..., 2], x[..., 0])


def test_normalize_imagenet_numbers():
    x = np.full((2, 2, 1), 0.5, np.float32)
    out = pp.normalize(x, "imagenet", 3)
    expected = [(0.5 - 0.485) / 0.229, (0.5 - 0.456) / 0.224, (0.5 - 0.406) / 0.225]
    np.testing.assert_allclose(out[0, 0], expected, rtol=1e-5)
    gray = pp.normalize(x, "imagenet", 1)
    np.testing.assert_allclose(gray[0, 0, 0], (0.5 - 0.449) / (0.678 / 3), rtol=1e-5)


def test_normalize_caffe_numbers():
    x = np.full((1, 1, 1), 1.0, np.float32)  # white: R = G = B = 255
    out = pp.normalize(x, "caffe", 3)
    np.testing.assert_allclose(out[0, 0], [255 - 103.939, 255 - 116.779, 255 - 123.68], rtol=1e-5)
    rgb = np.array([[[0.1, 0.2, 0.3]]], np.float32)  # a colour input is turned into BGR
    out = pp.normalize(rgb, "caffe", 3)
    expected = [0.3 * 255 - 103.939, 0.2 * 255 - 116.779, 0.1 * 255 - 123.68]
    np.testing.assert_allclose(out[0, 0], expected, rtol=1e-5)
    gray = pp.normalize(x, "caffe", 1)
    np.testing.assert_allclose(gray[0, 0, 0], 255 - (103.939 + 116.779 + 123.68) / 3, rtol=1e-5)


@pytest.mark.parametrize("method", pp.NORMALIZATIONS)
@pytest.mark.parametrize("channels", [1, 3])
def test_normalize_uint8_equals_float(method, channels):
    images = np.random.default_rng(0).integers(0, 256, (3, 5, 4, 1), dtype=np.uint8)
    fast = pp.normalize(images, method, channels)
    slow = pp.normalize(pp.to_unit(images), method, channels)
    chex.assert_shape(fast, (3, 5, 4, channels))
    assert fast.dtype == slow.dtype == np.float32
    np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-4)


def test_normalize_rejects_bad_arguments():
    with pytest.raises(ValueError, match="normalization"):
        pp.normalize(np.zeros((2, 2, 1), np.float32), "bogus")
    with pytest.raises(ValueError, match="channels"):
        pp.normalize(np.zeros((2, 2, 1), np.float32), "unit", 2)
    with pytest.raises(ValueError, match="resize mode"):
        pp.resized_shape(4, 4, 8, "stretch")


def test_to_channels():
    x = np.zeros((4, 4, 1), np.float32)
    chex.assert_shape(pp.to_channels(x, 3), (4, 4, 3))
    assert pp.to_channels(x, 1) is x


def test_standardize_gives_each_image_zero_mean_and_unit_variance():
    rng = np.random.default_rng(0)
    dark = rng.integers(0, 60, size=(2, 8, 8, 1)).astype(np.uint8)
    bright = (dark.astype(np.int32) * 3 + 40).astype(np.uint8)  # same picture, other exposure
    for channels in (1, 3):
        out = pp.normalize(np.concatenate([dark, bright]), "standardize", channels)
        assert out.shape == (4, 8, 8, channels) and out.dtype == np.float32
        np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), 0.0, atol=1e-5)
        np.testing.assert_allclose(out.std(axis=(1, 2, 3)), 1.0, rtol=1e-4)
        np.testing.assert_allclose(out[:2], out[2:], atol=1e-4)  # exposure removed
    flat = np.full((1, 4, 4, 1), 7, np.uint8)
    assert np.all(pp.normalize(flat, "standardize") == 0.0)  # no division by zero
