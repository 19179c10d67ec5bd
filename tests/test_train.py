"""End to end: `train_and_evaluate` learns, writes the contract's files and resumes exactly."""

import csv
import json
import os
import shutil

import chex
import jax
import pytest

import tfds_mura  # noqa: F401  (registers the MURA datasets)
from experiments.configs import quickstart
from murajax import checkpoint as ckpt
from murajax import models, optim, steps, train, writers
from tests.trivial_mura import trivial_config


@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run"))
    results = train.train_and_evaluate(trivial_config(data_dir), workdir)
    return workdir, results


def test_learns_a_separable_task(finished_run):
    _, results = finished_run
    study = results["validation"]["study"]
    assert study["kappa"] >= 0.9
    assert study["auroc"] >= 0.95
    assert study["n"] == 16


def test_writes_the_contract_files(finished_run, data_dir):
    workdir, _ = finished_run
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["data"]["dataset"] == "trivial_mura"
    rows = writers.read_metrics(workdir)
    train_rows = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train_rows] == [4, 8, 12, 16, 20, 24]
    assert all("loss" in r and "learning_rate" in r for r in train_rows)
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]
    assert [r["step"] for r in rows if r["split"] == "holdout"] == [12, 24]
    assert any(
        name.startswith("events.out.tfevents") for name in os.listdir(workdir + "/tensorboard")
    )
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints")))  # orbax step folders
    with open(os.path.join(workdir, "eval", "validation", "metrics.json")) as f:
        body = json.load(f)
    assert {"step", "split", "study", "image", "by_body_part"} <= set(body)
    for key in (
        "kappa",
        "kappa_ci",
        "auroc",
        "auroc_ci",
        "accuracy",
        "sensitivity",
        "specificity",
        "n",
    ):
        assert key in body["study"]
    with open(os.path.join(workdir, "eval", "validation", "predictions.csv")) as f:
        table = list(csv.DictReader(f))
    assert len(table) == 16
    assert set(table[0]) >= {"study_id", "body_part", "label", "prob", "pred"}
    assert {r["label"] for r in table} == {"0", "1"}


def test_finished_run_is_not_trained_again(finished_run, data_dir, capsys):
    workdir, results = finished_run
    before = len(writers.read_metrics(workdir))
    again = train.train_and_evaluate(trivial_config(data_dir), workdir)
    assert "training already finished" in capsys.readouterr().out
    train_rows = [r for r in writers.read_metrics(workdir)[before:] if r["split"] == "train"]
    assert not train_rows
    assert again["validation"]["study"]["kappa"] == results["validation"]["study"]["kappa"]


def _params_at(workdir: str, step: int, config):
    manager = ckpt.make_manager(workdir, keep_latest=3)
    model = models.create_from_config(config.model)
    tx = optim.make_optimizer(config.optim, config.train.steps)
    state = steps.create_train_state(model, tx, jax.random.key(0), (1, 16, 16, 1))
    restored, _ = ckpt.restore(manager, step, state, None)
    manager.close()
    return restored


def test_resume_continues_bit_exactly(finished_run, data_dir, tmp_path):
    workdir, _ = finished_run
    resumed = str(tmp_path / "resumed")
    shutil.copytree(workdir, resumed)
    # Simulate a crash after step 16: drop later checkpoints and results.
    for step in (24, 12):
        shutil.rmtree(os.path.join(resumed, "checkpoints", str(step)), ignore_errors=True)
    shutil.rmtree(os.path.join(resumed, "eval"))
    config = trivial_config(data_dir)
    train.train_and_evaluate(config, resumed)
    original, again = _params_at(workdir, 24, config), _params_at(resumed, 24, config)
    chex.assert_trees_all_equal(original.params, again.params)
    chex.assert_trees_all_equal(original.opt_state, again.opt_state)
    losses = lambda d: [
        (r["step"], r["loss"]) for r in writers.read_metrics(d) if r["split"] == "train"
    ]  # noqa: E731
    assert losses(resumed) == losses(workdir)


def test_a_changed_config_is_named_and_saved(tmp_path, capsys):
    config = quickstart.get_config("smoke")
    train._write_config(config, str(tmp_path))
    train._write_config(config, str(tmp_path))
    assert "config differs" not in capsys.readouterr().out  # tuples vs JSON lists: no change
    config.optim.learning_rate = 0.5
    config.model.widths = (4, 4)
    train._write_config(config, str(tmp_path))
    assert "in: model.widths, optim.learning_rate;" in capsys.readouterr().out
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["optim"]["learning_rate"] == 0.5
