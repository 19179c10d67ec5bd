"""Thesis 5.4's sweep (experiments/configs/pretrained.py), the baseline sweep (5.1) and
`models.save_keras_weights`, the writer of Keras `.h5` weights that the smoke variant uses
(checked against Keras itself, on JAX, which loads its files)."""

import os

os.environ["KERAS_BACKEND"] = "jax"  # before keras is imported, here or by TensorFlow

import copy  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from experiments.configs import pretrained  # noqa: E402
from murajax import models, sweep, validation  # noqa: E402
from murajax.config import ConfigError  # noqa: E402
from murajax.models import keras_weights  # noqa: E402
from murajax.report import sweep as sweep_report  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAINED = os.path.join(ROOT, "experiments/configs/pretrained.py")
BASELINE = os.path.join(ROOT, "experiments/configs/baseline.py")


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> str:
    """A $MURAJAX_CACHE for this module's tests: the smoke files are generated once."""
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture
def cache(shared_cache, monkeypatch) -> str:
    """$MURAJAX_CACHE for this test (the module's; no ImageNet file is ever put in it)."""
    monkeypatch.setenv("MURAJAX_CACHE", shared_cache)
    return shared_cache


# --------------------------------------------------------------------------- the writer


class TinyBN(nn.Module):
    """A Keras-named backbone with a convolution and a BatchNorm (as DenseNet-169's layers),
    small enough to round-trip in a moment."""

    num_classes: int | None = 2

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(4, (3, 3), name="conv1_conv")(x)
        x = nn.BatchNorm(use_running_average=not train, name="conv1_bn")(x)
        if self.num_classes is None:
            return x
        return nn.Dense(self.num_classes, name="head")(x.mean(axis=(1, 2)))


@models.register("tiny_keras_bn", channels=3, keras_weights=True)
def tiny_keras_bn(num_classes=2, **kwargs):
    return TinyBN(num_classes=num_classes)


def keras_tiny_keras_bn() -> keras.Model:
    """`TinyBN`'s backbone in Keras (Flax's BatchNorm epsilon)."""
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3, padding="same", name="conv1_conv"),
            keras.layers.BatchNormalization(epsilon=1e-5, name="conv1_bn"),
        ]
    )


KERAS_TWINS = {
    # 32 px: the smallest input of the Keras applications. DenseNet-169 is left out (Keras
    # builds and runs it in 30-60 s here): TinyBN stands for its BatchNorm layers.
    "vgg16": lambda: keras.applications.VGG16(
        weights=None, include_top=False, input_shape=(32, 32, 3)
    ),
    "tiny_keras_bn": keras_tiny_keras_bn,
}


def keras_predictions(name: str, path: str, x: np.ndarray) -> np.ndarray:
    """What Keras's own model `name` (`KERAS_TWINS`) computes on `x` from the weights file."""
    model = KERAS_TWINS[name]()
    model.load_weights(path)  # Keras's legacy loader: layers matched in the model's order
    with jax.default_matmul_precision("highest"):
        return np.asarray(model.predict(x, verbose=0))


@pytest.mark.parametrize(
    "name",
    [
        "vgg16",
        "tiny_keras_bn",
    ],
)
def test_save_then_load_gives_the_same_variables(name, tmp_path):
    """murajax reads back what it wrote, and so does Keras itself: its model, given the file,
    computes murajax's feature map."""
    variables = pretrained.seeded_backbone(name, seed=3)
    if name == "tiny_keras_bn":  # statistics that are not the init's ones and zeros
        variables["batch_stats"]["conv1_bn"]["mean"] += 0.5
        variables["batch_stats"]["conv1_bn"]["var"] *= 2.0
    path = models.save_keras_weights(name, variables, tmp_path / f"{name}.h5")
    loaded = models.load_keras_weights(name, path)
    assert set(loaded) == set(variables)
    for collection, layers in variables.items():
        assert set(loaded[collection]) == set(layers)
        for layer, weights in layers.items():
            assert set(loaded[collection][layer]) == set(weights)
            for var, value in weights.items():
                np.testing.assert_array_equal(loaded[collection][layer][var], value)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".part")]  # written atomically
    size = 32 if name == "vgg16" else 8
    x = np.random.default_rng(1).normal(size=(2, size, size, 3)).astype(np.float32)
    expected = keras_predictions(name, path, x)
    with jax.default_matmul_precision("highest"):
        ours = np.asarray(models.create(name, num_classes=None).apply(variables, x))
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_save_refuses_variables_of_another_shape_or_model(tmp_path):
    variables = pretrained.seeded_backbone("vgg16")
    bad = {"params": dict(variables["params"])}
    bad["params"]["block1_conv1"] = {
        "kernel": np.zeros((3, 3, 1, 64), np.float32),  # a 1-channel input layer
        "bias": np.zeros((64,), np.float32),
    }
    bad["params"]["head"] = {"kernel": np.zeros((512, 2), np.float32)}
    with pytest.raises(ValueError) as error:
        models.save_keras_weights("vgg16", bad, tmp_path / "bad.h5")
    message = str(error.value)
    assert "block1_conv1/kernel has shape (3, 3, 1, 64), not (3, 3, 3, 64)" in message
    assert "head" in message and "\n" not in message
    assert not os.listdir(tmp_path)  # nothing written
    del bad["params"]["block5_conv3"]
    with pytest.raises(ValueError, match="missing layers block5_conv3"):
        models.save_keras_weights("vgg16", bad, tmp_path / "bad.h5")


def test_smoke_weights_are_generated_once_and_deterministically(tmp_path):
    first = pretrained.smoke_weights("vgg16", str(tmp_path / "a"))
    second = pretrained.smoke_weights("vgg16", str(tmp_path / "b"))
    assert os.path.basename(first) == os.path.basename(second)
    assert os.path.basename(first).startswith("vgg16_seed0_")
    a, b = keras_weights.read_keras_h5(first), keras_weights.read_keras_h5(second)
    assert [layer.name for layer in a] == [layer.name for layer in b]
    for x, y in zip(a, b, strict=True):
        for u, v in zip(x.values, y.values, strict=True):
            np.testing.assert_array_equal(u, v)
    mtime = os.stat(first).st_mtime_ns
    assert pretrained.smoke_weights("vgg16", str(tmp_path / "a")) == first  # reused
    assert os.stat(first).st_mtime_ns == mtime


# --------------------------------------------------------------------------- the sweeps


@pytest.mark.parametrize("arg", [None, "mura", "smoke"])
def test_pretrained_sweep_is_the_thesis_comparison_at_one_budget(arg, cache):
    loaded = sweep.load_sweep(PRETRAINED + (f":{arg}" if arg else ""))
    runs = loaded.runs
    assert [r.config.model.name for r in runs] == ["cnn", "vgg16", "vgg16", "densenet169"]
    assert runs[0].name == "base" and runs[0].config.model.weights is None
    budgets = {
        (
            r.config.train.steps,
            r.config.train.batch_size,
            r.config.data.image_size,
            r.config.data.dataset,
            r.config.data.flip,
            r.config.data.rotation,
            r.config.optim.schedule,
        )
        for r in runs
    }
    assert len(budgets) == 1, budgets  # the same budget for every run
    frozen, fine_tuned, densenet = (r.config for r in runs[1:])
    assert frozen.model.freeze == "backbone" and frozen.optim.backbone_lr_multiplier == 1.0
    assert fine_tuned.model.freeze == "none"
    assert fine_tuned.optim.backbone_lr_multiplier == 0.1
    assert densenet.model.freeze == "none" and densenet.optim.backbone_lr_multiplier == 1.0
    assert densenet.optim.learning_rate == 1e-4  # the MURA paper's
    for run in runs[1:]:
        assert run.config.data.normalization is None  # the model's own (registry)
        validation.validate(run.config)
    assert runs[0].config.data.normalization == loaded.base.data.normalization  # the CNN's own
    weights = {r.config.model.name: r.config.model.weights for r in runs[1:]}
    if arg == "smoke":
        assert runs[0].config.data.dataset == "mura_synthetic/tiny"
        assert runs[0].config.train.steps <= 5 and runs[0].config.data.image_size == 32
        for name, path in weights.items():
            assert path.startswith(os.path.join(cache, "weights", "smoke", f"{name}_seed0_"))
            models.load_keras_weights(name, path)  # the stand-in loads
    else:
        assert set(weights.values()) == {"imagenet"}
        assert not os.path.exists(
            os.path.join(cache, "weights", "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
        )  # loading the sweep fetches nothing
        dataset = "mura" if arg == "mura" else "mura_synthetic"
        assert runs[0].config.data.dataset == dataset
    if arg == "mura":
        assert runs[0].config.data.image_size == 224 and runs[0].config.train.steps == 20_000


def test_baseline_sweep_is_quickstart_in_one_run():
    from experiments.configs import default, quickstart

    for arg, expected in (
        (None, quickstart.get_config()),
        ("smoke", quickstart.get_config("smoke")),
    ):
        loaded = sweep.load_sweep(BASELINE + (f":{arg}" if arg else ""))
        assert [r.name for r in loaded.runs] == ["base"]
        assert loaded.runs[0].config == expected
    mura = sweep.load_sweep(BASELINE + ":mura").runs[0].config
    assert mura.model == default.get_config().model and mura.data.dataset == "mura"


@pytest.mark.parametrize("path", [PRETRAINED, BASELINE])
def test_unknown_variant_is_one_line(path):
    name = os.path.basename(path)
    with pytest.raises(ConfigError, match=f"{name}:nope: unknown variant"):
        sweep.load_sweep(f"{path}:nope")


# --------------------------------------------------------------------------- offline


def test_offline_pretrained_sweep_fails_in_one_line_before_training(tmp_path):
    """The default variant needs ImageNet's files: unreachable, the sweep says so in one
    line (exit 2) before training any run, and leaves no workdir."""
    env = {
        **os.environ,
        "MURAJAX_CACHE": str(tmp_path / "cache"),
        "MURAJAX_WEIGHTS_URL": "http://127.0.0.1:9/weights",  # the discard port: refused
        "no_proxy": "127.0.0.1",
        "NO_PROXY": "127.0.0.1",
    }
    workdir = tmp_path / "W"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.sweep",
            f"--config={PRETRAINED}",
            f"--workdir={workdir}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: cannot download the ImageNet weights of vgg16 from")
    assert (
        "http://127.0.0.1:9/weights/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in lines[0]
    )
    assert str(tmp_path / "cache" / "weights") in lines[0]
    assert "[sweep] run" not in done.stdout  # no run started
    assert not workdir.exists()


def test_sweep_checks_start_weights_of_new_runs_only(tmp_path, cache):
    loaded = sweep.load_sweep(PRETRAINED + ":smoke")
    cnn, frozen = loaded.runs[0], loaded.runs[1]
    assert sweep.check_start_weights(str(tmp_path), cnn) is None
    assert sweep.check_start_weights(str(tmp_path), frozen) == frozen.config.model.weights
    gone = copy.deepcopy(frozen.config)
    gone.model.weights = str(tmp_path / "moved.h5")
    moved = sweep.Run(frozen.name, frozen.overrides, gone)
    with pytest.raises(FileNotFoundError, match="moved.h5'?: no such file"):
        sweep.check_start_weights(str(tmp_path), moved)
    os.makedirs(os.path.join(tmp_path, frozen.name, "checkpoints", "3"))  # it resumes
    assert sweep.check_start_weights(str(tmp_path), moved) is None


@pytest.mark.slow
def test_smoke_sweep_trains_vgg16_frozen_and_fine_tuned_from_the_generated_file(tmp_path, cache):
    """The whole path of `:smoke`'s VGG16 runs (the DenseNet-169 run, 2-3 min of
    compilation, is left to the sweep itself): generated file -> variables -> training."""
    loaded = sweep.load_sweep(PRETRAINED + ":smoke")
    frozen, fine_tuned = loaded.runs[1], loaded.runs[2]
    sweep.run_sweep(loaded, str(tmp_path), only=[frozen.name, fine_tuned.name], log=print)
    rows = sweep_report.summarise(str(tmp_path))["rows"]
    status = {r["name"]: r["status"] for r in rows}
    assert status[frozen.name] == status[fine_tuned.name] == "done"
    assert status["base"] == "not run"
    # the frozen run's backbone is still the file's, the fine-tuned run's has moved
    from murajax import inference

    initial = models.load_keras_weights("vgg16", frozen.config.model.weights)["params"]
    for run, moved in ((frozen, False), (fine_tuned, True)):
        state = inference.load(str(tmp_path / run.name), checkpoint="latest").states[0]
        kernel = np.asarray(state.params["block1_conv1"]["kernel"])
        assert bool(np.any(kernel != initial["block1_conv1"]["kernel"])) == moved, run.name
