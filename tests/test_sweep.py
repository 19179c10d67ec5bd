"""Sweeps: run names, overrides and their errors, the shipped sweep configs, the summary, and
`python -m experiments.sweep` end to end on `trivial_mura` (two tiny runs)."""

import csv
import dataclasses
import json
import os
import subprocess
import sys

import chex
import pytest

from experiments import cli
from murajax import config as config_lib
from murajax import config_files, sweep, validation, writers
from murajax import workdir as workdir_lib
from murajax.config import Config, ConfigError
from murajax.report import sweep as sweep_report
from tests.trivial_mura import trivial_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = "tests/sweep_fixture_config.py"
RUN_1, RUN_2 = "seed=0", "seed=1,optim.learning_rate=0.005"


def _flat(config: Config) -> dict:
    """Every field by its dotted name (a model's own, nested under `model.options` in
    config.json, as `model.<field>`)."""
    flat = sweep_report._flatten(config_lib.to_dict(config))
    return {config_files.canonical_field(k): v for k, v in flat.items()}


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    "overrides, name",
    [
        ({"data.image_size": 64}, "data.image_size=64"),
        (
            {"optim.name": "sgd", "optim.learning_rate": 0.01},
            "optim.name=sgd,optim.learning_rate=0.01",
        ),
        ({"train.l2_weight": 1e-4, "data.flip": True}, "train.l2_weight=0.0001,data.flip=True"),
        ({"model.widths": (16, 32, 64)}, "model.widths=16-32-64"),
        ({"model.freeze": "up_to:conv4"}, "model.freeze=up_to_conv4"),
        ({"data.manual_dir": "/a b/c"}, "data.manual_dir=_a_b_c"),
        ({"seed": 3}, "seed=3"),
        ({}, "base"),
    ],
)
def test_run_name_is_readable_and_filesystem_safe(overrides, name):
    assert sweep.run_name(overrides) == name
    assert sweep.run_name(dict(overrides)) == name  # stable: a function of the overrides only


def test_long_run_names_are_cut_but_stay_unique():
    a = {f"model.field{i}": i for i in range(30)}
    b = {**a, "model.field29": 99}
    name_a, name_b = sweep.run_name(a), sweep.run_name(b)
    assert len(name_a) <= sweep.MAX_NAME_LENGTH and len(name_b) <= sweep.MAX_NAME_LENGTH
    assert name_a != name_b
    assert name_a.startswith("model.field0=0,model.field1=1")


# --------------------------------------------------------------------------- overrides


def test_apply_overrides_changes_only_the_named_fields_of_a_copy():
    base = trivial_config("/data")
    before = _flat(base)
    result = sweep.apply_overrides(
        base,
        {"seed": 7, "data.image_size": 24, "optim.name": "sgd", "model.widths": [4, 4, 8]},
    )
    assert _flat(base) == before  # the base is untouched
    changed = {k for k, v in _flat(result).items() if before[k] != v}
    assert changed == {"seed", "data.image_size", "optim.name", "model.widths"}
    assert result.seed == 7 and result.data.image_size == 24 and result.optim.name == "sgd"
    assert result.model.widths == (4, 4, 8)  # a list becomes the field's tuple
    assert config_lib.from_dict(config_lib.to_dict(result)) == result  # JSON round trip


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"dat.image_size": 64}, "unknown config field 'dat.image_size': config has no 'dat'"),
        (
            {"data.imagesize": 64},
            "unknown config field 'data.imagesize': data has no 'imagesize'",
        ),
        ({"data.image_size.x": 64}, "unknown config field 'data.image_size.x'"),
        ({"data": 64}, "'data' is a config section: name one of its fields"),
        ({"data.image_size": 0}, "config.data.image_size=0 is invalid: expected a number in"),
        ({"optim.name": "adagrad"}, "config.optim.name='adagrad' is invalid: expected one of"),
        ({"optim.learning_rate": "fast"}, "config.optim.learning_rate='fast' is invalid"),
        ({"data.flip": 1}, "config.data.flip=1 is invalid: expected a bool"),
    ],
)
def test_bad_overrides_are_one_line_errors_naming_the_run_and_field(overrides, expected):
    base = trivial_config("/data")
    with pytest.raises(ConfigError) as error:
        sweep.apply_overrides(base, overrides)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"sweep run {sweep.run_name(overrides)!r}: ")
    assert expected in message, message


def test_make_runs_validates_every_run_and_rejects_malformed_sweeps():
    base = trivial_config("/data")
    runs = sweep.make_runs(base, [{"seed": 0}, {"seed": 1, "optim.learning_rate": 0.005}])
    assert [r.name for r in runs] == [RUN_1, RUN_2]
    assert [r.config.seed for r in runs] == [0, 1]
    assert runs[1].config.optim.learning_rate == 0.005
    assert runs[0].config.optim.learning_rate == base.optim.learning_rate
    with pytest.raises(sweep.SweepError, match="same name 'seed=1'"):
        sweep.make_runs(base, [{"seed": 1}, {"seed": 0}, {"seed": 1}])
    with pytest.raises(sweep.SweepError, match="no runs"):
        sweep.make_runs(base, [])
    with pytest.raises(sweep.SweepError, match="list of dicts"):
        sweep.make_runs(base, {"seed": 1})
    with pytest.raises(sweep.SweepError, match="sweep entry 1"):
        sweep.make_runs(base, [{"seed": 1}, "seed=2"])
    with pytest.raises(ConfigError, match="sweep run 'seed=-1,train.steps=0'.*train.steps=0"):
        sweep.make_runs(base, [{"seed": 2}, {"seed": -1, "train.steps": 0}])


def test_only_accepts_names_with_commas_and_run_numbers():
    runs = sweep.make_runs(trivial_config("/d"), [{"seed": 0}, {"seed": 1, "optim.name": "sgd"}])
    assert sweep.parse_only("", runs) == []
    assert sweep.parse_only("seed=1,optim.name=sgd", runs) == ["seed=1,optim.name=sgd"]
    assert sweep.parse_only("seed=1,optim.name=sgd,seed=0", runs) == [
        "seed=1,optim.name=sgd",
        "seed=0",
    ]
    assert sweep.parse_only("2", runs) == ["seed=1,optim.name=sgd"]
    selected = sweep.select_runs(runs, sweep.parse_only("2,1", runs))
    assert [r.name for r in selected] == ["seed=0", "seed=1,optim.name=sgd"]  # sweep order
    with pytest.raises(sweep.SweepError, match="no run named 'seed=2'"):
        sweep.parse_only("seed=2", runs)
    with pytest.raises(sweep.SweepError, match="no run named '3'"):
        sweep.parse_only("3", runs)


# --------------------------------------------------------------------------- shipped configs

SHIPPED = [
    ("image_size", None, {"data.image_size"}),
    ("image_size", "mura", {"data.image_size"}),
    ("image_size", "smoke", {"data.image_size"}),
    ("regularisation", None, None),
    ("regularisation", "smoke", None),
    ("optimizers", None, {"optim.name", "optim.learning_rate", "optim.momentum"}),
    ("optimizers", "smoke", {"optim.name", "optim.learning_rate", "optim.momentum"}),
]


@pytest.mark.parametrize("name, arg, fields", SHIPPED)
def test_shipped_sweep_configs_load_and_every_run_validates(name, arg, fields):
    spec = f"experiments/configs/{name}.py" + (f":{arg}" if arg else "")
    loaded = sweep.load_sweep(os.path.join(ROOT, spec))
    assert len(loaded.runs) >= 2
    names = [r.name for r in loaded.runs]
    assert len(set(names)) == len(names)
    base = _flat(loaded.base)
    for run in loaded.runs:
        validation.validate(run.config)
        flat = _flat(run.config)
        changed = {k for k in flat if flat[k] != base[k]}
        assert changed <= set(run.overrides), (run.name, changed)  # only what the run names
        for field, value in run.overrides.items():
            assert flat[field] == value
    if fields is not None:
        assert {f for r in loaded.runs for f in r.overrides} == fields
    if arg == "smoke":
        assert loaded.base.data.dataset == "mura_synthetic/tiny"
        assert len(loaded.runs) <= 3 and loaded.base.train.steps <= 50
    elif arg is None:
        assert loaded.base.data.dataset == "mura_synthetic"  # CPU-sized


def test_shipped_configs_answer_the_thesis_questions():
    sizes = sweep.load_sweep(os.path.join(ROOT, "experiments/configs/image_size.py"))
    assert [r.config.data.image_size for r in sizes.runs] == [32, 64, 128]
    optimizers = sweep.load_sweep(os.path.join(ROOT, "experiments/configs/optimizers.py"))
    assert [r.config.optim.name for r in optimizers.runs] == ["sgd", "rmsprop", "adam"]
    assert optimizers.runs[0].config.optim.momentum > 0  # SGD with momentum
    reg = sweep.load_sweep(os.path.join(ROOT, "experiments/configs/regularisation.py"))
    base = reg.runs[0].config
    assert reg.runs[0].name == "base"
    assert (base.model.dropout_rate, base.train.l2_weight, base.data.flip) == (0.0, 0.0, False)
    assert base.data.rotation == 0.0
    swept = {f for r in reg.runs for f in r.overrides}
    assert {"model.dropout_rate", "train.l2_weight", "data.flip", "data.rotation"} <= swept
    assert "model.batch_norm" in swept


@pytest.mark.parametrize("name", ["image_size", "regularisation", "optimizers"])
def test_unknown_variant_of_a_shipped_config_is_one_line(name):
    path = os.path.join(ROOT, f"experiments/configs/{name}.py")
    with pytest.raises(ConfigError, match=f"{name}.py:nope: unknown variant") as error:
        sweep.load_sweep(f"{path}:nope")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "text, message",
    [
        ("def get_config(arg=None):\n    return None\n", "defines no get_sweep"),
        ("def get_config(:\n", "invalid syntax (in a config file)"),
        (
            "from tests.trivial_mura import trivial_config\n"
            "def get_config(arg=None):\n    return trivial_config('/d')\n"
            "def get_sweep(arg=None):\n    return [{'seed': 1}, {'data.imagesize': 3}]\n",
            "sweep run 'data.imagesize=3': unknown config field 'data.imagesize'",
        ),
        (
            "from tests.trivial_mura import trivial_config\n"
            "def get_config(arg=None):\n    return trivial_config('/d')\n"
            "def get_sweep(arg=None):\n    return [{'seed': 1}, {'seed': 1}]\n",
            "sweep entries 0 and 1 have the same name 'seed=1'",
        ),
    ],
)
def test_loading_errors_are_one_line_with_exit_status_2(tmp_path, capsys, text, message):
    path = tmp_path / "my_sweep.py"
    path.write_text(text)
    with pytest.raises(SystemExit) as exit_:
        cli.loaded_sweep(str(path))
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


# --------------------------------------------------------------------------- summary


def _fake_run(workdir, name, config, kappa, step, holdout_kappas, labels, probs):
    """A run folder as train_and_evaluate leaves it, with made-up numbers."""
    run = os.path.join(workdir, name)
    os.makedirs(os.path.join(run, "eval", "validation"))
    os.makedirs(os.path.join(run, "checkpoints", str(step)))
    with open(os.path.join(run, "config.json"), "w") as f:
        f.write(config_lib.to_json(config))
    body = {
        "step": step,
        "split": "validation",
        "study": {
            "kappa": kappa,
            "kappa_ci": [kappa - 0.1, kappa + 0.05],
            "auroc": 0.9,
            "auroc_ci": [0.8, 0.95],
            "accuracy": 0.75,
            "sensitivity": 0.5,
            "specificity": 1.0,
            "n": len(labels),
        },
    }
    with open(os.path.join(run, "eval", "validation", "metrics.json"), "w") as f:
        json.dump(body, f)
    with open(os.path.join(run, "metrics.jsonl"), "w") as f:
        for i, k in enumerate(holdout_kappas):
            f.write(json.dumps({"step": 4 * (i + 1), "split": "train", "loss": 0.5}) + "\n")
            f.write(json.dumps({"step": 4 * (i + 1), "split": "holdout", "kappa": k}) + "\n")
    with open(os.path.join(run, "eval", "validation", "predictions.csv"), "w") as f:
        f.write("study_id,body_part,label,prob,pred,n_images\n")
        for i, (label, prob) in enumerate(zip(labels, probs, strict=True)):
            f.write(f"s{i},XR_WRIST,{label},{prob},{int(prob >= 0.5)},1\n")


def test_summarise_rebuilds_the_summary_from_run_folders_alone(tmp_path):
    base = trivial_config("/d")
    base.train.steps = 8
    labels = [0, 1, 0, 1]
    runs = sweep.make_runs(base, [{"data.image_size": 16}, {"data.image_size": 24}])
    _fake_run(tmp_path, runs[0].name, runs[0].config, 0.5, 8, [0.2, None, 0.6], labels, [0.1] * 4)
    _fake_run(tmp_path, runs[1].name, runs[1].config, 0.25, 4, [0.3], labels, [0.2, 0.7, 0.4, 0.9])
    os.makedirs(tmp_path / "not_a_run")  # no config.json: ignored
    summary = sweep_report.summarise(str(tmp_path))  # no sweep.json: the folders' configs differ
    assert summary["split"] == "validation"
    with open(tmp_path / "sweep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == ["data.image_size=16", "data.image_size=24"]
    assert [r["data.image_size"] for r in rows] == ["16", "24"]  # the one field that differs
    assert [float(r["kappa"]) for r in rows] == [0.5, 0.25]
    assert [float(r["kappa_ci_low"]) for r in rows] == [0.4, 0.15]
    assert [float(r["best_holdout_kappa"]) for r in rows] == [0.6, 0.3]
    assert [r["best_holdout_step"] for r in rows] == ["12", "4"]
    assert [r["status"] for r in rows] == ["done", "partial"]  # run 2 stopped at step 4 of 8
    md = (tmp_path / "sweep.md").read_text()
    assert "| [data.image_size=24](<data.image_size=24/report.md>) | 24 | 4 | 0.250 [0.150" in md
    assert "![ROC curves of the runs](sweep_roc.png)" in md
    assert (tmp_path / "sweep_roc.png").read_bytes().startswith(b"\x89PNG")

    # With sweep.json, its runs (and their order) make the summary, run or not.
    sweep.write_state(str(tmp_path), "my.py:x", [*runs[::-1], *sweep.make_runs(base, [{}])], {})
    rows = sweep_report.summarise(str(tmp_path))["rows"]
    assert [r["name"] for r in rows] == ["data.image_size=24", "data.image_size=16", "base"]
    assert rows[2]["status"] == "not run" and rows[2]["kappa"] is None
    assert "# Sweep: `my.py:x`" in (tmp_path / "sweep.md").read_text()
    with pytest.raises(sweep.SweepError, match="holds no sweep"):
        sweep_report.summarise(str(tmp_path / "not_a_run"))


def test_run_sweep_trains_in_order_and_counts_only_training_time(tmp_path):
    base = trivial_config("/d")
    base.train.steps = 8
    loaded = sweep.Sweep("x.py", base, sweep.make_runs(base, [{"seed": 0}, {"seed": 1}]))
    calls = []

    def fake_train(config, workdir):
        calls.append((config.seed, os.path.basename(workdir)))
        os.makedirs(os.path.join(workdir, "checkpoints", "8"), exist_ok=True)

    lines = []
    sweep.run_sweep(loaded, str(tmp_path), train_fn=fake_train, log=lines.append)
    assert calls == [(0, "seed=0"), (1, "seed=1")]
    assert lines == ["[sweep] run 1/2 seed=0", "[sweep] run 2/2 seed=1"]
    wall = workdir_lib.read_sweep_state(str(tmp_path))["wall_s"]
    assert set(wall) == {"seed=0", "seed=1"}
    lines.clear()
    sweep.run_sweep(loaded, str(tmp_path), only=["seed=1"], train_fn=fake_train, log=lines.append)
    assert lines == ["[sweep] run 1/1 seed=1 (finished: evaluating only)"]
    assert (
        workdir_lib.read_sweep_state(str(tmp_path))["wall_s"] == wall
    )  # re-evaluation is not training


# --------------------------------------------------------------------------- end to end


def _sweep(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "experiments.sweep", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )


def _snapshot(directory: str) -> dict[str, float]:
    """Every file under `directory` and its modification time."""
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            out[os.path.relpath(path, directory)] = os.stat(path).st_mtime_ns
    return out


@pytest.fixture(scope="module")
def swept(data_dir, tmp_path_factory):
    """The fixture sweep run twice on one workdir: in full, then `--only=2` (resumes)."""
    workdir = str(tmp_path_factory.mktemp("sweep") / "W")
    config = f"--config={FIXTURE}:{data_dir}"
    first = _sweep(config, f"--workdir={workdir}")
    assert first.returncode == 0, first.stderr[-3000:]
    before = {name: _snapshot(os.path.join(workdir, name)) for name in (RUN_1, RUN_2)}
    metrics = {name: _read_metrics(workdir, name) for name in (RUN_1, RUN_2)}
    with open(os.path.join(workdir, "sweep.csv")) as f:
        first_csv = f.read()
    second = _sweep(config, f"--workdir={workdir}", "--only=2")
    assert second.returncode == 0, second.stderr[-3000:]
    return {
        "workdir": workdir,
        "config": config,
        "first": first,
        "second": second,
        "before": before,
        "metrics": metrics,
        "first_csv": first_csv,
    }


def _read_metrics(workdir: str, name: str) -> dict:
    with open(os.path.join(workdir, name, "eval", "validation", "metrics.json")) as f:
        return json.load(f)


def test_sweep_trains_every_run_in_its_own_workdir(swept):
    out = swept["first"].stdout
    assert f"[sweep] run 1/2 {RUN_1}\n" in out and f"[sweep] run 2/2 {RUN_2}\n" in out
    assert out.index("run 1/2") < out.index("run 2/2") < out.index("[sweep] summary")
    for name, seed in ((RUN_1, 0), (RUN_2, 1)):
        run = os.path.join(swept["workdir"], name)
        with open(os.path.join(run, "config.json")) as f:
            assert json.load(f)["seed"] == seed
        assert workdir_lib.checkpoint_steps(run)[-1] == 16
        assert os.path.isfile(os.path.join(run, "eval", "validation", "predictions.csv"))
        assert os.path.isfile(os.path.join(run, "report.md"))
    with open(os.path.join(swept["workdir"], RUN_2, "config.json")) as f:
        assert json.load(f)["optim"]["learning_rate"] == 0.005


def test_sweep_csv_holds_each_runs_own_metrics(swept):
    with open(os.path.join(swept["workdir"], "sweep.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == [RUN_1, RUN_2]
    assert list(rows[0])[:3] == ["name", "seed", "optim.learning_rate"]
    assert [r["seed"] for r in rows] == ["0", "1"]
    assert [float(r["optim.learning_rate"]) for r in rows] == [0.01, 0.005]  # run 1's: config's
    kappas = []
    for row in rows:
        study = swept["metrics"][row["name"]]["study"]
        chex.assert_trees_all_equal(
            [float(row[k]) for k in ("kappa", "kappa_ci_low", "kappa_ci_high", "auroc")],
            [study["kappa"], *study["kappa_ci"], study["auroc"]],
        )
        assert float(row["accuracy"]) == study["accuracy"] and int(row["n"]) == study["n"]
        assert int(row["step"]) == 16 and row["status"] == "done"
        assert float(row["wall_s"]) > 0
        holdout = [
            r["kappa"]
            for r in writers.read_metrics(os.path.join(swept["workdir"], row["name"]))
            if r["split"] == "holdout" and r.get("kappa") is not None
        ]
        assert float(row["best_holdout_kappa"]) == max(holdout)
        section = swept["metrics"][row["name"]]["triage"]
        assert float(row["ece"]) == section["calibration"]["before"]["ece_width"]
        assert float(row["aurc"]) == section["referral"]["aurc"]
        point = section["operating_points"]["sensitivity=0.95"]
        assert float(row["specificity_at_sensitivity_0.95"]) == point["specificity"]
        assert float(row["conformal_alpha"]) == 0.05
        assert float(row["conformal_coverage"]) == section["conformal"]["0.05"]["split"]["coverage"]
        kappas.append(study["kappa"])
    assert kappas[0] != kappas[1]  # the rows cannot have been swapped unnoticed


def test_sweep_md_and_roc_plot(swept):
    md = open(os.path.join(swept["workdir"], "sweep.md")).read()
    assert md.startswith(f"# Sweep: `{FIXTURE}:")
    for name in (RUN_1, RUN_2):
        assert f"| [{name}](<{name}/report.md>) |" in md
    assert "**validation** split" in md and "![ROC curves of the runs](sweep_roc.png)" in md
    png = os.path.join(swept["workdir"], "sweep_roc.png")
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(png) > 10_000
    table = swept["first"].stdout.split("[sweep] summary of the validation split:\n")[1]
    assert table.startswith("| run | seed | optim.learning_rate | checkpoint | kappa [CI]")


def test_rerun_resumes_without_training_and_only_runs_the_selected_run(swept):
    out = swept["second"].stdout
    assert f"[sweep] run 1/1 {RUN_2} (finished: evaluating only)" in out
    assert RUN_1 not in out.split("[sweep] summary")[0].split("runs in")[1]
    workdir = swept["workdir"]
    assert _snapshot(os.path.join(workdir, RUN_1)) == swept["before"][RUN_1]  # untouched
    after = _snapshot(os.path.join(workdir, RUN_2))
    checkpoints = {k: v for k, v in after.items() if k.startswith("checkpoints")}
    assert checkpoints == {
        k: v for k, v in swept["before"][RUN_2].items() if k.startswith("checkpoints")
    }
    train_rows = [
        r for r in writers.read_metrics(os.path.join(workdir, RUN_2)) if r["split"] == "train"
    ]
    assert max(r["step"] for r in train_rows) == 16 and len(train_rows) == 4  # not trained again
    assert _read_metrics(workdir, RUN_2)["study"] == swept["metrics"][RUN_2]["study"]
    with open(os.path.join(workdir, "sweep.csv")) as f:
        assert f.read() == swept["first_csv"]  # same numbers, same train time


def test_dry_run_lists_runs_and_trains_nothing(swept, tmp_path):
    fresh = _sweep(swept["config"], f"--workdir={tmp_path}/W", "--dry_run")
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    lines = fresh.stdout.splitlines()
    assert f"[sweep] run 1/2 {RUN_1} (new)" in lines
    assert f"[sweep] run 2/2 {RUN_2} (new)" in lines
    assert "    optim.learning_rate = 0.005" in lines and "    seed = 1" in lines
    assert not os.path.exists(tmp_path / "W")
    done = _sweep(swept["config"], f"--workdir={swept['workdir']}", "--dry_run", f"--only={RUN_2}")
    assert done.returncode == 0
    assert f"[sweep] run 1/1 {RUN_2} (finished)" in done.stdout.splitlines()


CLI_ERRORS = {
    "missing_file": (
        ["--config=experiments/configs/nope.py"],
        "cannot load --config=experiments/configs/nope.py: [Errno 2] config file",
    ),
    "no_get_sweep": (["--config=experiments/configs/default.py"], "defines no get_sweep(arg=None)"),
    "bad_variant": (
        ["--config=experiments/configs/optimizers.py:fast"],
        "optimizers.py:fast: unknown variant",
    ),
    "unknown_run": (
        ["--config=experiments/configs/optimizers.py", "--only=optim.name=sgd"],
        "no run named 'optim.name=sgd'",
    ),
}


@pytest.fixture(scope="module")
def cli_errors(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, str]]:
    """The error cases, run concurrently (each process imports jax)."""
    root = tmp_path_factory.mktemp("errors")
    processes = {
        case: subprocess.Popen(
            [sys.executable, "-m", "experiments.sweep", *args, f"--workdir={root}/{case}"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for case, (args, _) in CLI_ERRORS.items()
    }
    results = {}
    for case, process in processes.items():
        out, err = process.communicate(timeout=120)
        result = subprocess.CompletedProcess(process.args, process.returncode, out, err)
        results[case] = (result, str(root / case))
    return results


@pytest.mark.parametrize("case", list(CLI_ERRORS))
def test_command_line_errors_are_one_line_with_exit_status_2(cli_errors, case):
    result, workdir = cli_errors[case]
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and CLI_ERRORS[case][1] in last, result.stderr
    assert not os.path.exists(workdir)


def test_config_dataclasses_are_not_shared_between_runs():
    base = trivial_config("/d")
    runs = sweep.make_runs(base, [{"data.image_size": 16}, {"data.image_size": 24}])
    assert runs[0].config.data is not runs[1].config.data
    assert dataclasses.replace(runs[0].config.data, image_size=24) == runs[1].config.data
