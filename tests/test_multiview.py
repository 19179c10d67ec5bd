"""The multi-view study model, study batches, and their training, evaluation and prediction."""

import csv
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from experiments.configs import multiview as multiview_config
from murajax import (
    data,
    evaluation,
    freeze,
    heatmaps,
    image_files,
    inference,
    models,
    predict,
    steps,
    train,
    validation,
)
from murajax.config import ConfigError, ModelConfig
from murajax.data import sources
from murajax.models.multiview import attention_weights, pool_views
from tests.trivial_mura import trivial_config

SIZE = 16


def mv_model(**fields) -> models.MultiView:
    config = ModelConfig(name="multiview", widths=(4, 8), **fields)
    return models.create_from_config(config)


def init(model, views: int = 3, batch: int = 2, seed: int = 0) -> dict:
    x = jnp.zeros((batch, views, SIZE, SIZE, 1))
    return model.init({"params": jax.random.key(seed)}, x)


def studies(batch: int, views: int, seed: int = 0) -> jax.Array:
    return jax.random.uniform(jax.random.key(seed), (batch, views, SIZE, SIZE, 1))


# --------------------------------------------------------------------------- pooling


@pytest.mark.parametrize("method", ["mean", "max", "attention"])
def test_pooling_sees_only_the_real_views(method):
    features = jax.random.normal(jax.random.key(0), (3, 4, 5))
    scores = jax.random.normal(jax.random.key(1), (3, 4))
    mask = jnp.array([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]], bool)
    pooled = pool_views(features, mask, method, scores)
    for b, n in enumerate((2, 1, 4)):
        real = features[b, :n]
        if method == "mean":
            want = real.mean(0)
        elif method == "max":
            want = real.max(0)
        else:
            want = jax.nn.softmax(scores[b, :n]) @ real
        np.testing.assert_allclose(pooled[b], want, rtol=1e-5, atol=1e-6)
    garbage = jnp.where(mask[..., None], features, 1e6)
    np.testing.assert_allclose(pool_views(garbage, mask, method, scores), pooled, rtol=1e-6)


@pytest.mark.parametrize("method", ["mean", "max", "attention"])
def test_a_study_without_real_views_pools_to_finite_values(method):
    features = jnp.ones((1, 3, 4))
    pooled = pool_views(features, jnp.zeros((1, 3), bool), method, jnp.zeros((1, 3)))
    assert bool(jnp.all(jnp.isfinite(pooled)))


def test_attention_weights_are_a_distribution_over_real_views():
    weights = attention_weights(jnp.array([[3.0, -1.0, 50.0]]), jnp.array([[1, 1, 0]], bool))
    np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-6)
    assert float(weights[0, 2]) == 0.0 and float(weights[0, 0]) > float(weights[0, 1])


# --------------------------------------------------------------------------- the model


@pytest.mark.parametrize("view_pooling", ["mean", "max", "attention"])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_padding_does_not_change_a_studys_logits(view_pooling, batch_norm):
    model = mv_model(view_pooling=view_pooling, batch_norm=batch_norm)
    variables = init(model)
    x = studies(2, 2)
    alone = model.apply(variables, x)  # 2 real views, no padding
    padded = jnp.concatenate([x, 7.0 * studies(2, 3, seed=1)], axis=1)  # 3 junk views
    mask = jnp.arange(5)[None, :] < 2
    chex.assert_trees_all_close(model.apply(variables, padded, view_mask=mask), alone, rtol=1e-5)


@pytest.mark.parametrize("view_pooling", ["mean", "max", "attention"])
def test_logits_do_not_depend_on_the_order_of_views(view_pooling):
    model = mv_model(view_pooling=view_pooling)
    variables = init(model)
    x = studies(2, 3)
    chex.assert_trees_all_close(
        model.apply(variables, x[:, ::-1]), model.apply(variables, x), rtol=1e-5
    )


def test_the_encoder_is_shared_and_studies_are_independent():
    model = mv_model()
    variables = init(model)
    assert set(variables["params"]) == {"encoder", "head"}
    chex.assert_trees_all_equal_shapes(
        variables["params"]["encoder"],
        models.create("cnn", num_classes=None, widths=(4, 8)).init(
            jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 1))
        )["params"],
    )
    x = studies(3, 2)
    both = model.apply(variables, x)
    chex.assert_trees_all_close(model.apply(variables, x[1:2]), both[1:2], rtol=1e-5)
    chex.assert_shape(both, (3, 2))
    assert both.dtype == jnp.float32


def test_multiview_wants_its_backbones_inputs():
    assert models.is_study_model("multiview") and not models.is_study_model("cnn")
    assert models.input_spec(ModelConfig(name="multiview", backbone="vgg16")) == ("caffe", 3)
    assert models.input_spec(ModelConfig(name="multiview")) == ("unit", 1)
    with pytest.raises(ValueError, match="ModelConfig"):
        models.input_spec("multiview")
    with pytest.raises(ValueError, match=r"study batches \(B, V, H, W, C\)"):
        model = mv_model()
        model.init(jax.random.key(0), jnp.zeros((2, SIZE, SIZE, 1)))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("backbone", "multiview", "config.model.backbone='multiview' is invalid"),
        ("backbone", "resnet", "one of"),
        ("view_pooling", "sum", "one of 'mean', 'max', 'attention'"),
        ("attention_dim", 0, "config.model.attention_dim=0"),
    ],
)
def test_bad_multiview_fields_are_named(field, value, message):
    config = multiview_config.get_config("smoke")
    setattr(config.model, field, value)
    with pytest.raises(ConfigError, match=message):
        validation.validate(config)


def test_bad_max_views_is_named():
    config = multiview_config.get_config("smoke")
    config.data.max_views = 0
    with pytest.raises(ConfigError, match=r"config.data.max_views=0 is invalid"):
        validation.validate(config)


MULTIVIEW = models.resolve(ModelConfig(name="multiview"))


def test_freezing_the_backbone_freezes_the_encoder_only():
    params = init(mv_model(view_pooling="attention", batch_norm=True))["params"]
    mask = freeze.trainable_mask(params, "backbone", MULTIVIEW)
    assert not any(jax.tree.leaves(mask["encoder"])) and all(jax.tree.leaves(mask["head"]))
    up_to = freeze.trainable_mask(params, "up_to:block1", MULTIVIEW)
    assert not any(jax.tree.leaves(up_to["encoder"]["block1_conv1"]))
    assert all(jax.tree.leaves(up_to["encoder"]["block2_conv1"]))
    with pytest.raises(ConfigError, match="no layer name starts with 'block9'"):
        freeze.trainable_mask(params, "up_to:block9", MULTIVIEW)


# --------------------------------------------------------------------------- study batches


def test_study_groups_table():
    ids = np.array(["b", "a", "b", "c", "a", "b"])
    positions = np.array([10, 11, 12, 13, 14, 15])
    table = data.study_groups(ids, positions)
    np.testing.assert_array_equal(table, [[10, 12, 15], [11, 14, -1], [13, -1, -1]])
    assert data.study_groups(np.array([], str), np.array([], np.int64)).shape == (0, 1)


def study_config(data_dir: str, **data_fields):
    config = trivial_config(data_dir)
    config.model.name = "multiview"
    config.data.rotation = 0.0
    config.data.flip = False
    config.data.normalization = "unit"  # abnormal trivial_mura images are bright
    for name, value in data_fields.items():
        setattr(config.data, name, value)
    return config


def split_studies(config, split: str) -> dict[str, int]:
    """Number of images of each study of `split`, from the metadata."""
    source, positions = data.split_source(config.data, split)
    ids, counts = np.unique(sources.metadata(source).study_id[positions], return_counts=True)
    return dict(zip(ids.tolist(), counts.tolist(), strict=True))


def test_train_study_batches(data_dir):
    config = study_config(data_dir, max_views=2)
    iterator = data.make_train_iterator(
        config.data, model=models.resolve(config.model), batch_size=6, seed=3
    )
    batches = [next(iterator) for _ in range(4)]
    batch = batches[0]
    chex.assert_shape(batch["image"], (6, 2, SIZE, SIZE, 1))
    chex.assert_shape(batch["view_mask"], (6, 2))
    sizes = [int(n) for b in batches for n in b["view_mask"].sum(1)]
    assert set(sizes) == {1, 2}  # trivial_mura's studies have 1-3 views; at most 2 are taken
    for b in batches:
        for row in range(6):
            n = int(b["view_mask"][row].sum())
            assert b["view_mask"][row, :n].all()
            for pad in range(n, 2):  # padding repeats the study's own views (no augmentation)
                np.testing.assert_array_equal(b["image"][row, pad], b["image"][row, pad % n])
            assert (b["image"][row].mean() > 0.5) == bool(b["label"][row])  # bright = abnormal
    again = data.make_train_iterator(
        config.data, model=models.resolve(config.model), batch_size=6, seed=3
    )
    state = None
    for i, want in enumerate(batches):
        if i == 2:
            state = again.get_state()
        chex.assert_trees_all_equal(next(again), want)
    resumed = data.make_train_iterator(
        config.data, model=models.resolve(config.model), batch_size=6, seed=3
    )
    resumed.set_state(state)
    chex.assert_trees_all_equal(next(resumed), batches[2])
    for it in (iterator, again, resumed):
        it.close()


def test_train_study_batches_split_over_processes(data_dir):
    config = study_config(data_dir, max_views=3, rotation=20.0, flip=True)

    def first(process_index: int, process_count: int) -> dict:
        iterator = data.make_train_iterator(
            config.data,
            model=models.resolve(config.model),
            batch_size=4,
            seed=1,
            process_index=process_index,
            process_count=process_count,
        )
        batch = next(iterator)
        iterator.close()
        return batch

    whole = first(0, 1)
    halves = [first(0, 2), first(1, 2)]
    chex.assert_trees_all_equal(jax.tree.map(lambda *xs: np.concatenate(xs), *halves), whole)


def test_eval_study_batches_hold_every_view_once(data_dir):
    config = study_config(data_dir)
    want = split_studies(config, "validation")
    batches = list(
        data.make_eval_batches(
            config.data, "validation", model=models.resolve(config.model), batch_size=5
        )
    )
    seen = {}
    for batch in batches:
        chex.assert_shape(batch["image"], (5, max(want.values()), SIZE, SIZE, 1))
        for row in np.flatnonzero(batch["mask"]):
            seen[str(batch["study_id"][row])] = int(batch["view_mask"][row].sum())
            assert batch["num_views"][row] == batch["view_mask"][row].sum()
            assert str(batch["image_path"][row]).endswith(str(batch["study_id"][row]))
        assert not batch["view_mask"][~batch["mask"]].any()
    assert seen == want


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory) -> tuple[str, dict]:
    config = study_config(data_dir, max_views=2)
    config.model.view_pooling = "attention"
    workdir = str(tmp_path_factory.mktemp("multiview"))
    return workdir, train.train_and_evaluate(config, workdir)


def test_multiview_trains_and_is_scored_per_study(run, data_dir):
    workdir, results = run
    study = results["validation"]["study"]
    assert study["kappa"] > 0.8 and study["n"] == len(
        split_studies(study_config(data_dir), "validation")
    )
    with open(os.path.join(workdir, "eval", "validation", "predictions.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == study["n"]
    with open(os.path.join(workdir, "config.json")) as f:
        saved = json.load(f)
    assert saved["model"]["name"] == "multiview" and saved["data"]["max_views"] == 2
    with open(os.path.join(workdir, "eval", "validation", "metrics.json")) as f:
        body = json.load(f)
    assert (body["predicts"], body["view_pooling"]) == ("studies", "attention")
    with open(os.path.join(workdir, "report.md")) as f:
        report = f.read()
    assert "the model's own prediction from all of the study's views" in report
    assert "| image |" not in report and "Heatmaps not drawn" not in report


def test_evaluation_reproduces_and_sees_every_view(run):
    workdir, results = run
    loaded = inference.load(workdir, "best")
    eval_fn = steps.make_eval_fn(loaded.model, 1)
    predictions = evaluation.predict_state(
        loaded.config, loaded.states, eval_fn, "validation", loaded.spec
    )
    study = evaluation.metrics_body(loaded.config, "validation", predictions, loaded.steps[0], 0.5)[
        "study"
    ]
    assert study["kappa"] == results["validation"]["study"]["kappa"]
    # every view counts: predicting a study from its first view only changes the probability
    batch = next(
        b
        for b in data.make_eval_batches(
            loaded.config.data, "validation", model=loaded.spec, batch_size=4
        )
        if (b["num_views"] == b["image"].shape[1]).any()
    )
    assert batch["image"].shape[1] > 1
    row = int(np.argmax(batch["num_views"]))
    views = int(batch["num_views"][row])
    assert views > 1 and batch["view_mask"][row].all()  # a largest study: no padding
    study = batch["image"][row : row + 1]
    variables = loaded.variables()
    full = loaded.model.apply(variables, study, view_mask=batch["view_mask"][row : row + 1])
    # Hiding the last view gives exactly what the study without that view gives, and not
    # what the whole study gives: the mask is applied, and every real view counts.
    hide_last = np.arange(views)[None, :] < views - 1
    masked = loaded.model.apply(variables, study, view_mask=hide_last)
    removed = loaded.model.apply(variables, study[:, : views - 1])
    chex.assert_trees_all_close(masked, removed, rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.asarray(masked), np.asarray(full), rtol=1e-4, atol=1e-5)


def test_predict_scores_a_study_from_all_its_views(run, tmp_path):
    workdir, _ = run
    folder = tmp_path / "XR_WRIST" / "patient1" / "study1"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    grays = [rng.normal(level, 20, (20, 24)).clip(0, 255).astype(np.uint8) for level in (60, 180)]
    for i, gray in enumerate(grays):
        Image.fromarray(gray).save(folder / f"image{i + 1}.png")
    (folder / "notes.txt").write_text("not an image")
    rows = predict.predict(
        workdir, [str(tmp_path)], str(tmp_path / "out.csv"), heatmaps_dir=str(tmp_path / "maps")
    )
    loaded = inference.load(workdir, "best")
    images = image_files.prepare_batch(loaded.config, loaded.spec, grays)[None]
    logits = loaded.model.apply(loaded.variables(), images)
    want = float(jax.nn.softmax(logits)[0, 1])
    assert len(rows) == 1 and rows[0]["n_images"] == 2
    np.testing.assert_allclose(rows[0]["prob"], want, rtol=1e-5)
    assert len(list((tmp_path / "maps").rglob("*_gradcam.png"))) == 2


def test_gradcam_explains_each_view(run):
    workdir, _ = run
    loaded = inference.load(workdir, "best")
    images = np.asarray(studies(3, 1)[:, 0])
    maps = heatmaps.gradcam(loaded.model, loaded.variables(), images)
    chex.assert_shape(maps, (3, SIZE, SIZE))
    assert maps.min() >= 0 and maps.max() <= 1


def test_multiview_smoke_config_trains_end_to_end(tmp_path):
    config = multiview_config.get_config("smoke")
    config.data.data_dir = str(tmp_path / "tfds")
    results = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert results["validation"]["study"]["n"] > 0


@pytest.mark.parametrize(
    ("arg", "backbone", "pooling"),
    [
        (None, "cnn", "attention"),
        ("mean", "cnn", "mean"),
        ("densenet169,max", "densenet169", "max"),
        ("smoke,vgg16", "vgg16", "attention"),
    ],
)
def test_config_variants(arg, backbone, pooling):
    config = validation.validate(multiview_config.get_config(arg))
    assert (config.model.name, config.model.backbone) == ("multiview", backbone)
    assert config.model.view_pooling == pooling
    if backbone == "densenet169":
        assert config.data.image_size == 320 and config.optim.learning_rate == 1e-4


def test_unknown_config_variant_is_named():
    with pytest.raises(ValueError, match="unknown variant 'resnet'"):
        multiview_config.get_config("resnet")


def test_throughput_counts_view_slots_of_study_batches():
    studies_batch = {"image": np.zeros((2, 3, 4, 4, 1)), "view_mask": np.ones((2, 3), bool)}
    assert train.images_in(studies_batch, global_batch_size=8) == 24
    assert train.images_in({"image": np.zeros((2, 4, 4, 1))}, global_batch_size=8) == 8
