"""Tests of the `image_folder` TFDS builder: your own images as a folder tree or a CSV manifest.

Tiny trees are written into tmp_path with Pillow (and pydicom for DICOM); every build reads
back through `as_data_source` (no TensorFlow). Each way a source can be wrong is refused in one
line that names the file, CSV line or value.
"""

from __future__ import annotations

import io
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, generate_uid

import tfds_mura  # noqa: F401  (registers `image_folder`)
from murajax.config import DataConfig
from murajax.data import sources
from murajax.errors import DataError
from tfds_mura.image_folder import image_folder_dataset_builder as folder
from tfds_mura.image_folder.image_folder_dataset_builder import ImageFolderError

# ----------------------------------------------------------------------------- helpers


def pixels(seed: int, shape: tuple[int, int] = (6, 5)) -> np.ndarray:
    """A small 8-bit image, different for every seed."""
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def write_png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    """Writes `array` as a PNG (8-bit L, RGB, or 16-bit with mode `I;16`), making folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path, format="PNG")
    return path


def write_dicom(
    path: Path,
    stored: np.ndarray,
    photometric: str = "MONOCHROME2",
    compressed: bool = False,
    **elements,
) -> Path:
    """Writes an uncompressed 16-bit DICOM file (or, with `compressed`, a JPEG-LS one whose
    data no installed pydicom plugin decodes) with the given extra elements."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGLSLossless if compressed else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if compressed:
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7 not really JPEG-LS"])
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = stored.astype("<u2").tobytes()
    for name, value in elements.items():
        setattr(ds, name, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_manifest(path: Path, rows: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n")
    return path


def build(data_dir: Path, **source) -> tfds.core.DatasetBuilder:
    """Builds `image_folder` from `root=` or `manifest=` into `data_dir`; returns the builder."""
    builder = tfds.builder("image_folder", data_dir=data_dir, file_format="array_record", **source)
    builder.download_and_prepare()
    return builder


def read(builder: tfds.core.DatasetBuilder) -> dict[str, dict[str, dict]]:
    """{split: {image_path: example}} of a prepared builder, read without TensorFlow."""
    out = {}
    for split, source in builder.as_data_source().items():
        examples = [source[i] for i in range(len(source))]
        out[split] = {ex["image_path"].decode(): ex for ex in examples}
    return out


def refused(*fragments: str, **source) -> str:
    """Lists a source, expects a one-line `ImageFolderError` holding every fragment."""
    with pytest.raises(ImageFolderError) as info:
        folder.scan(**source)
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def two_split_tree(root: Path, labels=("normal", "abnormal")) -> Path:
    """ROOT/{train,valid}/<label>/<split><label>_s1/image1.png: the smallest valid tree."""
    for split in ("train", "valid"):
        for i, label in enumerate(labels):
            write_png(root / split / label / f"{split}{i}_s1" / "image1.png", pixels(i))
    return root


# ---------------------------------------------------------- a 3-class tree with groups

# (split folder, label, group, study folder, file) -> pixels seed
TREE = {
    ("train", "normal", "XR_WRIST", "p1_s1", "image1.png"): 1,
    ("train", "normal", "XR_WRIST", "p1_s1", "image2.png"): 2,
    ("train", "fracture", "XR_ELBOW", "p1_s2", "image1.png"): 3,
    ("train", "implant", "XR_WRIST", "p2_s1", "image1.png"): 4,
    ("train", "implant", "XR_ELBOW", "nounderscore", "image1.png"): 5,
    ("valid", "fracture", "XR_WRIST", "p3_s1", "image1.png"): 6,
    ("valid", "normal", "XR_ELBOW", "p4_x_s1", "image1.png"): 7,
}


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("own") / "radiographs"
    for parts, seed in TREE.items():
        write_png(root.joinpath(*parts), pixels(seed))
    # An RGB PNG (grey, so luma is exact) and junk that is skipped.
    write_png(
        root / "train/normal/XR_ELBOW/p5_s1/rgb.png", np.repeat(pixels(8)[..., None], 3, axis=2)
    )
    (root / "train/normal/XR_ELBOW/p5_s1/.DS_Store").write_bytes(b"junk")
    (root / "train/normal/XR_ELBOW/p5_s1/Thumbs.db").write_bytes(b"junk")
    (root / "README.txt").write_text("files beside the split folders are not read")
    return root


@pytest.fixture(scope="module")
def built(tree, tmp_path_factory) -> tuple[tfds.core.DatasetBuilder, dict]:
    data_dir = tmp_path_factory.mktemp("tfds")
    builder = build(data_dir, root=str(tree))
    return builder, read(builder)


def test_tree_labels_groups_patients_and_studies(built):
    builder, examples = built
    features = builder.info.features
    # "normal" first, the rest in natural order; groups in natural order.
    assert features["label"].names == ["normal", "fracture", "implant"]
    assert features["group"].names == ["XR_ELBOW", "XR_WRIST"]
    assert set(features.keys()) == {
        "image",
        "label",
        "group",
        "patient_id",
        "study_id",
        "image_path",
    }
    assert {s: len(e) for s, e in examples.items()} == {"train": 6, "validation": 2}
    ex = examples["train"]["train/normal/XR_WRIST/p1_s1/image2.png"]
    assert ex["label"] == 0 and ex["group"] == 1
    assert ex["study_id"] == b"train/normal/XR_WRIST/p1_s1"
    # Patients: sorted names numbered from 1: p1, p2, p3, p4_x, p5, then the study without an
    # underscore, named by its study_id.
    names = ["p1", "p2", "p3", "p4_x", "p5", "train/implant/XR_ELBOW/nounderscore"]
    expected = {n: i for i, n in enumerate(sorted(names), 1)}
    patient = {
        path: int(ex["patient_id"]) for split in examples.values() for path, ex in split.items()
    }
    assert patient["train/normal/XR_WRIST/p1_s1/image1.png"] == expected["p1"]
    assert patient["train/fracture/XR_ELBOW/p1_s2/image1.png"] == expected["p1"]  # two studies
    assert patient["valid/normal/XR_ELBOW/p4_x_s1/image1.png"] == expected["p4_x"]  # last _
    assert patient["train/implant/XR_ELBOW/nounderscore/image1.png"] == expected[names[-1]]
    valid = examples["validation"]["valid/fracture/XR_WRIST/p3_s1/image1.png"]
    assert valid["label"] == 1 and valid["study_id"] == b"valid/fracture/XR_WRIST/p3_s1"


def test_tree_images_are_pixel_exact_8_bit_grayscale(built):
    _, examples = built
    for (split, *rest), seed in TREE.items():
        tfds_split = "train" if split == "train" else "validation"
        image = examples[tfds_split]["/".join((split, *rest))]["image"]
        assert image.dtype == np.uint8 and image.shape == (6, 5, 1)
        np.testing.assert_array_equal(image[..., 0], pixels(seed))
    rgb = examples["train"]["train/normal/XR_ELBOW/p5_s1/rgb.png"]["image"]
    np.testing.assert_array_equal(rgb[..., 0], pixels(8))


def test_reopening_gives_the_same_dataset_and_data_source_works(built, tree):
    builder, examples = built
    again = tfds.builder("image_folder", data_dir=builder.data_dir_root, root=str(tree))
    assert again.is_prepared() and again.data_dir == builder.data_dir
    assert again.info.features.to_json() == builder.info.features.to_json()
    ds = tfds.data_source(
        "image_folder", data_dir=builder.data_dir_root, builder_kwargs={"root": str(tree)}
    )
    assert len(ds["train"]) == len(examples["train"])
    # grain workers receive the sources pickled.
    source = pickle.loads(pickle.dumps(ds["validation"]))
    assert {source[i]["image_path"].decode() for i in range(len(source))} == set(
        examples["validation"]
    )
    assert pickle.loads(pickle.dumps(again)).is_prepared()


def test_config_name_is_the_folder_and_a_fingerprint(built, tree):
    builder, _ = built
    name = builder.builder_config.name
    assert name.startswith("radiographs-") and len(name) == len("radiographs-") + 10
    assert folder.config_name(folder.scan(root=str(tree))) == name


# ------------------------------------------------------------------------ other layouts


def test_tree_without_groups_and_one_image_per_study(tmp_path):
    root = tmp_path / "flat"
    write_png(root / "train/normal/a.png", pixels(1))
    write_png(root / "train/abnormal/b.png", pixels(2))
    write_png(root / "validation/abnormal/c.png", pixels(3))
    builder = build(tmp_path / "tfds", root=str(root))
    assert "group" not in builder.info.features
    examples = read(builder)
    a = examples["train"]["train/normal/a.png"]
    assert a["study_id"] == b"train/normal/a.png" and a["label"] == 0
    assert examples["validation"]["validation/abnormal/c.png"]["label"] == 1
    patients = {int(e["patient_id"]) for s in examples.values() for e in s.values()}
    assert patients == {1, 2, 3}  # each image its own study and patient


def test_labels_txt_fixes_the_order(tmp_path):
    root = two_split_tree(tmp_path / "own", labels=("normal", "abnormal"))
    (root / "labels.txt").write_text("abnormal\nnormal\nunseen\n")
    listing = folder.scan(root=str(root))
    assert listing.label_names == ("abnormal", "normal", "unseen")
    (root / "labels.txt").write_text("abnormal\n")
    refused("unknown label 'normal'", "'abnormal'", "labels.txt", root=str(root))


def test_label_order_without_labels_txt():
    assert folder.order_labels(["10", "2", "1"]) == ("1", "2", "10")
    assert folder.order_labels(["abnormal", "Normal"]) == ("Normal", "abnormal")
    assert folder.order_labels(["grade10", "grade2", "b", "A"]) == ("A", "b", "grade2", "grade10")


def test_jpeg_and_rgb_jpeg(tmp_path):
    gray = np.full((8, 8), 100, np.uint8)
    path = tmp_path / "a.jpg"
    Image.fromarray(gray).save(path, format="JPEG", quality=95)
    np.testing.assert_allclose(folder.read_gray(str(path), "a.jpg"), gray, atol=1)
    rgb = tmp_path / "b.jpeg"
    Image.fromarray(np.full((8, 8, 3), (200, 50, 10), np.uint8)).save(rgb, format="JPEG")
    luma = 200 * 0.299 + 50 * 0.587 + 10 * 0.114
    np.testing.assert_allclose(folder.read_gray(str(rgb), "b.jpeg"), luma, atol=3)


def test_16_bit_png_scales_from_its_own_min_to_max(tmp_path):
    values = (1000 + 37 * np.arange(256)).astype(np.uint16).reshape(16, 16)  # 1000 .. 10435
    path = write_png(tmp_path / "a.png", values, mode="I;16")
    gray = folder.read_gray(str(path), "a.png")
    np.testing.assert_array_equal(gray, np.arange(256, dtype=np.uint8).reshape(16, 16))
    constant = write_png(tmp_path / "c.png", np.full((4, 4), 5000, np.uint16), mode="I;16")
    np.testing.assert_array_equal(folder.read_gray(str(constant), "c.png"), 0)


# ----------------------------------------------------------------------------------- DICOM

STORED = np.array([[0, 100, 200], [300, 400, 60000]], np.uint16)


def test_dicom_rescale_then_first_window(tmp_path):
    # Rescaled: -100, 100, 300, 500, 700, 119900. LINEAR window c=428, w=256 gives x - 300.
    path = write_dicom(
        tmp_path / "a.dcm",
        STORED,
        RescaleSlope=2,
        RescaleIntercept=-100,
        WindowCenter=[428, 40],
        WindowWidth=[256, 80],
    )
    gray = folder.read_gray(str(path), "a.dcm")
    np.testing.assert_array_equal(gray, [[0, 0, 0], [200, 255, 255]])


def test_dicom_without_window_uses_min_to_max(tmp_path):
    stored = np.array([[10, 20], [30, 265]], np.uint16)
    path = write_dicom(tmp_path / "a.dcm", stored)
    np.testing.assert_array_equal(folder.read_gray(str(path), "a.dcm"), [[0, 10], [20, 255]])


def test_dicom_monochrome1_is_inverted(tmp_path):
    stored = np.array([[10, 20], [30, 265]], np.uint16)
    mono1 = write_dicom(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1")
    # MONOCHROME1: the lowest value is white, the highest black.
    np.testing.assert_array_equal(folder.read_gray(str(mono1), "m1.dcm"), [[255, 245], [235, 0]])
    windowed = write_dicom(
        tmp_path / "w1.dcm", STORED, photometric="MONOCHROME1", WindowCenter=428, WindowWidth=256
    )
    np.testing.assert_array_equal(
        folder.read_gray(str(windowed), "w1.dcm"), [[255, 255, 255], [255, 155, 0]]
    )


def test_dicom_builds_through_a_manifest(tmp_path):
    write_dicom(tmp_path / "x/a.dcm", STORED, photometric="MONOCHROME1")
    write_png(tmp_path / "x/b.png", pixels(1))
    write_png(tmp_path / "x/c.png", pixels(2))
    rows = ["path,label,split", "a.dcm,normal,train", "b.png,abnormal,train", "c.png,normal,valid"]
    manifest = write_manifest(tmp_path / "x/m.csv", rows)
    examples = read(build(tmp_path / "tfds", manifest=str(manifest)))
    image = examples["train"]["a.dcm"]["image"][..., 0]
    assert image[0, 0] == 255 and image[1, 2] == 0  # min white, max black: inverted


def test_compressed_dicom_without_a_decoder_is_one_line(tmp_path):
    path = write_dicom(tmp_path / "t/c.dcm", STORED, compressed=True)
    with pytest.raises(ImageFolderError, match=r"c\.dcm: compressed DICOM \(JPEG-LS") as info:
        folder.check_header(str(path), str(path))
    assert "\n" not in str(info.value)
    with pytest.raises(ImageFolderError, match=r"c\.dcm: cannot decode its DICOM pixel data"):
        folder.read_gray(str(path), str(path))


def test_dcm_without_pydicom_says_how_to_install_it(tmp_path, monkeypatch):
    root = two_split_tree(tmp_path / "own")
    write_dicom(root / "train/normal/p9_s1/image1.dcm", STORED)
    monkeypatch.setitem(sys.modules, "pydicom", None)  # `import pydicom` raises ImportError
    refused("image1.dcm", "pip install 'murajax[dicom]'", root=str(root))


# -------------------------------------------------------------------------------- manifest


def test_manifest_relative_and_absolute_paths(tmp_path):
    absolute = write_png(tmp_path / "elsewhere/b.png", pixels(2))
    write_png(tmp_path / "m/imgs/a.png", pixels(1))
    write_png(tmp_path / "m/imgs/c.png", pixels(3))
    write_png(tmp_path / "m/imgs/d.png", pixels(4))
    manifest = write_manifest(
        tmp_path / "m/cases.csv",
        [
            "Path, Label ,study_id,patient_id,group,split",
            "imgs/a.png,abnormal,s1,alice,hand,train",
            f"{absolute},abnormal,s1,alice,hand,train",
            "imgs/c.png,normal,s2,bob,knee,train",
            "./imgs/d.png,normal,s3,carol,hand,Validation",
        ],
    )
    builder = build(tmp_path / "tfds", manifest=str(manifest))
    assert builder.builder_config.name.startswith("cases-")
    features = builder.info.features
    assert features["label"].names == ["normal", "abnormal"]
    assert features["group"].names == ["hand", "knee"]
    examples = read(builder)
    assert set(examples["train"]) == {"imgs/a.png", str(absolute), "imgs/c.png"}
    b = examples["train"][str(absolute)]
    np.testing.assert_array_equal(b["image"][..., 0], pixels(2))
    assert b["study_id"] == b"s1" and b["label"] == 1 and b["group"] == 0
    assert int(b["patient_id"]) == 1  # alice < bob < carol
    d = examples["validation"]["./imgs/d.png"]
    assert int(d["patient_id"]) == 3 and d["group"] == 0


def test_manifest_defaults_split_patients_by_sha256(tmp_path):
    rows = ["path,label,patient_id"]
    for i in range(20):
        write_png(tmp_path / f"m/{i}.png", pixels(i))
        rows.append(f"{i}.png,{'abnormal' if i % 2 else 'normal'},patient{i // 2}")
    listing = folder.scan(manifest=str(write_manifest(tmp_path / "m/m.csv", rows)))
    splits = {e.patient: e.split for e in listing.entries}
    assert set(splits.values()) == {"train", "validation"}
    for entry in listing.entries:  # each study its own; a patient's images in one split
        assert entry.study_id == entry.image_path
        assert entry.split == folder._default_split(entry.patient) == splits[entry.patient]


def test_manifest_missing_file_is_one_line(tmp_path):
    write_png(tmp_path / "m/a.png", pixels(1))
    write_png(tmp_path / "m/b.png", pixels(2))
    manifest = write_manifest(
        tmp_path / "m/m.csv",
        ["path,label,split", "a.png,normal,train", "b.png,normal,valid", "gone.png,normal,train"],
    )
    refused(f"{manifest}:4", "file not found", "gone.png", manifest=str(manifest))


def test_manifest_unknown_label_is_one_line(tmp_path):
    write_png(tmp_path / "m/a.png", pixels(1))
    write_png(tmp_path / "m/b.png", pixels(2))
    rows = ["path,label,split", "a.png,normal,train", "b.png,fracture,valid"]
    manifest = write_manifest(tmp_path / "m/m.csv", rows)
    # Without labels.txt: seen in validation only.
    refused(f"{manifest}:3", "unknown label 'fracture'", "'normal'", manifest=str(manifest))
    (tmp_path / "m/labels.txt").write_text("normal\nabnormal\n")
    refused(
        f"{manifest}:3",
        "unknown label 'fracture'",
        "'normal', 'abnormal'",
        "labels.txt",
        manifest=str(manifest),
    )


def test_manifest_patient_in_two_splits_is_one_line(tmp_path):
    for name in "abc":
        write_png(tmp_path / f"m/{name}.png", pixels(ord(name)))
    manifest = write_manifest(
        tmp_path / "m/m.csv",
        [
            "path,label,study_id,patient_id,split",
            "a.png,normal,s1,p7,train",
            "b.png,normal,s2,p8,valid",
            "c.png,abnormal,s3,p7,valid",
        ],
    )
    refused(
        "patient 'p7' is in both splits",
        f"{manifest}:2 (train)",
        f"{manifest}:4 (validation)",
        manifest=str(manifest),
    )


@pytest.mark.parametrize(
    ("rows", "fragments"),
    [
        (["path,label", "a.png,normal", "./a.png,normal"], ["m.csv:3", "listed twice", "line 2"]),
        (["path,diagnosis", "a.png,normal"], ["m.csv:1", "unknown column 'diagnosis'"]),
        (["path,study_id", "a.png,s1"], ["m.csv:1", "no label column"]),
        (["path,label,split", "a.png,normal,test"], ["m.csv:2", "unknown split 'test'"]),
        (["path,label", "a.png,"], ["m.csv:2", "empty label"]),
        (["path,label", "a.png,normal,extra"], ["m.csv:2", "3 fields, expected 2"]),
        (["path,label", "notes.txt,normal"], ["m.csv:2", "'notes.txt' is not an image"]),
        (
            ["path,label,study_id", "a.png,normal,s1", "b.png,abnormal,s1"],
            ["m.csv:3", "study 's1' has label 'abnormal' here but 'normal'", "m.csv:2"],
        ),
        (["path,label,split", "a.png,normal,train", "b.png,normal,train"], ["validation"]),
        (["path,label"], ["no images"]),
        (
            ["path,label,patient_id", "a.png,normal,patient0", "b.png,abnormal,patient1"],
            ["no images in the validation split", "without a split column", "these 2 patients"],
        ),
    ],
)
def test_manifest_mistakes_are_one_line(tmp_path, rows, fragments):
    write_png(tmp_path / "m/a.png", pixels(1))
    write_png(tmp_path / "m/b.png", pixels(2))
    refused(*fragments, manifest=str(write_manifest(tmp_path / "m/m.csv", rows)))


# ---------------------------------------------------------------------- folder mistakes


def test_mixed_depths_name_a_file_of_each(tmp_path):
    root = two_split_tree(tmp_path / "own")
    write_png(root / "train/normal/flat.png", pixels(9))
    refused(
        "mixed folder depths",
        str(root / "train/normal/flat.png"),
        "<label>/<image>",
        str(root / "train/abnormal/train1_s1/image1.png"),  # walked first
        "<label>/<study>/<image>",
        root=str(root),
    )


def test_folder_tree_mistakes_are_one_line(tmp_path):
    root = two_split_tree(tmp_path / "own")
    refused("no train/ folder", root=str(tmp_path))
    (root / "train/normal/train0_s1/notes.txt").write_text("x")
    refused("notes.txt: not an image", root=str(root))
    os.remove(root / "train/normal/train0_s1/notes.txt")
    write_png(root / "valid/normal/a/b/c/image1.png", pixels(1))
    refused("too deep", root=str(root))
    root2 = two_split_tree(tmp_path / "own2")
    write_png(root2 / "valid/normal/train0_s9/image1.png", pixels(1))  # patient train0 again
    refused("patient 'train0' is in both splits", "train0_s1", "train0_s9", root=str(root2))
    root3 = tmp_path / "own3"
    write_png(root3 / "train/normal/p1_s1/image1.png", pixels(1))
    refused("no valid/ folder", root=str(root3))
    (root3 / "valid").mkdir()
    refused("no images in the validation split", root=str(root3))
    refused("exactly one of root", root=str(root3), manifest="m.csv")


def test_paths_and_study_ids_are_unique(built):
    _, examples = built
    studies = [ex["study_id"] for s in examples.values() for ex in s.values()]
    paths = [p for s in examples.values() for p in s]
    assert len(set(paths)) == len(paths)
    assert len(studies) == 8 and len(set(studies)) == 7  # p1_s1 has two images


def test_unreadable_image_fails_the_build_and_leaves_no_dataset(tmp_path):
    root = two_split_tree(tmp_path / "own")
    data = io.BytesIO()
    Image.fromarray(pixels(1, (64, 64))).save(data, format="PNG")
    truncated = root / "train/normal/train0_s1/image2.png"
    truncated.write_bytes(data.getvalue()[:-30])
    (root / "valid/normal/valid0_s1/image2.png").write_text("not a png")
    builder = tfds.builder("image_folder", data_dir=tmp_path / "tfds", root=str(root))
    with pytest.raises(ImageFolderError) as info:
        builder.download_and_prepare()
    message = str(info.value)
    assert "\n" not in message and "valid0_s1/image2.png: unreadable image" in message
    assert not builder.is_prepared()
    (root / "valid/normal/valid0_s1/image2.png").unlink()
    builder = tfds.builder("image_folder", data_dir=tmp_path / "tfds", root=str(root))
    with pytest.raises(ImageFolderError, match=r"train0_s1/image2\.png: unreadable image"):
        builder.download_and_prepare()  # truncated: found when decoded
    assert not builder.is_prepared()
    assert not list((tmp_path / "tfds/image_folder").glob("*/*incomplete*"))


def test_manifest_unreadable_image_names_the_row_and_the_file(tmp_path):
    write_png(tmp_path / "m/a.png", pixels(1))
    write_png(tmp_path / "m/b.png", pixels(2))
    (tmp_path / "m/c.png").write_bytes(b"\x89PNG but not really")
    rows = ["path,label,split", "a.png,normal,train", "b.png,abnormal,train", "c.png,normal,valid"]
    manifest = write_manifest(tmp_path / "m/m.csv", rows)
    builder = tfds.builder("image_folder", data_dir=tmp_path / "tfds", manifest=str(manifest))
    with pytest.raises(ImageFolderError) as info:
        builder.download_and_prepare()
    message = str(info.value)
    assert f"{manifest}:4 ({tmp_path / 'm/c.png'}): unreadable image" in message
    assert "\n" not in message and not builder.is_prepared()


# ---------------------------------------------------------------------------- fingerprint


def test_fingerprint_is_deterministic_and_follows_the_source(tmp_path):
    root = two_split_tree(tmp_path / "My data!")
    name = folder.config_name(folder.scan(root=str(root)))
    assert name.startswith("My_data-")
    assert folder.config_name(folder.scan(root=str(root))) == name
    image = root / "train/normal/train0_s1/image1.png"
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    touched = folder.config_name(folder.scan(root=str(root)))
    assert touched != name
    (root / "labels.txt").write_text("normal\nabnormal\n")
    assert folder.config_name(folder.scan(root=str(root))) != touched
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.remove(root / "labels.txt")
    assert folder.config_name(folder.scan(root=str(root))) == name


# ------------------------------------------------------------------------------ murajax


def test_murajax_prepare_builds_image_folder(tmp_path):
    root = two_split_tree(tmp_path / "own", labels=("normal", "abnormal", "other"))
    config = DataConfig(dataset="image_folder", manual_dir=str(root), data_dir=str(tmp_path / "d"))
    builder = sources.prepare(config)
    assert builder.is_prepared()
    assert builder.info.features["label"].names == ["normal", "abnormal", "other"]
    assert sources.prepare(config).data_dir == builder.data_dir  # reopened, not rebuilt


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"dataset": "image_folder"}, "set data.manual_dir=ROOT"),
        ({"dataset": "image_folder", "manual_dir": "x", "manifest": "y"}, "not both"),
        ({"dataset": "mura_synthetic", "manifest": "m.csv"}, "reads no manifest"),
        ({"dataset": "mura_synthetic", "manual_dir": "x"}, "reads no manual download"),
        ({"dataset": "image_folder", "manifest": "/nowhere/m.csv"}, "manifest not found"),
    ],
)
def test_murajax_source_mistakes_are_one_data_error(tmp_path, fields, fragment):
    with pytest.raises(DataError) as info:
        sources.prepare(DataConfig(data_dir=str(tmp_path / "d"), **fields))
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_murajax_reports_a_bad_tree_as_one_data_error(tmp_path):
    root = two_split_tree(tmp_path / "own")
    write_png(root / "valid/fracture/v_s1/image1.png", pixels(1))
    config = DataConfig(dataset="image_folder", manual_dir=str(root), data_dir=str(tmp_path / "d"))
    with pytest.raises(DataError) as info:
        sources.prepare(config)
    message = str(info.value)
    assert message.startswith(f"dataset 'image_folder' (data.manual_dir='{root}'): ")
    assert "unknown label 'fracture'" in message and "Failed to construct" not in message
