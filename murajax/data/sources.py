"""Opening the TFDS dataset and reading its per-image metadata without decoding images.

A *source* is any random-access sequence of feature dicts, as `tfds.data_source` returns:
`{'image': PNG bytes or uint8 (H, W, 1), 'label': int, 'patient_id': int, 'study_id': bytes |
str, 'image_path': bytes | str}` and the dataset's grouping feature, if any (`body_part` in
MURA, `group` in `image_folder`; see `GROUP_FEATURES`). `open_sources` gives the TFDS splits
`train` and `validation` as such sources, with image decoding skipped (the pipeline decodes
PNGs itself, with Pillow, where it also resizes them).

Reading metadata (labels, patients, studies) visits every record of a split once: the records
are read from disk and their protos parsed, but no PNG is decoded (measured: 3,118
`mura_synthetic` records in 0.25 s, about 80 us a record). For the real MURA train split
(36,808 records, about 3 GB of PNGs) that is one sequential read of the split's files: a few
seconds from the page cache, tens of seconds from a cold disk. The result is cached in memory
per process and, where the dataset folder is writable, in a small file beside the data
(`murajax-metadata-<split>.npz`, a few hundred KB), so that later runs skip the scan.
"""

import dataclasses
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from google.protobuf import json_format

from murajax.config import DataConfig
from murajax.errors import DataError

Source = Sequence[Mapping[str, Any]]
TFDS_SPLITS: tuple[str, ...] = ("train", "validation")
_CACHE_VERSION = 2  # 2: `body_part` became the dataset's `group`


GROUP_FEATURES: tuple[str, ...] = ("body_part", "group")
"""The ClassLabel features that group a dataset's studies (MURA's body parts; `image_folder`'s
groups), in the order they are looked for: a dataset has one or none."""


def group_feature(features: Mapping[str, Any] | None) -> str | None:
    """The grouping feature among a dataset's `features` (see `GROUP_FEATURES`), or None."""
    for name in GROUP_FEATURES:
        if features is not None and name in features:
            return name
    return None


@dataclasses.dataclass(frozen=True)
class Metadata:
    """Per-image metadata of one source, in record order."""

    label: np.ndarray  # int32 (N,), the class index (MURA: 0 = normal, 1 = abnormal)
    group: np.ndarray  # int32 (N,), the grouping feature's index (MURA's body part); 0 without
    patient_id: np.ndarray  # int64 (N,)
    study_id: np.ndarray  # str (N,)

    def __len__(self) -> int:
        return len(self.label)

    def take(self, positions: np.ndarray) -> "Metadata":
        """The metadata of the records at `positions`."""
        return Metadata(*(getattr(self, f.name)[positions] for f in dataclasses.fields(self)))


def as_str(value: bytes | str | np.ndarray) -> str:
    """A TFDS text feature (bytes, str or a 0-d array of either) as str."""
    if isinstance(value, np.ndarray):
        value = value.item()
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def source_features(source: Source) -> Mapping[str, Any] | None:
    """The TFDS features of `source` where it carries dataset info, else None."""
    info = getattr(source, "dataset_info", None)
    return getattr(info, "features", None)


def example_group(example: Mapping[str, Any]) -> int:
    """The grouping feature's index of one record (the first of `GROUP_FEATURES` it has), or
    0 for a dataset without groups."""
    feature = group_feature(example)
    return int(example[feature]) if feature else 0


def example_study(example: Mapping[str, Any], position: int) -> str:
    """A record's `study_id`; `image<position>` in a dataset without studies (one image per
    study, as `read_metadata` numbers them)."""
    return as_str(example["study_id"]) if "study_id" in example else f"image{position}"


def example_text(example: Mapping[str, Any], key: str) -> str:
    """A record's text feature `key` (`image_path`), or "" where the dataset has none."""
    return as_str(example[key]) if key in example else ""


def read_metadata(source: Source, chunk: int = 1024) -> Metadata:
    """Reads label, group, patient and study of every record, in order.

    Uses the source's batched `__getitems__` where it has one. The images are not decoded
    when the source skips image decoding (as `open_sources`' sources do). A dataset without
    `study_id` has one image per study (the record's position), one without `patient_id` one
    study per patient.
    """
    getitems = getattr(source, "__getitems__", None)
    labels, groups, patients, studies = [], [], [], []
    for start in range(0, len(source), chunk):
        keys = list(range(start, min(start + chunk, len(source))))
        examples = getitems(keys) if getitems else [source[k] for k in keys]
        for key, example in zip(keys, examples, strict=True):
            labels.append(int(example["label"]))
            groups.append(example_group(example))
            patients.append(int(example["patient_id"]) if "patient_id" in example else -1)
            studies.append(example_study(example, key))
    patient_id = np.asarray(patients, dtype=np.int64)
    study_id = np.asarray(studies, dtype=str)
    if len(patient_id) and (patient_id < 0).all():  # no patients: each study its own
        patient_id = np.unique(study_id, return_inverse=True)[1].astype(np.int64)
    return Metadata(
        label=np.asarray(labels, dtype=np.int32),
        group=np.asarray(groups, dtype=np.int32),
        patient_id=patient_id,
        study_id=study_id,
    )


def _load_cached(path: str, num_records: int) -> Metadata | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            if int(data["version"]) != _CACHE_VERSION or len(data["label"]) != num_records:
                return None
            return Metadata(
                label=data["label"],
                group=data["group"],
                patient_id=data["patient_id"],
                study_id=data["study_id"],
            )
    except (OSError, KeyError, ValueError):
        return None


def _save_cached(path: str, metadata: Metadata) -> None:
    """Writes the cache atomically; a read-only dataset folder is not an error."""
    try:
        folder = os.path.dirname(path)
        with tempfile.NamedTemporaryFile(dir=folder, suffix=".npz", delete=False) as f:
            np.savez(f, version=_CACHE_VERSION, **dataclasses.asdict(metadata))
        os.replace(f.name, path)
    except OSError:
        pass


_METADATA_CACHE: dict[tuple[str, str], Metadata] = {}


def _tfds_metadata(source: Source, data_dir: str, split: str) -> Metadata:
    """Metadata of a prepared TFDS split: from memory, the cache file, or one scan."""
    key = (data_dir, split)
    if key not in _METADATA_CACHE:
        path = os.path.join(data_dir, f"murajax-metadata-{split}.npz")
        cached = _load_cached(path, len(source))
        if cached is None:
            cached = read_metadata(source)
            _save_cached(path, cached)
        _METADATA_CACHE[key] = cached
    return _METADATA_CACHE[key]


def metadata(source: Source) -> Metadata:
    """Metadata of `source`: cached for TFDS sources (see the module docstring), else read."""
    info = getattr(source, "dataset_info", None)
    split = getattr(source, "split", None)
    data_dir = getattr(info, "data_dir", None)
    if data_dir and split is not None:
        return _tfds_metadata(source, str(data_dir), str(split))
    return read_metadata(source)


def _register_datasets() -> str | None:
    """Imports `tfds_mura` so that `mura` and `mura_synthetic` are registered.

    Returns the import error's text if that failed (reported only if the name is unknown).
    """
    try:
        import tfds_mura  # noqa: F401  (late: the builders import TensorFlow; optional)
    except ImportError as e:
        return f"{type(e).__name__}: {e}"
    return None


IMAGE_FOLDER = "image_folder"
"""The dataset of your own images (`tfds_mura.image_folder`): its source is `data.manual_dir`
(a folder tree) or `data.manifest` (a CSV), passed to its builder as `root=` / `manifest=`."""


def _reads_manual_dir(name: str) -> bool:
    """Whether dataset `name` takes a manual download (MURA's `MANUAL_DOWNLOAD_INSTRUCTIONS`);
    True for a name TFDS does not know, whose error `tfds.builder` then gives."""
    try:
        return bool(tfds.builder_cls(name).MANUAL_DOWNLOAD_INSTRUCTIONS)
    except Exception:  # noqa: BLE001  (an unknown name: tfds.builder says so)
        return True


def _source_kwargs(name: str, manual_dir: str | None, manifest: str | None) -> dict[str, str]:
    """The builder arguments that say where `image_folder`'s images are (`root=` or
    `manifest=`); {} for other datasets. Raises `DataError` for neither or both with
    `image_folder`, a manifest for another dataset, or a manual_dir for one that reads none."""
    base = name.split("/")[0]
    if base == IMAGE_FOLDER:
        if manual_dir and manifest:
            raise DataError(
                "data.dataset='image_folder' reads one source: set data.manual_dir (a folder"
                " tree) or data.manifest (a CSV), not both"
            )
        if not manual_dir and not manifest:
            raise DataError(
                "data.dataset='image_folder' needs your images: set data.manual_dir=ROOT (a"
                " folder tree ROOT/train|valid/<label>/[<group>/]<study>/<image>) or"
                " data.manifest=FILE (a CSV path,label[,study_id,patient_id,group,split])"
            )
        return {"root": manual_dir} if manual_dir else {"manifest": manifest}
    if manifest:
        raise DataError(
            f"data.manifest is set but dataset {name!r} reads no manifest (only"
            " 'image_folder' does): unset it, or set data.dataset=image_folder"
        )
    if manual_dir and not _reads_manual_dir(base):
        raise DataError(
            f"data.manual_dir is set but dataset {name!r} reads no manual download ('mura'"
            " and 'image_folder' do): unset it, or set the dataset that reads it"
        )
    return {}


def _source_errors() -> tuple[type[Exception], ...]:
    """`image_folder`'s `ImageFolderError` (a bad folder tree or manifest), where importable."""
    try:
        from tfds_mura.image_folder.image_folder_dataset_builder import (  # late: TensorFlow
            ImageFolderError,
        )
    except ImportError:
        return ()
    return (ImageFolderError,)


def _builder(
    name: str, data_dir: str | None, manual_dir: str | None = None, manifest: str | None = None
) -> tfds.core.DatasetBuilder:
    """The TFDS builder of dataset `name` in `data_dir`; `image_folder`'s is given its source,
    `manual_dir` (a folder tree) or `manifest` (a CSV), which it lists and checks here."""
    import_error = _register_datasets()
    kwargs = _source_kwargs(name, manual_dir, manifest)
    try:
        return tfds.builder(name, data_dir=data_dir, file_format="array_record", **kwargs)
    except _source_errors() as e:
        field = "manual_dir" if "root" in kwargs else "manifest"
        value = kwargs.get("root", kwargs.get("manifest"))
        raise DataError(f"dataset {name!r} (data.{field}={value!r}): {_tfds_reason(e)}") from e
    except tfds.core.registered.DatasetNotFoundError as e:
        hint = f" (import tfds_mura failed: {import_error})" if import_error else ""
        raise DataError(
            f"unknown dataset {name!r}{hint}: expected a registered TFDS dataset, such as"
            " 'mura' (real MURA, manual download), 'mura_synthetic' or 'chest_synthetic'"
            " (offline), or 'image_folder' (your own images)"
        ) from e
    except (ValueError, OSError, json_format.ParseError) as e:
        # An unknown config ("mura_synthetic/nope"), or a prepared dataset whose
        # dataset_info.json is damaged or unreadable.
        where = f" in {data_dir}" if data_dir else ""
        reason = _tfds_reason(e).rstrip(".")
        if isinstance(e, json_format.ParseError):
            folder = os.path.join(data_dir, name.split("/")[0]) if data_dir else name
            raise DataError(
                f"dataset {name!r}{where} is damaged: its dataset_info.json cannot be read"
                f" ({reason}); delete {folder} to rebuild it"
            ) from e
        raise DataError(f"cannot open dataset {name!r}{where}: {reason}{_configs(name)}") from e


def builder(config: DataConfig) -> tfds.core.DatasetBuilder:
    """The TFDS builder of `config.dataset` (not prepared: its info and features only).
    Raises `DataError` for an unknown or damaged dataset."""
    return _builder(config.dataset, config.data_dir, config.manual_dir, config.manifest)


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0].strip()


_TFDS_PREFIX = re.compile(r'^Failed to construct dataset "[^"]*", builder_kwargs "\{.*?\}": ')


def _tfds_reason(error: Exception) -> str:
    """The first line of a TFDS error without its `Failed to construct dataset ...` prefix
    (and without a dangling "Here are ... whose name closely match:" tail)."""
    line = _TFDS_PREFIX.sub("", _first_line(error))
    return re.sub(r"\s*Here are \d+ BuilderConfigs .*$", "", line)


def _configs(name: str) -> str:
    """` (its configs: 'a', 'b')` for a `dataset/config` name whose dataset has configs."""
    if "/" not in name:
        return ""
    try:
        configs = [c.name for c in tfds.builder_cls(name.split("/")[0]).BUILDER_CONFIGS]
    except Exception:  # noqa: BLE001  (a hint only)
        return ""
    return f" (its configs: {', '.join(repr(c) for c in configs)})" if configs else ""


def _build_errors() -> tuple[type[Exception], ...]:
    """What a failed `download_and_prepare` raises for a bad dataset tree or data_dir:
    TFDS's AssertionError (no manual dir), OSError (a missing file, an unwritable or
    non-folder data_dir), the `mura` builder's `MuraFormatError` (a malformed tree) and
    `image_folder`'s `ImageFolderError` (an unreadable image, a source changed mid-build)."""
    errors: tuple[type[Exception], ...] = (AssertionError, OSError, *_source_errors())
    try:
        from tfds_mura.mura.mura_dataset_builder import MuraFormatError  # late: TensorFlow
    except ImportError:
        return errors
    return (*errors, MuraFormatError)


def build_failure(config: DataConfig, where: str, error: Exception) -> str:
    """The one-line message of a failed build of `config.dataset` into `where`."""
    manual = f"manual_dir={config.manual_dir!r}"
    if config.dataset.split("/")[0] == IMAGE_FOLDER and config.manifest:
        manual = f"manifest={config.manifest!r}"
    if isinstance(error, OSError) and not isinstance(error, FileNotFoundError):
        return (
            f"building {config.dataset!r} into {where} failed: {_first_line(error)}"
            " (data.data_dir must be a folder you can write to)"
        )
    if isinstance(error, (AssertionError, FileNotFoundError)):
        return f"building {config.dataset!r} failed ({manual}): {_first_line(error)}"
    fix = "the manual dir"
    if config.dataset.split("/")[0] == IMAGE_FOLDER:
        fix = "the manifest" if config.manifest else "the folder tree"
    return (
        f"building {config.dataset!r} failed ({manual}): {_first_line(error)}"
        f" (fix or replace it in {fix}, then rerun)"
    )


def prepare(config: DataConfig) -> tfds.core.DatasetBuilder:
    """Returns the dataset's builder, building it first if it is missing and allowed.

    Builds with `download_and_prepare` into `config.data_dir` in the array_record format,
    reading a manual download from `config.manual_dir` (real MURA), or your own images from
    `config.manual_dir` / `config.manifest` (`image_folder`). Raises `DataError` if the
    dataset is missing and `config.build_if_missing` is False, or if building fails.
    """
    builder = _builder(config.dataset, config.data_dir, config.manual_dir, config.manifest)
    if builder.is_prepared():
        return builder
    where = builder.data_dir
    if not config.build_if_missing:
        raise DataError(
            f"dataset {config.dataset!r} is not prepared in {where}; "
            "set data.build_if_missing=True or build it with tfds"
        )
    print(f"murajax: building {config.dataset!r} into {where} (first use) ...", flush=True)
    download_config = tfds.download.DownloadConfig(manual_dir=config.manual_dir)
    try:
        builder.download_and_prepare(download_config=download_config)
    except _build_errors() as e:
        raise DataError(build_failure(config, str(where), e)) from e
    return builder


def check_readable(
    name: str, folder: str, split: str, source: Source, shards: Sequence[int]
) -> None:
    """Reads the first record of each shard of a split, so that record files that are
    missing or damaged (a half-deleted or half-copied dataset folder) are one `DataError`
    here rather than an error from deep inside the input pipeline mid-training."""
    start = 0
    for length in shards:
        if length:
            try:
                source[start]
            except (RuntimeError, OSError, ValueError) as e:
                raise DataError(
                    f"dataset {name!r} in {folder} is damaged: reading its {split!r} split"
                    f" failed ({_first_line(e)}); delete {folder} to rebuild it"
                ) from e
        start += length


_OPENED: dict[tuple[str | None, ...], dict[str, Source]] = {}


def open_sources(config: DataConfig) -> dict[str, Source]:
    """The TFDS splits 'train' and 'validation' as random-access sources, images undecoded.

    Builds the dataset first if needed (see `prepare`). Opened once per process and
    (dataset, data_dir); the sources pickle, so grain workers can read them.
    """
    key = (config.dataset, config.data_dir, config.manual_dir, config.manifest)
    if key not in _OPENED:
        builder = prepare(config)
        decoders = {"image": tfds.decode.SkipDecoding()}
        opened = {s: builder.as_data_source(split=s, decoders=decoders) for s in TFDS_SPLITS}
        for split, source in opened.items():
            shards = builder.info.splits[split].shard_lengths
            check_readable(config.dataset, str(builder.data_dir), split, source, shards)
        _OPENED[key] = opened
    return _OPENED[key]


def class_names(source: Source, feature: str) -> tuple[str, ...] | None:
    """The ClassLabel names of `feature` where the source carries TFDS dataset info."""
    info = getattr(source, "dataset_info", None)
    try:
        return tuple(info.features[feature].names)
    except (AttributeError, KeyError, TypeError):
        return None


def read_records(source: Source, positions: Sequence[int]) -> list[Mapping[str, Any]]:
    """Reads records by position, batched where the source supports it (`__getitems__`)."""
    positions = [int(p) for p in positions]
    getitems = getattr(source, "__getitems__", None)
    return list(getitems(positions)) if getitems else [source[p] for p in positions]
