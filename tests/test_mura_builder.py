"""Tests of the `mura` TFDS builder over the fake MURA-v1.1 tree in `tfds_mura/mura/dummy_data`.

Each quirk of real MURA trees (PNG modes, 16-bit, junk files, zip) and each way a tree can be
broken has a test; a failed build must name the offending file or study and leave no dataset.
"""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import tfds_mura  # noqa: F401  (registers `mura`)
from tfds_mura.features import BODY_PARTS, LABEL_NAMES
from tfds_mura.mura import make_dummy_data as dummy
from tfds_mura.mura import mura_dataset_builder as mura

DUMMY = Path(mura.__file__).parent / "dummy_data"
ROOT = "MURA-v1.1"
N_TRAIN = sum(image.split == "train" for image in dummy.IMAGES)
N_VALID = sum(image.split == "valid" for image in dummy.IMAGES)


# ----------------------------------------------------------------------------- helpers


def build(manual_dir: Path, data_dir: Path) -> tfds.core.DatasetBuilder:
    """Builds `mura` from `manual_dir` into `data_dir` as array_record; returns the builder."""
    builder = tfds.builder("mura", data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
    )
    return builder


def read_all(data_dir: Path) -> dict[str, dict[str, dict]]:
    """Reads a built `mura` with `tfds.data_source`: {split: {image_path: example}}."""
    sources = tfds.data_source("mura", data_dir=data_dir)
    out = {}
    for split in ("train", "validation"):
        examples = [sources[split][i] for i in range(len(sources[split]))]
        out[split] = {ex["image_path"].decode(): ex for ex in examples}
    return out


def copy_dummy(tmp_path: Path) -> Path:
    """Copies dummy_data to `tmp_path/manual` and returns that manual dir."""
    return Path(shutil.copytree(DUMMY, tmp_path / "manual"))


def zip_tree(manual_dir: Path, zip_path: Path, extra: dict[str, bytes] | None = None) -> None:
    """Zips `manual_dir/MURA-v1.1` as `zip_path`, plus Mac junk (`__MACOSX/`) and `extra`."""
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted((manual_dir / ROOT).rglob("*")):
            zf.write(path, path.relative_to(manual_dir).as_posix())
        zf.writestr(f"__MACOSX/{ROOT}/._train_image_paths.csv", b"\x00\x05\x16\x07junk")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)


def csv_path(manual_dir: Path, name: str) -> Path:
    return manual_dir / ROOT / name


def assert_build_fails(
    manual_dir: Path, data_dir: Path, *fragments: str, error: type = mura.MuraFormatError
) -> str:
    """Builds, expects `error` with a one-line message holding every fragment, and no dataset."""
    with pytest.raises(error) as info:
        build(manual_dir, data_dir)
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    builder = tfds.builder("mura", data_dir=data_dir, file_format="array_record")
    assert not builder.is_prepared()
    assert not (data_dir / "mura" / "1.1.0").exists()
    assert not list((data_dir / "mura").glob("*1.1.0*")), "left a temporary dataset behind"
    return message


def png_bytes(width: int, height: int, bit_depth: int, color_type: int, rows: list[bytes]) -> bytes:
    """A minimal PNG written by hand (Pillow cannot write 16-bit RGB)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    raw = b"".join(b"\x00" + row for row in rows)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def decode_png(data: bytes, as_rgba: bool = False) -> tuple[str, np.ndarray]:
    """Returns a PNG's mode and pixels (palette images as RGBA when `as_rgba`)."""
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        pixels = image.convert("RGBA") if as_rgba and image.mode == "P" else image
        return image.mode, np.asarray(pixels)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, dict[str, dict]]:
    """`mura` built once from dummy_data (folder) and read back without TensorFlow."""
    data_dir = tmp_path_factory.mktemp("data")
    build(DUMMY, data_dir)
    return read_all(data_dir)


# ----------------------------------------------------------------------------- TFDS test case

try:
    import tensorflow  # noqa: F401

    _HAVE_TF = True
except ImportError:  # pragma: no cover - TF is in the dev extra
    _HAVE_TF = False

if _HAVE_TF:

    class MuraDatasetBuilderTest(tfds.testing.DatasetBuilderTestCase):
        """TFDS's own checks (registration, info, as_dataset, counts) over dummy_data."""

        DATASET_CLASS = mura.Builder
        SPLITS = {"train": N_TRAIN, "validation": N_VALID}
        SKIP_CHECKSUMS = True


# ----------------------------------------------------------------------------- good tree


def test_builder_metadata():
    builder = mura.Builder(data_dir="/tmp/unused")
    assert builder.name == "mura"
    assert str(builder.version) == "1.1.0"
    assert "1.1.0" in builder.RELEASE_NOTES
    assert "https://stanfordmlgroup.github.io/competitions/mura/" in (
        builder.MANUAL_DOWNLOAD_INSTRUCTIONS
    )
    assert builder.info.features.to_json() == tfds_mura.mura_features().to_json()
    assert "1712.06957" in builder.info.citation
    assert "36,808" in builder.info.description
    assert builder.info.supervised_keys == ("image", "label")


def test_splits_counts_and_ids(built):
    assert len(built["train"]) == 9 == N_TRAIN
    assert len(built["validation"]) == 5 == N_VALID
    train, valid = built["train"].values(), built["validation"].values()
    assert len({ex["study_id"] for ex in train}) == 7
    assert len({ex["study_id"] for ex in valid}) == 4
    assert len({ex["patient_id"] for ex in train}) == 4
    assert len({ex["patient_id"] for ex in valid}) == 3
    assert {ex["image_path"].decode().split("/")[1] for ex in train} == {"train"}
    assert {ex["image_path"].decode().split("/")[1] for ex in valid} == {"valid"}


def test_example_fields(built):
    path = f"{ROOT}/train/XR_WRIST/patient00001/study1_positive/image2.png"
    ex = built["train"][path]
    assert ex["image_path"].decode() == path
    assert ex["study_id"].decode() == "train/XR_WRIST/patient00001/study1_positive"
    assert ex["patient_id"] == 1
    assert BODY_PARTS[ex["body_part"]] == "XR_WRIST"
    ex = built["validation"][f"{ROOT}/valid/XR_FOREARM/patient11186/study2_positive/image1.png"]
    assert ex["patient_id"] == 11186
    assert BODY_PARTS[ex["body_part"]] == "XR_FOREARM"


def test_study_ids_unique_where_study_numbers_repeat(built):
    # patient00004 has a study1 in XR_SHOULDER and in XR_FINGER.
    ids = {
        ex["study_id"].decode()
        for ex in built["train"].values()
        if ex["patient_id"] == 4 and "study1" in ex["study_id"].decode()
    }
    assert ids == {
        "train/XR_SHOULDER/patient00004/study1_positive",
        "train/XR_FINGER/patient00004/study1_negative",
    }
    every = [ex["study_id"] for split in built.values() for ex in split.values()]
    by_folder = {ex["image_path"].rsplit(b"/", 1)[0] for s in built.values() for ex in s.values()}
    assert len(set(every)) == len(by_folder) == 11


def test_label_mapping_one_is_abnormal(built):
    """MURA's 1 / `_positive` is `abnormal` (label 1); public code has shipped this inverted."""
    assert LABEL_NAMES == ("normal", "abnormal")
    label = mura.Builder(data_dir="/tmp/unused").info.features["label"]
    assert label.str2int("abnormal") == 1 and label.str2int("normal") == 0
    positive = built["train"][f"{ROOT}/train/XR_HAND/patient00003/study1_positive/image1.png"]
    negative = built["train"][f"{ROOT}/train/XR_ELBOW/patient00002/study1_negative/image1.png"]
    assert positive["label"] == 1 and label.int2str(positive["label"]) == "abnormal"
    assert negative["label"] == 0 and label.int2str(negative["label"]) == "normal"
    csv_labels = {}
    for split in ("train", "valid"):
        for line in csv_path(DUMMY, f"{split}_labeled_studies.csv").read_text().splitlines():
            study, value = line.rsplit(",", 1)
            csv_labels[study.removeprefix(f"{ROOT}/").rstrip("/")] = int(value)
    for split in built.values():
        for ex in split.values():
            study = ex["study_id"].decode()
            assert ex["label"] == csv_labels[study] == int(study.endswith("_positive"))


def test_every_png_mode_becomes_the_right_grayscale(built):
    """dummy_data stores each image in another mode; all must decode to the same grey levels."""
    assert {image.mode for image in dummy.IMAGES} >= {"L", "RGB", "RGBA", "LA", "P", "I;16"}
    for index, image in enumerate(dummy.IMAGES):
        with Image.open(DUMMY / image.path) as source:
            assert source.mode == image.mode  # the file really is stored in that mode
        split = "train" if image.split == "train" else "validation"
        got = built[split][image.path]["image"]
        assert got.dtype == np.uint8 and got.shape == (image.height, image.width, 1)
        np.testing.assert_array_equal(got[..., 0], dummy.expected_gray(index), err_msg=image.path)


def test_junk_files_are_ignored(built):
    junk = [path for path in DUMMY.rglob("*") if path.is_file() and path.name.startswith(".")]
    assert {p.name for p in junk} == {".DS_Store", "._image1.png", "._image2.png"}
    paths = [p for split in built.values() for p in split]
    assert len(paths) == len(dummy.IMAGES)
    assert not any("/." in path for path in paths)


def test_zip_gives_the_same_examples_as_the_folder(built, tmp_path):
    manual = tmp_path / "zipped"
    manual.mkdir()
    zip_tree(DUMMY, manual / "MURA-v1.1.zip")
    build(manual, tmp_path / "data")
    from_zip = read_all(tmp_path / "data")
    assert from_zip.keys() == built.keys()
    for split, examples in built.items():
        assert from_zip[split].keys() == examples.keys()
        for path, ex in examples.items():
            other = from_zip[split][path]
            assert other.keys() == ex.keys()
            for key in ex:
                np.testing.assert_array_equal(other[key], ex[key], err_msg=f"{path} {key}")


def test_array_record_build_reads_with_data_source(tmp_path):
    """The no-TensorFlow path: array_record files read by `tfds.data_source`."""
    builder = build(DUMMY, tmp_path)
    assert builder.is_prepared()
    assert list((tmp_path / "mura" / "1.1.0").glob("mura-train.array_record*"))
    source = tfds.data_source("mura", data_dir=tmp_path, split="validation")
    assert len(source) == N_VALID
    example = source[0]
    assert example["image"].dtype == np.uint8 and example["image"].shape[-1] == 1


def test_dummy_data_is_what_the_script_writes(tmp_path):
    dummy.write(tmp_path)
    committed = sorted(p.relative_to(DUMMY) for p in DUMMY.rglob("*") if p.is_file())
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert committed == written
    for rel in committed:
        if rel.suffix == ".png" and not rel.name.startswith("."):
            mode, pixels = decode_png((DUMMY / rel).read_bytes(), as_rgba=True)
            new_mode, new_pixels = decode_png((tmp_path / rel).read_bytes(), as_rgba=True)
            assert mode == new_mode, rel
            np.testing.assert_array_equal(pixels, new_pixels, err_msg=str(rel))
        else:
            assert (DUMMY / rel).read_bytes() == (tmp_path / rel).read_bytes(), rel
    assert sum((DUMMY / rel).stat().st_size for rel in committed) < 100_000


# ----------------------------------------------------------------------------- pure functions


def gray_of(image: Image.Image) -> np.ndarray:
    return mura.image_to_grayscale(image)


def test_grayscale_l_and_1():
    values = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    np.testing.assert_array_equal(gray_of(Image.fromarray(values, mode="L")), values)
    bits = Image.fromarray(np.array([[0, 255]], dtype=np.uint8)).convert("1")
    np.testing.assert_array_equal(gray_of(bits), [[0, 255]])


def test_grayscale_rgb_is_luma_and_exact_for_grey():
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [77, 77, 77]]], dtype=np.uint8)
    # ITU-R 601-2: L = 0.299 R + 0.587 G + 0.114 B; grey stays grey.
    np.testing.assert_array_equal(gray_of(Image.fromarray(rgb, mode="RGB")), [[76, 150, 29, 77]])


def test_grayscale_drops_alpha():
    rgba = np.array([[[10, 10, 10, 0], [200, 200, 200, 128], [99, 99, 99, 255]]], dtype=np.uint8)
    np.testing.assert_array_equal(gray_of(Image.fromarray(rgba, mode="RGBA")), [[10, 200, 99]])
    la = np.array([[[10, 0], [200, 128], [99, 255]]], dtype=np.uint8)
    np.testing.assert_array_equal(gray_of(Image.fromarray(la, mode="LA")), [[10, 200, 99]])


def test_grayscale_palette_uses_the_palette_not_the_indices():
    image = Image.fromarray(np.array([[0, 1, 2]], dtype=np.uint8), mode="P")
    image.putpalette([250, 250, 250, 0, 0, 0, 255, 0, 0])
    np.testing.assert_array_equal(gray_of(image), [[250, 0, 76]])
    image.info["transparency"] = 0
    np.testing.assert_array_equal(gray_of(image), [[250, 0, 76]])


SIXTEEN = np.array([[0, 255, 256, 0x7FFF, 0x8000, 0x80FF, 0xFF00, 0xFFFF]], dtype=np.uint16)
SCALED = [[0, 0, 1, 127, 128, 128, 255, 255]]  # value >> 8: scaled, not clipped


def test_16_bit_grayscale_is_scaled_not_clipped():
    image = Image.fromarray(SIXTEEN)
    assert image.mode == "I;16"
    np.testing.assert_array_equal(gray_of(image), SCALED)
    np.testing.assert_array_equal(gray_of(image.convert("I")), SCALED)
    clipped = Image.fromarray(np.array([[-5, 70000]], dtype=np.int32), mode="I")
    np.testing.assert_array_equal(gray_of(clipped), [[0, 255]])


def test_16_bit_png_files_scale_like_pillow_16_bit_rgb():
    row = b"".join(struct.pack(">H", int(v)) for v in SIXTEEN[0])
    mode, gray = decode_png(mura.to_grayscale_png(png_bytes(8, 1, 16, 0, [row]), "g16.png"))
    assert mode == "L"
    np.testing.assert_array_equal(gray, SCALED)
    rgb_row = b"".join(struct.pack(">HHH", int(v), int(v), int(v)) for v in SIXTEEN[0])
    _, gray = decode_png(mura.to_grayscale_png(png_bytes(8, 1, 16, 2, [rgb_row]), "rgb48.png"))
    np.testing.assert_array_equal(gray, SCALED)


def test_to_grayscale_png_output_is_8_bit_grayscale_png():
    buffer = io.BytesIO()
    Image.fromarray(np.full((5, 7, 3), 9, dtype=np.uint8)).save(buffer, format="PNG")
    mode, gray = decode_png(mura.to_grayscale_png(buffer.getvalue(), "x.png"))
    assert mode == "L" and gray.shape == (5, 7) and (gray == 9).all()


@pytest.mark.parametrize("data", [b"", b"not a png", None], ids=["empty", "garbage", "truncated"])
def test_to_grayscale_png_rejects_unreadable_data(data):
    if data is None:
        data = (DUMMY / dummy.IMAGES[6].path).read_bytes()
        data = data[: len(data) // 2]
    with pytest.raises(mura.MuraFormatError, match=r"^bad/image1\.png: unreadable image"):
        mura.to_grayscale_png(data, "bad/image1.png")


def test_parse_rows():
    study = mura.parse_study_row(
        [f"{ROOT}/valid/XR_ELBOW/patient11189/study3_positive/", "1"], "valid", "f:1"
    )
    assert study == mura.StudyRow("valid/XR_ELBOW/patient11189/study3_positive", 1)
    image = mura.parse_image_row(
        [f"{ROOT}/train/XR_HUMERUS/patient00120/study2_negative/image3.png"], "train", "f:1"
    )
    assert image == mura.ImageRow(
        image_path=f"{ROOT}/train/XR_HUMERUS/patient00120/study2_negative/image3.png",
        split_dir="train",
        body_part="XR_HUMERUS",
        patient_id=120,
        study_id="train/XR_HUMERUS/patient00120/study2_negative",
        folder_label=0,
    )


def test_read_csv_rows_skips_blank_lines_and_handles_crlf_and_bom():
    data = "\ufeffa,1\r\n\r\nb,0\r\n".encode()
    assert list(mura.read_csv_rows(data, "s.csv")) == [
        ("s.csv:1", ["a", "1"]),
        ("s.csv:3", ["b", "0"]),
    ]


@pytest.mark.parametrize(
    "path",
    ["/etc/passwd", "MURA-v1.1/train/../../../etc/passwd", "..\\secret.png", "C:/x.png"],
)
def test_check_relative_path_rejects_escapes(path):
    with pytest.raises(mura.MuraFormatError, match="escapes the manual dir"):
        mura.check_relative_path(path, "f.csv:3")


# ----------------------------------------------------------------------------- bad trees

WRIST = f"{ROOT}/train/XR_WRIST/patient00001/study1_positive"
HAND_IMAGE = f"{ROOT}/train/XR_HAND/patient00003/study1_positive/image1.png"


def test_missing_image_names_it(tmp_path):
    manual = copy_dummy(tmp_path)
    (manual / HAND_IMAGE).unlink()
    assert_build_fails(manual, tmp_path / "data", HAND_IMAGE, "train_image_paths.csv", "not found")


def test_truncated_png_names_it(tmp_path):
    manual = copy_dummy(tmp_path)
    data = (manual / HAND_IMAGE).read_bytes()
    (manual / HAND_IMAGE).write_bytes(data[: len(data) // 2])
    assert_build_fails(manual, tmp_path / "data", HAND_IMAGE, "unreadable image")


def test_dot_dot_path_names_the_row(tmp_path):
    manual = copy_dummy(tmp_path)
    with csv_path(manual, "valid_image_paths.csv").open("a") as f:
        f.write(f"{ROOT}/valid/XR_WRIST/../../../../outside.png\n")
    assert_build_fails(
        manual, tmp_path / "data", "valid_image_paths.csv:6", "outside.png", "escapes"
    )


def test_absolute_path_names_the_row(tmp_path):
    manual = copy_dummy(tmp_path)
    with csv_path(manual, "train_labeled_studies.csv").open("a") as f:
        f.write("/etc/passwd/,1\n")
    assert_build_fails(manual, tmp_path / "data", "train_labeled_studies.csv:8", "/etc/passwd")


STUDIES, IMAGES = "train_labeled_studies.csv", "train_image_paths.csv"
HAND9 = f"{ROOT}/train/XR_HAND/patient00009/study1_positive"
MALFORMED = {
    "3-fields": (STUDIES, f"{WRIST}/,1,extra", "expected 2 fields"),
    "1-field": (STUDIES, f"{WRIST}/", "expected 2 fields"),
    "label-2": (STUDIES, f"{HAND9}/,2", "0 or 1"),
    "label-empty": (STUDIES, f"{HAND9}/,", "0 or 1"),
    "body-part": (STUDIES, f"{HAND9.replace('XR_HAND', 'XR_KNEE')}/,1", "XR_KNEE"),
    "2-fields": (IMAGES, f"{WRIST}/image1.png,1", "expected 1 field"),
    "wrong-split": (IMAGES, HAND_IMAGE.replace("/train/", "/valid/"), "does not match"),
    "layout": (IMAGES, f"{ROOT}/train/XR_HAND/patient3/study1/image1.png", "does not match"),
    "no-root": (IMAGES, HAND_IMAGE.removeprefix(f"{ROOT}/"), "does not match"),
    "jpg": (IMAGES, f"{WRIST}/image1.jpg", "image1.jpg"),
    "quote": ("valid_labeled_studies.csv", f'"{ROOT}/valid/unclosed,1', "malformed CSV"),
}


@pytest.mark.parametrize(("csv_name", "row", "fragment"), MALFORMED.values(), ids=MALFORMED)
def test_malformed_row_names_the_file_and_line(tmp_path, csv_name, row, fragment):
    manual = copy_dummy(tmp_path)
    path = csv_path(manual, csv_name)
    line = len(path.read_text().splitlines()) + 1
    path.write_text(path.read_text() + row + "\n")
    assert_build_fails(manual, tmp_path / "data", f"{csv_name}:{line}", fragment)


def test_label_disagreeing_with_folder_names_the_study(tmp_path):
    manual = copy_dummy(tmp_path)
    path = csv_path(manual, "train_labeled_studies.csv")
    path.write_text(path.read_text().replace(f"{WRIST}/,1", f"{WRIST}/,0"))
    message = assert_build_fails(
        manual, tmp_path / "data", "train/XR_WRIST/patient00001/study1_positive", "positive"
    )
    assert "train_labeled_studies.csv:1" in message


def test_image_of_unlabelled_study_names_image_and_study(tmp_path):
    manual = copy_dummy(tmp_path)
    path = csv_path(manual, "valid_labeled_studies.csv")
    study = f"{ROOT}/valid/XR_FOREARM/patient11186/study2_positive/"
    path.write_text(path.read_text().replace(f"{study},1\n", ""))
    assert_build_fails(
        manual,
        tmp_path / "data",
        f"{study}image1.png",
        "valid/XR_FOREARM/patient11186/study2_positive",
        "valid_labeled_studies.csv",
    )


def test_duplicate_rows_are_errors(tmp_path):
    manual = copy_dummy(tmp_path)
    path = csv_path(manual, "train_image_paths.csv")
    path.write_text(path.read_text() + HAND_IMAGE + "\n")
    assert_build_fails(manual, tmp_path / "data", HAND_IMAGE, "listed twice")


def test_missing_csv_names_it(tmp_path):
    manual = copy_dummy(tmp_path)
    csv_path(manual, "valid_image_paths.csv").unlink()
    assert_build_fails(manual, tmp_path / "data", "valid_image_paths.csv", "not found")


@pytest.mark.parametrize("kind", ["absent", "empty", "wrong-content"])
def test_missing_manual_download_says_what_where_and_from_where(tmp_path, kind):
    manual = tmp_path / "manual"
    if kind != "absent":
        manual.mkdir()
    if kind == "wrong-content":
        (manual / "MURA-v1.0.zip").write_bytes(b"")
    message = assert_build_fails(
        manual,
        tmp_path / "data",
        "https://stanfordmlgroup.github.io/competitions/mura/",
        "MURA-v1.1.zip",
        "MURA-v1.1/",
        str(manual),
        error=mura.MuraManualDownloadError,
    )
    assert message.startswith("MURA not found")


def test_zip_missing_member_names_it(tmp_path):
    source = copy_dummy(tmp_path)
    (source / HAND_IMAGE).unlink()
    manual = tmp_path / "zipped"
    manual.mkdir()
    zip_tree(source, manual / "MURA-v1.1.zip")
    assert_build_fails(manual, tmp_path / "data", HAND_IMAGE, "MURA-v1.1.zip")


def test_zip_truncated_png_names_it(tmp_path):
    source = copy_dummy(tmp_path)
    data = (source / HAND_IMAGE).read_bytes()
    (source / HAND_IMAGE).write_bytes(data[:40])
    manual = tmp_path / "zipped"
    manual.mkdir()
    zip_tree(source, manual / "MURA-v1.1.zip")
    assert_build_fails(manual, tmp_path / "data", HAND_IMAGE, "unreadable image")


def test_corrupt_zip_names_it(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "MURA-v1.1.zip").write_bytes(b"PK\x03\x04 this is not a zip")
    assert_build_fails(manual, tmp_path / "data", "MURA-v1.1.zip", "not a readable zip")


# ----------------------------------------------------------------------------- `tfds build`


def test_tfds_build_command_builds_the_same_dataset(built, tmp_path):
    """The dataset card's command, `cd tfds_mura/mura && tfds build --manual_dir=M ...`, with
    the dev extra's pinned TFDS command line (the `tfds-cli` extra), gives the examples that
    `download_and_prepare` gives."""
    tfds_command = Path(sys.executable).with_name("tfds")
    assert tfds_command.exists(), "the `tfds` command is installed with tensorflow-datasets"
    data_dir = tmp_path / "data"
    result = subprocess.run(
        [
            str(tfds_command),
            "build",
            f"--manual_dir={DUMMY}",
            f"--data_dir={data_dir}",
            "--file_format=array_record",
        ],
        cwd=DUMMY.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    from_command = read_all(data_dir)
    for split in ("train", "validation"):
        assert from_command[split].keys() == built[split].keys()
        for path, example in built[split].items():
            for key in ("image", "label", "body_part", "patient_id", "study_id"):
                np.testing.assert_array_equal(from_command[split][path][key], example[key])
