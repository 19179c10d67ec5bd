"""The two ways to get batches: endless train batches, and one pass over a split.

    make_train_iterator(data_config, *, model, batch_size, seed, ...) -> BatchIterator
    make_eval_batches(data_config, split, *, model, batch_size, ...) -> Iterator[dict]

`model` (a `murajax.models.ModelSpec`, or anything with its `normalization`, `channels` and
`study_level`) decides how images are prepared, and whether a batch holds images (`pipeline`)
or whole studies (`studies`: every view of a study in one row, for study-level models such as
"multiview"); None prepares single-channel images in [0, 1].
"""

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from murajax.config import DataConfig
from murajax.data import pipeline, studies
from murajax.data.pipeline import (
    DEFAULT_PREFETCH_BATCHES,
    DEFAULT_READ_THREADS,
    BatchIterator,
    ModelInputs,
)


def _takes_studies(model: ModelInputs | None) -> bool:
    return model is not None and model.study_level


def make_train_iterator(
    data_config: DataConfig,
    *,
    model: ModelInputs | None,
    batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    channels: int | None = None,
    sources: Mapping[str, Any] | None = None,
    read_threads: int = DEFAULT_READ_THREADS,
    prefetch_batches: int = DEFAULT_PREFETCH_BATCHES,
) -> BatchIterator:
    """An endless iterator of augmented train batches for this process.

    Image batches: `{'image': float32 (B_local, S, S, C), 'label': int32 (B_local,),
    'group': int32 (B_local,)}` (the dataset's grouping feature: MURA's body part) with
    `B_local = batch_size // process_count` (`batch_size` is global). Study batches (a
    study-level `model`): `batch_size` counts studies, images are (B_local, V, S, S, C)
    with a `view_mask` (B_local, V) and V = `data_config.max_views` (see
    `murajax.data.studies`).

    The batches depend only on (`seed`, step), not on `num_workers` or the process layout:
    concatenating the processes' batches gives the single-process batch. The iterator's
    `get_state()`/`set_state()` resume exactly, also with another `num_workers`, and it
    checkpoints with orbax through `grain.checkpoint.CheckpointSave(iterator)` /
    `CheckpointRestore(iterator)` (see `BatchIterator`). Call `close()` when done with it.

    `model` picks the normalization (unless `data_config.normalization` is set) and the
    channels (unless `channels` is given); `sources` replaces the TFDS dataset (a mapping
    with a 'train' source, see `murajax.data.sources`).
    """
    spec = pipeline.preprocess_spec(data_config, model, channels=channels, train=True)
    placement = {
        "seed": seed,
        "batch_size": batch_size,
        "process_index": process_index,
        "process_count": process_count,
    }
    if _takes_studies(model):
        source, groups = studies.split_study_groups(data_config, "train", sources)
        dataset = studies.study_train_dataset(
            source, groups, spec, max_views=data_config.max_views, **placement
        )
    else:
        source, positions = pipeline.image_source(data_config, "train", sources)
        dataset = pipeline.train_dataset(source, positions, spec, **placement)
    return BatchIterator(
        dataset,
        data_config.num_workers,
        read_threads=read_threads,
        prefetch_batches=prefetch_batches,
    )


def make_eval_batches(
    data_config: DataConfig,
    split: str,
    *,
    model: ModelInputs | None,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    channels: int | None = None,
    sources: Mapping[str, Any] | None = None,
    read_threads: int = DEFAULT_READ_THREADS,
    prefetch_batches: int = DEFAULT_PREFETCH_BATCHES,
) -> Iterator[dict[str, np.ndarray]]:
    """One pass over `split` ('holdout', 'validation' or 'train'), unaugmented, in order.

    Every image (every study, for a study-level `model`) appears exactly once over all
    processes. The global batches hold `batch_size` rows, the last padded; each process gets
    its contiguous `batch_size // process_count` rows of every global batch, so all
    processes see the same number of batches of the same shapes. Each batch: 'image' float32
    (B_local, S, S, C), or (B_local, V, S, S, C) studies with a 'view_mask' where V is the
    split's largest study; 'label' int32, 'group' int32, 'patient_id' int64, 'study_id'
    str, 'image_path' str (a study's folder), and 'mask' bool (False for padding rows, whose
    other fields are zeros / '' / -1).
    """
    spec = pipeline.preprocess_spec(data_config, model, channels=channels, train=False)
    placement = {
        "batch_size": batch_size,
        "process_index": process_index,
        "process_count": process_count,
    }
    if _takes_studies(model):
        source, groups = studies.split_study_groups(data_config, split, sources)
        dataset = studies.study_eval_dataset(source, groups, spec, **placement)
    else:
        source, positions = pipeline.image_source(data_config, split, sources)
        dataset = pipeline.eval_dataset(source, positions, spec, **placement)
    return pipeline.iterate_once(
        dataset,
        data_config.num_workers,
        read_threads=read_threads,
        prefetch_batches=prefetch_batches,
    )
