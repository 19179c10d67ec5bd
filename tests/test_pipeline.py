"""Tests of the grain input pipeline (`murajax.data`): splits, determinism, sharding, resume.

Most tests run on an in-memory fake source (a list of feature dicts, like
`tfds.data_source` gives); the last ones build `mura_synthetic/tiny` once for the module.
"""

import contextlib
import dataclasses
import io
import os

import chex
import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from murajax import data, models
from murajax.config import DataConfig, ModelConfig
from murajax.data import pipeline, sources, splits
from murajax.errors import DataError
from tfds_mura.features import BODY_PARTS, LABEL_NAMES

SIZE = 16
NUM_TRAIN, NUM_VALID = 40, 11


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array[:, :, 0]).save(buffer, format="PNG")
    return buffer.getvalue()


def make_fake_source(num: int, seed: int, first_patient: int = 0) -> list[dict]:
    """Records whose image is flat with value `value_of(i)` (so the centre pixel of any
    crop-resized, flipped, rotated or zoomed version names the record), of varied sizes;
    every third image is PNG bytes, the others arrays. About 3 images per patient."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(num):
        height, width = (int(x) for x in rng.integers(12, 40, size=2))
        image = np.full((height, width, 1), value_of(i), np.uint8)
        patient = first_patient + i // 3
        records.append(
            {
                "image": _png(image) if i % 3 == 0 else image,
                "label": int(rng.integers(0, 2)),
                "body_part": int(rng.integers(0, 7)),
                "patient_id": patient,
                "study_id": f"patient{patient}/study{i % 2}".encode(),
                "image_path": f"img{seed}_{i}.png".encode(),
            }
        )
    return records


def value_of(index: int) -> int:
    return 20 + 5 * index


def record_ids(images: np.ndarray) -> list[int]:
    """The record index of each image of a 'unit'-normalised batch, from its centre pixel."""
    centre = np.rint(images[:, SIZE // 2, SIZE // 2, 0] * 255).astype(int)
    return [(v - 20) // 5 for v in centre]


@pytest.fixture(scope="module")
def fake_sources() -> dict[str, list[dict]]:
    return {
        "train": make_fake_source(NUM_TRAIN, seed=1),
        "validation": make_fake_source(NUM_VALID, seed=2, first_patient=1000),
    }


def config(**overrides) -> DataConfig:
    """A small config: 16 px crop-resized images, unit normalisation, paper augmentation."""
    base = DataConfig(image_size=SIZE, resize="crop", normalization="unit", holdout_fraction=0.25)
    return dataclasses.replace(base, **overrides)


def take(iterator, count: int) -> list[dict[str, np.ndarray]]:
    return [{k: np.array(v) for k, v in next(iterator).items()} for _ in range(count)]


def train_batches(sources_, count: int, **kwargs) -> list[dict[str, np.ndarray]]:
    cfg = kwargs.pop("cfg", config())
    kwargs = {"model": None, "batch_size": 8, "seed": 0, **kwargs}
    iterator = data.make_train_iterator(cfg, sources=sources_, **kwargs)
    try:
        return take(iterator, count)
    finally:
        iterator.close()


def assert_batches_equal(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


# --------------------------------------------------------------------------- splits


def test_patient_hash_is_stable():
    # Regression values: the holdout must not move between versions, machines or runs.
    np.testing.assert_array_equal(
        splits.patient_hash(np.array([1, 11184])),
        np.array([0xF6FC42039FBA3776, 0x2CED72FB26DCC233], dtype=np.uint64),
    )


def test_holdout_is_patient_disjoint_and_deterministic(fake_sources):
    meta = sources.read_metadata(fake_sources["train"])
    train, holdout = splits.train_holdout_positions(meta.patient_id, 0.25)
    assert len(train) + len(holdout) == NUM_TRAIN
    assert not set(meta.patient_id[train]) & set(meta.patient_id[holdout])
    assert len(set(meta.patient_id[holdout])) == round(0.25 * 14)
    shuffled = np.random.default_rng(0).permutation(meta.patient_id)  # order does not matter
    np.testing.assert_array_equal(
        splits.holdout_patients(shuffled, 0.25), splits.holdout_patients(meta.patient_id, 0.25)
    )
    smaller = splits.holdout_patients(meta.patient_id, 0.1)
    assert set(smaller) <= set(splits.holdout_patients(meta.patient_id, 0.25))


@pytest.mark.parametrize(
    "patients, fraction, expected", [(100, 0.1, 10), (3, 0.01, 1), (3, 0.99, 2), (1, 0.5, 0)]
)
def test_holdout_count(patients, fraction, expected):
    assert splits.holdout_count(patients, fraction) == expected
    assert splits.holdout_count(patients, 0.0) == 0


def test_split_sizes_and_info(fake_sources):
    cfg = config()
    sizes = {s: data.num_examples(cfg, s, sources=fake_sources) for s in data.SPLITS}
    assert sizes["train"] + sizes["holdout"] == NUM_TRAIN
    assert sizes["validation"] == NUM_VALID
    names = {"label_names": LABEL_NAMES, "group_names": BODY_PARTS}  # a list has no features
    info = data.split_info(cfg, "train", sources=fake_sources, **names)
    source, positions = data.split_source(cfg, "train", fake_sources)
    labels = np.array([source[int(p)]["label"] for p in positions])
    assert info["num_images"] == sizes["train"]
    assert info["label_counts"] == {
        "normal": int((labels == 0).sum()),
        "abnormal": int(labels.sum()),
    }
    assert info["normal"] + info["abnormal"] == info["num_images"]
    assert info["num_patients"] == len({source[int(p)]["patient_id"] for p in positions})
    studies = {source[int(p)]["study_id"] for p in positions}
    assert info["num_studies"] == len(studies)
    assert sum(v["num_images"] for v in info["by_group"].values()) == info["num_images"]
    assert list(info["by_group"]) == list(BODY_PARTS)
    wrist = info["by_group"]["XR_WRIST"]
    parts = np.array([source[int(p)]["body_part"] for p in positions])
    assert wrist["abnormal"] == int(((parts == 6) & (labels == 1)).sum())
    # Without names (and without features to read them from): labels by index, no groups.
    unnamed = data.split_info(cfg, "train", sources=fake_sources)
    assert unnamed["label_counts"] == {"0": info["normal"], "1": info["abnormal"]}
    assert not unnamed["by_group"]
    with pytest.raises(ValueError, match="unknown split"):
        data.num_examples(cfg, "test", sources=fake_sources)


# --------------------------------------------------------------------------- train stream


def test_train_batches_shapes_and_range(fake_sources):
    (batch,) = train_batches(fake_sources, 1, cfg=config(brightness=0.5, contrast=0.5, zoom=0.3))
    chex.assert_shape(batch["image"], (8, SIZE, SIZE, 1))
    assert batch["image"].dtype == np.float32
    assert batch["label"].dtype == batch["group"].dtype == np.int32
    assert set(batch) == {"image", "label", "group"}
    assert batch["image"].min() >= 0.0 and batch["image"].max() <= 1.0
    (rgb,) = train_batches(fake_sources, 1, cfg=config(normalization="imagenet"), channels=3)
    chex.assert_shape(rgb["image"], (8, SIZE, SIZE, 3))


def test_same_seed_same_batches_other_seed_other_order(fake_sources):
    first = train_batches(fake_sources, 3, seed=7)
    assert_batches_equal(first, train_batches(fake_sources, 3, seed=7))
    other = train_batches(fake_sources, 3, seed=8)
    assert record_ids(first[0]["image"]) != record_ids(other[0]["image"])
    assert not np.array_equal(first[0]["image"], other[0]["image"])


def test_epochs_are_fresh_permutations_of_the_train_split(fake_sources):
    cfg = config(flip=False, rotation=0.0)
    _, positions = data.split_source(cfg, "train", fake_sources)
    n = len(positions)
    batches = train_batches(fake_sources, (2 * n) // 8 + 1, cfg=cfg)
    stream = [i for b in batches for i in record_ids(b["image"])]
    epoch0, epoch1 = stream[:n], stream[n : 2 * n]
    assert sorted(epoch0) == sorted(epoch1) == sorted(positions.tolist())
    assert epoch0 != epoch1
    labels = np.concatenate([b["label"] for b in batches])[:n]
    np.testing.assert_array_equal(labels, [fake_sources["train"][i]["label"] for i in epoch0])


def test_augmentation_depends_on_the_example_not_the_batch(fake_sources):
    """The same record at the same stream position gets the same augmentation whatever the
    batch size (so whatever the device/process layout), and differs between epochs."""
    cfg = config(zoom=0.2, brightness=0.1, contrast=0.1)
    by_8 = np.concatenate([b["image"] for b in train_batches(fake_sources, 2, cfg=cfg)])
    by_4 = np.concatenate(
        [b["image"] for b in train_batches(fake_sources, 4, cfg=cfg, batch_size=4)]
    )
    np.testing.assert_array_equal(by_8, by_4)


def test_process_slices_concatenate_to_the_global_batch(fake_sources):
    whole = train_batches(fake_sources, 6, batch_size=8)  # crosses an epoch boundary
    parts = [
        train_batches(fake_sources, 6, batch_size=8, process_index=p, process_count=2)
        for p in range(2)
    ]
    for step, batch in enumerate(whole):
        for key in batch:
            chex.assert_shape(parts[0][step][key], (4, *batch[key].shape[1:]))
            joined = np.concatenate([parts[0][step][key], parts[1][step][key]])
            np.testing.assert_array_equal(joined, batch[key], err_msg=key)
    with pytest.raises(ValueError, match="multiple of process_count"):
        train_batches(fake_sources, 1, batch_size=5, process_count=2)


def test_get_state_set_state_resumes_exactly(fake_sources):
    kwargs = {"model": None, "batch_size": 8, "seed": 3, "sources": fake_sources}
    iterator = data.make_train_iterator(config(), **kwargs)
    take(iterator, 4)
    state = iterator.get_state()
    expected = take(iterator, 3)
    resumed = data.make_train_iterator(config(), **kwargs)
    resumed.set_state(state)
    assert_batches_equal(take(resumed, 3), expected)


def test_orbax_checkpoint_of_the_iterator_resumes_exactly(fake_sources, tmp_path):
    kwargs = {"model": None, "batch_size": 8, "seed": 5, "sources": fake_sources}
    iterator = data.make_train_iterator(config(), **kwargs)
    take(iterator, 5)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.save(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
        manager.wait_until_finished()
    expected = take(iterator, 3)
    resumed = data.make_train_iterator(config(), **kwargs)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        assert manager.latest_step() == 5
        args = ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(resumed))
        manager.restore(5, args=args)
    assert_batches_equal(take(resumed, 3), expected)


def test_worker_count_does_not_change_batches(fake_sources):
    """Spawns grain worker processes twice (a few seconds of start-up each)."""
    cfg = config(zoom=0.2, brightness=0.1)
    reference = train_batches(fake_sources, 5, cfg=cfg)
    iterator = data.make_train_iterator(
        dataclasses.replace(cfg, num_workers=2),
        model=None,
        batch_size=8,
        seed=0,
        sources=fake_sources,
    )
    try:
        with_workers = take(iterator, 3)
        state = iterator.get_state()
        with_workers += take(iterator, 2)
    finally:
        iterator.close()
    assert_batches_equal(with_workers, reference)
    resumed = data.make_train_iterator(cfg, model=None, batch_size=8, seed=0, sources=fake_sources)
    resumed.set_state(state)  # a state saved with workers restores without them
    assert_batches_equal(take(resumed, 2), reference[3:])
    workers_cfg = dataclasses.replace(cfg, num_workers=2)
    assert_batches_equal(
        eval_batches(fake_sources, "validation", cfg=workers_cfg),
        eval_batches(fake_sources, "validation", cfg=cfg),
    )


# --------------------------------------------------------------------------- eval


def eval_batches(sources_, split, **kwargs) -> list[dict[str, np.ndarray]]:
    kwargs = {"model": None, "batch_size": 4, **kwargs}
    cfg = kwargs.pop("cfg", config())
    return list(data.make_eval_batches(cfg, split, sources=sources_, **kwargs))


@pytest.mark.parametrize("split", ["validation", "holdout", "train"])
def test_eval_sees_every_example_once_with_mask(fake_sources, split):
    cfg = config()
    source, positions = data.split_source(cfg, split, fake_sources)
    batches = eval_batches(fake_sources, split, batch_size=4)
    assert len(batches) == -(-len(positions) // 4)
    for batch in batches:
        chex.assert_shape(batch["image"], (4, SIZE, SIZE, 1))
        assert batch["mask"].dtype == bool
        assert batch["label"].dtype == np.int32 and batch["patient_id"].dtype == np.int64
        assert batch["study_id"].dtype.kind == batch["image_path"].dtype.kind == "U"
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.sum() == len(positions) and mask[: len(positions)].all()
    paths = np.concatenate([b["image_path"] for b in batches])[mask]
    expected = [source[int(p)]["image_path"].decode() for p in positions]
    assert paths.tolist() == expected
    ids = [i for b in batches for i, m in zip(record_ids(b["image"]), b["mask"], strict=True) if m]
    assert ids == positions.tolist()  # unaugmented: each image is its record's flat value
    studies = np.concatenate([b["study_id"] for b in batches])
    assert studies[mask].tolist() == [source[int(p)]["study_id"].decode() for p in positions]
    assert set(studies[~mask]) <= {""}


def test_eval_with_two_processes_is_disjoint_and_complete(fake_sources):
    cfg = config()
    _, positions = data.split_source(cfg, "validation", fake_sources)  # 11 images
    shares = [
        eval_batches(fake_sources, "validation", batch_size=4, process_index=p, process_count=2)
        for p in range(2)
    ]
    assert len(shares[0]) == len(shares[1]) == 3
    for batch in shares[0] + shares[1]:
        chex.assert_shape(batch["image"], (2, SIZE, SIZE, 1))
    paths = [
        path
        for share in shares
        for batch in share
        for path, keep in zip(batch["image_path"], batch["mask"], strict=True)
        if keep
    ]
    assert len(paths) == len(set(paths)) == len(positions)
    whole = eval_batches(fake_sources, "validation", batch_size=4)
    for step, batch in enumerate(whole):
        joined = np.concatenate([shares[0][step]["image"], shares[1][step]["image"]])
        np.testing.assert_array_equal(joined, batch["image"])


def test_eval_of_an_empty_split(fake_sources):
    assert eval_batches(fake_sources, "holdout", cfg=config(holdout_fraction=0.0)) == []


def test_model_input_spec_decides_normalisation_and_channels():
    spec = pipeline.preprocess_spec(config(normalization=None), models.resolve(ModelConfig()))
    assert (spec.normalization, spec.channels) == models.input_spec("cnn")
    override = pipeline.preprocess_spec(
        config(normalization="caffe"), models.resolve(ModelConfig()), channels=3
    )
    assert (override.normalization, override.channels) == ("caffe", 3)
    assert not pipeline.preprocess_spec(config(), None, train=False).flip


# --------------------------------------------------------------------------- mura_synthetic


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[DataConfig, str]:
    """`mura_synthetic/tiny` built once into a temporary data_dir; also the build's output."""
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    cfg = config(dataset="mura_synthetic/tiny", data_dir=data_dir, image_size=24, resize="pad")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        data.prepare(cfg)
    return cfg, out.getvalue()


def test_tiny_builds_once_with_a_progress_note(tiny):
    cfg, printed = tiny
    assert "murajax: building 'mura_synthetic/tiny'" in printed
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        data.prepare(cfg)
    assert out.getvalue() == ""


def test_missing_dataset_is_one_clear_line(tmp_path):
    cfg = config(dataset="mura_synthetic/tiny", data_dir=str(tmp_path), build_if_missing=False)
    with pytest.raises(DataError, match="not prepared") as error:
        data.make_train_iterator(cfg, model=None, batch_size=4, seed=0)
    assert "\n" not in str(error.value)
    with pytest.raises(DataError, match="unknown dataset"):
        data.prepare(config(dataset="no_such_dataset", data_dir=str(tmp_path)))
    with pytest.raises(DataError, match="cannot open dataset 'mura_synthetic/nope'"):
        data.prepare(config(dataset="mura_synthetic/nope", data_dir=str(tmp_path)))


def test_tiny_splits_and_metadata_cache(tiny, monkeypatch):
    cfg, _ = tiny
    tfds_sources = data.open_sources(cfg)
    sizes = {s: data.num_examples(cfg, s) for s in data.SPLITS}
    assert sizes["train"] + sizes["holdout"] == len(tfds_sources["train"])
    assert sizes["validation"] == len(tfds_sources["validation"])
    assert sizes["holdout"] > 0
    info = data.split_info(cfg, "holdout")
    assert info["num_images"] == sizes["holdout"]
    assert "XR_WRIST" in info["by_group"]
    data_dir = tfds_sources["train"].dataset_info.data_dir
    assert os.path.exists(os.path.join(data_dir, "murajax-metadata-train.npz"))
    # A fresh process reads the cache file instead of scanning the records again.
    monkeypatch.setattr(sources, "_METADATA_CACHE", {})
    monkeypatch.setattr(sources, "read_metadata", lambda *_: pytest.fail("scanned again"))
    assert data.split_info(cfg, "holdout") == info
    train = sources.metadata(tfds_sources["train"])
    _, holdout = data.split_source(cfg, "holdout")
    _, rest = data.split_source(cfg, "train")
    assert not set(train.patient_id[holdout]) & set(train.patient_id[rest])


def test_tiny_train_and_eval(tiny):
    cfg, _ = tiny
    iterator = data.make_train_iterator(
        cfg, model=models.resolve(ModelConfig(name="cnn")), batch_size=6, seed=0
    )
    (batch,) = take(iterator, 1)
    chex.assert_shape(batch["image"], (6, 24, 24, 1))
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    source = data.open_sources(cfg)["validation"]
    batches = list(
        data.make_eval_batches(
            cfg, "validation", model=models.resolve(ModelConfig(name="cnn")), batch_size=16
        )
    )
    paths = np.concatenate([b["image_path"][b["mask"]] for b in batches])
    expected = [sources.as_str(source[i]["image_path"]) for i in range(len(source))]
    assert paths.tolist() == expected
