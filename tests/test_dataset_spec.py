"""The dataset-agnostic pieces (issue 21): `DatasetSpec` from a dataset's features, saved and
checked in a workdir; K-class loss weights; a path's group; the class a heatmap explains;
an evaluation's plot files."""

import csv
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from murajax import data, evaluation, heatmaps, image_files, losses
from murajax import workdir as workdir_lib
from murajax.config import DataConfig
from murajax.data import spec as spec_lib
from murajax.errors import DataError
from murajax.models import CNN
from tfds_mura.features import BODY_PARTS, LABEL_NAMES, PAPER_REFERENCE, mura_features

MURA = spec_lib.from_features("mura", mura_features(), PAPER_REFERENCE)

# An image_folder-like dataset: three classes, no groups, no studies, no patients.
THREE_CLASSES = tfds.features.FeaturesDict(
    {
        "image": tfds.features.Image(shape=(None, None, 1), dtype=np.uint8),
        "label": tfds.features.ClassLabel(names=["cat", "dog", "bird"]),
    }
)


def _features(**extra) -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict(
        {"image": tfds.features.Image(shape=(None, None, 1), dtype=np.uint8), **extra}
    )


# --------------------------------------------------------------------------- DatasetSpec


def test_mura_spec_from_its_builder(tmp_path):
    # Only the builder's info is opened: the dataset is not prepared in `tmp_path`.
    resolved = data.resolve(DataConfig(dataset="mura_synthetic/tiny", data_dir=str(tmp_path)))
    assert resolved == spec_lib.DatasetSpec(
        name="mura_synthetic/tiny",
        label_names=LABEL_NAMES,
        group_feature="body_part",
        group_names=BODY_PARTS,
        reference_kappa=PAPER_REFERENCE["kappa"],
        reference_auroc=PAPER_REFERENCE["auroc"],
        reference_label=PAPER_REFERENCE["label"],
        reference_source=PAPER_REFERENCE["source"],
    )
    assert not os.listdir(tmp_path)  # nothing was built
    assert resolved.num_classes == 2 and resolved.binary
    assert resolved.has_studies and resolved.has_patients
    assert resolved.group_column == "body_part" and resolved.by_group_key == "by_body_part"
    assert resolved.group_name(6) == "XR_WRIST" and resolved.group_name(7) == "7"
    assert MURA == spec_lib.DatasetSpec(**{**resolved.to_dict(), "name": "mura"})


def test_spec_of_a_dataset_without_groups():
    spec = spec_lib.from_features("pets", THREE_CLASSES)
    assert spec.label_names == ("cat", "dog", "bird") and spec.num_classes == 3
    assert not spec.binary
    assert spec.group_feature is None and spec.group_names == ()
    assert spec.group_column is None and spec.by_group_key is None
    assert spec.group_name(0) == "0"
    assert not spec.has_studies and not spec.has_patients
    assert spec.reference_kappa == {} and spec.reference_auroc is None
    assert spec.reference_label == ""


def test_spec_of_an_image_folder_style_group():
    features = _features(
        label=tfds.features.ClassLabel(names=["normal", "pneumonia"]),
        group=tfds.features.ClassLabel(names=["adult", "child"]),
        study_id=tfds.features.Text(),
    )
    spec = spec_lib.from_features("chest", features)
    assert spec.group_feature == "group" and spec.group_names == ("adult", "child")
    assert spec.by_group_key == "by_group" and spec.binary
    assert spec.has_studies and not spec.has_patients


@pytest.mark.parametrize(
    "features",
    [
        _features(label=tfds.features.Scalar(dtype=np.int64)),  # a number, not a ClassLabel
        _features(diagnosis=tfds.features.ClassLabel(names=["a", "b"])),  # no `label`
    ],
)
def test_a_dataset_without_a_class_label_is_refused_in_one_line(features):
    with pytest.raises(DataError, match="dataset 'odd' has no ClassLabel feature 'label'") as e:
        spec_lib.from_features("odd", features)
    assert "\n" not in str(e.value)


def test_to_dict_and_from_dict_round_trip_through_json():
    for spec in (MURA, spec_lib.from_features("pets", THREE_CLASSES)):
        values = json.loads(json.dumps(spec.to_dict()))  # lists, not tuples
        assert isinstance(values["label_names"], list)
        again = spec_lib.DatasetSpec.from_dict(values)
        assert again == spec
        assert isinstance(again.label_names, tuple) and isinstance(again.group_names, tuple)
    # A later version's extra field is ignored; a missing group list is no groups.
    values = {"name": "x", "label_names": ["a", "b"], "added_later": 1}
    assert spec_lib.DatasetSpec.from_dict(values) == spec_lib.DatasetSpec("x", ("a", "b"))


def test_save_and_load(tmp_path):
    workdir = str(tmp_path)
    assert spec_lib.load(workdir) is None  # a workdir from before dataset.json
    spec_lib.save(MURA, workdir)
    assert os.listdir(workdir) == [spec_lib.SPEC_FILE] == ["dataset.json"]  # no .partial
    assert spec_lib.load(workdir) == MURA
    with open(tmp_path / "dataset.json") as f:
        assert json.load(f)["group_names"] == list(BODY_PARTS)
    pets = spec_lib.from_features("pets", THREE_CLASSES)
    spec_lib.save(pets, workdir)  # replaces it
    assert spec_lib.load(workdir) == pets
    # for_workdir: the saved spec wins over the config's dataset.
    assert spec_lib.for_workdir(workdir, DataConfig(dataset="mura_synthetic/tiny")) == pets


def test_check_unchanged_refuses_another_label_set_in_one_line(tmp_path):
    workdir = str(tmp_path)
    spec_lib.check_unchanged(MURA, workdir)  # nothing saved: nothing to compare
    spec_lib.save(MURA, workdir)
    spec_lib.check_unchanged(MURA, workdir)
    # Another name or other reference scores do not change what the model's outputs mean.
    spec_lib.check_unchanged(spec_lib.DatasetSpec(**{**MURA.to_dict(), "name": "m"}), workdir)
    relabelled = spec_lib.DatasetSpec(
        **{**MURA.to_dict(), "label_names": ("normal", "abnormal", "unsure")}
    )
    with pytest.raises(DataError, match="label_names are") as error:
        spec_lib.check_unchanged(relabelled, workdir)
    message = str(error.value)
    assert "\n" not in message and workdir in message and "unsure" in message
    assert "dataset.json" in message and "new workdir" in message
    regrouped = spec_lib.DatasetSpec(**{**MURA.to_dict(), "group_names": BODY_PARTS[:6]})
    with pytest.raises(DataError, match="group_names are"):
        spec_lib.check_unchanged(regrouped, workdir)
    ungrouped = spec_lib.DatasetSpec(**{**MURA.to_dict(), "group_feature": None})
    with pytest.raises(DataError, match="group_feature are None"):
        spec_lib.check_unchanged(ungrouped, workdir)


# --------------------------------------------------------------------------- evaluation files


def test_prediction_files_take_their_columns_from_the_spec(tmp_path):
    studies = {
        "study_id": np.array(["a", "b"]),
        "group": np.array([6, 0]),
        "label": np.array([1, 0]),
        "prob": np.array([0.75, 0.25]),
        "pred": np.array([1, 0]),
        "n_images": np.array([2, 1]),
    }
    with_groups = str(tmp_path / "mura.csv")
    evaluation.write_study_predictions(with_groups, studies, MURA)
    with open(with_groups) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["study_id", "body_part", "label", "prob", "pred", "n_images"]
    assert [r["body_part"] for r in rows] == ["XR_WRIST", "XR_ELBOW"]
    # Without a spec: two classes, no groups (`evaluation.default_dataset`).
    assert evaluation.default_dataset({"prob": studies["prob"]}).label_names == LABEL_NAMES
    plain = str(tmp_path / "plain.csv")
    evaluation.write_study_predictions(plain, studies)
    with open(plain) as f:
        assert next(csv.reader(f)) == ["study_id", "label", "prob", "pred", "n_images"]


# --------------------------------------------------------------------------- class weights


@pytest.mark.parametrize(
    "normal, abnormal", [(300, 100), (1, 1), (7, 3), (21935, 14873), (3, 0), (0, 5)]
)
def test_balanced_weights_of_two_classes_are_class_weights_bit_for_bit(normal, abnormal):
    balanced = losses.balanced_class_weights([normal, abnormal])
    assert balanced == losses.class_weights(normal, abnormal)
    assert all(type(w) is float for w in balanced)


def test_balanced_weights_of_three_classes_balance_the_classes():
    counts = [120, 30, 7]
    weights = losses.balanced_class_weights(counts)
    assert len(weights) == 3 and sum(weights) == pytest.approx(1.0)
    balanced = [n * w for n, w in zip(counts, weights, strict=True)]
    np.testing.assert_allclose(balanced, balanced[0], rtol=1e-12)  # n_c * w_c equal
    assert losses.balanced_class_weights([1, 2, 2]) == (0.5, 0.25, 0.25)
    assert losses.balanced_class_weights(np.array([[4, 4, 4]])) == (1 / 3, 1 / 3, 1 / 3)


def test_an_absent_class_gets_weight_zero():
    weights = losses.balanced_class_weights([10, 0, 30])
    assert weights[1] == 0.0
    assert weights[0] == pytest.approx(0.75) and weights[2] == pytest.approx(0.25)
    assert 10 * weights[0] == pytest.approx(30 * weights[2])
    with pytest.raises(ValueError, match="one example"):
        losses.balanced_class_weights([0, 0, 0])
    with pytest.raises(ValueError, match=">= 0"):
        losses.balanced_class_weights([4, -1, 2])


def test_group_table_of_three_classes():
    counts = np.array([[10, 20, 40], [5, 0, 5], [0, 0, 0]])
    table = losses.class_weight_table("group", counts)
    assert table.shape == (3, 3) and table.dtype == np.float32
    np.testing.assert_allclose(table[0], losses.balanced_class_weights(counts[0]), rtol=1e-6)
    global_weights = losses.balanced_class_weights(counts.sum(axis=0))
    np.testing.assert_allclose(table[1], global_weights, rtol=1e-6)  # a class is missing
    np.testing.assert_allclose(table[2], global_weights, rtol=1e-6)  # no examples
    labels, groups = np.array([0, 2, 2, 1]), np.array([1, 0, 1, 1])
    np.testing.assert_array_equal(
        losses.count_classes(labels, groups, num_groups=3, num_classes=4),
        [[0, 0, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0]],
    )
    np.testing.assert_array_equal(losses.count_classes(labels), [1, 1, 2])  # K from labels


# --------------------------------------------------------------------------- group_of


def test_group_of_names_a_whole_word_of_the_path():
    groups = ("chest", "knee", "hand_left")
    assert image_files.group_of("/data/Knee/patient1/study1/a.png", groups) == "knee"
    assert image_files.group_of("/data/kneecap/a.png", groups) == ""  # not part of a word
    assert image_files.group_of("/data/chest2/a.png", groups) == ""
    assert image_files.group_of("/x/hand_left/a.png", groups) == "hand_left"
    assert image_files.group_of("/knee/then/chest/a.png", groups) == "chest"  # the last one
    assert image_files.group_of("/chest/study-knee.png", groups) == "knee"
    assert image_files.group_of("/data/chest/a.png", ()) == ""  # a dataset without groups
    assert image_files.group_of("MURA-v1.1/valid/XR_WRIST/p1/s1/a.png", BODY_PARTS) == "XR_WRIST"


# --------------------------------------------------------------------------- heatmaps


def test_target_class():
    assert heatmaps.target_class(2) == heatmaps.ABNORMAL == 1
    assert heatmaps.target_class(3) is heatmaps.PREDICTED is None
    assert heatmaps.target_class(5) is heatmaps.PREDICTED


def test_gradcam_of_the_predicted_class_of_a_three_class_model():
    model = CNN(num_classes=3, widths=(4, 8), dense=())
    images = jax.random.uniform(jax.random.key(2), (8, 16, 16, 1))
    for seed in range(20):  # weights whose predictions differ between the images
        variables = jax.jit(model.init)(jax.random.key(seed), images)
        predicted = np.asarray(jnp.argmax(model.apply(variables, images), axis=-1))
        if len(set(predicted)) > 1:
            break
    assert len(set(predicted)) > 1
    maps = heatmaps.gradcam(model, variables, images, target=heatmaps.PREDICTED)
    for k in sorted(set(predicted)):
        explicit = heatmaps.gradcam(model, variables, images, target=int(k))
        rows = predicted == k
        np.testing.assert_allclose(maps[rows], explicit[rows], rtol=1e-5, atol=1e-6)
    # The probabilities that come with them are those of each image's predicted class.
    _, probs = heatmaps.make_gradcam_fn(model, variables, images, target=heatmaps.PREDICTED)(
        variables, images
    )
    softmax = np.asarray(jax.nn.softmax(model.apply(variables, images)))
    np.testing.assert_allclose(probs, softmax.max(axis=-1), rtol=1e-5)


# --------------------------------------------------------------------------- plot files


def test_plot_files_are_named_after_the_grouping_feature():
    mura = workdir_lib.plot_files("body_part")
    assert set(mura.values()) == set(workdir_lib.PLOT_FILES.values())
    assert mura["kappa_by_group"] == "kappa_by_body_part.png"
    assert workdir_lib.plot_files("group")["kappa_by_group"] == "kappa_by_group.png"
    ungrouped = workdir_lib.plot_files(None)
    assert "kappa_by_group" not in ungrouped
    assert ungrouped == {
        "roc": "roc.png",
        "confusion_matrix": "confusion_matrix.png",
        "calibration": "calibration.png",
    }
    multiclass = workdir_lib.plot_files("group", binary=False)
    assert "calibration" not in multiclass and "kappa_by_group" in multiclass
    assert set(multiclass) == set(mura) - {"calibration"}


def test_murajax_imports_no_dataset_builder_at_module_level():
    """No murajax module imports `tfds_mura` (whose package imports every builder) in its
    module body (issue 21: metrics.py used to); it is imported where a dataset is opened."""
    import ast

    package = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "murajax")
    found = []
    for folder, _, names in os.walk(package):
        for name in (n for n in names if n.endswith(".py")):
            path = os.path.join(folder, name)
            with open(path) as f:
                tree = ast.parse(f.read(), path)
            for node in tree.body:  # module level only: imports inside functions are late
                modules = []
                if isinstance(node, ast.Import):
                    modules = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    modules = [node.module or ""]
                found += [(path, m) for m in modules if m.split(".")[0] == "tfds_mura"]
    assert found == []
