"""Tests of the `chest_synthetic` TFDS dataset: built once per module (config `tiny`) and read
back with `tfds.data_source`, plus checks of the renderer on bigger samples without TFDS and of
its experiment config.
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
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, cohen_kappa_score
from sklearn.tree import DecisionTreeClassifier

import tfds_mura
from experiments.configs import chest_synthetic as chest_config
from murajax import validation
from tfds_mura.chest_synthetic import chest_synthetic_dataset_builder as chest
from tfds_mura.chest_synthetic import render

NAME = "chest_synthetic/tiny"
SPLITS = ("train", "validation")
PATH = re.compile(
    r"(?P<folder>train|valid)/patient(?P<patient>\d{5})/study(?P<study>\d+)/"
    r"view(?P<view>\d)_(?P<kind>frontal|lateral)\.png"
)
CONFIGS = {config.name: config for config in chest.Builder.BUILDER_CONFIGS}

Examples = dict[str, list[dict]]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def build_and_read(data_dir: Path) -> Examples:
    """Builds `chest_synthetic/tiny` into `data_dir`; returns each split's examples by path."""
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


# ----------------------------------------------------------------------------- the dataset


def test_features_and_class_names(examples: Examples, tmp_path: Path) -> None:
    builder = tfds.builder(NAME, data_dir=tmp_path)
    features = builder.info.features
    assert features.get_serialized_info() == chest.chest_features().get_serialized_info()
    assert set(features) == {"image", "label", "patient_id", "study_id", "image_path"}
    assert features["label"].names == ["normal", "opacity", "effusion"]
    assert features["image"].shape == (None, None, 1) and features["image"].dtype == np.uint8
    assert builder.builder_config.name == "tiny"
    assert tfds.builder("chest_synthetic", data_dir=tmp_path).builder_config.name == "default"
    assert isinstance(builder, tfds_mura.ChestSynthetic)
    for split in SPLITS:
        assert 20 <= len(examples[split]) <= 120
        for row in examples[split]:
            image = row["image"]
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 1
            assert render.MIN_SIDE <= min(image.shape[:2]) <= max(image.shape[:2])
            assert max(image.shape[:2]) <= render.MAX_SIDE
            assert row["label"] in (0, 1, 2)
            assert isinstance(row["patient_id"], int | np.integer) and row["patient_id"] > 0


def test_paths_parse_back_to_the_fields(examples: Examples) -> None:
    for split, folder in chest.SPLIT_FOLDERS.items():
        for row in examples[split]:
            match = PATH.fullmatch(row["image_path"])
            assert match, row["image_path"]
            assert match["folder"] == folder
            assert int(match["patient"]) == row["patient_id"]
            assert match["kind"] == ("frontal" if match["view"] == "1" else "lateral")
            assert row["image_path"].startswith(row["study_id"] + "/")


def test_studies_are_consistent_and_unique(examples: Examples) -> None:
    seen: set[str] = set()
    views = []
    for split in SPLITS:
        per_patient = collections.Counter()
        for study_id, rows in studies(examples[split]).items():
            assert study_id not in seen
            seen.add(study_id)
            assert len({(r["label"], r["patient_id"]) for r in rows}) == 1
            numbers = sorted(int(PATH.fullmatch(r["image_path"])["view"]) for r in rows)
            assert numbers == list(range(1, len(rows) + 1))
            views.append(len(rows))
            per_patient[rows[0]["patient_id"]] += 1
        assert set(per_patient.values()) <= {1, 2}
    assert set(views) == {1, 2}


def test_patients_are_disjoint_between_splits(examples: Examples) -> None:
    train, validation = ({row["patient_id"] for row in examples[s]} for s in SPLITS)
    assert train and validation and not train & validation
    assert max(train) < min(validation)  # numbered after train's


def test_every_class_in_both_splits_and_balanced(examples: Examples) -> None:
    for split in SPLITS:
        assert {row["label"] for row in examples[split]} == {0, 1, 2}
    # The whole default manifest (no pixels, cheap): about 40% normal, 30% each finding.
    for split in SPLITS:
        manifest = chest.make_manifest(CONFIGS["default"], split)
        fractions = np.bincount([study.label for study in manifest], minlength=3) / len(manifest)
        np.testing.assert_allclose(fractions, chest.CLASS_FRACTIONS, atol=0.05)


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


# ----------------------------------------------------------------------------- the renderer


def draw_split(split: str, num_patients: int) -> tuple[list[np.ndarray], np.ndarray]:
    """The images and labels of the first `num_patients` patients of `default`'s split, drawn
    without TFDS (the same pixels as the built dataset's)."""
    images, labels = [], []
    for spec in chest.make_manifest(CONFIGS["default"], split):
        if spec.patient_index < num_patients:
            for image in chest.make_study(spec):
                images.append(image)
                labels.append(spec.label)
    return images, np.array(labels)


def thumbnails(images: list[np.ndarray], size: int = 8) -> np.ndarray:
    """Each image shrunk to size x size (box filter) and standardised: (N, size * size)."""
    pixels = np.stack(
        [np.asarray(Image.fromarray(i).resize((size, size), Image.BOX), np.float32) for i in images]
    ).reshape(len(images), -1)
    return (pixels - pixels.mean(1, keepdims=True)) / (pixels.std(1, keepdims=True) + 1e-3)


def test_mean_intensity_does_not_predict_the_label() -> None:
    """The best rules on an image's mean intensity alone (a depth-3 tree, a logistic
    regression), fitted on ~360 train images of `default` and scored on ~220 validation ones,
    stay at chance; a logistic regression on 8x8 thumbnails of the same images does not.

    Measured on disjoint samples of this size: mean rules' kappa -0.04 to 0.02 and accuracy at
    or below the majority class's; thumbnails' kappa 0.21 to 0.30.
    """
    train, y_train = draw_split("train", 200)
    validation, y_val = draw_split("validation", 120)
    assert set(y_train) == set(y_val) == {0, 1, 2}
    majority = np.bincount(y_val).max() / len(y_val)

    means = [np.array([[image.mean()] for image in s]) for s in (train, validation)]
    kappas = []
    for rule in (DecisionTreeClassifier(max_depth=3, random_state=0), LogisticRegression()):
        predicted = rule.fit(means[0], y_train).predict(means[1])
        kappas.append(cohen_kappa_score(y_val, predicted))
        assert accuracy_score(y_val, predicted) < majority + 0.08, rule
        assert kappas[-1] < 0.1, rule

    content = LogisticRegression(C=0.1, max_iter=3000).fit(thumbnails(train), y_train)
    predicted = content.predict(thumbnails(validation))
    assert cohen_kappa_score(y_val, predicted) > 0.15
    assert cohen_kappa_score(y_val, predicted) > max(kappas) + 0.12
    assert accuracy_score(y_val, predicted) > majority + 0.03


def test_image_mean_is_the_drawn_target_whatever_the_finding() -> None:
    rng = np.random.default_rng(0)
    for target in (0.3, 0.45, 0.6):
        image = render.expose(rng, rng.uniform(0.0, 1.5, (90, 70)).astype(np.float32), target)
        assert image.dtype == np.uint8
        assert abs(image.mean() / 255.0 - target) < 0.004


def _density(
    thorax: render.Thorax, finding: render.Finding | None, lateral: bool, size: int = 120
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A view's density map (same noise for every finding), and its frame coordinates."""
    pose = render.Pose(zoom=size, angle=0.0, center=(size / 2, size / 2))
    u, v = render.frame_grid(pose, size, size)
    draw = render.lateral_density if lateral else render.frontal_density
    return draw(np.random.default_rng(1), thorax, finding, u, v), u, v


def test_findings_are_drawn_inside_the_lungs() -> None:
    """An opacity brightens a region around its patch, inside the lung; an effusion brightens
    the base of the lungs it fills (below the patient's lung middle), on their side."""
    for k in range(6):
        rng = np.random.default_rng([3, k])
        thorax = render.sample_thorax(rng)
        opacity = render.sample_finding(rng, thorax, "opacity")
        effusion = render.sample_finding(rng, thorax, "effusion")
        assert isinstance(opacity, render.Opacity) and isinstance(effusion, render.Effusion)
        for lateral in (False, True):
            normal, u, v = _density(thorax, None, lateral)
            for finding in (opacity, effusion):
                changed = _density(thorax, finding, lateral)[0] - normal
                assert changed.min() > -1e-6  # findings replace air: only ever brighter
                assert (changed > 0.05).mean() > 0.005, (k, lateral, finding.kind)
                assert (changed > 0.05).mean() < 0.25, (k, lateral, finding.kind)
                if lateral:
                    continue
                hit = changed > 0.05
                if isinstance(finding, render.Opacity):
                    near = np.zeros_like(hit)
                    for patch in finding.patches:
                        assert render.inside_frontal_lung(thorax, patch.side, patch.center, 0.0)
                        distance = np.hypot(u - patch.center[0], v - patch.center[1])
                        near |= distance < 3 * max(patch.axes)
                    assert hit[~near].mean() < 0.002, k
                else:
                    middle = (thorax.apex + min(thorax.domes)) / 2
                    assert hit[v < middle].mean() < 0.002, k
                    for side in (-1, 1):
                        assert hit[u * side > 0].any() == (side in finding.sides), k


def test_make_study() -> None:
    rng = np.random.default_rng(3)
    thorax = render.sample_thorax(rng)
    for kind in render.FINDINGS:
        views = render.make_study(rng, thorax, kind, 2)
        assert len(views) == 2
        for view in views:
            assert view.dtype == np.uint8 and view.ndim == 2
            assert render.MIN_SIDE <= min(view.shape) <= max(view.shape) <= render.MAX_SIDE
            assert view.std() > 10  # not blank
    with pytest.raises(ValueError, match="num_views 3"):
        render.make_study(rng, thorax, "normal", 3)
    with pytest.raises(ValueError, match="unknown finding 'nodule'"):
        render.make_study(rng, thorax, "nodule", 1)


# ----------------------------------------------------------------------------- the config


def test_experiment_config_and_its_smoke_variant() -> None:
    config = validation.validate(chest_config.get_config())
    assert config.data.dataset == "chest_synthetic" and config.model.num_classes is None
    smoke = validation.validate(chest_config.get_config("smoke"))
    assert smoke.data.dataset == "chest_synthetic/tiny"
    assert smoke.data.image_size == 32 and smoke.train.steps == 20
    with pytest.raises(ValueError, match="chest_synthetic.py:fast"):
        chest_config.get_config("fast")
