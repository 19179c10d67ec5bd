"""Model configs that belong to their model: `register(name, config=...)`, the chosen model's
own fields in `config.model`, and a field it does not take refused in one line."""

import copy
import dataclasses
import inspect
import json
import os
import pickle
import subprocess
import sys

import flax.linen as nn
import jax.numpy as jnp
import pytest

from experiments.configs import multiview as multiview_config
from experiments.configs import quickstart, vgg16
from murajax import config as config_lib
from murajax import config_files, models, sweep, validation
from murajax import workdir as workdir_lib
from murajax.config import Config, ConfigError
from murajax.models import registry
from tests.trivial_mura import trivial_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VGG16_WIDTHS = (
    "config.model.widths=(8, 16) is invalid: model 'vgg16' has no field 'widths'"
    " (it takes: dropout_rate)"
)


def _refused(config: Config) -> str:
    with pytest.raises(ConfigError) as info:
        validation.validate(config)
    message = str(info.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- refusal


def test_vgg16_with_widths_is_refused_naming_the_field_and_the_model():
    config = vgg16.get_config("smoke")
    validation.validate(config)  # vgg16.py builds on default.py's CNN: its widths are gone
    config.model.widths = (8, 16)
    assert _refused(config) == VGG16_WIDTHS


def test_vgg16_with_widths_on_the_command_line_is_one_error_line_and_exit_2(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.main",
            "--config=experiments/configs/vgg16.py",
            "--config.model.widths=(8,16)",
            f"--workdir={tmp_path}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {VGG16_WIDTHS}"], result.stderr
    assert not os.path.exists(tmp_path / "config.json")


def test_a_field_no_model_has_is_an_unknown_config_field():
    with pytest.raises(ConfigError, match="unknown config field 'model.widht'.*'widht'"):
        config_files.parse_overrides(quickstart.get_config(), {"model.widht": "8"})
    with pytest.raises(ConfigError, match="unknown config field 'model.widht'"):
        config_files.apply_overrides(quickstart.get_config(), {"model.widht": 8})
    # In a Python config file it is kept until validation, which names the model's fields.
    config = quickstart.get_config()
    config.model.widht = 8
    assert "model 'cnn' has no field 'widht' (it takes: widths, convs_per_block" in _refused(config)


def test_reading_a_field_the_model_does_not_take_says_what_it_takes():
    model = vgg16.get_config().model
    with pytest.raises(AttributeError, match="'vgg16' has no field 'widths'.*dropout_rate"):
        _ = model.widths
    assert getattr(model, "widths", None) is None
    assert model.dropout_rate == 0.5


def test_a_models_own_checks_name_the_field():
    config = quickstart.get_config()
    config.model.widths = ()
    assert "config.model.widths=() is invalid: expected at least one block width" in (
        _refused(config)
    )
    config = multiview_config.get_config()
    config.model.view_pooling = "sum"
    assert "config.model.view_pooling='sum'" in _refused(config)
    config = vgg16.get_config()
    config.model.dropout_rate = "0.5"
    assert "config.model.dropout_rate='0.5' is invalid: expected a finite float" in (
        _refused(config)
    )


# --------------------------------------------------------------------------- which fields


def test_the_cnn_and_a_multiview_on_the_cnn_keep_their_widths():
    cnn = quickstart.get_config()
    cnn.model.widths = (8, 16)
    assert validation.validate(cnn).model.widths == (8, 16)
    assert models.resolve(cnn.model).options == models.CNNConfig(
        widths=(8, 16),
        batch_norm=True,
        bn_momentum=0.9,
        pooling="max",
        dense=(64,),
        dropout_rate=0.0,
    )

    study = multiview_config.get_config("smoke")  # quickstart's CNN as the encoder
    study.model.widths = (4, 8)
    spec = models.check_config(validation.validate(study).model)
    assert spec.options.view_pooling == "attention" and spec.backbone_options.widths == (4, 8)
    assert spec.build().encoder.widths == (4, 8)

    study.model.backbone = "vgg16"  # the CNN's fields go with it
    assert "widths" not in study.model.options
    study.model.widths = (4, 8)
    assert _refused(study) == (
        "config.model.widths=(4, 8) is invalid: model 'multiview' (backbone 'vgg16') has no"
        " field 'widths' (it takes: backbone, pooling, view_pooling, attention_dim,"
        " dropout_rate)"
    )


def test_choosing_another_model_keeps_what_it_takes_and_drops_the_old_models_fields():
    config = quickstart.get_config()  # the CNN, dropout 0
    config.model.name = "vgg16"
    assert config.model.options == {"dropout_rate": 0.0}
    config.model.name = "cnn"  # back to the CNN's defaults, the dropout kept
    assert config.model.options == dataclasses.asdict(models.CNNConfig(dropout_rate=0.0))


def test_an_unregistered_model_on_the_way_keeps_the_fields_and_is_named():
    config = multiview_config.get_config("smoke")
    config.model.view_pooling = "max"
    config.model.backbone = "resnet"  # a typo: named by validation, nothing dropped
    assert "config.model.backbone='resnet' is invalid: expected one of" in _refused(config)
    assert config.model.widths == quickstart.get_config("smoke").model.widths
    config.model.backbone = "vgg16"  # the CNN's fields go, the multiview's stay
    assert validation.validate(config).model.view_pooling == "max"

    config = quickstart.get_config()
    config.model.name = "vgg61"
    assert _refused(config).startswith("config.model.name='vgg61' is invalid")
    config.model.name = "vgg16"
    assert config.model.options == {"dropout_rate": 0.0}


def test_a_config_file_may_set_fields_before_the_model_name(tmp_path):
    path = tmp_path / "before_name.py"
    path.write_text(
        "from experiments.configs import vgg16\n"
        "def get_config(arg=None):\n"
        "    config = vgg16.get_config('smoke')\n"
        "    config.model.view_pooling = 'max'\n"
        "    config.model.attention_dim = 7\n"
        "    config.model.backbone = 'densenet169'\n"
        "    config.model.name = 'multiview'\n"
        "    return config\n"
    )
    model = config_files.load_config(str(path)).model
    assert model.name == "multiview" and model.backbone == "densenet169"
    assert model.view_pooling == "max" and model.attention_dim == 7
    assert model.dropout_rate == vgg16.get_config("smoke").model.dropout_rate

    path.write_text(
        "from murajax.config import Config\n"
        "def get_config(arg=None):\n"
        "    config = Config()\n"
        "    config.model.widths = (8, 16)\n"
        "    config.model.view_pooling = 'max'\n"
        "    config.model.name = 'multiview'\n"
        "    return config\n"
    )
    model = config_files.load_config(str(path)).model
    assert (model.widths, model.view_pooling) == ((8, 16), "max")


@pytest.mark.parametrize("order", [("model.name", "model.widths"), ("model.widths", "model.name")])
def test_the_command_line_switches_the_model_and_parses_against_it(order):
    texts = {"model.name": "cnn", "model.widths": "8,16"}
    config = config_files.load_config(
        "experiments/configs/vgg16.py:smoke", {k: texts[k] for k in order}
    )
    assert config.model.name == "cnn" and config.model.widths == (8, 16)
    # And the other way round: widths given first still belong to the model chosen.
    texts = {"model.name": "vgg16", "model.widths": "8,16"}
    with pytest.raises(ConfigError, match="model 'vgg16' has no field 'widths'"):
        config_files.load_config(
            "experiments/configs/quickstart.py:smoke", {k: texts[k] for k in order}
        )


def test_a_sweep_sets_model_fields_by_dotted_name():
    base = quickstart.get_config("smoke")
    runs = sweep.make_runs(
        base,
        [
            {},
            {"model.name": "vgg16", "model.dropout_rate": 0.25},
            {"model.widths": [4, 8], "model.name": "multiview"},
        ],
    )
    assert [r.config.model.name for r in runs] == ["cnn", "vgg16", "multiview"]
    assert runs[1].config.model.options == {"dropout_rate": 0.25}
    assert runs[2].config.model.widths == (4, 8)
    with pytest.raises(ConfigError, match="model 'vgg16' has no field 'widths'"):
        sweep.make_runs(base, [{"model.widths": [4, 8], "model.name": "vgg16"}])


# --------------------------------------------------------------------------- config.json


@pytest.mark.parametrize("arg", [None, "vgg16", "densenet169,mean"])
def test_config_json_round_trips(arg):
    for config in (quickstart.get_config(), vgg16.get_config(), multiview_config.get_config(arg)):
        values = json.loads(config_lib.to_json(config))
        assert values == json.loads(json.dumps(dataclasses.asdict(config)))
        assert set(values["model"]) == {*config_lib.SHARED_MODEL_FIELDS, "options"}
        assert config_lib.from_dict(values) == config
    assert copy.deepcopy(config) == config == pickle.loads(pickle.dumps(config))


def _old_flat_model(**fields) -> dict:
    """A `model` section as murajax wrote it before models had their own configs."""
    return {
        "name": "cnn",
        "num_classes": None,
        "dropout_rate": 0.5,
        "weights": None,
        "dtype": "float32",
        "conv_impl": "auto",
        "widths": [32, 64, 128],
        "convs_per_block": 1,
        "batch_norm": False,
        "bn_momentum": 0.99,
        "pooling": "avg",
        "dense": [128],
        "freeze": "none",
        "backbone": "cnn",
        "view_pooling": "mean",
        "attention_dim": 128,
        **fields,
    }


def test_an_old_flat_config_json_loads_with_its_models_fields_only(tmp_path):
    values = json.loads(config_lib.to_json(Config()))
    values["model"] = _old_flat_model(name="vgg16", dropout_rate=0.25, widths=[8, 16])
    (tmp_path / "config.json").write_text(json.dumps(values))
    config = workdir_lib.read_config(str(tmp_path))
    assert config.model.name == "vgg16" and config.model.options == {"dropout_rate": 0.25}

    values["model"] = _old_flat_model(widths=[8, 16], pooling="max")
    model = config_lib.from_dict(values).model
    assert model.widths == (8, 16) and model.pooling == "max"
    assert "backbone" not in model.options and "view_pooling" not in model.options

    values["model"] = _old_flat_model(name="multiview", backbone="cnn", widths=[4, 8])
    model = validation.validate(config_lib.from_dict(values)).model
    assert model.widths == (4, 8) and model.view_pooling == "mean"


# --------------------------------------------------------------------------- your own model


@dataclasses.dataclass
class TinyConfig:
    width: int = 4
    hidden: tuple[int, ...] = ()

    def check(self) -> None:
        config_lib.check_positive("model.width", self.width)


class Tiny(nn.Module):
    num_classes: int = 2
    width: int = 4
    hidden: tuple[int, ...] = ()
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Conv(self.width, (3, 3))(x))
        x = models.mark_features(self, x)
        x = x.mean(axis=(1, 2))
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.num_classes)(x).astype(jnp.float32)


@pytest.fixture
def tiny_registered(monkeypatch):
    """ "tiny_own" registered with `TinyConfig` for one test (the registry restored after)."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @models.register("tiny_own", config=TinyConfig)
    def tiny_own(num_classes=2, *, width=4, hidden=(), dtype="float32"):
        return Tiny(num_classes=num_classes, width=width, hidden=hidden, dtype=dtype)


def test_a_user_model_with_its_own_config_takes_its_fields(tiny_registered):
    texts = {"model.width": "6", "model.name": "tiny_own", "model.hidden": "3,5"}
    config = config_files.apply_overrides(
        quickstart.get_config(), config_files.parse_overrides(quickstart.get_config(), texts)
    )
    assert config.model.options == {"width": 6, "hidden": (3, 5)}  # the CNN's fields gone
    spec = models.resolve(config.model)
    assert spec.options == TinyConfig(width=6, hidden=(3, 5))
    assert spec.build() == Tiny(num_classes=2, width=6, hidden=(3, 5))

    config.model.width = 0
    assert "config.model.width=0 is invalid: expected a number > 0" in _refused(config)
    config.model.width, config.model.dropout_rate = 6, 0.5
    assert "model 'tiny_own' has no field 'dropout_rate' (it takes: width, hidden)" in (
        _refused(config)
    )


def test_a_user_model_with_its_own_config_trains(tiny_registered, data_dir, tmp_path):
    from murajax import train

    config = trivial_config(data_dir, steps=4, eval_every=4, checkpoint_every=4, log_every=2)
    config.model.name = "tiny_own"
    config.model.width = 3
    config.eval.bootstrap_samples = 10
    results = train.train_and_evaluate(config, str(tmp_path / "run"))
    assert results["validation"]["study"]["n"] == 16
    written = json.loads((tmp_path / "run" / "config.json").read_text())["model"]
    assert written["name"] == "tiny_own" and written["options"] == {"width": 3, "hidden": []}


def test_a_model_registered_without_config_takes_only_the_shared_fields(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    models.register("bare")(lambda num_classes=2, **kwargs: Tiny(num_classes=num_classes))
    config = quickstart.get_config()
    config.model.name = "bare"
    assert config.model.options == {} and models.resolve(config.model).options is None
    validation.validate(config)
    config.model.width = 3
    assert _refused(config).endswith(
        "model 'bare' has no field 'width' (it takes only the shared fields: name,"
        " num_classes, weights, dtype, conv_impl, freeze)"
    )


def test_register_refuses_a_config_that_could_not_work(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    def factory(num_classes=2, *, width=4):
        return Tiny(num_classes=num_classes, width=width)

    @dataclasses.dataclass
    class NoDefault:
        width: int

    @dataclasses.dataclass
    class Shared:
        dtype: str = "float32"

    @dataclasses.dataclass
    class Unknown:
        depth: int = 2

    for config, message in (
        (dict, "expected a dataclass"),
        (NoDefault, "NoDefault.width has no default"),
        (Shared, "every model has `model.dtype` already"),
        (Unknown, "its factory takes no depth"),
    ):
        with pytest.raises(TypeError, match=message):
            models.register("broken", config=config)(factory)
    with pytest.raises(TypeError, match="study_level=True.*backbone"):
        models.register("broken", config=TinyConfig, study_level=True)(factory)
    assert "broken" not in models.registered_names()


def test_built_in_factories_default_to_their_configs_defaults():
    for name in ("cnn", "vgg16", "densenet169", "multiview"):
        own = registry._registration(name)
        parameters = inspect.signature(own.factory).parameters
        for field in dataclasses.fields(own.config):
            assert parameters[field.name].default == field.default, (name, field.name)
