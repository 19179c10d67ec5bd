"""Files murajax reads, crafted to hurt: Keras `.h5` files that declare huge datasets or keep
their bytes elsewhere (issue 19, 8)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from murajax import errors
from murajax.models import keras_weights

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
