"""Config validation: every mistake is one line naming the field, the value and what is valid."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from experiments.configs import default, quickstart
from murajax import config as config_lib
from murajax import validation
from murajax.config import Config, ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _with(section: str, field: str, value):
    config = Config()
    setattr(getattr(config, section), field, value)
    return config


@pytest.mark.parametrize(
    "section, field, value, expected",
    [
        ("optim", "learning_rate", -1e-3, "config.optim.learning_rate=-0.001 is invalid"),
        ("optim", "name", "adagrad", "one of 'sgd', 'rmsprop', 'adam', 'adamw'"),
        ("data", "image_size", 0, "config.data.image_size=0"),
        ("data", "image_size", "64", "expected a int"),
        ("model", "name", "resnet", "config.model.name='resnet'"),
        ("optim", "learning_rate", float("nan"), "a finite float"),
        ("train", "parallelism", "dp", "one of 'jit', 'pmap'"),
        ("data", "holdout_fraction", 1.0, "[0.0, 1.0)"),
        ("model", "widths", (), "at least one block width"),
        ("train", "steps", 0, "config.train.steps=0"),
        ("eval", "splits", ("test",), "config.eval.splits[0]='test'"),
    ],
)
def test_bad_values_name_field_value_and_choices(section, field, value, expected):
    with pytest.raises(ConfigError) as info:
        validation.validate(_with(section, field, value))
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_shipped_configs_are_valid():
    for config in (default.get_config(), quickstart.get_config(), quickstart.get_config("smoke")):
        assert validation.validate(config) is config


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="quickstart.py:fast"):
        quickstart.get_config("fast")


def test_json_round_trip_restores_the_same_config():
    config = quickstart.get_config()
    text = config_lib.to_json(config)
    assert config_lib.from_dict(json.loads(text)) == config
    assert json.loads(text) == json.loads(json.dumps(dataclasses.asdict(config)))


def _main(*args: str, cwd: str = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "experiments.main", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "override, expected",
    [
        ("--config.optim.lr=3e-4", "unknown config field"),
        ("--config.optim.learning_rate=abc", "could not convert string to float: 'abc'"),
        ("--config.optim.learning_rate=-1", "config.optim.learning_rate=-1.0 is invalid"),
        ("--config.optim.name=adagrad", "config.optim.name='adagrad' is invalid"),
        ("--config.data.image_size=0", "config.data.image_size=0 is invalid"),
    ],
)
def test_command_line_mistakes_are_one_line_without_traceback(tmp_path, override, expected):
    result = _main(
        "--config=experiments/configs/quickstart.py:smoke", f"--workdir={tmp_path}", override
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], result.stderr
    assert not os.path.exists(tmp_path / "config.json")  # nothing done before validation


def test_bad_weights_file_is_one_line(tmp_path):
    bogus = tmp_path / "vgg16_notop.h5"
    bogus.write_text("not an HDF5 file")
    result = _main(
        "--config=experiments/configs/vgg16.py:smoke",
        f"--workdir={tmp_path / 'run'}",
        f"--config.model.weights={bogus}",
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {bogus} is not an HDF5 file")
