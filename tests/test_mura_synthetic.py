"""Tests of the `mura_synthetic` TFDS dataset: built once per module (config `tiny`) and read
back with `tfds.data_source`, plus checks of the generator on bigger samples without TFDS.
"""

from __future__ import annotations

import collections
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn.metrics import cohen_kappa_score

import tfds_mura  # noqa: F401  (registers `mura_synthetic`)
from tfds_mura.features import BODY_PARTS, LABEL_NAMES, mura_features
from tfds_mura.mura_synthetic import mura_synthetic_dataset_builder as synthetic
from tfds_mura.mura_synthetic import render

NAME = "mura_synthetic/tiny"
SPLITS = ("train", "validation")
PATH = re.compile(
    r"MURA-v1\.1/(?P<folder>train|valid)/(?P<part>XR_[A-Z]+)/patient(?P<patient>\d{5})/"
    r"study(?P<study>\d+)_(?P<outcome>positive|negative)/image(?P<image>\d+)\.png"
)
CONFIGS = {config.name: config for config in synthetic.Builder.BUILDER_CONFIGS}

Examples = dict[str, list[dict]]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def build_and_read(data_dir: Path) -> Examples:
    """Builds `mura_synthetic/tiny` into `data_dir`; returns each split's examples by path."""
    builder = tfds.builder(NAME, data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare()
    source = tfds.data_source(NAME, data_dir=data_dir)
    examples = {}
    for split in SPLITS:
        rows = [dict(source[split][i]) for i in range(len(source[split]))]
        for row in rows:
            row["study_id"], row["image_path"] = _text(row["study_id"]), _text(row["image_path"])
        examples[split] = sorted(rows, key=lambda row: row["image_path"])
    return examples


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Examples:
    return build_and_read(tmp_path_factory.mktemp("tfds"))


def studies(rows: list[dict]) -> dict[str, list[dict]]:
    """Groups examples by study_id."""
    groups = collections.defaultdict(list)
    for row in rows:
        groups[row["study_id"]].append(row)
    return groups


def best_threshold_kappa(score: np.ndarray, label: np.ndarray) -> float:
    """The best Cohen's kappa of `score >= t` or `score < t` over every threshold t."""
    kappas = [
        cohen_kappa_score(label, predicted.astype(int))
        for t in np.unique(score)
        for predicted in (score >= t, score < t)
    ]
    return max(kappas)


# ----------------------------------------------------------------------------- the dataset


def test_features_and_splits(examples: Examples, tmp_path: Path) -> None:
    builder = tfds.builder(NAME, data_dir=tmp_path)
    assert builder.info.features.get_serialized_info() == mura_features().get_serialized_info()
    assert builder.builder_config.name == "tiny"
    assert tfds.builder("mura_synthetic", data_dir=tmp_path).builder_config.name == "default"
    for split in SPLITS:
        assert 30 <= len(examples[split]) <= 200
        for row in examples[split]:
            image = row["image"]
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 1
            assert row["label"] in (0, 1)
            assert 0 <= row["body_part"] < len(BODY_PARTS)
            assert isinstance(row["patient_id"], int | np.integer) and row["patient_id"] > 0


def test_paths_parse_back_to_the_fields(examples: Examples) -> None:
    for split, folder in synthetic.SPLIT_FOLDERS.items():
        for row in examples[split]:
            match = PATH.fullmatch(row["image_path"])
            assert match, row["image_path"]
            assert match["folder"] == folder
            assert match["part"] == BODY_PARTS[row["body_part"]]
            assert int(match["patient"]) == row["patient_id"]
            # positive = abnormal = label 1, as in MURA's CSVs
            assert LABEL_NAMES[row["label"]] == (
                "abnormal" if match["outcome"] == "positive" else "normal"
            )
            assert row["image_path"] == f"MURA-v1.1/{row['study_id']}/image{match['image']}.png"


def test_studies_are_consistent_and_unique(examples: Examples) -> None:
    seen: set[str] = set()
    for split in SPLITS:
        for study_id, rows in studies(examples[split]).items():
            assert study_id not in seen
            seen.add(study_id)
            assert len({(r["label"], r["body_part"], r["patient_id"]) for r in rows}) == 1
            numbers = sorted(int(PATH.fullmatch(r["image_path"])["image"]) for r in rows)
            assert numbers == list(range(1, len(rows) + 1))
            assert 1 <= len(rows) <= 5


def test_studies_have_1_to_5_views(examples: Examples) -> None:
    views = [len(rows) for split in SPLITS for rows in studies(examples[split]).values()]
    assert set(views) == {1, 2, 3, 4, 5}


def test_patients_are_disjoint_between_splits(examples: Examples) -> None:
    train, validation = ({row["patient_id"] for row in examples[s]} for s in SPLITS)
    assert train and validation and not train & validation
    assert max(train) < min(validation)  # numbered after train's, as in MURA


def test_labels_and_body_parts_are_balanced(examples: Examples) -> None:
    for split in SPLITS:
        labels = [rows[0]["label"] for rows in studies(examples[split]).values()]
        assert 0.2 <= np.mean(labels) <= 0.65
        assert {row["body_part"] for row in examples[split]} == set(range(len(BODY_PARTS)))
    # The whole default manifest (no pixels, cheap): ~40% abnormal, every part well represented.
    manifest = synthetic.make_manifest(CONFIGS["default"], "train")
    assert 0.37 <= np.mean([study.abnormal for study in manifest]) <= 0.43
    counts = collections.Counter(study.body_part for study in manifest)
    assert set(counts) == set(BODY_PARTS) and min(counts.values()) > len(manifest) / 10


def test_images_vary_in_size_and_aspect_ratio(examples: Examples) -> None:
    shapes = [row["image"].shape[:2] for split in SPLITS for row in examples[split]]
    heights, widths = zip(*shapes, strict=True)
    assert min(heights + widths) >= render.MIN_SIDE and max(heights + widths) <= render.MAX_SIDE
    assert len(set(shapes)) > len(shapes) / 2
    aspect = np.array(heights) / np.array(widths)
    assert aspect.min() < 0.9 and aspect.max() > 1.4


def test_builds_are_bit_identical(examples: Examples, tmp_path: Path) -> None:
    again = build_and_read(tmp_path)
    for split in SPLITS:
        assert len(again[split]) == len(examples[split])
        for a, b in zip(again[split], examples[split], strict=True):
            assert a.keys() == b.keys()
            for key in a:
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"{split} {key}")


def test_builds_without_tensorflow(examples: Examples, tmp_path: Path) -> None:
    """`download_and_prepare` and `data_source` work with TensorFlow hidden from imports."""
    script = textwrap.dedent(
        f"""
        import sys

        class Hide:  # makes `import tensorflow` fail as if it were not installed
            def __init__(self, finder):
                self.finder = finder
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] == "tensorflow":
                    return None
                return self.finder.find_spec(name, path, target)
            def invalidate_caches(self):
                getattr(self.finder, "invalidate_caches", lambda: None)()

        sys.meta_path[:] = [Hide(finder) for finder in sys.meta_path]
        import tensorflow_datasets as tfds
        import tfds_mura

        tfds.builder({NAME!r}, data_dir={str(tmp_path)!r}, file_format="array_record")\\
            .download_and_prepare()
        source = tfds.data_source({NAME!r}, data_dir={str(tmp_path)!r})
        assert "tensorflow" not in sys.modules
        print(len(source["train"]), len(source["validation"]))
        """
    )
    root = Path(tfds_mura.__file__).parent.parent
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=root, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    counts = result.stdout.split()[-2:]
    assert counts == [str(len(examples["train"])), str(len(examples["validation"]))]


# ----------------------------------------------------------------------------- the generator


def test_mean_intensity_does_not_predict_the_label() -> None:
    """A threshold on a study's mean intensity, the best one chosen on the same studies, must
    score study kappa < 0.3. Measured on ~500 studies of `default` (rendered without TFDS):
    with a few dozen studies, as in `tiny`, labels drawn at random already reach ~0.3, so the
    test would say nothing; here chance alone gives about 0.05-0.1.
    """
    specs = synthetic.make_manifest(CONFIGS["default"], "train")[:500]
    means = np.array([np.mean([view.mean() for view in synthetic.make_study(s)]) for s in specs])
    labels = np.array([int(s.abnormal) for s in specs])
    assert 0.3 <= labels.mean() <= 0.5
    assert best_threshold_kappa(means, labels) < 0.3


def test_anomaly_is_drawn_locally_at_its_site() -> None:
    """Adding the anomaly to a view changes a small region around the anomaly's site."""
    size = 128
    for i, body_part in enumerate(BODY_PARTS):
        for k in range(3):
            rng = np.random.default_rng([7, i, k])
            anatomy = render.draw_anatomy(rng, body_part)
            anomaly = render.sample_anomaly(rng, anatomy)
            view = render.sample_view(rng, size, size)

            def density(shapes: list[render.Shape], view: render.Affine = view) -> np.ndarray:
                pixels = [render.transform_shape(shape, view) for shape in shapes]
                return render.render_density(pixels, size, size)

            abnormal = density(render.apply_anomaly(anatomy, anomaly))
            changed = np.abs(abnormal - density(anatomy)) > 0.1
            x, y = render.map_point(view, render.anomaly_site(anatomy, anomaly))
            rows, cols = np.nonzero(changed)
            near = np.hypot(cols + 0.5 - x, rows + 0.5 - y) < 0.1 * size
            assert near.sum() > 50, (body_part, anomaly.kind)
            assert changed.mean() < 0.3, (body_part, anomaly.kind)


def test_make_study() -> None:
    for body_part in BODY_PARTS:
        for abnormal in (False, True):
            views = render.make_study(np.random.default_rng(3), body_part, abnormal, 4)
            assert len(views) == 4
            for view in views:
                assert view.dtype == np.uint8 and view.ndim == 2
                assert render.MIN_SIDE <= min(view.shape) <= max(view.shape) <= render.MAX_SIDE
                assert view.std() > 10  # not blank
