"""Decoded, pre-resized images: `data.cache` = "memory" or "disk" ("none": decode every epoch).

Without a cache every epoch decodes every PNG and resizes it (`decode_image`,
`resize_to_square`), which costs far more than the augmentation that follows. Those two
steps do not depend on the epoch, so a cache does them once per image and stores the result,
uint8 (S, S, 1), for the whole TFDS split:

- "memory": in host RAM, once per process (resized MURA train at 320 px: 36.8k x 100 KB =
  3.8 GB). With grain worker processes the array lives in POSIX shared memory, which the
  workers map instead of copying.
- "disk": as an array_record file (one uncompressed record of S*S bytes per image) plus the
  split's labels and ids, written once and reused by later runs and by grain workers. By
  default beside the TFDS data (`<data_dir>/murajax-cache/`), else in `data.cache_dir`, else
  (a read-only dataset folder) in `$MURAJAX_CACHE/data/`.

A cache entry is keyed by the dataset folder, the TFDS split, the image size and the resize
mode; not by the channels or the normalisation, which are applied after it (a 1- and a
3-channel model share one cache). A cached source (`CachedSource`) gives the same records as
the TFDS source with 'image' already decoded and resized, and the rest of the pipeline treats
it as it treats any image (`resize_to_square` of an S x S image is the identity), so batches
are equal, value for value, with every cache mode: the same augmentation draws from the same
generators on the same uint8 images.

A disk entry is a folder `<split>-<S>px-<resize>/` holding `images.array_record`,
`metadata.npz` and `manifest.json`, built in a temporary folder and renamed into place, so a
reader sees a whole entry or none. An entry that does not match its manifest (a torn copy, a
truncated file, another dataset size) is rebuilt.
"""

import atexit
import concurrent.futures
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from multiprocessing import shared_memory
from typing import Any

import numpy as np
from array_record.python import array_record_module

from murajax.compilation_cache import cache_root
from murajax.config import DataConfig
from murajax.data import preprocess
from murajax.data import sources as sources_lib
from murajax.errors import DataError

DATA_CACHES: tuple[str, ...] = ("none", "memory", "disk")  # `data.cache`
FORMAT_VERSION = 2  # 2: the records' `body_part` became the dataset's `group`
IMAGES_FILE = "images.array_record"
METADATA_FILE = "metadata.npz"
MANIFEST_FILE = "manifest.json"
WRITER_OPTIONS = "group_size:1,uncompressed"  # random access, one image a record
BUILD_CHUNK = 256  # records read and decoded at a time while building
META_FIELDS = ("label", "group", "patient_id", "study_id", "image_path")


# --------------------------------------------------------------------------- pixel stores


class MemoryPixels:
    """uint8 (N, S, S, 1) images in host RAM, optionally in POSIX shared memory.

    Pickles (for grain's worker processes) as the shared-memory block's name when shared;
    a private array would be copied whole into every worker, so `share()` it first.
    """

    def __init__(self, shape: tuple[int, ...], *, shared: bool = False):
        self.shape = tuple(int(s) for s in shape)
        self._shm = None
        self._owner = False
        if shared:
            self._shm = _create_shared_memory(int(np.prod(self.shape)))
            self._owner = True
            self.array = np.ndarray(self.shape, np.uint8, buffer=self._shm.buf)
        else:
            self.array = np.empty(self.shape, np.uint8)

    @property
    def shared(self) -> bool:
        return self._shm is not None

    def share(self) -> None:
        """Moves the images into shared memory (once), so that workers can map them."""
        if self._shm is None:
            shm = _create_shared_memory(self.array.nbytes)
            shared = np.ndarray(self.shape, np.uint8, buffer=shm.buf)
            shared[...] = self.array
            self._shm, self._owner, self.array = shm, True, shared

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, positions: Sequence[int]) -> np.ndarray:
        return self.array[np.asarray(positions, dtype=np.int64)]

    def release(self) -> None:
        """Frees the shared-memory block (owner only); the object is unusable afterwards."""
        if self._shm is not None:
            self.array = np.empty((0, *self.shape[1:]), np.uint8)
            self._shm.close()
            if self._owner:
                try:
                    self._shm.unlink()
                except FileNotFoundError:
                    pass
            self._shm = None

    def __getstate__(self) -> dict[str, Any]:
        if self._shm is None:
            return {"shape": self.shape, "array": self.array}
        return {"shape": self.shape, "shm_name": self._shm.name}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.shape = state["shape"]
        self._owner = False
        if "array" in state:
            self._shm, self.array = None, state["array"]
        else:
            self._shm = shared_memory.SharedMemory(name=state["shm_name"])
            self.array = np.ndarray(self.shape, np.uint8, buffer=self._shm.buf)


_SHARED: list[MemoryPixels] = []


def _release_shared() -> None:
    for pixels in _SHARED:
        pixels.release()
    _SHARED.clear()


atexit.register(_release_shared)


def _create_shared_memory(nbytes: int) -> Any:
    shm_dir = "/dev/shm"
    if os.path.isdir(shm_dir):
        stat = os.statvfs(shm_dir)
        free = stat.f_bavail * stat.f_frsize
        if nbytes > free:  # writing past a full tmpfs would kill the process (SIGBUS)
            raise DataError(
                f"data.cache='memory' with data.num_workers > 0 needs {_gb(nbytes)} of shared "
                f"memory but {shm_dir} has {_gb(free)} free: use data.cache='disk' or "
                "data.num_workers=0"
            )
    return shared_memory.SharedMemory(create=True, size=max(1, nbytes))


class DiskPixels:
    """uint8 (N, S, S, 1) images read from an array_record file (one reader per thread)."""

    def __init__(self, path: str, shape: tuple[int, ...]):
        self.path = path
        self.shape = tuple(int(s) for s in shape)
        self._local = threading.local()

    def __len__(self) -> int:
        return self.shape[0]

    def _reader(self) -> Any:
        reader = getattr(self._local, "reader", None)
        if reader is None:
            reader = array_record_module.ArrayRecordReader(self.path, "readahead_buffer_size:0")
            self._local.reader = reader
        return reader

    def read(self, positions: Sequence[int]) -> np.ndarray:
        positions = [int(p) for p in positions]
        if not positions:
            return np.zeros((0, *self.shape[1:]), np.uint8)
        records = self._reader().read(positions)
        flat = np.frombuffer(b"".join(records), dtype=np.uint8)
        return flat.reshape(len(positions), *self.shape[1:])

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "shape": self.shape}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["shape"])


# --------------------------------------------------------------------------- the source


class CachedSource(Sequence):
    """A random-access source like the TFDS one, whose 'image' is the decoded, resized
    uint8 (S, S, 1) image. Carries the original's `dataset_info` and `split` (if any)."""

    def __init__(
        self,
        pixels: MemoryPixels | DiskPixels,
        meta: Mapping[str, np.ndarray],
        *,
        dataset_info: Any = None,
        split: str | None = None,
    ):
        self.pixels = pixels
        self.meta = {k: np.asarray(meta[k]) for k in META_FIELDS}
        self.dataset_info = dataset_info
        self.split = split

    @property
    def image_size(self) -> int:
        return self.pixels.shape[1]

    def __len__(self) -> int:
        return len(self.pixels)

    def _records(self, positions: Sequence[int], images: np.ndarray) -> list[dict[str, Any]]:
        m = self.meta
        return [
            {
                "image": images[k],
                "label": int(m["label"][p]),
                "group": int(m["group"][p]),
                "patient_id": int(m["patient_id"][p]),
                "study_id": str(m["study_id"][p]),
                "image_path": str(m["image_path"][p]),
            }
            for k, p in enumerate(positions)
        ]

    def __getitems__(self, positions: Sequence[int]) -> list[dict[str, Any]]:
        positions = [int(p) for p in positions]
        return self._records(positions, self.pixels.read(positions))

    def __getitem__(self, position: int) -> dict[str, Any]:  # type: ignore[override]
        if not -len(self) <= position < len(self):
            raise IndexError(position)
        return self.__getitems__([position % len(self)])[0]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for start in range(0, len(self), BUILD_CHUNK):
            yield from self.__getitems__(range(start, min(start + BUILD_CHUNK, len(self))))


# --------------------------------------------------------------------------- building


def _decode_resize(value: Any, size: int, resize: str) -> np.ndarray:
    return preprocess.resize_to_square(preprocess.decode_image(value), size, resize)


def iter_resized(
    source: sources_lib.Source, size: int, resize: str, *, threads: int | None = None
) -> Iterator[tuple[list[Mapping[str, Any]], list[np.ndarray]]]:
    """Reads `source` in order, in chunks, and yields each chunk's records and their decoded,
    resized uint8 (S, S, 1) images (decoded on `threads` threads: Pillow releases the GIL)."""
    threads = threads or min(8, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for start in range(0, len(source), BUILD_CHUNK):
            records = sources_lib.read_records(
                source, range(start, min(start + BUILD_CHUNK, len(source)))
            )
            images = list(pool.map(lambda r: _decode_resize(r["image"], size, resize), records))
            yield records, images


def _meta_of(records: Iterable[Mapping[str, Any]], start: int) -> dict[str, list]:
    """The metadata of `records`, the first of which is record `start` of its source."""
    meta: dict[str, list] = {k: [] for k in META_FIELDS}
    for position, r in enumerate(records, start):
        meta["label"].append(int(r["label"]))
        meta["group"].append(sources_lib.example_group(r))
        meta["patient_id"].append(int(r.get("patient_id", -1)))
        meta["study_id"].append(sources_lib.example_study(r, position))
        meta["image_path"].append(sources_lib.example_text(r, "image_path"))
    return meta


def _meta_arrays(meta: Mapping[str, list]) -> dict[str, np.ndarray]:
    return {
        "label": np.asarray(meta["label"], dtype=np.int32),
        "group": np.asarray(meta["group"], dtype=np.int32),
        "patient_id": np.asarray(meta["patient_id"], dtype=np.int64),
        "study_id": np.asarray(meta["study_id"], dtype=str),
        "image_path": np.asarray(meta["image_path"], dtype=str),
    }


def _gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:.2f} GB" if nbytes >= 1e8 else f"{nbytes / 1e6:.1f} MB"


def _available_memory() -> int | None:
    """MemAvailable from /proc/meminfo, in bytes (None where there is none)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def build_memory(
    source: sources_lib.Source, size: int, resize: str, *, shared: bool, label: str
) -> CachedSource:
    """Decodes and resizes every image of `source` once into RAM (shared memory if `shared`)."""
    nbytes = len(source) * size * size
    available = _available_memory()
    if available is not None and nbytes > 0.8 * available:
        raise DataError(
            f"data.cache='memory' needs {_gb(nbytes)} for {label} at {size} px but "
            f"{_gb(available)} of RAM is available: use data.cache='disk' or a smaller "
            "data.image_size"
        )
    print(
        f"murajax: caching {label} at {size} px ({resize}) in memory: {len(source)} images, "
        f"{_gb(nbytes)} (once per process) ...",
        flush=True,
    )
    start = time.perf_counter()
    pixels = MemoryPixels((len(source), size, size, 1), shared=shared)
    if shared:
        _SHARED.append(pixels)
    meta: dict[str, list] = {k: [] for k in META_FIELDS}
    row = 0
    for records, images in iter_resized(source, size, resize):
        pixels.array[row : row + len(images)] = np.stack(images)
        row += len(images)
        for key, values in _meta_of(records, row - len(images)).items():
            meta[key] += values
    print(f"murajax: cached {label} in {time.perf_counter() - start:.1f} s", flush=True)
    return _wrap(pixels, _meta_arrays(meta), source)


def _wrap(
    pixels: MemoryPixels | DiskPixels, meta: Mapping[str, np.ndarray], source: Any
) -> CachedSource:
    return CachedSource(
        pixels,
        meta,
        dataset_info=getattr(source, "dataset_info", None),
        split=getattr(source, "split", None),
    )


# --------------------------------------------------------------------------- disk entries


@dataclasses.dataclass(frozen=True)
class DiskKey:
    """What a disk cache entry holds: a TFDS split at an image size and resize mode."""

    dataset: str  # the dataset's prepared folder (name/config/version)
    split: str
    image_size: int
    resize: str
    num_records: int

    @property
    def name(self) -> str:
        return f"{self.split}-{self.image_size}px-{self.resize}"


def tfds_location(source: Any) -> tuple[str, str] | None:
    """(prepared dataset folder, split) of a TFDS data source, None for other sources."""
    info = getattr(source, "dataset_info", None)
    data_dir = getattr(info, "data_dir", None)
    split = getattr(source, "split", None)
    if not data_dir or split is None:
        return None
    return os.path.abspath(str(data_dir)), str(split)


def cache_roots(data_dir: str, cache_dir: str | None) -> list[str]:
    """Folders that may hold a dataset's disk cache, in order of preference: `cache_dir`
    (if set), else beside the data, then `$MURAJAX_CACHE/data/` (a read-only data folder)."""
    digest = hashlib.sha256(data_dir.encode()).hexdigest()[:12]
    tail = "-".join(data_dir.rstrip("/").split("/")[-3:]) + f"-{digest}"
    if cache_dir:
        return [os.path.join(os.path.abspath(os.path.expanduser(cache_dir)), tail)]
    return [
        os.path.join(data_dir, "murajax-cache"),
        os.path.join(cache_root(), "data", tail),
    ]


def _manifest(key: DiskKey, file_bytes: int) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        **dataclasses.asdict(key),
        "record_bytes": key.image_size * key.image_size,
        "file_bytes": file_bytes,
    }


def check_entry(folder: str, key: DiskKey) -> str | None:
    """None if `folder` holds a whole, matching entry for `key`; else what is wrong with it."""
    try:
        with open(os.path.join(folder, MANIFEST_FILE)) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError) as error:
        return f"unreadable manifest ({type(error).__name__})"
    images = os.path.join(folder, IMAGES_FILE)
    try:
        file_bytes = os.path.getsize(images)
    except OSError:
        return f"{IMAGES_FILE} is missing"
    if manifest != _manifest(key, file_bytes):
        return "its manifest does not match (another dataset, size or a torn file)"
    try:
        reader = array_record_module.ArrayRecordReader(images, "readahead_buffer_size:0")
        try:
            count = reader.num_records()
            last = reader.read([count - 1])[0] if count else b""
        finally:
            reader.close()
        with np.load(os.path.join(folder, METADATA_FILE), allow_pickle=False) as meta:
            lengths = {len(meta[k]) for k in META_FIELDS}
    except Exception as error:  # noqa: BLE001 - any reader failure means: rebuild
        return f"unreadable ({type(error).__name__}: {error})".splitlines()[0]
    if count != key.num_records or lengths != {key.num_records}:
        return f"it holds {count} images, not {key.num_records}"
    if count and len(last) != key.image_size * key.image_size:
        return "its records have the wrong size"
    return None


def load_entry(folder: str, key: DiskKey, source: Any) -> CachedSource:
    """A `CachedSource` over the (checked) disk entry in `folder`."""
    with np.load(os.path.join(folder, METADATA_FILE), allow_pickle=False) as data:
        meta = {k: data[k] for k in META_FIELDS}
    size = key.image_size
    pixels = DiskPixels(os.path.join(folder, IMAGES_FILE), (key.num_records, size, size, 1))
    return _wrap(pixels, meta, source)


def write_entry(folder: str, key: DiskKey, source: sources_lib.Source, label: str) -> None:
    """Builds the entry for `key` from `source` in a temporary folder beside `folder`, then
    renames it into place (replacing a broken entry; keeping another process's whole one)."""
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{key.name}.tmp-")
    try:
        nbytes = key.num_records * key.image_size * key.image_size
        print(
            f"murajax: caching {label} at {key.image_size} px ({key.resize}) in {folder}: "
            f"{key.num_records} images, {_gb(nbytes)} (once) ...",
            flush=True,
        )
        start = time.perf_counter()
        images_path = os.path.join(tmp, IMAGES_FILE)
        writer = array_record_module.ArrayRecordWriter(images_path, WRITER_OPTIONS)
        meta: dict[str, list] = {k: [] for k in META_FIELDS}
        try:
            for records, images in iter_resized(source, key.image_size, key.resize):
                for image in images:
                    writer.write(np.ascontiguousarray(image).tobytes())
                for field, values in _meta_of(records, len(meta["label"])).items():
                    meta[field] += values
        finally:
            writer.close()
        with open(os.path.join(tmp, METADATA_FILE), "wb") as f:
            np.savez(f, **_meta_arrays(meta))
        manifest = _manifest(key, os.path.getsize(images_path))
        with open(os.path.join(tmp, MANIFEST_FILE), "w") as f:
            json.dump(manifest, f, indent=1)
        if os.path.lexists(folder):  # a broken entry (whole ones are never rebuilt)
            stale = tempfile.mkdtemp(dir=parent, prefix=f".{key.name}.stale-")
            try:
                os.replace(folder, os.path.join(stale, "entry"))
            except OSError:
                pass
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, folder)
        except OSError:
            if check_entry(folder, key) is not None:  # not another process's whole entry
                raise
        print(f"murajax: cached {label} in {time.perf_counter() - start:.1f} s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def open_disk(
    source: sources_lib.Source, size: int, resize: str, cache_dir: str | None, label: str
) -> CachedSource:
    """The disk cache of a TFDS `source` at `size`/`resize`: reused if whole, else built."""
    location = tfds_location(source)
    if location is None:
        raise DataError(
            "data.cache='disk' needs a TFDS dataset (a source with dataset_info): "
            "use data.cache='memory' for other sources"
        )
    data_dir, split = location
    key = DiskKey(data_dir, split, size, resize, len(source))
    roots = cache_roots(data_dir, cache_dir)
    for root in roots:  # an existing whole entry, wherever it is
        folder = os.path.join(root, key.name)
        if check_entry(folder, key) is None:
            return load_entry(folder, key, source)
    errors = []
    for root in roots:
        folder = os.path.join(root, key.name)
        problem = check_entry(folder, key)
        if problem != "missing":
            print(f"murajax: rebuilding the image cache {folder}: {problem}", flush=True)
        try:
            write_entry(folder, key, source, label)
        except OSError as error:  # e.g. a read-only dataset folder: try the next root
            errors.append(f"{root}: {error.strerror or error}")
            continue
        problem = check_entry(folder, key)
        if problem is None:
            return load_entry(folder, key, source)
        errors.append(f"{folder}: {problem}")
    raise DataError(f"data.cache='disk': cannot write the image cache ({'; '.join(errors)})")


# --------------------------------------------------------------------------- entry point

_MEMORY: dict[tuple, tuple[Any, CachedSource]] = {}
_DISK: dict[tuple, CachedSource] = {}


def _label(source: Any) -> str:
    location = tfds_location(source)
    if location is None:
        return "the split"
    parts = location[0].rstrip("/").split("/")
    return f"{location[1]!r} of {'/'.join(parts[-3:])}"


def cached_source(
    source: sources_lib.Source, config: DataConfig, *, shared: bool = False
) -> sources_lib.Source:
    """`source` with its images decoded and resized once as `config.cache` says ('none':
    `source` itself). `shared`: grain worker processes will read it (a memory cache then
    lives in shared memory). Cached per process: the train and holdout pipelines, and every
    evaluation, share one cache of the TFDS train split."""
    if config.cache == "none":
        return source
    size, resize = config.image_size, config.resize
    location = tfds_location(source)
    if config.cache == "memory":
        identity = location if location is not None else ("id", id(source), len(source))
        key = (identity, size, resize)
        if key not in _MEMORY:
            cached = build_memory(source, size, resize, shared=shared, label=_label(source))
            _MEMORY[key] = (source, cached)  # holding `source` keeps its id() unique
        cached = _MEMORY[key][1]
        if shared and isinstance(cached.pixels, MemoryPixels) and not cached.pixels.shared:
            cached.pixels.share()
            _SHARED.append(cached.pixels)
        return cached
    if config.cache == "disk":
        key = (location, size, resize, config.cache_dir)
        if key not in _DISK or location is None:
            _DISK[key] = open_disk(source, size, resize, config.cache_dir, _label(source))
        return _DISK[key]
    raise ValueError(f"data.cache={config.cache!r}: expected 'none', 'memory' or 'disk'")


def clear() -> None:
    """Forgets this process's caches and frees their memory (disk entries stay on disk)."""
    for _, cached in _MEMORY.values():
        if isinstance(cached.pixels, MemoryPixels):
            cached.pixels.release()
            if cached.pixels in _SHARED:
                _SHARED.remove(cached.pixels)
    _MEMORY.clear()
    _DISK.clear()
