"""The decoded, pre-resized image cache (`data.cache`: 'none', 'memory', 'disk').

The cache stores what the pipeline computes before augmenting (decode + resize to S x S),
so every mode gives the same batches, value for value; on the in-memory fake source of
`test_pipeline` and on `mura_synthetic/tiny`.
"""

import contextlib
import dataclasses
import io
import os

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from murajax import data, models
from murajax.config import Config, ConfigError, DataConfig, ModelConfig
from murajax.data import cache
from murajax.errors import DataError
from murajax.validation import validate
from tests.test_pipeline import (
    NUM_TRAIN,
    NUM_VALID,
    assert_batches_equal,
    config,
    make_fake_source,
    take,
)

AUGMENT = {"rotation": 30.0, "zoom": 0.2, "brightness": 0.1, "contrast": 0.2}


@pytest.fixture(autouse=True)
def fresh_caches():
    """Every test builds its caches itself (and frees their memory)."""
    cache.clear()
    yield
    cache.clear()


@pytest.fixture(scope="module")
def fake_sources() -> dict[str, list[dict]]:
    return {
        "train": make_fake_source(NUM_TRAIN, seed=1),
        "validation": make_fake_source(NUM_VALID, seed=2, first_patient=1000),
    }


def train_batches(cfg: DataConfig, sources_, count: int, **kwargs) -> list[dict]:
    kwargs = {"model": None, "batch_size": 8, "seed": 5, "sources": sources_, **kwargs}
    iterator = data.make_train_iterator(cfg, **kwargs)
    try:
        return take(iterator, count)
    finally:
        iterator.close()


def eval_batches(cfg: DataConfig, split: str, sources_=None) -> list[dict]:
    batches = data.make_eval_batches(cfg, split, model=None, batch_size=8, sources=sources_)
    return [{k: np.array(v) for k, v in b.items()} for b in batches]


# --------------------------------------------------------------------------- memory


@pytest.mark.parametrize("resize", ["crop", "pad"])
def test_memory_cache_gives_the_same_batches(fake_sources, resize):
    base = config(resize=resize, **AUGMENT)
    cached = dataclasses.replace(base, cache="memory")
    assert_batches_equal(
        train_batches(base, fake_sources, 7), train_batches(cached, fake_sources, 7)
    )  # 7 batches of 8 run into the second epoch
    for split in ("holdout", "validation"):
        assert_batches_equal(
            eval_batches(base, split, fake_sources), eval_batches(cached, split, fake_sources)
        )


def test_memory_cache_decodes_each_image_once(fake_sources, monkeypatch):
    cfg = config(cache="memory")
    pngs = []
    real = cache.preprocess.decode_image

    def decode(value):
        if isinstance(value, bytes):
            pngs.append(value)
        return real(value)

    monkeypatch.setattr(cache.preprocess, "decode_image", decode)
    train_batches(cfg, fake_sources, 6)  # more than an epoch
    eval_batches(cfg, "holdout", fake_sources)  # the same TFDS split: the same cache
    assert len(pngs) == sum(isinstance(r["image"], bytes) for r in fake_sources["train"])
    source = data.split_source(cfg, "train", fake_sources)[0]
    cached = cache.cached_source(source, cfg)
    assert isinstance(cached, cache.CachedSource) and len(cached) == NUM_TRAIN
    assert cached[0]["image"].shape == (cfg.image_size, cfg.image_size, 1)
    assert cached[0]["image"].dtype == np.uint8


def test_memory_cache_shared_with_worker_processes(fake_sources):
    cfg = config(cache="memory", **AUGMENT)
    expected = train_batches(config(**AUGMENT), fake_sources, 4)
    with_workers = train_batches(dataclasses.replace(cfg, num_workers=2), fake_sources, 4)
    assert_batches_equal(expected, with_workers)
    source = data.split_source(cfg, "train", fake_sources)[0]
    assert cache.cached_source(source, cfg).pixels.shared  # in shared memory, not pickled


def test_resume_with_the_cache_is_exact(fake_sources, tmp_path):
    cfg = config(cache="memory", **AUGMENT)
    iterator = data.make_train_iterator(cfg, model=None, batch_size=8, seed=2, sources=fake_sources)
    take(iterator, 3)
    manager = ocp.CheckpointManager(str(tmp_path / "ckpt"))
    manager.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
    manager.wait_until_finished()
    rest = take(iterator, 4)
    iterator.close()
    resumed = data.make_train_iterator(
        dataclasses.replace(cfg, num_workers=2),
        model=None,
        batch_size=8,
        seed=2,
        sources=fake_sources,
    )
    manager.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(resumed)))
    try:
        assert_batches_equal(rest, take(resumed, 4))
    finally:
        resumed.close()
        manager.close()


# --------------------------------------------------------------------------- disk


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> DataConfig:
    """`mura_synthetic/tiny`, built once into a temporary data_dir."""
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    cfg = config(dataset="mura_synthetic/tiny", data_dir=data_dir, image_size=24, resize="pad")
    with contextlib.redirect_stdout(io.StringIO()):
        data.prepare(cfg)
    return dataclasses.replace(cfg, **AUGMENT)


def entry_folder(cfg: DataConfig, split: str = "train") -> str:
    source = data.open_sources(cfg)[split]
    data_dir, tfds_split = cache.tfds_location(source)
    key = cache.DiskKey(data_dir, tfds_split, cfg.image_size, cfg.resize, len(source))
    return os.path.join(cache.cache_roots(data_dir, cfg.cache_dir)[0], key.name)


def run_quietly(function, *args, **kwargs):
    """(function's result, what it printed)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = function(*args, **kwargs)
    return result, out.getvalue()


def test_disk_and_memory_caches_equal_no_cache(tiny, tmp_path):
    disk = dataclasses.replace(tiny, cache="disk", cache_dir=str(tmp_path / "c"))
    batches = {
        mode: run_quietly(train_batches, cfg, None, 3)[0]
        for mode, cfg in [
            ("none", tiny),
            ("memory", dataclasses.replace(tiny, cache="memory")),
            ("disk", disk),
            ("disk, 2 workers", dataclasses.replace(disk, num_workers=2)),
        ]
    }
    for mode in ("memory", "disk", "disk, 2 workers"):
        assert_batches_equal(batches["none"], batches[mode])
    expected = eval_batches(tiny, "validation")
    assert_batches_equal(expected, run_quietly(eval_batches, disk, "validation")[0])


def test_disk_cache_is_built_once_and_reused(tiny, tmp_path, monkeypatch):
    cfg = dataclasses.replace(tiny, cache="disk", cache_dir=str(tmp_path / "c"))
    first, printed = run_quietly(train_batches, cfg, None, 2)
    assert "murajax: caching 'train'" in printed
    folder = entry_folder(cfg)
    assert sorted(os.listdir(folder)) == sorted(
        [cache.IMAGES_FILE, cache.METADATA_FILE, cache.MANIFEST_FILE]
    )
    assert not [n for n in os.listdir(os.path.dirname(folder)) if n.startswith(".")]
    # A new process (no per-process cache) opens the entry without building it again.
    cache.clear()
    monkeypatch.setattr(cache, "write_entry", lambda *a: pytest.fail("rebuilt a whole entry"))
    again, printed = run_quietly(train_batches, cfg, None, 2)
    assert printed == ""
    assert_batches_equal(first, again)


@pytest.mark.parametrize("damage", ["truncate", "manifest", "missing_metadata"])
def test_a_torn_disk_cache_is_rebuilt(tiny, tmp_path, damage):
    cfg = dataclasses.replace(tiny, cache="disk", cache_dir=str(tmp_path / "c"))
    expected, _ = run_quietly(train_batches, cfg, None, 2)
    folder = entry_folder(cfg)
    if damage == "truncate":
        path = os.path.join(folder, cache.IMAGES_FILE)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    elif damage == "manifest":
        with open(os.path.join(folder, cache.MANIFEST_FILE), "w") as f:
            f.write('{"format": 1, "num_rec')
    else:
        os.remove(os.path.join(folder, cache.METADATA_FILE))
    cache.clear()
    again, printed = run_quietly(train_batches, cfg, None, 2)
    assert "murajax: rebuilding the image cache" in printed
    assert_batches_equal(expected, again)
    source = data.open_sources(cfg)["train"]
    data_dir, split = cache.tfds_location(source)
    key = cache.DiskKey(data_dir, split, cfg.image_size, cfg.resize, len(source))
    assert cache.check_entry(folder, key) is None


def test_disk_cache_beside_the_data_by_default(tiny):
    cfg = dataclasses.replace(tiny, cache="disk", image_size=20)
    run_quietly(eval_batches, cfg, "validation")
    folder = entry_folder(cfg, "validation")
    assert folder.startswith(os.path.join(cfg.data_dir, "mura_synthetic"))
    assert os.path.basename(folder) == "validation-20px-pad"
    assert os.path.exists(os.path.join(folder, cache.MANIFEST_FILE))


def test_entries_are_keyed_by_size_and_resize_not_channels(tiny, tmp_path, monkeypatch):
    """A grayscale and an RGB model share one entry (channels are applied after the cache, as
    without it); another resize mode gets its own."""
    cfg = dataclasses.replace(tiny, cache="disk", cache_dir=str(tmp_path / "c"))
    gray, printed = run_quietly(train_batches, cfg, None, 2, channels=1)
    assert "murajax: caching 'train'" in printed
    cache.clear()  # as a new process: only what is on disk is shared
    monkeypatch.setattr(cache, "write_entry", lambda *a: pytest.fail("built another entry"))
    rgb, printed = run_quietly(train_batches, cfg, None, 2, channels=3)
    assert printed == ""
    assert gray[0]["image"].shape[-1] == 1 and rgb[0]["image"].shape[-1] == 3
    assert_batches_equal(rgb, train_batches(tiny, None, 2, channels=3))  # as without a cache
    assert_batches_equal(rgb, [{**b, "image": np.repeat(b["image"], 3, axis=-1)} for b in gray])
    monkeypatch.undo()
    crop = dataclasses.replace(cfg, resize="crop")
    run_quietly(train_batches, crop, None, 1, channels=3)
    root = os.path.dirname(entry_folder(cfg))
    assert sorted(os.listdir(root)) == ["train-24px-crop", "train-24px-pad"]
    assert entry_folder(crop) != entry_folder(cfg)


def test_memory_cache_holds_one_entry_for_any_channels(fake_sources):
    cfg = config(cache="memory", **AUGMENT)
    gray = train_batches(cfg, fake_sources, 2, channels=1)
    rgb = train_batches(cfg, fake_sources, 2, channels=3)
    assert len(cache._MEMORY) == 1
    assert_batches_equal(rgb, train_batches(config(**AUGMENT), fake_sources, 2, channels=3))
    assert_batches_equal(rgb, [{**b, "image": np.repeat(b["image"], 3, axis=-1)} for b in gray])


def test_study_batches_with_the_cache(tiny):
    study_cnn = models.resolve(ModelConfig(name="multiview", backbone="cnn"))
    kwargs = {"model": study_cnn, "batch_size": 4, "seed": 1}
    base = dataclasses.replace(tiny, max_views=2)
    iterator = data.make_train_iterator(base, **kwargs)
    expected = take(iterator, 2)
    iterator.close()
    iterator = run_quietly(
        data.make_train_iterator, dataclasses.replace(base, cache="memory"), **kwargs
    )[0]
    assert_batches_equal(expected, take(iterator, 2))
    iterator.close()
    evaluated = list(data.make_eval_batches(base, "holdout", model=study_cnn, batch_size=4))
    cached = list(
        data.make_eval_batches(
            dataclasses.replace(base, cache="memory"), "holdout", model=study_cnn, batch_size=4
        )
    )
    assert_batches_equal(
        [{k: np.array(v) for k, v in b.items()} for b in evaluated],
        [{k: np.array(v) for k, v in b.items()} for b in cached],
    )


def test_disk_cache_needs_a_tfds_source(fake_sources):
    with pytest.raises(DataError, match="needs a TFDS dataset"):
        train_batches(config(cache="disk"), fake_sources, 1)


# --------------------------------------------------------------------------- config


def test_cache_field_is_validated():
    for mode in ("none", "memory", "disk"):
        validate(Config(data=DataConfig(cache=mode)))
    with pytest.raises(ConfigError) as error:
        validate(Config(data=DataConfig(cache="ram")))
    message = str(error.value)
    assert message.startswith("config.data.cache='ram' is invalid")
    assert "'none', 'memory', 'disk'" in message and "\n" not in message
    with pytest.raises(ConfigError, match="config.data.cache_dir"):
        validate(Config(data=DataConfig(cache="disk", cache_dir=3)))


def test_throughput_rows_of_the_cache(fake_sources):
    from murajax.data import benchmark

    rows, _ = run_quietly(
        benchmark.data_throughput,
        image_sizes=(16,),
        num_workers=(0,),
        batch_size=8,
        num_batches=2,
        warmup_batches=1,
        normalization="unit",
        channels=1,
        data_config=config(),
        sources=fake_sources,
        cache="memory",
    )
    (row,) = rows
    assert row["cache"] == "memory" and row["cache_build_s"] >= 0 and row["images_per_s"] > 0
    assert "memory" in benchmark.format_table(rows)
    assert not cache._MEMORY  # freed after measuring
