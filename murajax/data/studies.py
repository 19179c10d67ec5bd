"""Study batches for study-level models ("multiview"): every view of a study in one row.

A study batch holds B studies of V views each:

    'image'      float32 (B, V, S, S, C)
    'view_mask'  bool (B, V): which views are real
    'label'      int32 (B,), 'group' int32 (B,)
    eval only: 'patient_id' int64, 'study_id' str, 'image_path' str (the study's folder),
               'num_views' int32, 'mask' bool (B,) (False for padding studies)

The pipelines mirror `pipeline.py`'s, with a study number where an image position was:

    study numbers 0..N-1                   (studies in order of their first record)
    .shuffle(seed).repeat()                train only: a new global permutation every epoch
    .map_with_index(attach_index)
    .batch(global_batch_size)              `batch_size` counts studies
    .map(ProcessSlice(p, P))
    .map(LoadTrainStudies | LoadEvalStudies)

Training sees at most `data.max_views` views of a study: a study with more gets a random
subset each epoch (in record order); one with fewer is padded by repeating its own views
(masked out of the pooling, but seen by BatchNorm's batch statistics, which therefore hold only
real radiographs). A study's view choice and each view's augmentation draw from
`np.random.default_rng([seed, epoch, position in epoch])` and its spawns, so the batches
depend only on (seed, step). Evaluation sees every view of every study exactly once: V is
the largest study of the split, and padded views are blank and masked.
"""

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import grain
import numpy as np

from murajax.config import DataConfig
from murajax.data import pipeline
from murajax.data import sources as sources_lib


def study_groups(study_ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """The record positions of each study, as an int64 (studies, max views) table padded
    with -1. Studies come in order of their first record; views in record order.

    `study_ids[k]` is the study of record `positions[k]`; `positions` ascend.
    """
    positions = np.asarray(positions, dtype=np.int64)
    if len(positions) == 0:
        return np.zeros((0, 1), dtype=np.int64)
    _, first, inverse = np.unique(study_ids, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    study = rank[inverse.reshape(-1)]  # each record's study number, by first appearance
    counts = np.bincount(study, minlength=len(first))
    order = np.argsort(study, kind="stable")  # records grouped by study, record order kept
    slot = np.arange(len(order)) - np.repeat(np.cumsum(counts) - counts, counts)
    table = np.full((len(first), int(counts.max())), -1, dtype=np.int64)
    table[study[order], slot] = positions[order]
    return table


def split_study_groups(
    config: DataConfig, split: str, sources: Mapping[str, Any] | None = None
) -> tuple[sources_lib.Source, np.ndarray]:
    """The source holding `split` (behind `config.cache`) and its `study_groups` table."""
    source, positions = pipeline.split_source(config, split, sources)
    meta = sources_lib.metadata(source)
    return pipeline.with_cache(source, config), study_groups(meta.study_id[positions], positions)


def choose_views(group: np.ndarray, max_views: int, rng: np.random.Generator) -> np.ndarray:
    """`max_views` record positions of a study (a `study_groups` row): a random subset of
    its real views in record order if it has more, else its views repeated cyclically."""
    real = group[group >= 0]
    if len(real) > max_views:
        real = np.sort(rng.choice(real, size=max_views, replace=False))
    return np.resize(real, max_views)


@dataclasses.dataclass(frozen=True)
class LoadTrainStudies:
    """Reads and preprocesses one process's share of a train batch of studies."""

    source: sources_lib.Source
    spec: pipeline.PreprocessSpec
    seed: int
    groups: np.ndarray
    max_views: int

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        epochs, positions = np.divmod(batch["index"], len(self.groups))
        chosen, counts, rngs = [], [], []
        for epoch, position, study in zip(epochs, positions, batch["record"], strict=True):
            study_rng = pipeline.augment_rng(self.seed, int(epoch), int(position))
            group = self.groups[study]
            chosen.append(choose_views(group, self.max_views, study_rng))
            counts.append(min(int(np.sum(group >= 0)), self.max_views))
            rngs.extend(study_rng.spawn(self.max_views))
        records = np.concatenate(chosen)
        examples = sources_lib.read_records(self.source, records)
        images = pipeline.prepare_images(examples, self.spec, rngs)
        first = examples[:: self.max_views]
        return {
            "image": images.reshape(len(chosen), self.max_views, *images.shape[1:]),
            "view_mask": np.arange(self.max_views)[None, :] < np.asarray(counts)[:, None],
            "label": np.asarray([int(e["label"]) for e in first], dtype=np.int32),
            "group": np.asarray([sources_lib.example_group(e) for e in first], dtype=np.int32),
        }


_BLANK = {
    "image": np.zeros((1, 1, 1), np.uint8),
    "label": 0,
    "group": 0,
    "patient_id": -1,
    "study_id": "",
    "image_path": "",
}


@dataclasses.dataclass(frozen=True)
class LoadEvalStudies:
    """Reads and preprocesses one process's share of an eval batch of studies, every view;
    study number -1 is a padding study (all views masked)."""

    source: sources_lib.Source
    spec: pipeline.PreprocessSpec
    groups: np.ndarray

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        studies = batch["record"]
        views = self.groups.shape[1]
        table = np.full((len(studies), views), -1, dtype=np.int64)
        real_studies = studies >= 0
        table[real_studies] = self.groups[studies[real_studies]]
        view_mask = table >= 0
        examples = [_BLANK] * table.size
        flat = table.reshape(-1)
        for k, example in zip(
            np.flatnonzero(flat >= 0),
            sources_lib.read_records(self.source, flat[flat >= 0]),
            strict=True,
        ):
            examples[k] = example
        images = pipeline.prepare_images(examples, self.spec)
        first = examples[::views]
        return {
            "image": images.reshape(len(studies), views, *images.shape[1:]),
            "view_mask": view_mask,
            "label": np.asarray([int(e["label"]) for e in first], dtype=np.int32),
            "group": np.asarray([sources_lib.example_group(e) for e in first], dtype=np.int32),
            "patient_id": np.asarray([int(e.get("patient_id", -1)) for e in first], np.int64),
            "study_id": np.asarray(
                [sources_lib.example_study(e, int(flat[k * views])) for k, e in enumerate(first)],
                dtype=str,
            ),
            "image_path": np.asarray(
                [os.path.dirname(sources_lib.example_text(e, "image_path")) for e in first],
                dtype=str,
            ),
            "num_views": view_mask.sum(axis=1).astype(np.int32),
            "mask": real_studies,
        }


def study_train_dataset(
    source: sources_lib.Source,
    groups: np.ndarray,
    spec: pipeline.PreprocessSpec,
    *,
    seed: int,
    batch_size: int,
    max_views: int,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.MapDataset:
    """Endless local batches of `batch_size` (global) studies, reshuffled every epoch."""
    pipeline.check_batch(batch_size, process_index, process_count)
    if len(groups) == 0:
        raise ValueError("the train split has no studies")
    return (
        grain.MapDataset.source(np.arange(len(groups), dtype=np.int64))
        .shuffle(seed=pipeline.derive_seed(seed, pipeline.SHUFFLE_STREAM))
        .repeat()
        .map_with_index(pipeline.attach_index)
        .batch(batch_size, drop_remainder=True)
        .map(pipeline.ProcessSlice(process_index, process_count))
        .map(LoadTrainStudies(source, spec, seed, groups, max_views))
    )


def study_eval_dataset(
    source: sources_lib.Source,
    groups: np.ndarray,
    spec: pipeline.PreprocessSpec,
    *,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.MapDataset:
    """Local batches covering every study once, in order, the last one padded."""
    pipeline.check_batch(batch_size, process_index, process_count)
    studies = np.arange(len(groups), dtype=np.int64)
    return (
        grain.MapDataset.source(pipeline.pad_positions(studies, batch_size))
        .map_with_index(pipeline.attach_index)
        .batch(batch_size, drop_remainder=True)
        .map(pipeline.ProcessSlice(process_index, process_count))
        .map(LoadEvalStudies(source, spec, groups))
    )
