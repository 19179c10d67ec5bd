"""The input pipeline: grain over `tfds.data_source`, with numpy/Pillow preprocessing ops.

`resolve(data_config) -> DatasetSpec`: the dataset's labels, groups and keys, from its features
(`murajax.data.spec`), as `models.resolve` gives a `ModelSpec`.

Splits: 'train' and 'holdout' (a patient-disjoint slice of TFDS train, see `splits`), and
'validation' (TFDS validation, MURA's official valid set).

    make_train_iterator(data_config, *, model, batch_size, seed, process_index=0,
                        process_count=1) -> BatchIterator          (endless, checkpointable)
    make_eval_batches(data_config, split, *, model, batch_size, process_index=0,
                      process_count=1) -> Iterator[dict]           (one pass, padded + mask)
    split_info(data_config, split) -> dict                         (counts, no image decoding)
    num_examples(data_config, split) -> int

`model` is the `murajax.models.ModelSpec` the batches are for (how it wants its images, and
whether it takes studies: then every view of a study is in one row, (B, V, S, S, C) images
with a (B, V) `view_mask`, see `studies`), or None for single-channel images in [0, 1].
"""

from murajax.data.batches import make_eval_batches, make_train_iterator
from murajax.data.pipeline import (
    ModelInputs,
    PreprocessSpec,
    eval_dataset,
    num_examples,
    preprocess_spec,
    split_info,
    split_source,
    train_dataset,
)
from murajax.data.sources import DataError, open_sources, prepare
from murajax.data.spec import DatasetSpec, resolve
from murajax.data.spec import check_unchanged as check_spec_unchanged
from murajax.data.spec import for_workdir as spec_for_workdir
from murajax.data.spec import save as save_spec
from murajax.data.splits import SPLITS
from murajax.data.studies import study_groups

__all__ = [
    "SPLITS",
    "DataError",
    "DatasetSpec",
    "check_spec_unchanged",
    "ModelInputs",
    "PreprocessSpec",
    "eval_dataset",
    "make_eval_batches",
    "make_train_iterator",
    "num_examples",
    "open_sources",
    "prepare",
    "preprocess_spec",
    "resolve",
    "save_spec",
    "split_info",
    "spec_for_workdir",
    "split_source",
    "study_groups",
    "train_dataset",
]
