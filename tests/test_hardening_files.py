"""Files murajax reads, crafted to hurt: Keras `.h5` files that declare huge datasets or keep
their bytes elsewhere, images that are huge or not images, symlinked and self-nesting input
trees, and sweep folders that name a config file outside the project (issue 19, 8-11)."""

import json
import os
import struct
import subprocess
import sys
import textwrap
import time
import tracemalloc
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from experiments import results_page
from murajax import errors, image_files, predict, sweep
from murajax.models import keras_weights
from tfds_mura.mura.mura_dataset_builder import image_to_grayscale

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HUGE = (1 << 31,)  # 2^31 float32 values: 8 GiB once read
LAYER = "block1_conv1"


# --------------------------------------------------------------------------- Keras .h5 files


@pytest.fixture(scope="module")
def vgg_spec() -> dict[str, keras_weights.ExpectedWeight]:
    """What VGG16's first layer expects: kernel and bias shapes."""
    return keras_weights.layer_specs(keras_weights.backbone_shapes("vgg16"))[LAYER]


def legacy_file(path: Path, make_weights) -> Path:
    """A legacy Keras `.h5` file with one layer, `block1_conv1`, whose kernel and bias
    `make_weights(group)` creates in `group` as "kernel:0" and "bias:0"."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [LAYER.encode()]
        layer = f.create_group(LAYER)
        layer.attrs["weight_names"] = [f"{LAYER}/kernel:0".encode(), f"{LAYER}/bias:0".encode()]
        make_weights(layer.create_group(LAYER))
    return path


@pytest.fixture
def no_large_reads(monkeypatch) -> list[str]:
    """Fails any read of a dataset over 1 MiB (so that a regression fails the test instead
    of allocating the 8 GiB); returns the names of the datasets read."""
    read: list[str] = []
    original = h5py.Dataset.__getitem__

    def getitem(self, key):
        assert self.size * self.dtype.itemsize <= 1 << 20, f"read {self.name} {self.shape}"
        read.append(self.name)
        return original(self, key)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", getitem)
    return read


def test_a_declared_8_gib_dataset_is_refused_by_its_shape_without_being_read(
    tmp_path, vgg_spec, no_large_reads
):
    def weights(group):  # chunked and never written: a few KB on disk
        group.create_dataset("kernel:0", shape=HUGE, dtype="f4", chunks=(1 << 16,))
        group.create_dataset("bias:0", data=np.zeros(vgg_spec["bias"].shape, "f4"))

    path = legacy_file(tmp_path / "bomb.h5", weights)
    assert path.stat().st_size < 64 << 10
    start = time.monotonic()
    with pytest.raises(errors.WeightsError) as error:
        keras_weights.load_keras_weights("vgg16", path)
    assert time.monotonic() - start < 10
    message = str(error.value)
    kernel = ",".join(map(str, vgg_spec["kernel"].shape))
    assert f"shape mismatch {LAYER}/kernel (2147483648) in the file vs ({kernel})" in message
    assert str(path) in message and "\n" not in message
    assert no_large_reads == []  # nothing read at all: every shape is checked first


BOMB_SCRIPT = """
import resource, sys
from murajax.errors import WeightsError
from murajax.models import keras_weights
keras_weights.backbone_shapes("vgg16")  # jax's own memory, before the limit
with open("/proc/self/status") as f:
    size = next(int(line.split()[1]) << 10 for line in f if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (size + (1 << 30), resource.RLIM_INFINITY))
try:
    keras_weights.load_keras_weights("vgg16", sys.argv[1])
except WeightsError as e:
    print("refused:", e)
"""


def test_loading_the_declared_8_gib_file_fits_in_one_gib_more(tmp_path):
    """As the issue tried it: address space limited to what the process uses plus 1 GiB,
    the loader refuses the file instead of failing with a MemoryError."""
    path = legacy_file(
        tmp_path / "bomb.h5",
        lambda g: (
            g.create_dataset("kernel:0", shape=HUGE, dtype="f4", chunks=(1 << 16,)),
            g.create_dataset("bias:0", shape=HUGE, dtype="f4", chunks=(1 << 16,)),
        ),
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    result = subprocess.run(
        [sys.executable, "-c", BOMB_SCRIPT, str(path)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("refused: vgg16 weights from"), result.stdout
    assert "(2147483648) in the file" in result.stdout


def _external_bias(tmp_path: Path, values: np.ndarray):
    raw = tmp_path / "elsewhere.bin"
    raw.write_bytes(values.tobytes())

    def weights(group):
        group.create_dataset("kernel:0", data=np.zeros((3, 3, 3, 64), "f4"))
        group.create_dataset(
            "bias:0", shape=values.shape, dtype="f4", external=[(str(raw), 0, values.nbytes)]
        )

    return weights


def _virtual_bias(tmp_path: Path, values: np.ndarray):
    source = tmp_path / "source.h5"
    with h5py.File(source, "w") as f:
        f.create_dataset("values", data=values)
    layout = h5py.VirtualLayout(shape=values.shape, dtype="f4")
    layout[:] = h5py.VirtualSource(str(source), "values", shape=values.shape)

    def weights(group):
        group.create_dataset("kernel:0", data=np.zeros((3, 3, 3, 64), "f4"))
        group.create_virtual_dataset("bias:0", layout)

    return weights


def _soft_link_bias(tmp_path: Path, values: np.ndarray):
    def weights(group):
        group.create_dataset("kernel:0", data=np.zeros((3, 3, 3, 64), "f4"))
        group.file.create_dataset("elsewhere", data=values)
        group["bias:0"] = h5py.SoftLink("/elsewhere")

    return weights


def _external_link_bias(tmp_path: Path, values: np.ndarray):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("values", data=values)

    def weights(group):
        group.create_dataset("kernel:0", data=np.zeros((3, 3, 3, 64), "f4"))
        group["bias:0"] = h5py.ExternalLink(str(other), "/values")

    return weights


@pytest.mark.parametrize(
    "make, what",
    [
        (_external_bias, "keeps its values in external files"),
        (_virtual_bias, "is a virtual dataset"),
        (_soft_link_bias, "is a soft link"),
        (_external_link_bias, "is an external link"),
    ],
    ids=["external_storage", "virtual", "soft_link", "external_link"],
)
def test_datasets_whose_values_come_from_elsewhere_are_refused(tmp_path, make, what):
    """Each makes the file's bias read another file's (or another dataset's) bytes; murajax
    refuses it in one line naming the file and the dataset, before any value is read."""
    values = np.arange(64, dtype="f4")
    path = legacy_file(tmp_path / "weights.h5", make(tmp_path, values))
    for load in (
        keras_weights.read_keras_h5,
        lambda p: keras_weights.load_keras_weights("vgg16", p),
    ):
        with pytest.raises(errors.WeightsError) as error:
            load(path)
        message = str(error.value)
        assert message.startswith(f"{path}: ") and what in message, message
        assert f"/{LAYER}/{LAYER}/bias:0" in message and "\n" not in message


def test_weights_that_are_not_floats_are_refused(tmp_path, vgg_spec):
    def weights(group):
        group.create_dataset("kernel:0", data=np.ones(vgg_spec["kernel"].shape, "i4"))
        group.create_dataset("bias:0", data=np.zeros(vgg_spec["bias"].shape, "f4"))

    path = legacy_file(tmp_path / "ints.h5", weights)
    with pytest.raises(errors.WeightsError, match=f"{LAYER}/kernel holds int32 values"):
        keras_weights.load_keras_weights("vgg16", path)


# --------------------------------------------------------------------------- images


def _peak_bytes(function, *args) -> tuple[object, int]:
    """`function(*args)` and the peak of Python's (and numpy's) allocations during it."""
    tracemalloc.start()
    try:
        result = function(*args)
    except Exception as e:  # noqa: BLE001  (returned to the test)
        result = e
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return result, peak


def test_a_large_file_that_is_no_image_is_refused_without_reading_it(tmp_path):
    path = tmp_path / "scan.png"
    with open(path, "wb") as f:  # 64 MiB of zeros, sparse on disk
        f.truncate(64 << 20)
    error, peak = _peak_bytes(image_files.read_gray, str(path))
    assert isinstance(error, image_files.UnreadableImage) and str(error) == "not an image"
    assert peak < 4 << 20, peak


def png_header_only(width: int, height: int, bit_depth: int = 16) -> bytes:
    """A grayscale PNG that declares width x height pixels and holds one row of them."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    row = b"\x00" + bytes(width * bit_depth // 8)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row, 9))
        + chunk(b"IEND", b"")
    )


def test_an_image_of_more_pixels_than_the_cap_is_skipped_with_a_warning_naming_it(tmp_path):
    """A 100 Mpx 16-bit PNG (would take 200 MB decoded, 1.8 GB through int64 maths) is
    refused from its header, before any pixel is decoded."""
    path = tmp_path / "study1" / "image1.png"
    path.parent.mkdir()
    path.write_bytes(png_header_only(10_000, 10_000))
    with pytest.raises(image_files.UnreadableImage, match="image of 10000x10000 pixels"):
        image_files.read_gray(str(path))
    warnings: list[str] = []
    assert list(predict.read_all([str(path)], warnings.append)) == []
    assert warnings == [
        f"skipped {path}: image of 10000x10000 pixels, more than the"
        f" {image_files.MAX_IMAGE_PIXELS} that murajax reads (image_files.MAX_IMAGE_PIXELS)"
    ]


def test_sixteen_bit_images_are_converted_in_their_own_integer_type(tmp_path):
    """A 4 Mpx 16-bit PNG (8 MB of pixels): the conversion's allocations stay within three
    times that (int64 maths took ten)."""
    rows = (np.arange(2000, dtype=np.uint32) * 32).astype(np.uint16)
    values = np.repeat(rows[:, None], 2000, axis=1)
    path = tmp_path / "sixteen.png"
    Image.fromarray(values).save(path)  # mode I;16, compresses to a few KB
    gray, peak = _peak_bytes(image_files.read_gray, str(path))
    np.testing.assert_array_equal(gray, (values >> 8).astype(np.uint8))
    assert peak < 3 * values.nbytes, (peak, values.nbytes)


SIXTEEN_BIT = [0, 1, 255, 256, 4095, 32768, 65280, 65535]
THIRTY_TWO_BIT = [-(1 << 20), -7, 0, 255, 256, 65535, 65536, 1 << 20]  # mode I: clipped


@pytest.mark.parametrize(
    "mode, values, dtype",
    [("I;16", SIXTEEN_BIT, "<u2"), ("I;16B", SIXTEEN_BIT, ">u2"), ("I", THIRTY_TWO_BIT, "<i4")],
)
def test_sixteen_bit_conversion_is_the_dataset_builders(mode, values, dtype):
    """The same 8-bit values as the `mura` builder's conversion, negatives and values over
    65535 (mode I) included."""
    array = np.array([values], dtype)
    image = Image.frombytes(mode, (len(values), 1), array.tobytes())
    expected = image_to_grayscale(image)
    np.testing.assert_array_equal(expected[0], np.clip(np.array(values) >> 8, 0, 255))
    np.testing.assert_array_equal(image_files.gray_of(image), expected)


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 5), 90, np.uint8)).save(path)


def test_symlinked_study_folders_are_followed_and_a_loop_is_walked_once(tmp_path):
    elsewhere = tmp_path / "elsewhere" / "XR_WRIST"
    _image(elsewhere / "patient1" / "study1_positive" / "image1.png")
    inputs = tmp_path / "in"
    _image(inputs / "XR_HAND" / "patient2" / "study1_negative" / "image1.png")
    (inputs / "XR_WRIST").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "patient1" / "back_to_the_top").symlink_to(inputs, target_is_directory=True)
    studies = image_files.collect_studies([str(inputs)])
    assert {os.path.relpath(s, inputs): len(f) for s, f in studies.items()} == {
        "XR_HAND/patient2/study1_negative": 1,
        "XR_WRIST/patient1/study1_positive": 1,
    }


def test_heatmaps_of_files_that_differ_only_in_extension_have_their_own_names(tmp_path):
    root, heat = str(tmp_path / "in"), str(tmp_path / "heat")
    names = {
        predict.heatmap_path(os.path.join(root, "s1", name), root, heat)
        for name in ("image1.png", "image1.jpg", "image1")
    }
    assert names == {
        os.path.join(heat, "s1", "image1.png_gradcam.png"),
        os.path.join(heat, "s1", "image1.jpg_gradcam.png"),
        os.path.join(heat, "s1", "image1_gradcam.png"),
    }


def test_outputs_inside_the_input_tree_are_not_inputs(tmp_path):
    inputs = tmp_path / "in"
    _image(inputs / "study1" / "image1.png")
    _image(inputs / "heat" / "study1" / "image1.png_gradcam.png")  # a previous run's
    (inputs / "predictions.csv").write_text("study,n_images\n")
    given = [str(inputs), str(inputs / "heat" / "study1" / "image1.png_gradcam.png")]
    skip = [str(inputs / "heat"), str(inputs / "predictions.csv")]
    assert image_files.collect_studies(given, skip=skip) == {
        str(inputs / "study1"): [str(inputs / "study1" / "image1.png")]
    }


# --------------------------------------------------------------------------- results page


EVIL_CONFIG = """
import pathlib
pathlib.Path({marker!r}).touch()  # what any code in a config file could do
from experiments.configs.pretrained import get_config, get_sweep
"""


@pytest.fixture
def foreign_sweep(tmp_path) -> tuple[str, Path, Path]:
    """A sweep folder whose sweep.json names a config file outside the project (a copy of
    pretrained.py that, when run, leaves a marker file): (folder, that file, the marker)."""
    marker = tmp_path / "config_ran"
    config = tmp_path / "elsewhere" / "pretrained.py"
    config.parent.mkdir()
    config.write_text(textwrap.dedent(EVIL_CONFIG.format(marker=str(marker))))
    folder = str(tmp_path / "sweep")
    spec = os.path.join(ROOT, "experiments/configs/pretrained.py")
    sweep.write_state(folder, str(config), sweep.load_sweep(spec).runs, {})
    return folder, config, marker


def test_the_results_page_runs_no_config_from_outside_the_project(foreign_sweep, tmp_path):
    folder, config, marker = foreign_sweep
    refusal = (
        f"{folder}/sweep.json names the config {config}, which is not one of murajax's sweep"
        f" configs in {results_page.CONFIGS_DIR}: the results page runs only those (config"
        " files are Python that runs)"
    )
    for entries in ([folder], [f"pretrained={folder}"]):
        with pytest.raises(errors.ConfigError) as error:
            results_page.assign_folders(entries)
        assert str(error.value) == refusal
    with pytest.raises(errors.ConfigError, match="not one of murajax's sweep configs"):
        results_page.write_page({"pretrained": folder}, str(tmp_path / "page.md"))
    assert results_page.missing_imagenet_files(str(config)) == []
    assert not marker.exists()
    assert not (tmp_path / "page.md").exists()


def test_the_command_refuses_a_foreign_config_in_one_line(foreign_sweep, tmp_path):
    folder, _, marker = foreign_sweep
    output = tmp_path / "page.md"
    result = subprocess.run(
        [sys.executable, "-m", "experiments.results", f"--sweeps={folder}", f"--output={output}"],
        cwd=ROOT,
        env={**os.environ, "MURAJAX_CACHE": str(tmp_path / "cache")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {folder}/sweep.json names"), lines
    assert not marker.exists() and not output.exists()


def test_the_projects_configs_are_found_from_any_folder(tmp_path, monkeypatch):
    own = os.path.join(results_page.CONFIGS_DIR, "baseline.py")
    monkeypatch.chdir(tmp_path)
    assert results_page.project_config("experiments/configs/baseline.py:smoke") == f"{own}:smoke"
    assert results_page.project_config(own) == own
    (tmp_path / "experiments" / "configs").mkdir(parents=True)  # another checkout's file
    (tmp_path / "experiments" / "configs" / "baseline.py").write_text("raise SystemExit")
    assert results_page.project_config("experiments/configs/baseline.py") == own
    assert results_page.project_config(str(tmp_path / "experiments/configs/baseline.py")) is None
    state = tmp_path / "sweep" / "sweep.json"
    state.parent.mkdir()
    state.write_text(json.dumps({"config": "experiments/configs/baseline.py:smoke"}))
    assert results_page.sweep_config(str(state.parent)) == "experiments/configs/baseline.py:smoke"
