"""grain pipelines over random-access sources: endless shuffled train batches, padded eval batches.

Determinism. Both pipelines are grain `MapDataset`s, random access all the way to the batch,
so batch k is a pure function of (seed, k), whatever the number of worker processes, devices
or hosts:

    split record positions                 (np.int64, ascending; see `splits.py`)
    .shuffle(seed).repeat()                train only: a new global permutation every epoch
    .map_with_index(attach_index)          {'index': global stream index, 'record': position}
    .batch(global_batch_size)              indices only, nothing is read yet
    .map(ProcessSlice(p, P))               this process's rows [p*B/P, (p+1)*B/P)
    .map(LoadTrainBatch | LoadEvalBatch)   read + decode + resize (+ augment) + normalise
    .to_iter_dataset(ReadOptions) [.mp_prefetch(MultiprocessingOptions)]

With `data.cache` 'memory' or 'disk' (`cache.py`) the source's records already hold the
decoded, resized uint8 images, built once, so "read + decode + resize" is a lookup and the
batches are the same as without the cache.

Each process reads only its own share of a global batch. An image's augmentation draws from
`np.random.default_rng([seed, epoch, position in epoch])`, so it does not depend on which
thread, worker or host prepares it. Worker processes split the stream by whole batches, and
grain hands their batches back in order.
"""

import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

import grain
import numpy as np
from absl import flags

from murajax.config import DataConfig
from murajax.data import cache, preprocess, splits
from murajax.data import sources as sources_lib
from murajax.data.sources import read_records

SHUFFLE_STREAM = 0  # SeedSequence spawn keys: the shuffle and the augmentation use
AUGMENT_STREAM = 1  # independent streams derived from the one experiment seed
DEFAULT_READ_THREADS = 2
DEFAULT_PREFETCH_BATCHES = 2


@dataclasses.dataclass(frozen=True)
class PreprocessSpec:
    """Everything that turns a record into a model input (picklable, for grain workers)."""

    image_size: int = 224
    resize: str = "pad"
    normalization: str = "unit"
    channels: int = 1
    flip: bool = False
    rotation: float = 0.0
    zoom: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0

    @property
    def photometric(self) -> bool:
        """Whether brightness or contrast augmentation is on."""
        return self.brightness > 0 or self.contrast > 0


class ModelInputs(Protocol):
    """What the pipeline needs to know of a model (a `murajax.models.ModelSpec` is one)."""

    normalization: str  # how it wants its images normalised (`preprocess.NORMALIZATIONS`)
    channels: int  # 1 (grayscale) or 3
    study_level: bool  # whether it takes study batches (every view of a study in one row)


def preprocess_spec(
    config: DataConfig,
    model: ModelInputs | None = None,
    *,
    channels: int | None = None,
    train: bool = False,
) -> PreprocessSpec:
    """The preprocessing for `model`: `config.normalization` (or else the model's own, or
    else 'unit'), `channels` (or else the model's, or else 1); augmentation if `train`."""
    model_norm, model_channels = (model.normalization, model.channels) if model else ("unit", 1)
    return PreprocessSpec(
        image_size=config.image_size,
        resize=config.resize,
        normalization=config.normalization or model_norm,
        channels=channels or model_channels,
        flip=train and config.flip,
        rotation=config.rotation if train else 0.0,
        zoom=config.zoom if train else 0.0,
        brightness=config.brightness if train else 0.0,
        contrast=config.contrast if train else 0.0,
    )


def derive_seed(seed: int, stream: int) -> int:
    """A 32-bit seed for one purpose (`stream`) of the experiment seed (any int)."""
    sequence = np.random.SeedSequence(entropy=abs(int(seed)), spawn_key=(stream, int(seed < 0)))
    return int(sequence.generate_state(1, dtype=np.uint32)[0])


def augment_rng(seed: int, epoch: int, position: int) -> np.random.Generator:
    """The generator of one image's augmentation: a function of (seed, epoch, position)."""
    return np.random.default_rng([derive_seed(seed, AUGMENT_STREAM), epoch, position])


# --------------------------------------------------------------------------- grain transforms
# Top-level classes (not closures) so that grain worker processes can unpickle them.


def attach_index(index: int, record: Any) -> dict[str, np.int64]:
    """`map_with_index` transform: pairs a record position with its global stream index."""
    return {"index": np.int64(index), "record": np.int64(record)}


@dataclasses.dataclass(frozen=True)
class ProcessSlice:
    """Takes process `process_index`'s contiguous share of a global batch of indices."""

    process_index: int = 0
    process_count: int = 1

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        size = len(batch["index"]) // self.process_count
        start = self.process_index * size
        return {k: v[start : start + size] for k, v in batch.items()}


def prepare_images(
    examples: Sequence[Mapping[str, Any]],
    spec: PreprocessSpec,
    rngs: Sequence[np.random.Generator] | None = None,
) -> np.ndarray:
    """Decodes, resizes, (augments if `rngs` are given) and normalises a batch of examples.

    Returns float32 (B, S, S, C). Geometric augmentation runs per image on uint8;
    brightness, contrast, the clip to [0, 1] and the normalisation run on the whole batch.
    """
    size = spec.image_size
    images = np.zeros((len(examples), size, size, 1), dtype=np.uint8)
    brightness = np.zeros(len(examples), dtype=np.float32)
    contrast = np.ones(len(examples), dtype=np.float32)
    for k, example in enumerate(examples):
        image = preprocess.resize_to_square(
            preprocess.decode_image(example["image"]), size, spec.resize
        )
        if rngs is not None:
            params = preprocess.sample_augment_params(
                rngs[k],
                size,
                flip=spec.flip,
                rotation=spec.rotation,
                zoom=spec.zoom,
                brightness=spec.brightness,
                contrast=spec.contrast,
            )
            image = preprocess.augment_geometry(image, params)
            brightness[k], contrast[k] = params.brightness, params.contrast
        images[k] = image
    if rngs is not None and spec.photometric:
        unit = preprocess.augment_photometric(preprocess.to_unit(images), brightness, contrast)
        return preprocess.normalize(unit, spec.normalization, spec.channels)
    return preprocess.normalize(images, spec.normalization, spec.channels)  # uint8: one pass


@dataclasses.dataclass(frozen=True)
class LoadTrainBatch:
    """Reads and preprocesses one process's share of a train batch, with augmentation."""

    source: sources_lib.Source
    spec: PreprocessSpec
    seed: int
    epoch_length: int

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        examples = read_records(self.source, batch["record"])
        epochs, positions = np.divmod(batch["index"], self.epoch_length)
        rngs = [augment_rng(self.seed, e, p) for e, p in zip(epochs, positions, strict=True)]
        return {
            "image": prepare_images(examples, self.spec, rngs),
            "label": np.asarray([int(e["label"]) for e in examples], dtype=np.int32),
            "group": np.asarray([sources_lib.example_group(e) for e in examples], np.int32),
        }


@dataclasses.dataclass(frozen=True)
class LoadEvalBatch:
    """Reads and preprocesses one process's share of an eval batch; record -1 is padding."""

    source: sources_lib.Source
    spec: PreprocessSpec

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        mask = batch["record"] >= 0
        real = read_records(self.source, batch["record"][mask])
        size = len(mask)
        pad = {"image": np.zeros((1, 1, 1), np.uint8), "label": 0, "group": 0}
        pad |= {"patient_id": -1, "study_id": "", "image_path": ""}
        examples = [pad] * size
        for k, example in zip(np.flatnonzero(mask), real, strict=True):
            examples[k] = example
        records = batch["record"]
        return {
            "image": prepare_images(examples, self.spec),
            "label": np.asarray([int(e["label"]) for e in examples], dtype=np.int32),
            "group": np.asarray([sources_lib.example_group(e) for e in examples], np.int32),
            "patient_id": np.asarray([int(e.get("patient_id", -1)) for e in examples], np.int64),
            "study_id": np.asarray(
                [sources_lib.example_study(e, r) for e, r in zip(examples, records, strict=True)],
                dtype=str,
            ),
            "image_path": np.asarray(
                [sources_lib.example_text(e, "image_path") for e in examples], dtype=str
            ),
            "mask": mask,
        }


# --------------------------------------------------------------------------- datasets


def check_batch(batch_size: int, process_index: int, process_count: int) -> None:
    """Raises ValueError unless the global `batch_size` splits evenly over the processes."""
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must be in [0, {process_count})")
    if batch_size < 1 or batch_size % process_count:
        raise ValueError(
            f"batch_size={batch_size} (global) must be a positive multiple of "
            f"process_count={process_count}"
        )


def train_dataset(
    source: sources_lib.Source,
    positions: np.ndarray,
    spec: PreprocessSpec,
    *,
    seed: int,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.MapDataset:
    """Endless local train batches over `source[positions]`, reshuffled every epoch.

    `batch_size` is global; each process gets `batch_size // process_count` rows. Batches
    run on across epoch boundaries (the stream is the concatenation of the epochs).
    """
    check_batch(batch_size, process_index, process_count)
    if len(positions) == 0:
        raise ValueError("the train split is empty")
    return (
        grain.MapDataset.source(np.asarray(positions, dtype=np.int64))
        .shuffle(seed=derive_seed(seed, SHUFFLE_STREAM))
        .repeat()
        .map_with_index(attach_index)
        .batch(batch_size, drop_remainder=True)
        .map(ProcessSlice(process_index, process_count))
        .map(LoadTrainBatch(source, spec, seed, len(positions)))
    )


def pad_positions(positions: np.ndarray, batch_size: int) -> np.ndarray:
    """`positions` followed by -1 up to a multiple of `batch_size` (at least one batch if any)."""
    total = math.ceil(len(positions) / batch_size) * batch_size
    padded = np.full(total, -1, dtype=np.int64)
    padded[: len(positions)] = positions
    return padded


def eval_dataset(
    source: sources_lib.Source,
    positions: np.ndarray,
    spec: PreprocessSpec,
    *,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.MapDataset:
    """Local eval batches covering `source[positions]` once, in order, the last one padded."""
    check_batch(batch_size, process_index, process_count)
    return (
        grain.MapDataset.source(pad_positions(positions, batch_size))
        .map_with_index(attach_index)
        .batch(batch_size, drop_remainder=True)
        .map(ProcessSlice(process_index, process_count))
        .map(LoadEvalBatch(source, spec))
    )


def ensure_flags_parsed(*_: Any) -> None:
    """Marks absl flags as parsed (with their defaults) if no absl app has parsed them.

    grain's multiprocessing reads its absl flags, in the main process and in the workers
    (which re-import `__main__`); outside an absl app (pytest, notebooks, scripts) they are
    unparsed and reading them raises. Also used as grain's `worker_init_fn`.
    """
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def to_iterator(
    dataset: grain.MapDataset,
    num_workers: int = 0,
    *,
    read_threads: int = DEFAULT_READ_THREADS,
    prefetch_batches: int = DEFAULT_PREFETCH_BATCHES,
) -> grain.DatasetIterator:
    """A grain iterator over `dataset`: `read_threads` threads prepare up to
    `prefetch_batches` batches ahead in each process; `num_workers` > 0 adds that many
    worker processes (each with its own threads), which take whole batches in turn."""
    read_options = grain.ReadOptions(
        num_threads=read_threads, prefetch_buffer_size=prefetch_batches
    )
    iter_dataset = dataset.to_iter_dataset(read_options)
    if num_workers > 0:
        ensure_flags_parsed()
        iter_dataset = iter_dataset.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=num_workers),
            worker_init_fn=ensure_flags_parsed,
        )
    return iter(iter_dataset)


class BatchIterator(grain.DatasetIterator):
    """Iterates a `MapDataset` of batches; its state is just the next batch's index.

    grain's own iterator states depend on the number of worker processes (a state saved
    with 2 workers does not restore into 0 or 4). Because the dataset is random access,
    resuming only needs the batch index: `set_state` restarts the pipeline (threads and
    workers) at `dataset[next_batch:]`. The state `{'next_batch': n}` is JSON, so
    `grain.checkpoint.CheckpointSave/CheckpointRestore` save it with orbax.
    """

    def __init__(
        self,
        dataset: grain.MapDataset,
        num_workers: int = 0,
        *,
        read_threads: int = DEFAULT_READ_THREADS,
        prefetch_batches: int = DEFAULT_PREFETCH_BATCHES,
    ):
        super().__init__()
        self._dataset = dataset
        self._options = {
            "num_workers": num_workers,
            "read_threads": read_threads,
            "prefetch_batches": prefetch_batches,
        }
        self._next_batch = 0
        self._iterator: grain.DatasetIterator | None = None

    def _started(self) -> grain.DatasetIterator:
        if self._iterator is None:
            self._assert_not_closed()
            rest = self._dataset[self._next_batch :]
            self._iterator = to_iterator(rest, **self._options)
        return self._iterator

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._started())
        self._next_batch += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        return {"next_batch": self._next_batch}

    def set_state(self, state: dict[str, Any]) -> None:
        self._stop()
        self._next_batch = int(state["next_batch"])

    def start_prefetch(self) -> None:
        self._started().start_prefetch()

    def _stop(self) -> None:
        if self._iterator is not None:
            self._iterator.close()
            self._iterator = None

    def close(self) -> None:
        self._stop()
        super().close()


# --------------------------------------------------------------------------- splits


def _sources(
    config: DataConfig, given: Mapping[str, sources_lib.Source] | None
) -> Mapping[str, Any]:
    return given if given is not None else sources_lib.open_sources(config)


def split_source(
    config: DataConfig, split: str, given: Mapping[str, sources_lib.Source] | None = None
) -> tuple[sources_lib.Source, np.ndarray]:
    """The source that holds `split` and the split's record positions in it.

    `given` replaces the TFDS sources: a mapping with 'train' and 'validation' sources.
    """
    if split not in splits.SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {splits.SPLITS}")
    all_sources = _sources(config, given)
    if split == "validation":
        source = all_sources["validation"]
        return source, np.arange(len(source), dtype=np.int64)
    source = all_sources["train"]
    meta = sources_lib.metadata(source)
    train, holdout = splits.train_holdout_positions(meta.patient_id, config.holdout_fraction)
    return source, (train if split == "train" else holdout)


def image_source(
    config: DataConfig, split: str, given: Mapping[str, sources_lib.Source] | None = None
) -> tuple[sources_lib.Source, np.ndarray]:
    """`split_source`, with the source's images behind `config.cache` (`murajax.data.cache`:
    'memory' or 'disk' decode and resize each image once; 'none' returns the source as is)."""
    source, positions = split_source(config, split, given)
    return with_cache(source, config), positions


def with_cache(source: sources_lib.Source, config: DataConfig) -> sources_lib.Source:
    """`source` behind `config.cache`; a memory cache is shared with grain worker processes
    when `config.num_workers` > 0."""
    if config.cache == "none":
        return source
    return cache.cached_source(source, config, shared=config.num_workers > 0)


def num_examples(
    config: DataConfig, split: str, *, sources: Mapping[str, sources_lib.Source] | None = None
) -> int:
    """The number of images in `split` ('train', 'holdout' or 'validation')."""
    return len(split_source(config, split, sources)[1])


def split_info(
    config: DataConfig,
    split: str,
    *,
    sources: Mapping[str, Any] | None = None,
    label_names: Sequence[str] | None = None,
    group_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Counts of `split`, computed from metadata (no image is decoded):

    `{'split', 'num_images', 'num_studies', 'num_patients', <count per label name>,
    'label_counts': {'normal': n, 'abnormal': n}, 'study_label_counts': {...},
    'by_group': {'XR_ELBOW': {the same counts}, ...}}`. The flat per-label counts (MURA's
    `normal` / `abnormal`, also in `label_counts`) count images, as the MURA paper's class
    weights do; `study_label_counts` counts studies. Label and group names default to the
    dataset's (`DatasetSpec.label_names` / `group_names`), read from the source's features.
    """
    source, positions = split_source(config, split, sources)
    meta = sources_lib.metadata(source).take(positions)
    if label_names is None:
        label_names = sources_lib.class_names(source, "label") or _index_names(meta.label)
    if group_names is None:
        feature = sources_lib.group_feature(sources_lib.source_features(source))
        group_names = (sources_lib.class_names(source, feature) if feature else None) or ()
    return {"split": split, **splits.summarize(meta, label_names, group_names)}


def _index_names(labels: np.ndarray) -> tuple[str, ...]:
    """Labels named by their index ("0", "1", ...), for a source without dataset info."""
    return tuple(str(i) for i in range(max(2, int(labels.max(initial=0)) + 1)))


# --------------------------------------------------------------------------- one pass


def iterate_once(
    dataset: grain.MapDataset,
    num_workers: int = 0,
    *,
    read_threads: int = DEFAULT_READ_THREADS,
    prefetch_batches: int = DEFAULT_PREFETCH_BATCHES,
) -> Iterator[dict[str, np.ndarray]]:
    """One pass over a finite `dataset` of batches (see `to_iterator`), closed at its end."""
    if len(dataset) == 0:
        return iter(())
    iterator = to_iterator(
        dataset, num_workers, read_threads=read_threads, prefetch_batches=prefetch_batches
    )
    return _drain(iterator)


def _drain(iterator: grain.DatasetIterator) -> Iterator[dict[str, np.ndarray]]:
    """Yields `iterator`'s batches, then closes it (also when the consumer stops early)."""
    try:
        yield from iterator
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()
