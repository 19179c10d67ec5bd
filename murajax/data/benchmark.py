"""Input-pipeline throughput: images/s through read + decode + resize + augment + batch.

`data_throughput()` times `make_train_iterator` (augmentation on) for each image size and
worker count and returns one row per setting; `experiments/benchmark.py` prints or saves
them. With `cache='memory'` or `'disk'` (`data.cache`) the images are decoded and resized
once before the timing (reported as `cache_build_s`), and each batch only reads the cache,
augments and normalises. Run this module directly for a quick table:

    python -m murajax.data.benchmark [DATASET] [DATA_DIR]
"""

import dataclasses
import io
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image

from murajax.config import DataConfig
from murajax.data import batches, pipeline, preprocess
from murajax.data import cache as cache_lib
from murajax.data import sources as sources_lib


def time_iterator(iterator: Any, num_batches: int, warmup_batches: int) -> dict[str, float]:
    """Seconds to the first `warmup_batches` batches (start-up) and for the next
    `num_batches` (steady state), plus the steady-state batch size."""
    start = time.perf_counter()
    for _ in range(warmup_batches):
        next(iterator)
    warm = time.perf_counter()
    batch_size = 0
    for _ in range(num_batches):
        batch_size = len(next(iterator)["label"])
    return {
        "startup_s": warm - start,
        "seconds": time.perf_counter() - warm,
        "batch_size": batch_size,
    }


def upscaled_source(source: Any, count: int, long_side: int) -> list[dict[str, Any]]:
    """The first `count` records of `source` with their images re-encoded as PNGs whose
    longer side is `long_side`, to time decoding and resizing at MURA's sizes (real
    radiographs are up to about 512 px; `mura_synthetic` draws about 100-150 px)."""
    records = []
    for example in sources_lib.read_records(source, range(min(count, len(source)))):
        image = preprocess.decode_image(example["image"])[:, :, 0]
        scale = long_side / max(image.shape)
        size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
        buffer = io.BytesIO()
        Image.fromarray(image).resize(size, Image.Resampling.BILINEAR).save(buffer, "PNG")
        records.append({**example, "image": buffer.getvalue()})
    return records


def data_throughput(
    dataset: str = "mura_synthetic",
    data_dir: str | None = None,
    *,
    image_sizes: Sequence[int] = (128, 224),
    num_workers: Sequence[int] = (0, 2),
    batch_size: int = 32,
    num_batches: int = 40,
    warmup_batches: int = 4,
    normalization: str = "imagenet",
    channels: int = 3,
    data_config: DataConfig | None = None,
    sources: Mapping[str, Any] | None = None,
    seed: int = 0,
    read_threads: int = pipeline.DEFAULT_READ_THREADS,
    prefetch_batches: int = pipeline.DEFAULT_PREFETCH_BATCHES,
    long_side: int | None = None,
    cache: str | None = None,
) -> list[dict[str, Any]]:
    """Measures train-pipeline throughput for every (image size, worker count).

    Uses `data_config` (default: `DataConfig()` with the paper's flips and 30-degree
    rotations) with `dataset`, `data_dir`, `normalization` and the image size and worker
    count filled in; `channels` = 3 with 'imagenet' is what DenseNet-169 and VGG16 get.
    Returns rows `{'dataset', 'image_size', 'num_workers', 'batch_size', 'batches',
    'seconds', 'images_per_s', 'startup_s'}`; `images_per_s` excludes the first
    `warmup_batches` (worker start-up and first reads, reported as `startup_s`), and the
    prefetch buffer (`prefetch_batches`) inflates it by at most that many batches.
    `long_side` re-encodes 1024 train images at that size first (see `upscaled_source`).
    `cache` ('none', 'memory' or 'disk'; None: `data_config.cache`) is `data.cache`: a cache
    is built once per image size before the timing (its seconds are the rows'
    `cache_build_s`) and freed at the end. Rows also say which `cache` they measured.
    """
    base = data_config or DataConfig()
    base = dataclasses.replace(
        base, dataset=dataset, data_dir=data_dir, normalization=normalization
    )
    if cache is not None:
        base = dataclasses.replace(base, cache=cache)
    label = dataset
    if long_side:
        train = (sources or sources_lib.open_sources(base))["train"]
        sources = {"train": upscaled_source(train, 1024, long_side), "validation": []}
        base = dataclasses.replace(base, holdout_fraction=0.0)
        label = f"{dataset}@{long_side}px"
    rows = []
    for size in image_sizes:
        build_s = 0.0
        if base.cache != "none":  # decode + resize the split once, outside the timing
            start = time.perf_counter()
            pipeline.image_source(dataclasses.replace(base, image_size=size), "train", sources)
            build_s = time.perf_counter() - start
        for workers in num_workers:
            config = dataclasses.replace(base, image_size=size, num_workers=workers)
            iterator = batches.make_train_iterator(
                config,
                model=None,
                channels=channels,
                batch_size=batch_size,
                seed=seed,
                sources=sources,
                read_threads=read_threads,
                prefetch_batches=prefetch_batches,
            )
            try:
                timing = time_iterator(iterator, num_batches, warmup_batches)
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()
            images = timing["batch_size"] * num_batches
            rows.append(
                {
                    "dataset": label,
                    "image_size": size,
                    "num_workers": workers,
                    "read_threads": read_threads,
                    "batch_size": batch_size,
                    "batches": num_batches,
                    "seconds": round(timing["seconds"], 3),
                    "images_per_s": round(images / timing["seconds"], 1),
                    "startup_s": round(timing["startup_s"], 2),
                    "cache": base.cache,
                    "cache_build_s": round(build_s, 2),
                }
            )
    if base.cache != "none":
        cache_lib.clear()
    return rows


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A small fixed-width table of `data_throughput` rows."""
    header = (
        f"{'image_size':>10} {'cache':>6} {'workers':>7} {'batch':>5} {'images/s':>9} "
        f"{'startup s':>9} {'build s':>7}"
    )
    lines = [header]
    for r in rows:
        lines.append(
            f"{r['image_size']:>10} {r.get('cache', 'none'):>6} {r['num_workers']:>7} "
            f"{r['batch_size']:>5} {r['images_per_s']:>9.1f} {r['startup_s']:>9.2f} "
            f"{r.get('cache_build_s', 0.0):>7.2f}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
    """Prints the throughput table for `argv[1]` (dataset) in `argv[2]` (TFDS data_dir)."""
    dataset = argv[1] if len(argv) > 1 else "mura_synthetic"
    data_dir = argv[2] if len(argv) > 2 else None
    for cache in ("none", "memory"):
        print(f"{dataset}: train pipeline (decode + resize + flip/rotate + normalise + batch)")
        print(format_table(data_throughput(dataset, data_dir, cache=cache)))
        print(f"{dataset}, images re-encoded at MURA's 512 px:")
        print(format_table(data_throughput(dataset, data_dir, long_side=512, cache=cache)))


if __name__ == "__main__":
    main(sys.argv)
