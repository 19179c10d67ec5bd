"""The input pipeline: grain over `tfds.data_source`, with numpy/Pillow preprocessing ops.

Splits: 'train' and 'holdout' (a patient-disjoint slice of TFDS train, see `splits`), and
'validation' (TFDS validation, MURA's official valid set).

    make_train_iterator(data_config, *, model_name, batch_size, seed, process_index=0,
                        process_count=1) -> grain.DatasetIterator   (endless, checkpointable)
    make_eval_batches(data_config, split, *, model_name, batch_size, process_index=0,
                      process_count=1) -> Iterator[dict]             (one pass, padded + mask)
    split_info(data_config, split) -> dict                          (counts, no image decoding)
    num_examples(data_config, split) -> int

Study batches, for study-level models such as "multiview" (see `studies`): every view of a
study in one row, (B, V, S, S, C) images with a (B, V) `view_mask`:

    make_study_train_iterator(...)   as make_train_iterator, batch_size counting studies
    make_study_eval_batches(...)     as make_eval_batches, every view of every study once
"""

from murajax.data.pipeline import (
    PreprocessSpec,
    eval_dataset,
    make_eval_batches,
    make_train_iterator,
    num_examples,
    preprocess_spec,
    split_info,
    split_source,
    train_dataset,
)
from murajax.data.sources import DataError, open_sources, prepare
from murajax.data.splits import SPLITS
from murajax.data.studies import (
    make_study_eval_batches,
    make_study_train_iterator,
    study_groups,
)

__all__ = [
    "SPLITS",
    "DataError",
    "PreprocessSpec",
    "eval_dataset",
    "make_eval_batches",
    "make_study_eval_batches",
    "make_study_train_iterator",
    "make_train_iterator",
    "num_examples",
    "open_sources",
    "prepare",
    "preprocess_spec",
    "split_info",
    "split_source",
    "study_groups",
    "train_dataset",
]
