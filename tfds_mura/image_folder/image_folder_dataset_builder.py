"""`image_folder`: your own radiographs as a TFDS dataset, from a folder tree or a CSV manifest.

Two sources, one builder (constructor keyword arguments, exactly one of them):

- `root=ROOT`: a folder tree `ROOT/<split>/<label>/[<group>/]<study>/<image>`, or
  `ROOT/<split>/<label>/<image>` (each image its own study). The split folders are `train` and
  `valid` (MURA's names; `validation` is accepted too). A study folder named
  `<patient>_<study>` belongs to the patient before its last underscore.
- `manifest=FILE`: a CSV with a header row and the columns `path,label` and optionally
  `study_id,patient_id,group,split`; paths are absolute or relative to the manifest's folder.

The builder lists its source in `__init__` (names, sizes and modification times; no image is
decoded), checks it, and names its BuilderConfig `<folder-or-manifest-stem>-<fingerprint>`, the
fingerprint hashing that listing, so that a changed source is built anew into its own folder
and reopening an unchanged one finds the prepared dataset. Label names come from `labels.txt`
(beside the source) or from the data: a label called `normal` (any case) first, the rest in
natural order. Images become 8-bit grayscale PNGs of shape (H, W, 1): 8-bit PNG and JPEG as the
`mura` builder converts them, 16-bit grayscale PNG scaled from its own min..max, DICOM (with
pydicom, the `dicom` extra) through its rescale slope/intercept and window, MONOCHROME1
inverted.

Every mistake in a source is a one-line `ImageFolderError` naming the file, CSV line or value
and what would be valid; all of them but an image that fails to decode are found before any
record is written, and a failed build leaves no dataset behind.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from tfds_mura.csv_rows import csv_rows
from tfds_mura.mura.mura_dataset_builder import encode_png, image_to_grayscale

SPLIT_FOLDERS: Mapping[str, str] = {
    "train": "train",
    "valid": "validation",
    "validation": "validation",
}
"""Split folder (or manifest `split` value) -> TFDS split."""

SPLITS: tuple[str, ...] = ("train", "validation")

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".dcm")
"""The image files read (case-insensitive); `.dcm` needs pydicom (`murajax[dicom]`)."""

IGNORED_FILES = frozenset({"thumbs.db", "desktop.ini", "dicomdir", "__macosx"})
"""Names (lower-cased) skipped in a folder tree, besides hidden ones (starting with `.`)."""

LABELS_FILE = "labels.txt"
"""One label name per line, in class-index order; in ROOT or beside the manifest."""

MANIFEST_COLUMNS: tuple[str, ...] = ("path", "label", "study_id", "patient_id", "group", "split")
REQUIRED_COLUMNS: tuple[str, ...] = ("path", "label")

VALIDATION_BUCKETS = 5
"""Without a `split` column, a patient is in `validation` when sha256(patient) % 5 == 0."""

PYDICOM_HINT = "pip install 'murajax[dicom]'"


class ImageFolderError(ValueError):
    """The folder tree or manifest is not what `image_folder` reads; the one-line message names
    the file, CSV line or value and what would be valid."""


# ------------------------------------------------------------------------------- the listing


@dataclasses.dataclass(frozen=True)
class Entry:
    """One image of the source: where it is and what the features will say of it."""

    image_path: str
    """The path as the user gave it: relative to ROOT (`/`-separated), or as in the manifest."""
    file: str
    """The absolute path read."""
    where: str
    """For error messages: the file in the tree, or `manifest.csv:LINE`."""
    split: str
    """`train` or `validation`."""
    label: str
    study_id: str
    patient: str
    """The patient's name (numbered into `patient_id` later)."""
    group: str | None
    size: int
    mtime_ns: int

    @property
    def image_where(self) -> str:
        """For image errors: the file, or `manifest.csv:LINE (file)` for a manifest's row."""
        return self.where if self.where == self.file else f"{self.where} ({self.file})"


@dataclasses.dataclass(frozen=True)
class Listing:
    """A checked source: its images and the names its ClassLabels take."""

    layout: str
    """`folder` or `manifest`."""
    source: str
    """The absolute ROOT folder or manifest file."""
    entries: tuple[Entry, ...]
    label_names: tuple[str, ...]
    group_names: tuple[str, ...] | None
    """None where the data has no groups (no group folder level, no `group` column)."""
    labels_file: str | None
    """The `labels.txt` that fixed the label order, if any."""

    @functools.cached_property
    def patient_ids(self) -> dict[str, int]:
        """Patient name -> `patient_id`: sorted unique names numbered from 1."""
        return {name: i for i, name in enumerate(sorted({e.patient for e in self.entries}), 1)}

    def split_entries(self, split: str) -> list[Entry]:
        """The entries of one TFDS split, in source order."""
        return [e for e in self.entries if e.split == split]


def _quote(text: str, limit: int = 120) -> str:
    """`text` as a short quoted snippet for an error message."""
    text = repr(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _names(names: Iterable[str]) -> str:
    """`'a', 'b', 'c'` (at most 12 shown) for error messages."""
    names = list(names)
    shown = ", ".join(_quote(n, 40) for n in names[:12])
    return shown + (f", ... ({len(names)} in all)" if len(names) > 12 else "")


def natural_key(text: str) -> tuple[Any, ...]:
    """A sort key in which digit runs compare as numbers ("2" < "10") and letters ignore case."""
    parts = re.split(r"(\d+)", text)
    key = tuple((0, int(p), p) if p.isdigit() else (1, p.casefold(), p) for p in parts if p)
    return (key, text)


def order_labels(labels: Iterable[str]) -> tuple[str, ...]:
    """Label order without a `labels.txt`: a label named `normal` (any case) first, then the rest
    in natural order, so normal/abnormal gives abnormal = 1 as in MURA."""
    return tuple(sorted(set(labels), key=lambda n: (n.casefold() != "normal", natural_key(n))))


def read_labels_file(path: str) -> tuple[str, ...]:
    """The label names of a `labels.txt`: one per line, blank lines and surrounding spaces
    ignored.

    Raises:
      ImageFolderError: not UTF-8, no names, or a name listed twice.
    """
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as e:
        raise ImageFolderError(f"{path}: not UTF-8 text ({e.reason})") from e
    except OSError as e:
        raise ImageFolderError(f"{path}: unreadable ({e.strerror or e})") from e
    names: list[str] = []
    for number, line in enumerate(lines, 1):
        name = line.strip()
        if name in names:
            raise ImageFolderError(f"{path}:{number}: label {_quote(name)} is listed twice")
        if name:
            names.append(name)
    if not names:
        raise ImageFolderError(f"{path}: no labels (expected one label name per line)")
    return tuple(names)


def _suffix_ok(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def _stat(path: str, where: str) -> os.stat_result:
    """The stat of an image file; missing or not a file is an `ImageFolderError`."""
    try:
        stat = os.stat(path)
    except FileNotFoundError as e:
        raise ImageFolderError(f"{where}: file not found ({path})") from e
    except OSError as e:
        raise ImageFolderError(f"{where}: cannot read {path} ({e.strerror or e})") from e
    if not os.path.isfile(path):
        raise ImageFolderError(f"{where}: {path} is not a file")
    return stat


# ----------------------------------------------------------------------------- folder tree


def _split_folders(root: str) -> dict[str, str]:
    """TFDS split -> folder name under `root`: `train`, and `valid` or `validation`.

    Raises:
      ImageFolderError: `root` is not a folder, or a split folder is missing or doubled.
    """
    if not os.path.isdir(root):
        what = "not found" if not os.path.exists(root) else "not a folder"
        raise ImageFolderError(
            f"{root}: {what} (expected a folder holding train/ and valid/, each "
            "<label>/[<group>/]<study>/<image>)"
        )
    present = {name for name in os.listdir(root) if os.path.isdir(os.path.join(root, name))}
    if "train" not in present:
        raise ImageFolderError(
            f"{root}: no train/ folder (expected train/ and valid/ or validation/, each "
            "<label>/[<group>/]<study>/<image>)"
        )
    valid = [name for name in ("valid", "validation") if name in present]
    if not valid:
        raise ImageFolderError(
            f"{root}: no valid/ folder (expected valid/ or validation/ beside train/)"
        )
    if len(valid) == 2:
        raise ImageFolderError(
            f"{root}: both valid/ and validation/ exist (keep one: they are the same split)"
        )
    return {"train": "train", "validation": valid[0]}


def _ignored(name: str) -> bool:
    return name.startswith(".") or name.lower() in IGNORED_FILES


def walk_images(top: str, max_depth: int) -> Iterator[tuple[str, ...]]:
    """Yields the image files under `top` as tuples of path components, in sorted order.

    Hidden entries and `IGNORED_FILES` are skipped; symbolic links are followed. Folders are
    not entered below `max_depth` components, so a link loop cannot run away.

    Raises:
      ImageFolderError: a file that is not an image, or anything deeper than `max_depth`.
    """

    def walk(parts: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
        folder = os.path.join(top, *parts)
        for name in sorted(os.listdir(folder), key=natural_key):
            if _ignored(name):
                continue
            path = os.path.join(folder, name)
            child = (*parts, name)
            if os.path.isdir(path):
                if len(child) >= max_depth:
                    raise ImageFolderError(
                        f"{path}: too deep (expected <label>/<image>, <label>/<study>/<image> "
                        "or <label>/<group>/<study>/<image> under the split folder)"
                    )
                yield from walk(child)
            elif _suffix_ok(name):
                yield child
            else:
                raise ImageFolderError(
                    f"{path}: not an image ({', '.join(IMAGE_SUFFIXES)} are read); "
                    "move it out of the tree"
                )

    yield from walk(())


def _folder_patient(study: str, study_id: str) -> str:
    """The patient of a study folder `<patient>_<study>` (before the last underscore); a
    folder without one (or with nothing before it) is its own patient, named by its study_id."""
    patient = study.rpartition("_")[0]
    return patient if patient else study_id


def scan_folder(root: str) -> list[Entry]:
    """The images of a folder tree, checked for layout (not yet for labels or patients).

    Depths (components under a split folder): 2 = `<label>/<image>`, each image its own study
    and patient; 3 = `<label>/<study>/<image>`; 4 = `<label>/<group>/<study>/<image>`.

    Raises:
      ImageFolderError: see `_split_folders` and `walk_images`; an image directly in a split
        folder; mixed depths (naming a file of each).
    """
    entries: list[Entry] = []
    first_of_depth: dict[int, str] = {}
    for split, folder in _split_folders(root).items():
        for parts in walk_images(os.path.join(root, folder), max_depth=4):
            file = os.path.join(root, folder, *parts)
            if len(parts) == 1:
                raise ImageFolderError(
                    f"{file}: an image directly in {folder}/ (expected "
                    f"{folder}/<label>/[<group>/]<study>/<image>)"
                )
            first_of_depth.setdefault(len(parts), file)
            if len(first_of_depth) > 1:
                (d1, f1), (d2, f2) = sorted(first_of_depth.items())[:2]
                raise ImageFolderError(
                    f"mixed folder depths: {f1} is {_LAYOUTS[d1]} but {f2} is {_LAYOUTS[d2]} "
                    "(use one layout for the whole tree)"
                )
            rel = "/".join((folder, *parts))
            label = parts[0]
            group = parts[1] if len(parts) == 4 else None
            if len(parts) == 2:
                study_id = rel
                patient = study_id
            else:
                study_id = rel.rsplit("/", 1)[0]
                patient = _folder_patient(parts[-2], study_id)
            stat = _stat(file, file)
            entries.append(
                Entry(
                    image_path=rel,
                    file=file,
                    where=file,
                    split=split,
                    label=label,
                    study_id=study_id,
                    patient=patient,
                    group=group,
                    size=stat.st_size,
                    mtime_ns=stat.st_mtime_ns,
                )
            )
    return entries


_LAYOUTS = {
    2: "<label>/<image>",
    3: "<label>/<study>/<image>",
    4: "<label>/<group>/<study>/<image>",
}


# -------------------------------------------------------------------------------- manifest


def _default_split(patient: str) -> str:
    """A deterministic, patient-disjoint fifth of the patients is `validation`."""
    digest = int(hashlib.sha256(patient.encode("utf-8")).hexdigest(), 16)
    return "validation" if digest % VALIDATION_BUCKETS == 0 else "train"


def _manifest_columns(header: Sequence[str], name: str) -> dict[str, int]:
    """Column name -> index, from a manifest's header row (names case- and space-insensitive).

    Raises:
      ImageFolderError: an unknown or repeated column, or no `path` / `label` column.
    """
    columns: dict[str, int] = {}
    for index, raw in enumerate(header):
        column = raw.strip().lower()
        if column not in MANIFEST_COLUMNS:
            raise ImageFolderError(
                f"{name}:1: unknown column {_quote(raw)} (expected the header "
                f"path,label[,study_id,patient_id,group,split])"
            )
        if column in columns:
            raise ImageFolderError(f"{name}:1: column {_quote(column)} appears twice")
        columns[column] = index
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ImageFolderError(
            f"{name}:1: no {' or '.join(missing)} column (the header row must name at least "
            f"path,label; optional: study_id,patient_id,group,split)"
        )
    return columns


def _manifest_rows(path: str) -> Iterator[tuple[int, list[str]]]:
    """Yields (line number, fields) of each non-blank row of a CSV file, header included."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError as e:
        raise ImageFolderError(f"{path}: manifest not found") from e
    except IsADirectoryError as e:
        raise ImageFolderError(
            f"{path}: a folder, not a manifest (use root= for a folder tree)"
        ) from e
    except OSError as e:
        raise ImageFolderError(f"{path}: unreadable ({e.strerror or e})") from e
    yield from csv_rows(data, path, ImageFolderError)


def read_manifest(manifest: str) -> tuple[list[Entry], bool]:
    """The images of a CSV manifest, checked row by row (not yet across rows for studies and
    patients, see `check_entries`), and whether it has a `split` column.

    Raises:
      ImageFolderError: a bad header, a row with the wrong number of fields or an empty value,
        an unknown split, a path that is not an image, missing, or listed twice.
    """
    rows = _manifest_rows(manifest)
    header = next(rows, None)
    if header is None:
        raise ImageFolderError(f"{manifest}: empty (expected a header row path,label,...)")
    columns = _manifest_columns(header[1], manifest)
    folder = os.path.dirname(manifest)
    entries: list[Entry] = []
    seen: dict[str, int] = {}
    pending: list[tuple[str, dict[str, str]]] = []
    for line, fields in rows:
        where = f"{manifest}:{line}"
        if len(fields) != len(header[1]):
            raise ImageFolderError(
                f"{where}: {len(fields)} fields, expected {len(header[1])} "
                f"({','.join(c for c, _ in sorted(columns.items(), key=lambda kv: kv[1]))})"
            )
        values = {column: fields[index].strip() for column, index in columns.items()}
        for column, value in values.items():
            if not value:
                raise ImageFolderError(f"{where}: empty {column}")
        given = values["path"]
        file = os.path.normpath(os.path.join(folder, os.path.expanduser(given)))
        if file in seen:
            raise ImageFolderError(
                f"{where}: path {_quote(given)} is listed twice (first on line {seen[file]})"
            )
        seen[file] = line
        if not _suffix_ok(given):
            raise ImageFolderError(
                f"{where}: {_quote(given)} is not an image ({', '.join(IMAGE_SUFFIXES)} are read)"
            )
        if "split" in values:
            values["split"] = values["split"].lower()
        if "split" in values and values["split"] not in SPLIT_FOLDERS:
            raise ImageFolderError(
                f"{where}: unknown split {_quote(values['split'])} (expected train, valid or "
                "validation)"
            )
        pending.append((where, values))
    for where, values in pending:  # After the cheap checks: one stat per image.
        file = os.path.normpath(os.path.join(folder, os.path.expanduser(values["path"])))
        stat = _stat(file, where)
        study_id = values.get("study_id", values["path"])
        patient = values.get("patient_id", study_id)
        split = values.get("split")
        entries.append(
            Entry(
                image_path=values["path"],
                file=file,
                where=where,
                split=SPLIT_FOLDERS[split] if split else _default_split(patient),
                label=values["label"],
                study_id=study_id,
                patient=patient,
                group=values.get("group"),
                size=stat.st_size,
                mtime_ns=stat.st_mtime_ns,
            )
        )
    if not entries:
        raise ImageFolderError(f"{manifest}: no images (only a header row)")
    return entries, "split" in columns


# ------------------------------------------------------------------------- shared checks


def check_studies(entries: Sequence[Entry]) -> None:
    """A study's images share one label, group, patient and split.

    Raises:
      ImageFolderError: naming the study, the two values and where each was seen.
    """
    first: dict[str, Entry] = {}
    for entry in entries:
        other = first.setdefault(entry.study_id, entry)
        for field in ("label", "group", "patient", "split"):
            mine, theirs = getattr(entry, field), getattr(other, field)
            if mine != theirs:
                raise ImageFolderError(
                    f"{entry.where}: study {_quote(entry.study_id)} has {field} "
                    f"{_quote(str(mine))} here but {_quote(str(theirs))} at {other.where} "
                    f"(a study's images share one {field})"
                )


def check_patients(entries: Sequence[Entry]) -> None:
    """A patient's studies are all in one split (so the holdout and validation stay
    patient-disjoint).

    Raises:
      ImageFolderError: naming the patient and an image of each split.
    """
    first: dict[str, Entry] = {}
    for entry in entries:
        other = first.setdefault(entry.patient, entry)
        if other.split != entry.split:
            raise ImageFolderError(
                f"patient {_quote(entry.patient)} is in both splits: {other.where} "
                f"({other.split}) and {entry.where} ({entry.split}); a patient's studies must "
                "all be in one split"
            )


def check_splits(entries: Sequence[Entry], source: str, chosen: bool = True) -> None:
    """Neither split may be empty.

    Args:
      chosen: False where the splits were drawn from the patients (a manifest without a
        `split` column), which the message then explains.

    Raises:
      ImageFolderError: naming the empty split.
    """
    for split in SPLITS:
        if not any(e.split == split for e in entries):
            hint = ""
            if not chosen:
                patients = len({e.patient for e in entries})
                hint = (
                    f": without a split column, validation is the patients whose sha256 falls "
                    f"in one fifth, none of these {patients} patients (add a split column, or "
                    "more patients)"
                )
            raise ImageFolderError(f"{source}: no images in the {split} split{hint}")


def label_names(entries: Sequence[Entry], labels_file: str | None) -> tuple[str, ...]:
    """The ClassLabel names: `labels_file`'s, else `order_labels` of train's labels.

    Raises:
      ImageFolderError: an image whose label is not among them (with a `labels.txt`, any
        other label; without, a label seen only in validation).
    """
    if labels_file is not None:
        names = read_labels_file(labels_file)
        why = f"the labels of {labels_file}"
    else:
        names = order_labels(e.label for e in entries if e.split == "train")
        why = f"the labels of train; a {LABELS_FILE} can list more"
    known = set(names)
    for entry in entries:
        if entry.label not in known:
            raise ImageFolderError(
                f"{entry.where}: unknown label {_quote(entry.label)} (expected one of "
                f"{_names(names)}: {why})"
            )
    return names


def group_names(entries: Sequence[Entry]) -> tuple[str, ...] | None:
    """The group ClassLabel names (natural order), or None where the data has no groups."""
    groups = {e.group for e in entries if e.group is not None}
    return tuple(sorted(groups, key=natural_key)) if groups else None


def check_entries(
    entries: Sequence[Entry], source: str, labels_file: str | None, chosen_splits: bool = True
) -> tuple[tuple[str, ...], tuple[str, ...] | None]:
    """Every cross-image check of a source (studies, patients, splits, labels, in that order);
    returns its label and group names."""
    check_studies(entries)
    check_patients(entries)
    check_splits(entries, source, chosen_splits)
    return label_names(entries, labels_file), group_names(entries)


def _pydicom_check(entries: Sequence[Entry]) -> None:
    """A `.dcm` image without pydicom installed is one line saying how to install it."""
    dicom = next((e for e in entries if e.file.lower().endswith(".dcm")), None)
    if dicom is not None:
        try:
            import pydicom  # noqa: F401  (optional: the `dicom` extra)
        except ImportError as e:
            raise ImageFolderError(
                f"{dicom.where}: DICOM images need pydicom: {PYDICOM_HINT}"
            ) from e


def scan(root: str | None = None, manifest: str | None = None) -> Listing:
    """Lists and checks a source: a folder tree (`root`) or a CSV manifest, exactly one.

    Reads names, sizes and modification times (and the manifest and `labels.txt`); decodes no
    image. Raises `ImageFolderError` for every mistake the source can hold but an image that
    does not decode.
    """
    if (root is None) == (manifest is None):
        raise ImageFolderError(
            "image_folder needs exactly one of root=FOLDER (a tree "
            "<split>/<label>/[<group>/]<study>/<image>) or manifest=CSV (path,label,...)"
        )
    if root is not None:
        source = os.path.abspath(os.path.expanduser(os.fspath(root)))
        entries, chosen_splits = scan_folder(source), True
        folder, layout = source, "folder"
    else:
        source = os.path.abspath(os.path.expanduser(os.fspath(manifest)))
        entries, chosen_splits = read_manifest(source)
        folder, layout = os.path.dirname(source), "manifest"
    labels_file = os.path.join(folder, LABELS_FILE)
    labels_file = labels_file if os.path.isfile(labels_file) else None
    names, groups = check_entries(entries, source, labels_file, chosen_splits)
    _pydicom_check(entries)
    return Listing(
        layout=layout,
        source=source,
        entries=tuple(entries),
        label_names=names,
        group_names=groups,
        labels_file=labels_file,
    )


def fingerprint(listing: Listing) -> str:
    """sha256 (hex) of what the dataset is made of: every image's path as given, size,
    modification time, label, study, patient, group and split, and the label names (so a
    changed `labels.txt` counts too)."""
    content = {
        "layout": listing.layout,
        "labels": listing.label_names,
        "labels_file": listing.labels_file is not None,
        "groups": listing.group_names,
        "entries": [
            [e.image_path, e.size, e.mtime_ns, e.label, e.study_id, e.patient, e.group, e.split]
            for e in listing.entries
        ],
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode("utf-8")).hexdigest()


def config_name(listing: Listing) -> str:
    """`<folder-or-manifest-stem>-<10 hex of the fingerprint>`, in the characters TFDS allows
    in a config name (letters, digits, `_`, `-`, `.`, `+`; others become `_`)."""
    base = os.path.basename(listing.source.rstrip(os.sep)) or "root"
    if listing.layout == "manifest":
        base = os.path.splitext(base)[0]
    stem = re.sub(r"[^A-Za-z0-9_.+-]+", "_", base).strip("._-")[:48] or "data"
    return f"{stem}-{fingerprint(listing)[:10]}"


# --------------------------------------------------------------------------------- images


def scale_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Maps [low, high] linearly onto 0..255 (rounded, clipped); low == high gives zeros."""
    if not high > low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values.astype(np.float64) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def sixteen_bit_to_gray(pixels: np.ndarray) -> np.ndarray:
    """A 16-bit grayscale image scaled from its own min..max to 0..255 (constant: zeros)."""
    return scale_to_uint8(pixels, float(pixels.min()), float(pixels.max()))


def _first(value: Any) -> float:
    """The first value of a possibly multi-valued DICOM element, as float."""
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        value = value[0]  # pydicom's MultiValue, or a list
    return float(value)


def apply_window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """DICOM's VOI window (PS3.3 C.11.2.1.2) onto 0..255 uint8.

    `LINEAR` (the default): below c - 0.5 - (w - 1)/2 is 0, above c - 0.5 + (w - 1)/2 is 255,
    linear between; `LINEAR_EXACT`: c - w/2 .. c + w/2; `SIGMOID`: 255 / (1 + exp(-4 (x - c) / w)).
    """
    values = values.astype(np.float64)
    if function == "SIGMOID":
        out = 255.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    elif function == "LINEAR_EXACT":
        out = (values - (center - width / 2)) / width * 255.0
    elif width <= 1:  # LINEAR with w = 1: a threshold at c - 0.5.
        out = np.where(values > center - 0.5, 255.0, 0.0)
    else:
        out = ((values - (center - 0.5)) / (width - 1) + 0.5) * 255.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def dicom_to_gray(dataset: Any, where: str) -> np.ndarray:
    """A pydicom dataset's pixels as (H, W) uint8: modality LUT (`pixel_array * RescaleSlope +
    RescaleIntercept`), then the window (`WindowCenter`/`WindowWidth`, first values where
    multi-valued; else the image's min..max), then MONOCHROME1 inverted (0 = white there).
    RGB DICOMs become luma (ITU-R 601-2, as Pillow's `convert("L")`).

    Raises:
      ImageFolderError: no pixel data, pixel data pydicom cannot decode, several frames, or a
        photometric interpretation with no grayscale meaning here.
    """
    if "PixelData" not in dataset:
        raise ImageFolderError(f"{where}: DICOM without pixel data")
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageFolderError(
            f"{where}: a DICOM of {frames} frames (one image per file is read; export frames "
            "as separate files)"
        )
    try:
        pixels = dataset.pixel_array
    except Exception as e:  # noqa: BLE001  (pydicom raises many kinds for undecodable data)
        syntax = _transfer_syntax(dataset)
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ImageFolderError(
            f"{where}: cannot decode its DICOM pixel data ({syntax}: {reason[:200]})"
        ) from e
    if photometric in ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT", "YBR_PARTIAL_420"):
        rgb = np.asarray(pixels, dtype=np.float64)
        if rgb.ndim != 3 or rgb.shape[-1] != 3:
            raise ImageFolderError(f"{where}: a {photometric} DICOM of shape {rgb.shape}")
        luma = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
        bits = int(dataset.get("BitsStored", 8) or 8)
        return scale_to_uint8(luma, 0.0, float(2**bits - 1))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageFolderError(
            f"{where}: photometric interpretation {photometric} is not read (MONOCHROME1, "
            "MONOCHROME2 and RGB are)"
        )
    if pixels.ndim != 2:
        raise ImageFolderError(f"{where}: a grayscale DICOM of shape {pixels.shape}")
    slope = _first(dataset.get("RescaleSlope", 1) or 1)
    intercept = _first(dataset.get("RescaleIntercept", 0) or 0)
    values = pixels.astype(np.float64) * slope + intercept
    center, width = dataset.get("WindowCenter"), dataset.get("WindowWidth")
    if center is not None and width is not None and _first(width) > 0:
        function = str(dataset.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
        gray = apply_window(values, _first(center), _first(width), function)
    else:
        gray = scale_to_uint8(values, float(values.min()), float(values.max()))
    return 255 - gray if photometric == "MONOCHROME1" else gray


def _transfer_syntax(dataset: Any) -> str:
    meta = getattr(dataset, "file_meta", None)
    uid = getattr(meta, "TransferSyntaxUID", None)
    return f"{uid.name} {uid}" if uid is not None else "unknown transfer syntax"


def _read_dicom(file: str, where: str, stop_before_pixels: bool = False) -> Any:
    """pydicom's dataset of `file`; not DICOM, unreadable or no pydicom is an ImageFolderError."""
    try:
        import pydicom  # optional: the `dicom` extra
        from pydicom.errors import InvalidDicomError
    except ImportError as e:
        raise ImageFolderError(f"{where}: DICOM images need pydicom: {PYDICOM_HINT}") from e
    try:
        return pydicom.dcmread(file, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError as e:
        raise ImageFolderError(
            f"{where}: unreadable image (not a DICOM file: no 'DICM' file meta header)"
        ) from e
    except (OSError, ValueError, EOFError, KeyError, TypeError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ImageFolderError(f"{where}: unreadable image (DICOM: {reason})") from e


def pillow_to_gray(image: Image.Image) -> np.ndarray:
    """A Pillow image as (H, W) uint8: 16-bit grayscale scaled from its own min..max (see
    `sixteen_bit_to_gray`), every other mode as the `mura` builder converts it."""
    if image.mode.startswith("I;16") or image.mode == "I":
        return sixteen_bit_to_gray(np.asarray(image))
    return image_to_grayscale(image)


def read_gray(file: str, where: str) -> np.ndarray:
    """Decodes one image file (PNG, JPEG or DICOM) into (H, W) uint8 grey levels.

    Raises:
      ImageFolderError: the file is missing, truncated, not an image, or of an unsupported
        mode, naming `where`.
    """
    if file.lower().endswith(".dcm"):
        return dicom_to_gray(_read_dicom(file, where), where)
    try:
        with Image.open(file) as image:
            image.load()  # Decodes fully, so a truncated file fails here.
            return pillow_to_gray(image)
    except FileNotFoundError as e:
        raise ImageFolderError(f"{where}: file not found ({file})") from e
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageFolderError(f"{where}: unreadable image ({reason})") from e


def check_header(file: str, where: str) -> None:
    """Reads only an image's header: a file that is not an image Pillow (or, for `.dcm`,
    pydicom) reads, a float image, or compressed DICOM without a decoder fails here, before
    the build writes anything.

    Raises:
      ImageFolderError: naming `where`.
    """
    if file.lower().endswith(".dcm"):
        dataset = _read_dicom(file, where, stop_before_pixels=True)
        meta = getattr(dataset, "file_meta", None)
        uid = getattr(meta, "TransferSyntaxUID", None)
        if uid is not None and uid.is_compressed:
            from pydicom.pixels import get_decoder  # optional: the `dicom` extra

            try:
                available = get_decoder(uid).is_available
            except (NotImplementedError, ValueError):
                available = False
            if not available:
                raise ImageFolderError(
                    f"{where}: compressed DICOM ({uid.name}) that pydicom cannot decode here "
                    "(install a decoder plugin such as pylibjpeg, or convert it to "
                    "uncompressed DICOM or PNG)"
                )
        return
    try:
        with Image.open(file) as image:
            mode = image.mode
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageFolderError(f"{where}: unreadable image ({reason})") from e
    if mode == "F":
        raise ImageFolderError(f"{where}: float images (mode F) are not read")


def make_example(entry: Entry, listing: Listing) -> dict[str, Any]:
    """The features of one image (see `Builder._info`)."""
    example = {
        "image": encode_png(read_gray(entry.file, entry.image_where)),
        "label": listing.label_names.index(entry.label),
        "patient_id": listing.patient_ids[entry.patient],
        "study_id": entry.study_id,
        "image_path": entry.image_path,
    }
    if listing.group_names is not None:
        example["group"] = listing.group_names.index(entry.group)
    return example


def features(listing: Listing) -> tfds.features.FeaturesDict:
    """The feature spec: `image` (H, W, 1) uint8 PNG, `label` in the dataset's label order,
    `patient_id` int64, `study_id` and `image_path` text, and `group` where the data has groups."""
    spec: dict[str, Any] = {
        "image": tfds.features.Image(shape=(None, None, 1), dtype=np.uint8, encoding_format="png"),
        "label": tfds.features.ClassLabel(names=list(listing.label_names)),
        "patient_id": tfds.features.Scalar(dtype=np.int64),
        "study_id": tfds.features.Text(),
        "image_path": tfds.features.Text(),
    }
    if listing.group_names is not None:
        spec["group"] = tfds.features.ClassLabel(names=list(listing.group_names))
    return tfds.features.FeaturesDict(spec)


# -------------------------------------------------------------------------------- builder


class Builder(tfds.core.GeneratorBasedBuilder):
    """Your own images (a folder tree `root=` or a CSV `manifest=`); splits `train` and
    `validation`. The config is named after the source and a fingerprint of its listing."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Folder trees and CSV manifests; PNG, JPEG, 16-bit PNG and DICOM images.",
    }

    def __init__(
        self,
        *,
        root: str | os.PathLike | None = None,
        manifest: str | os.PathLike | None = None,
        config: str | tfds.core.BuilderConfig | None = None,
        file_format: str | None = None,
        **kwargs: Any,
    ):
        """Lists and checks the source, then opens the config its fingerprint names.

        Args:
          root: a folder tree `ROOT/<split>/<label>/[<group>/]<study>/<image>`.
          manifest: a CSV file `path,label[,study_id,patient_id,group,split]`.
          config: optional; if given, must be the name the source gives (a check that the
            source has not changed since that config was built).
          file_format: default `array_record` (readable without TensorFlow).
          **kwargs: `data_dir`, `version`, as for every TFDS builder.

        Raises:
          ImageFolderError: neither or both sources, or anything `scan` finds wrong.
        """
        self.listing = scan(root=root, manifest=manifest)
        name = config_name(self.listing)
        given = getattr(config, "name", config)
        if given is not None and given != name:
            raise ImageFolderError(
                f"config {given!r} is not that of {self.listing.source}, whose listing now "
                f"gives {name!r} (it changed since; leave config out to use it as it is)"
            )
        builder_config = tfds.core.BuilderConfig(
            name=name, description=f"{self.listing.layout} {self.listing.source}"
        )
        super().__init__(config=builder_config, file_format=file_format or "array_record", **kwargs)
        # For pickling (TFDS rebuilds a builder from this): the source, not the config object.
        self._original_state = {
            **{k: v for k, v in self._original_state.items() if k != "config"},
            "root": self.listing.source if root is not None else None,
            "manifest": self.listing.source if manifest is not None else None,
            "file_format": file_format or "array_record",
        }

    def _create_builder_config(self, builder_config, version):
        """The config `__init__` made from the source, as it is (TFDS would look it up among
        `BUILDER_CONFIGS` and warn of a "custom data configuration" on every open)."""
        del version  # The builder's VERSION.
        return builder_config

    def _info(self) -> tfds.core.DatasetInfo:
        """The dataset metadata: the features of `features(listing)` and the source."""
        return self.dataset_info_from_configs(
            features=features(self.listing),
            supervised_keys=("image", "label"),
            metadata=tfds.core.MetadataDict(
                layout=self.listing.layout,
                source=self.listing.source,
                fingerprint=fingerprint(self.listing),
            ),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        """The `train` and `validation` generators. The source is listed again (it must be the
        one this builder was opened on) and every image's header read before any record is
        written."""
        del dl_manager  # The source is local; nothing is downloaded.
        listing = self.listing
        again = scan(
            root=listing.source if listing.layout == "folder" else None,
            manifest=listing.source if listing.layout == "manifest" else None,
        )
        if fingerprint(again) != fingerprint(listing):
            raise ImageFolderError(
                f"{listing.source} changed while it was being built (reopen the builder to "
                "build what it holds now)"
            )
        for entry in listing.entries:
            check_header(entry.file, entry.image_where)
        return {split: self._generate_examples(split) for split in SPLITS}

    def _generate_examples(self, split: str):
        """Yields (image_path, example) for the images of one split, in source order."""
        for entry in self.listing.split_entries(split):
            yield entry.image_path, make_example(entry, self.listing)
