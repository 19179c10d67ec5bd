"""VGG16 and DenseNet-169: shapes, heads, bfloat16, weights files and their errors, configs.

Keras-free: weights files are written from the models' own shapes with `tests.legacy_h5`.
The comparison with Keras itself is `test_keras_parity.py`.
"""

import functools
import json
import logging
import os
import shutil
import subprocess
import sys

import flax.linen as nn
import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tfds_mura  # noqa: F401  (registers mura_synthetic)
from experiments.configs import densenet169 as densenet169_config
from experiments.configs import vgg16 as vgg16_config
from murajax import config as config_lib
from murajax import inference, models, optim, steps, train, validation
from murajax.config import ModelConfig
from murajax.models import WeightsError, keras_weights
from murajax.models.batchnorm import BatchNormReLU
from murajax.models.densenet import DenseNet
from tests.legacy_h5 import flax_to_legacy_layers, write_legacy_h5

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 32
X = jax.random.uniform(jax.random.key(1), (2, SIZE, SIZE, 3))
VGG_LAYERS = [
    f"block{b}_conv{i}" for b, n in enumerate((2, 2, 3, 3, 3), 1) for i in range(1, n + 1)
]
FEATURES = {"vgg16": 512, "densenet169": 1664}


def shapes(model: nn.Module, x: jax.Array = X) -> dict:
    """The variables' shapes and dtypes, without computing them."""
    keys = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    return jax.eval_shape(lambda x: model.init(keys, x), x)


def random_like(tree, seed: int = 0):
    """Random float32 numpy arrays shaped like `tree`'s leaves."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.normal(0, 0.05, s.shape).astype(np.float32), tree)


@functools.partial(jax.jit, static_argnums=0)
def _apply(model: nn.Module, variables: dict, x: jax.Array) -> jax.Array:
    return model.apply(variables, x)


# --------------------------------------------------------------------------- architectures


def test_registered_with_their_input_spec():
    assert {"vgg16", "densenet169"} <= set(models.registered_names())
    assert models.input_spec("vgg16") == ("caffe", 3)
    assert models.input_spec("densenet169") == ("imagenet", 3)


@pytest.mark.parametrize("name", ["vgg16", "densenet169"])
def test_feature_map_and_head_shapes(name):
    features = jax.eval_shape(
        lambda v: models.create(name, num_classes=None).apply(v, X),
        shapes(models.create(name, num_classes=None)),
    )
    assert features.shape == (2, 1, 1, FEATURES[name]) and features.dtype == jnp.float32
    model = models.create(name, num_classes=2)
    variables = shapes(model)
    assert variables["params"]["head"]["logits"]["kernel"].shape == (FEATURES[name], 2)
    logits = jax.eval_shape(lambda v: model.apply(v, X), variables)
    assert logits.shape == (2, 2) and logits.dtype == jnp.float32


def test_vgg_layer_names_and_feature_map_size():
    variables = shapes(models.create("vgg16", num_classes=None), jnp.zeros((1, 64, 64, 3)))
    assert sorted(variables["params"]) == sorted(VGG_LAYERS)
    assert "batch_stats" not in variables
    features = jax.eval_shape(
        lambda v: models.create("vgg16", num_classes=None).apply(v, jnp.zeros((1, 64, 64, 3))),
        variables,
    )
    assert features.shape == (1, 2, 2, 512)


def test_densenet_layers_are_keras_layers_with_keras_batch_norm():
    seen = []

    def record(next_fun, args, kwargs, context):
        batch_norms = (nn.BatchNorm, BatchNormReLU)
        if isinstance(context.module, batch_norms) and context.method_name == "__call__":
            seen.append((context.module.name, context.module.epsilon, context.module.momentum))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        variables = shapes(models.create("densenet169", num_classes=None))
    assert len(seen) == 169  # stem, 2 per conv block (82), 3 transitions, the final "bn"
    assert {(eps, momentum) for _, eps, momentum in seen} == {(1.001e-5, 0.99)}
    params = variables["params"]
    expected = {"conv1_conv", "conv1_bn", "conv2_block1_0_bn", "conv2_block6_2_conv", "pool2_bn"}
    assert expected | {"pool4_conv", "conv5_block32_2_conv", "bn"} <= set(params)
    assert "pool5_conv" not in params and "conv4_block33_0_bn" not in params
    assert "bias" not in params["conv1_conv"]  # Keras's convolutions have no bias
    assert params["pool2_conv"]["kernel"].shape == (1, 1, 256, 128)
    assert sorted(variables["batch_stats"]) == sorted(n for n, _, _ in seen)


def test_vgg_head_and_dropout():
    model = models.create("vgg16", num_classes=2, dropout_rate=0.5)
    variables = random_like(shapes(model))
    logits = _apply(model, variables, X)
    assert logits.shape == (2, 2) and bool(jnp.all(jnp.isfinite(logits)))
    trained = [
        model.apply(variables, X, train=True, rngs={"dropout": jax.random.key(k)}) for k in (0, 1)
    ]
    assert not np.allclose(trained[0], trained[1])  # dropout is on in training


@pytest.mark.parametrize(
    "model_fn",
    [
        lambda dtype: models.create("vgg16", num_classes=None, dtype=dtype),
        lambda dtype: DenseNet(blocks=(1, 1, 1, 1), num_classes=None, dtype=dtype),
    ],
    ids=["vgg16", "densenet-small"],
)
def test_bfloat16_computes_with_float32_parameters(model_fn):
    f32, bf16 = model_fn("float32"), model_fn("bfloat16")
    variables = shapes(bf16)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    variables = jax.tree.map(lambda s: jnp.asarray(s), random_like(variables))
    if "batch_stats" in variables:  # positive variances
        variables["batch_stats"] = jax.tree.map(
            lambda v: jnp.abs(v) + 0.5, variables["batch_stats"]
        )
    reference, ours = _apply(f32, variables, X), _apply(bf16, variables, X)
    assert ours.dtype == jnp.bfloat16
    error = float(jnp.max(jnp.abs(ours.astype(jnp.float32) - reference)) / jnp.max(reference))
    assert error < 3e-2
    if "batch_stats" in variables:  # BatchNorm statistics stay float32 in training
        _, updates = jax.eval_shape(
            lambda v: bf16.apply(v, X, train=True, mutable=["batch_stats"]), variables
        )
        assert {leaf.dtype for leaf in jax.tree.leaves(updates)} == {jnp.dtype(jnp.float32)}


def test_bfloat16_head_gives_float32_logits():
    model = models.create("densenet169", num_classes=2, dtype="bfloat16")
    logits = jax.eval_shape(lambda v: model.apply(v, X), shapes(model))
    assert logits.dtype == jnp.float32


# --------------------------------------------------------------------------- weights files


@pytest.fixture(scope="module")
def vgg_backbone() -> dict:
    """Random VGG16 backbone variables (numpy)."""
    return random_like(shapes(models.create("vgg16", num_classes=None)))


VGG_LAST_CONVS = {"block1_conv2", "block2_conv2", "block3_conv3", "block4_conv3", "block5_conv3"}


def vgg_layers(backbone: dict) -> list:
    """VGG16's layers as Keras saves them, weightless ones (input, pools) included."""
    layers = [("input_1", [])]
    for name, weights in flax_to_legacy_layers(backbone, VGG_LAYERS):
        layers.append((name, weights))
        if name in VGG_LAST_CONVS:
            layers.append((name.split("_")[0] + "_pool", []))
    return layers


@pytest.fixture(scope="module")
def vgg_file(vgg_backbone, tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("weights") / "vgg16_weights_notop.h5")
    write_legacy_h5(path, vgg_layers(vgg_backbone))
    return path


def write(tmp_path, layers, style: str = "keras2") -> str:
    path = str(tmp_path / "weights.h5")
    write_legacy_h5(path, layers, style=style)
    return path


def assert_loaded(variables: dict, backbone: dict) -> None:
    assert jax.tree.structure(variables) == jax.tree.structure(backbone)
    for got, want in zip(jax.tree.leaves(variables), jax.tree.leaves(backbone), strict=True):
        np.testing.assert_array_equal(np.asarray(got), want)
        assert got.dtype == jnp.float32


def test_loads_a_vgg_file(vgg_file, vgg_backbone):
    assert_loaded(models.load_keras_weights("vgg16", vgg_file), vgg_backbone)


@pytest.mark.parametrize("style", ["keras1", "keras3", "opaque"])
def test_loads_other_weight_names(style, vgg_backbone, tmp_path):
    path = write(tmp_path, vgg_layers(vgg_backbone), style=style)
    assert_loaded(models.load_keras_weights("vgg16", path), vgg_backbone)


def test_weights_are_matched_by_name_not_order(vgg_backbone, tmp_path):
    layers = [(n, list(reversed(w))) for n, w in vgg_layers(vgg_backbone)]  # bias, kernel
    assert_loaded(models.load_keras_weights("vgg16", write(tmp_path, layers)), vgg_backbone)


def test_file_with_top_loads_the_backbone_and_reports_the_top(vgg_backbone, tmp_path, caplog):
    top = [
        ("flatten", []),
        ("fc1", [("kernel", np.zeros((512, 8))), ("bias", np.zeros(8))]),
        ("fc2", [("kernel", np.zeros((8, 8))), ("bias", np.zeros(8))]),
        ("predictions", [("kernel", np.zeros((8, 1000))), ("bias", np.zeros(1000))]),
    ]
    path = write(tmp_path, vgg_layers(vgg_backbone) + top)
    with caplog.at_level(logging.INFO, logger=keras_weights.__name__):
        assert_loaded(models.load_keras_weights("vgg16", path), vgg_backbone)
    assert "ignored the top layers fc1, fc2, predictions" in caplog.text


def test_one_error_lists_everything_that_does_not_fit(vgg_backbone, tmp_path):
    layers = [(n, list(w)) for n, w in vgg_layers(vgg_backbone) if n != "block5_conv3"]
    layers.append(("block6_conv1", [("kernel", np.zeros((3, 3, 512, 512)))]))
    for name, weights in layers:
        if name == "block1_conv1":
            weights[0] = ("kernel", np.zeros((3, 3, 1, 64)))
        if name == "block2_conv1":
            del weights[1]  # the bias
        if name == "block2_conv2":
            weights[:] = [("gamma", np.ones(128)), ("beta", np.zeros(128))]  # a BatchNorm's
    with pytest.raises(WeightsError) as error:
        models.load_keras_weights("vgg16", write(tmp_path, layers))
    message = str(error.value)
    assert message.startswith(f"vgg16 weights from {tmp_path / 'weights.h5'}: ")
    assert "missing layers block5_conv3" in message
    assert "unexpected layers block6_conv1" in message
    assert "shape mismatch block1_conv1/kernel (3,3,1,64) in the file vs (3,3,3,64)" in message
    assert "block2_conv1 holds weights [kernel], the model expects [kernel, bias]" in message
    assert "block2_conv2 holds weights [gamma, beta], the model expects [kernel, bias]" in message
    assert "\n" not in message and isinstance(error.value, ValueError)


def test_another_models_file_is_named_as_such(vgg_file):
    with pytest.raises(WeightsError, match=r"none of the model's 337 layers is in the file.*"):
        models.load_keras_weights("densenet169", vgg_file)


def test_files_that_are_not_keras_weights(tmp_path):
    with h5py.File(tmp_path / "new.weights.h5", "w") as f:
        f.create_group("layers")
    with pytest.raises(WeightsError, match="not a legacy Keras .h5 weights file"):
        models.load_keras_weights("vgg16", tmp_path / "new.weights.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(WeightsError, match="is not an HDF5 file"):
        models.load_keras_weights("vgg16", tmp_path / "text.h5")
    with pytest.raises(FileNotFoundError):
        models.load_keras_weights("vgg16", tmp_path / "absent.h5")


@pytest.mark.parametrize(
    "name, role",
    [
        ("conv1/bn/moving_variance:0", "moving_variance"),
        ("conv2_block1_0_bn/gamma", "gamma"),
        ("block1_conv1/kernel:0", "kernel"),
        ("block1_conv1_1/bias:0", "bias"),
        ("block1_conv1_W_1:0", "kernel"),
        ("block1_conv1_b_1:0", "bias"),
        ("something_else:0", None),
    ],
)
def test_weight_role(name, role):
    assert keras_weights.weight_role(name) == role


# --------------------------------------------------------------------------- into training


def test_pretrained_variables_replace_the_backbone_and_keep_the_head(vgg_file, vgg_backbone):
    model = models.create("vgg16", num_classes=2)
    initial = random_like(shapes(model), seed=5)
    unchanged = models.pretrained_variables(ModelConfig(name="vgg16"), initial)
    assert unchanged is initial
    loaded = models.pretrained_variables(ModelConfig(name="vgg16", weights=vgg_file), initial)
    head = loaded["params"].pop("head")
    np.testing.assert_array_equal(
        head["logits"]["kernel"], initial["params"]["head"]["logits"]["kernel"]
    )
    assert_loaded(loaded, vgg_backbone)
    assert not np.array_equal(
        initial["params"]["block1_conv1"]["kernel"],
        vgg_backbone["params"]["block1_conv1"]["kernel"],
    )  # not mutated


def test_pretrained_variables_name_a_shape_mismatch(vgg_file):
    one_channel = shapes(models.create("vgg16", num_classes=2), jnp.zeros((1, SIZE, SIZE, 1)))
    with pytest.raises(
        WeightsError,
        match=r"shape mismatch block1_conv1/kernel \(3,3,3,64\) in"
        r" the file vs \(3,3,1,64\) in the model",
    ):
        models.pretrained_variables(ModelConfig(name="vgg16", weights=vgg_file), one_channel)


def test_create_train_state_loads_model_weights(vgg_file, vgg_backbone):
    model_config = ModelConfig(name="vgg16", weights=vgg_file)
    model = models.create_from_config(model_config)
    tx = optim.make_optimizer(config_lib.OptimConfig(), 10)
    state = steps.create_train_state(model, tx, jax.random.key(0), (1, SIZE, SIZE, 3), model_config)
    head = state.params.pop("head")
    assert float(jnp.abs(head["logits"]["kernel"]).sum()) > 0  # Glorot, not the file
    assert_loaded({"params": state.params}, vgg_backbone)


def test_multiview_loads_its_backbones_file_into_its_encoder(vgg_file, vgg_backbone):
    model_config = ModelConfig(name="multiview", backbone="vgg16", weights=vgg_file)
    model = models.create_from_config(model_config)
    initial = random_like(shapes(model, jnp.zeros((1, 1, SIZE, SIZE, 3))), seed=7)
    loaded = models.pretrained_variables(model_config, initial)
    assert_loaded({"params": loaded["params"]["encoder"]}, vgg_backbone)
    np.testing.assert_array_equal(
        loaded["params"]["head"]["logits"]["kernel"],
        initial["params"]["head"]["logits"]["kernel"],
    )
    with pytest.raises(WeightsError, match="densenet169 weights from"):
        models.pretrained_variables(
            ModelConfig(name="multiview", backbone="densenet169", weights=vgg_file),
            initial,
        )
    with pytest.raises(ValueError, match="model 'cnn' does not load weights"):
        models.create_from_config(ModelConfig(name="multiview", weights=vgg_file))


def test_create_refuses_weights_and_create_from_config_leaves_them_to_the_trainer(vgg_file):
    for name in ("vgg16", "densenet169"):
        with pytest.raises(TypeError, match=rf"holds no weights.*load_keras_weights\('{name}'"):
            models.create(name, num_classes=None, weights=vgg_file)
        assert models.create(name, weights=None) == models.create(name)
        # The config's file is loaded at initialisation (`create_train_state`), so the module
        # is the one without it, and a trained workdir loads after the file has gone.
        model_config = ModelConfig(name=name, weights="gone.h5", dtype="bfloat16")
        assert models.create_from_config(model_config) == models.create(name, dtype="bfloat16")
    with pytest.raises(TypeError, match="holds no weights"):
        models.create("multiview", backbone="vgg16", weights=vgg_file)
    with pytest.raises(config_lib.ConfigError, match="model.weights='x.h5' is invalid"):
        models.create_from_config(ModelConfig(name="cnn", weights="x.h5"))


# --------------------------------------------------------------------------- configs


def test_densenet169_config_is_the_mura_papers_recipe():
    config = validation.validate(densenet169_config.get_config())
    assert (config.model.name, config.model.weights) == ("densenet169", None)
    assert config.data.image_size == 320 and config.data.flip and config.data.rotation == 30
    o = config.optim
    assert (o.name, o.learning_rate, o.b1, o.b2) == ("adam", 1e-4, 0.9, 0.999)
    assert (o.schedule, o.decay_factor) == ("plateau", 0.1)
    assert config.train.batch_size == 8 and config.train.class_weighting == "global"
    assert "--config.model.weights" in densenet169_config.__doc__


@pytest.mark.parametrize("module", [vgg16_config, densenet169_config])
def test_config_variants(module):
    smoke = validation.validate(module.get_config("smoke"))
    assert smoke.data.dataset == "mura_synthetic/tiny" and smoke.data.image_size == 32
    assert (smoke.train.steps, smoke.train.batch_size) == (3, 4)
    assert validation.validate(module.get_config()).model.name == module.__name__.split(".")[-1]
    with pytest.raises(ValueError, match="unknown variant"):
        module.get_config("nope")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("tfds"))


def run_smoke(module, data_dir: str, workdir: str) -> dict:
    config = module.get_config("smoke")
    config.data.data_dir = data_dir
    results = train.train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, "eval", "validation", "metrics.json")) as f:
        body = json.load(f)
    assert body["step"] == 3 and body["study"]["n"] > 0
    return results


def test_vgg16_smoke_config_trains_from_a_weights_file_and_reruns_without_it(
    data_dir, tmp_path, vgg_file, vgg_backbone
):
    """`vgg16.py:smoke` from a Keras file; the finished run is evaluated again after the file
    is gone (a resumed run takes its weights from its checkpoint, not from model.weights)."""
    weights = tmp_path / "vgg16_notop.h5"
    shutil.copy(vgg_file, weights)
    config = vgg16_config.get_config("smoke")
    config.data.data_dir = data_dir
    config.model.weights = str(weights)
    workdir = str(tmp_path / "vgg16")
    first = train.train_and_evaluate(config, workdir)
    assert_trained_from(workdir, vgg_backbone["params"], config)
    weights.unlink()
    again = train.train_and_evaluate(config, workdir)
    np.testing.assert_equal(again["validation"]["study"], first["validation"]["study"])
    assert first["validation"]["step"] == 3


def assert_trained_from(workdir: str, backbone: dict, config: config_lib.Config) -> None:
    """The run's last checkpoint holds `backbone` (the weights file's values) moved by at most
    its steps' Adam updates (each under a few learning rates per weight): a run that ignored
    the file starts from an init that differs by about the file's own scale (0.05)."""
    state = inference.load(workdir, checkpoint="latest").states[0]
    bound = 3 * config.train.steps * config.optim.learning_rate  # 9e-4, against 0.05
    moved = 0.0
    for layer, weights in backbone.items():
        for name, start in weights.items():
            trained = np.asarray(state.params[layer][name])
            distance = float(np.max(np.abs(trained - start)))
            assert distance <= bound, (layer, name, distance)
            moved = max(moved, distance)
    assert moved > 0  # and it trained


@pytest.mark.slow  # 2-3 minutes on 2 cores; DenseNet-169's step and weights: the tests above
def test_densenet169_smoke_config_trains_end_to_end(data_dir, tmp_path):
    """The paper's config as a user runs it, `experiments.main --config=...:smoke`, in a
    process whose XLA skips LLVM's optimisations: compiling DenseNet-169's train step then
    takes 29 s rather than 41 s on 2 CPU cores (about 2 minutes for the whole run)."""
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    workdir = tmp_path / "densenet169"
    command = [
        sys.executable,
        "-m",
        "experiments.main",
        "--config=experiments/configs/densenet169.py:smoke",
        f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}",
    ]
    result = subprocess.run(
        command,
        cwd=ROOT,
        env={**os.environ, "XLA_FLAGS": flags.strip()},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(workdir / "eval" / "validation" / "metrics.json") as f:
        body = json.load(f)
    assert body["step"] == 3 and body["study"]["n"] > 0
    assert (workdir / "report.md").is_file()
