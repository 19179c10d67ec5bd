"""TFDS builder for MURA v1.1, Stanford's musculoskeletal radiograph dataset (manual download).

The build is driven only by MURA's four CSV files; folders are never walked, so the junk a
zip carries (`._image1.png`, `.DS_Store`, `__MACOSX/`) is ignored. Each row of
`{train,valid}_image_paths.csv` becomes one example; its label comes from
`{train,valid}_labeled_studies.csv` and is cross-checked against the study folder name.

Images are stored as 8-bit grayscale PNGs of shape (H, W, 1) whatever their PNG mode:
colour is reduced to ITU-R 601-2 luma (Pillow's `convert("L")`), alpha is dropped, and
16-bit samples are scaled to 8 bits by keeping the high byte (`value >> 8`, so 65535 -> 255),
which is what Pillow itself does for 16-bit RGB, RGBA and grey+alpha PNGs.

Anything that does not look like MURA fails the build with a one-line `MuraFormatError`
naming the offending file, row or study; TFDS then removes its temporary directory, so a
failed build never leaves a dataset that looks prepared.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from tfds_mura.csv_rows import csv_rows
from tfds_mura.features import BODY_PARTS, LABEL_NAMES, PAPER_REFERENCE, mura_features
from tfds_mura.images import encode_png, image_to_grayscale

HOMEPAGE = "https://stanfordmlgroup.github.io/competitions/mura/"
ROOT = "MURA-v1.1"
"""The top folder of the MURA tree, and the first component of every path in its CSVs."""
ZIP_NAME = f"{ROOT}.zip"

SPLIT_DIRS: Mapping[str, str] = {"train": "train", "validation": "valid"}
"""TFDS split name -> MURA folder (and CSV prefix). `validation` is MURA's official `valid`."""

_POSITIVE = {"positive": 1, "negative": 0}
"""Study folder suffix -> label; 1 = positive = abnormal (`LABEL_NAMES[1]`)."""

_STUDY_PATTERN = (
    rf"{re.escape(ROOT)}/(?P<split>train|valid)/(?P<body_part>XR_[A-Z]+)"
    r"/patient(?P<patient>\d+)/study(?P<study>\d+)_(?P<suffix>positive|negative)"
)
_STUDY_RE = re.compile(rf"^{_STUDY_PATTERN}$")
_IMAGE_RE = re.compile(rf"^{_STUDY_PATTERN}/(?P<image>[^/.][^/]*\.png)$")
"""An image file name must not start with `.` (so `._image1.png` junk never matches)."""


class MuraFormatError(ValueError):
    """The MURA tree is not what the CSVs and the MURA layout say it should be."""


class MuraManualDownloadError(FileNotFoundError):
    """MURA-v1.1 is not in the manual download directory."""


@dataclasses.dataclass(frozen=True)
class StudyRow:
    """One row of `*_labeled_studies.csv`: a study folder and its radiologist label."""

    study_id: str
    """The study folder below `MURA-v1.1/`: `train/XR_WRIST/patient00001/study1_positive`."""
    label: int
    """0 = normal, 1 = abnormal (MURA's `positive`)."""


@dataclasses.dataclass(frozen=True)
class ImageRow:
    """One row of `*_image_paths.csv`: an image path and the parts of it the features use."""

    image_path: str
    """The path exactly as in the CSV, e.g. `MURA-v1.1/train/XR_WRIST/.../image1.png`."""
    split_dir: str
    body_part: str
    patient_id: int
    study_id: str
    folder_label: int
    """The label the study folder's name (`_positive` / `_negative`) claims."""

    @property
    def csv_name(self) -> str:
        """The CSV that lists this image, e.g. `MURA-v1.1/train_image_paths.csv`."""
        return f"{ROOT}/{self.split_dir}_image_paths.csv"


def _one_line(text: str, limit: int = 200) -> str:
    """Returns `text` as a short, one-line, quoted snippet for error messages."""
    text = repr(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_relative_path(path: str, where: str) -> None:
    """Raises `MuraFormatError` if `path` could escape the manual dir (absolute or `..`).

    Args:
      path: a path as written in a MURA CSV.
      where: `file:line` of the row, for the error message.
    """
    parts = path.replace("\\", "/").split("/")
    if path.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", path) or ".." in parts:
        raise MuraFormatError(f"{where}: path {_one_line(path)} escapes the manual dir")


def parse_study_row(fields: Sequence[str], split_dir: str, where: str) -> StudyRow:
    """Parses one `*_labeled_studies.csv` row: `MURA-v1.1/<split>/XR_<PART>/patientN/studyK_x/,L`.

    Args:
      fields: the CSV fields of the row.
      split_dir: `train` or `valid`, the split the CSV belongs to.
      where: `file:line` of the row, for error messages.

    Returns:
      The study, with `label` 1 for abnormal (MURA's 1 / positive) and 0 for normal.

    Raises:
      MuraFormatError: wrong number of fields, label not 0/1, path outside the MURA layout,
        or a label that disagrees with the folder name.
    """
    if len(fields) != 2:
        raise MuraFormatError(
            f"{where}: expected 2 fields (study path, label), got {len(fields)}: "
            f"{_one_line(','.join(fields))}"
        )
    path, label_text = fields[0].strip(), fields[1].strip()
    check_relative_path(path, where)
    if label_text not in ("0", "1"):
        raise MuraFormatError(f"{where}: label must be 0 or 1, got {_one_line(label_text)}")
    match = _STUDY_RE.match(path.removesuffix("/"))
    if not match or match["split"] != split_dir or match["body_part"] not in BODY_PARTS:
        raise MuraFormatError(
            f"{where}: study path {_one_line(path)} does not match "
            f"{ROOT}/{split_dir}/XR_<PART>/patientNNNNN/studyK_{{positive,negative}}/"
        )
    study_id = path.removesuffix("/").removeprefix(ROOT + "/")
    label = int(label_text)
    if label != _POSITIVE[match["suffix"]]:
        raise MuraFormatError(
            f"{where}: study {study_id} is labelled {label} ({LABEL_NAMES[label]}) "
            f"but its folder says {match['suffix']}"
        )
    return StudyRow(study_id=study_id, label=label)


def parse_image_row(fields: Sequence[str], split_dir: str, where: str) -> ImageRow:
    """Parses one `*_image_paths.csv` row: `MURA-v1.1/<split>/XR_<PART>/.../imageJ.png`.

    Args:
      fields: the CSV fields of the row.
      split_dir: `train` or `valid`, the split the CSV belongs to.
      where: `file:line` of the row, for error messages.

    Raises:
      MuraFormatError: wrong number of fields or a path outside the MURA layout.
    """
    if len(fields) != 1:
        raise MuraFormatError(
            f"{where}: expected 1 field (image path), got {len(fields)}: "
            f"{_one_line(','.join(fields))}"
        )
    path = fields[0].strip()
    check_relative_path(path, where)
    match = _IMAGE_RE.match(path)
    if not match or match["split"] != split_dir or match["body_part"] not in BODY_PARTS:
        raise MuraFormatError(
            f"{where}: image path {_one_line(path)} does not match "
            f"{ROOT}/{split_dir}/XR_<PART>/patientNNNNN/studyK_{{positive,negative}}/<name>.png"
        )
    return ImageRow(
        image_path=path,
        split_dir=split_dir,
        body_part=match["body_part"],
        patient_id=int(match["patient"]),
        study_id=path.removeprefix(ROOT + "/").rsplit("/", 1)[0],
        folder_label=_POSITIVE[match["suffix"]],
    )


def read_csv_rows(data: bytes, name: str) -> Iterator[tuple[str, list[str]]]:
    """Yields (`name:line`, fields) for each non-blank row of a header-less CSV.

    Raises:
      MuraFormatError: the file is not UTF-8 text or not valid CSV.
    """
    for line, fields in csv_rows(data, name, MuraFormatError):
        yield f"{name}:{line}", fields


def parse_studies(data: bytes, name: str, split_dir: str) -> dict[str, int]:
    """Parses a `*_labeled_studies.csv` into {study_id: label}; a study listed twice is an error."""
    labels: dict[str, int] = {}
    for where, fields in read_csv_rows(data, name):
        row = parse_study_row(fields, split_dir, where)
        if row.study_id in labels:
            raise MuraFormatError(f"{where}: study {row.study_id} is listed twice")
        labels[row.study_id] = row.label
    return labels


def parse_images(
    data: bytes, name: str, split_dir: str, labels: Mapping[str, int]
) -> list[ImageRow]:
    """Parses a `*_image_paths.csv`, checking each image's study against `labels`.

    Raises:
      MuraFormatError: a malformed row, an image listed twice, or an image whose study is not
        in the labeled-studies CSV.
    """
    rows: list[ImageRow] = []
    seen: set[str] = set()
    for where, fields in read_csv_rows(data, name):
        row = parse_image_row(fields, split_dir, where)
        if row.image_path in seen:
            raise MuraFormatError(f"{where}: image {row.image_path} is listed twice")
        if row.study_id not in labels:
            raise MuraFormatError(
                f"{where}: image {row.image_path} belongs to study {row.study_id}, "
                f"which is not in {split_dir}_labeled_studies.csv"
            )
        seen.add(row.image_path)
        rows.append(row)
    return rows


def to_grayscale_png(data: bytes, name: str) -> bytes:
    """Decodes image bytes with Pillow and re-encodes them as an 8-bit grayscale PNG.

    Args:
      data: the file's bytes (any mode Pillow decodes; MURA's are PNG).
      name: the file's path, for the error message.

    Raises:
      MuraFormatError: the file is truncated, not an image, or of an unsupported mode.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # Decodes fully, so a truncated file fails here.
            gray = image_to_grayscale(image)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MuraFormatError(f"{name}: unreadable image ({reason})") from e
    return encode_png(gray)


class Source(Protocol):
    """Where the MURA files are: a `MURA-v1.1/` folder or `MURA-v1.1.zip`."""

    def read(self, path: str, listed_in: str | None = None) -> bytes:
        """Returns the bytes of `path` (as in the CSVs, starting `MURA-v1.1/`).

        Raises:
          MuraFormatError: `path` is not there (the message names `listed_in`, if given).
        """
        ...

    def close(self) -> None:
        """Releases open files."""
        ...


def _not_found(path: str, listed_in: str | None, where: object) -> MuraFormatError:
    """The error for a file the CSVs need but the source lacks."""
    listed = f"listed in {listed_in} but " if listed_in else ""
    return MuraFormatError(f"{path}: {listed}not found in {where}")


@dataclasses.dataclass(frozen=True)
class FolderSource:
    """Files under a manual dir that holds an extracted `MURA-v1.1/` folder."""

    manual_dir: epath.Path

    def read(self, path: str, listed_in: str | None = None) -> bytes:
        """Returns the bytes of `manual_dir/path`; a missing file is a `MuraFormatError`."""
        try:
            return (self.manual_dir / path).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
            raise _not_found(path, listed_in, self.manual_dir) from e

    def close(self) -> None:
        """Nothing to release: files are opened and closed one read at a time."""


class ZipSource:
    """Files inside `MURA-v1.1.zip`, read with `zipfile` without extracting the archive."""

    def __init__(self, zip_path: epath.Path):
        self.zip_path = zip_path
        self._file = zip_path.open("rb")
        try:
            self._zip = zipfile.ZipFile(self._file)
        except zipfile.BadZipFile as e:
            self._file.close()
            raise MuraFormatError(f"{zip_path}: not a readable zip file ({e})") from e

    def read(self, path: str, listed_in: str | None = None) -> bytes:
        """Returns the bytes of the member `path`; a missing member is a `MuraFormatError`."""
        try:
            return self._zip.read(path)
        except KeyError as e:
            raise _not_found(path, listed_in, self.zip_path) from e
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise MuraFormatError(f"{path}: unreadable in {self.zip_path} ({e})") from e

    def close(self) -> None:
        """Closes the archive."""
        self._zip.close()
        self._file.close()


def open_source(manual_dir: epath.Path) -> FolderSource | ZipSource:
    """Returns the MURA files in `manual_dir`: the `MURA-v1.1/` folder if present, else the zip.

    Raises:
      MuraManualDownloadError: neither is there.
    """
    if (manual_dir / ROOT).is_dir():
        return FolderSource(manual_dir)
    if (manual_dir / ZIP_NAME).is_file():
        return ZipSource(manual_dir / ZIP_NAME)
    raise MuraManualDownloadError(_missing_message(str(manual_dir)))


def _missing_message(manual_dir: str) -> str:
    """The error for a manual dir without MURA: what to get, from where, where to put it."""
    return (
        f"MURA not found: put {ROOT}/ (extracted) or {ZIP_NAME} in the manual dir {manual_dir} "
        f"(download it from {HOMEPAGE} after accepting the research-use agreement)"
    )


def read_split(source: Source, split_dir: str) -> list[ImageRow]:
    """Reads and cross-checks the two CSVs of one split (`train` or `valid`).

    Returns:
      The split's images in CSV order, each checked against its study's label.
    """
    studies_name = f"{ROOT}/{split_dir}_labeled_studies.csv"
    images_name = f"{ROOT}/{split_dir}_image_paths.csv"
    labels = parse_studies(source.read(studies_name), studies_name, split_dir)
    return parse_images(source.read(images_name), images_name, split_dir, labels)


def make_example(row: ImageRow, data: bytes) -> dict[str, Any]:
    """Returns the features of one image (see `tfds_mura.features.mura_features`)."""
    return {
        "image": to_grayscale_png(data, row.image_path),
        "label": row.folder_label,  # == the CSV label; `parse_study_row` checked it.
        "body_part": row.body_part,
        "patient_id": row.patient_id,
        "study_id": row.study_id,
        "image_path": row.image_path,
    }


class Builder(tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for MURA v1.1 (manual download); splits `train` and `validation`."""

    VERSION = tfds.core.Version("1.1.0")
    REFERENCE_SCORES = PAPER_REFERENCE  # what murajax shows beside its scores
    RELEASE_NOTES = {
        "1.1.0": "MURA v1.1: 8-bit grayscale PNG images, study-level labels from the CSVs.",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    Request MURA v1.1 at {HOMEPAGE} (free for research use, after accepting the
    Stanford University School of Medicine MURA Dataset Research Use Agreement) and
    download `{ZIP_NAME}`. Put either the zip or the extracted `{ROOT}/` folder in the
    manual dir (by default `<data_dir>/downloads/manual/`; or pass `--manual_dir` to
    `tfds build`, or `tfds.download.DownloadConfig(manual_dir=...)`).
    """

    def _info(self) -> tfds.core.DatasetInfo:
        """Returns the dataset metadata (description and citation come from the card files)."""
        return self.dataset_info_from_configs(
            features=mura_features(),
            supervised_keys=("image", "label"),
            homepage=HOMEPAGE,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        """Returns the `train` and `validation` generators; the CSVs are checked up front."""
        try:
            manual_dir = dl_manager.manual_dir
        except AssertionError as e:  # TFDS: the manual dir does not exist or is empty.
            given = getattr(dl_manager, "_manual_dir", None) or "(none given)"
            raise MuraManualDownloadError(_missing_message(str(given))) from e
        with contextlib.closing(open_source(epath.Path(manual_dir))) as source:
            rows = {split: read_split(source, folder) for split, folder in SPLIT_DIRS.items()}
        return {
            split: self._generate_examples(manual_dir, split_rows)
            for split, split_rows in rows.items()
        }

    def _generate_examples(self, manual_dir: epath.Path, rows: Sequence[ImageRow]):
        """Yields (image_path, example) for the rows of one split, in CSV order."""
        with contextlib.closing(open_source(epath.Path(manual_dir))) as source:
            for row in rows:
                data = source.read(row.image_path, listed_in=row.csv_name)
                yield row.image_path, make_example(row, data)
