"""Your own radiographs, three classes, end to end as a user runs them (issue 21): a folder tree
and a CSV manifest through `experiments.main`, `evaluate`, `predict` and `sweep`, and
`chest_synthetic:smoke` through `main`.

The tree is made here: `ROOT/<split>/<label>/<group>/<patient>_<study>/imageN.png`, three
classes told apart by where a bright square sits (left, middle, right), two groups.
"""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABELS = ("normal", "opacity", "effusion")
GROUPS = ("left", "right")


def draw(label: int, rng: np.random.Generator) -> np.ndarray:
    """A 24x24 image whose bright square's column says the class."""
    pixels = rng.normal(60, 12, size=(24, 24))
    column = 2 + 8 * label
    pixels[8:16, column : column + 6] += 140
    return pixels.clip(0, 255).astype(np.uint8)


def make_tree(root: str) -> None:
    """The tree, with `labels.txt` fixing the class order (else: normal, then by name)."""
    rng = np.random.default_rng(0)
    os.makedirs(root)
    with open(os.path.join(root, "labels.txt"), "w") as f:
        f.write("\n".join(LABELS) + "\n")
    for split, folder, patients in (("train", "train", 18), ("valid", "valid", 6)):
        for p in range(patients):
            patient = f"{split}p{p:03d}"
            label = p % 3
            group = GROUPS[(p // 3) % 2]
            study = os.path.join(root, folder, LABELS[label], group, f"{patient}_study1")
            os.makedirs(study)
            for view in range(1 + p % 2):
                path = os.path.join(study, f"image{view + 1}.png")
                Image.fromarray(draw(label, rng)).save(path)


def run(module: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


CONFIG = """
from experiments.configs import quickstart


def get_config(arg=None):
    config = quickstart.get_config("smoke")
    config.data.dataset = "image_folder"
    config.data.{source} = {path!r}
    config.data.data_dir = {data_dir!r}
    config.data.image_size = 24
    config.data.rotation = 0.0
    config.data.holdout_fraction = 0.25
    config.model.widths = (8, 16)
    config.train.steps = 12
    config.train.eval_every = 6
    config.train.checkpoint_every = 6
    config.train.progress = False
    config.eval.kappa_weights = "quadratic"
    return config


def get_sweep(arg=None):
    return [{{"optim.learning_rate": 3e-3}}, {{"optim.learning_rate": 1e-2}}]
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory, env):
    base = tmp_path_factory.mktemp("own")
    tree = str(base / "tree")
    make_tree(tree)
    config = base / "folder_config.py"
    config.write_text(CONFIG.format(source="manual_dir", path=tree, data_dir=str(base / "tfds")))
    workdir = str(base / "run")
    trained = run("experiments.main", f"--config={config}", f"--workdir={workdir}", env=env)
    return {"base": base, "tree": tree, "config": str(config), "workdir": workdir, "log": trained}


def read_csv(path: str) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_main_trains_and_scores_three_classes(setup):
    workdir = setup["workdir"]
    assert "study kappa" in setup["log"].stdout
    with open(os.path.join(workdir, "dataset.json")) as f:
        dataset = json.load(f)
    assert dataset["label_names"] == list(LABELS)
    assert dataset["group_feature"] == "group" and dataset["group_names"] == list(GROUPS)
    with open(os.path.join(workdir, "eval", "validation", "metrics.json")) as f:
        body = json.load(f)
    assert body["classes"] == list(LABELS) and body["kappa_weights"] == "quadratic"
    study = body["study"]
    assert study["n"] == 6
    assert np.asarray(study["confusion"]).shape == (3, 3)
    assert np.asarray(study["confusion"]).sum() == 6
    assert set(study["auroc_by_class"]) == set(LABELS)
    assert set(study["sensitivity_by_class_ci"]) == set(LABELS)
    assert len(study["kappa_ci"]) == 2 and len(study["auroc_ci"]) == 2
    assert set(body["by_group"]) == set(GROUPS)
    rows = read_csv(os.path.join(workdir, "eval", "validation", "predictions.csv"))
    assert len(rows) == 6
    assert {f"prob_{n}" for n in LABELS} <= set(rows[0]) and "group" in rows[0]
    for row in rows:
        probs = [float(row[f"prob_{n}"]) for n in LABELS]
        assert sum(probs) == pytest.approx(1, abs=1e-5)
        assert int(row["pred"]) == int(np.argmax(probs))
        assert row["pred_name"] == LABELS[int(row["pred"])]
    plots = set(os.listdir(os.path.join(workdir, "eval", "validation")))
    assert {"roc.png", "confusion_matrix.png", "kappa_by_group.png"} <= plots
    report = open(os.path.join(workdir, "report.md")).read()
    assert "| Class | Studies | AUROC [95% CI] | Sensitivity [95% CI] |" in report
    assert "predicted effusion" in report and "Kappa (quadratic-weighted)" in report
    assert "Heatmaps not drawn" not in report


def test_a_three_class_package_scores_as_predict_does(setup, env, tmp_path):
    package, inputs = str(tmp_path / "pkg"), os.path.join(setup["tree"], "valid")
    run("experiments.export", f"--workdir={setup['workdir']}", f"--output={package}", env=env)
    with open(os.path.join(package, "metadata.json")) as f:
        metadata = json.load(f)
    assert metadata["outputs"]["prob"] == ["B", 3]
    assert metadata["dataset"]["label_names"] == list(LABELS)
    assert metadata["decision"]["how"] == "none: the most probable class is predicted"
    assert set(metadata["metrics"]["by_group"]) == set(GROUPS)
    card = open(os.path.join(package, "MODEL_CARD.md")).read()
    assert "the most probable class is predicted" in card and "| left |" in card
    expected = str(tmp_path / "workdir.csv")
    run(
        "experiments.predict",
        f"--workdir={setup['workdir']}",
        f"--input={inputs}",
        f"--output={expected}",
        env=env,
    )
    for fmt in ("onnx", "stablehlo"):
        out = str(tmp_path / f"{fmt}.csv")
        result = subprocess.run(
            [
                sys.executable,
                "-I",
                os.path.join(package, "predict.py"),
                f"--input={inputs}",
                f"--output={out}",
                f"--format={fmt}",
            ],
            cwd=str(tmp_path),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        ours, theirs = read_csv(out), read_csv(expected)
        assert [list(r) for r in ours] == [list(r) for r in theirs] and len(ours) == 6
        for a, b in zip(ours, theirs, strict=True):
            assert (a["study"], a["pred"], a["label"], a["group"]) == (
                b["study"],
                b["pred"],
                b["label"],
                b["group"],
            )
            for name in LABELS:
                assert abs(float(a[f"prob_{name}"]) - float(b[f"prob_{name}"])) <= 1e-4


def test_evaluate_reproduces_the_training_metrics(setup, env):
    workdir = setup["workdir"]
    path = os.path.join(workdir, "eval", "validation", "metrics.json")
    with open(path) as f:
        trained = json.load(f)
    run("experiments.evaluate", f"--workdir={workdir}", env=env)
    with open(path) as f:
        again = json.load(f)
    for key in ("study", "image", "by_group"):
        assert again[key] == trained[key]


def test_predict_writes_class_probabilities_and_heatmaps(setup, env, tmp_path):
    output = str(tmp_path / "scores.csv")
    heatmaps = str(tmp_path / "heatmaps")
    inputs = os.path.join(setup["tree"], "valid")
    run(
        "experiments.predict",
        f"--workdir={setup['workdir']}",
        f"--input={inputs}",
        f"--output={output}",
        f"--heatmaps={heatmaps}",
        env=env,
    )
    rows = read_csv(output)
    assert len(rows) == 6
    assert list(rows[0]) == ["study", "n_images", *(f"prob_{n}" for n in LABELS)] + [
        "pred",
        "label",
        "group",
    ]
    trained = {
        r["study_id"].split("/")[-1]: r
        for r in read_csv(os.path.join(setup["workdir"], "eval", "validation", "predictions.csv"))
    }
    for row in rows:
        assert row["group"] in GROUPS and row["group"] in row["study"]
        same = trained[os.path.basename(row["study"])]
        assert row["label"] == same["pred_name"]  # predict agrees with evaluation
        for name in LABELS:
            assert float(row[f"prob_{name}"]) == pytest.approx(
                float(same[f"prob_{name}"]), abs=2e-6
            )
    written = [f for _, _, files in os.walk(heatmaps) for f in files]
    assert len(written) == sum(int(r["n_images"]) for r in rows)


def test_a_manifest_sweep_runs_and_is_summarised(setup, env):
    base = setup["base"]
    tree = setup["tree"]
    manifest = base / "manifest.csv"
    lines = ["path,label,study_id,patient_id,group,split"]
    for folder, split in (("train", "train"), ("valid", "validation")):
        for dirpath, _, files in sorted(os.walk(os.path.join(tree, folder))):
            for name in sorted(files):
                rel = os.path.relpath(os.path.join(dirpath, name), base)
                _, label, group, study = os.path.relpath(dirpath, tree).split(os.sep)
                patient = study.rsplit("_", 1)[0]
                lines.append(f"{rel},{label},{folder}/{study},{patient},{group},{split}")
    manifest.write_text("\n".join(lines) + "\n")
    (base / "labels.txt").write_text("\n".join(LABELS) + "\n")
    config = base / "manifest_config.py"
    config.write_text(
        CONFIG.format(source="manifest", path=str(manifest), data_dir=str(base / "tfds"))
    )
    sweep = str(base / "sweep")
    result = run("experiments.sweep", f"--config={config}", f"--workdir={sweep}", env=env)
    assert "optim.learning_rate" in result.stdout
    rows = read_csv(os.path.join(sweep, "sweep.csv"))
    assert len(rows) == 2 and all(r["kappa"] for r in rows)
    for name in os.listdir(sweep):
        spec = os.path.join(sweep, name, "dataset.json")
        if os.path.isfile(spec):
            with open(spec) as f:
                assert json.load(f)["label_names"] == list(LABELS)


CHEST_SWEEP = """
from experiments.configs import chest_synthetic


def get_config(arg=None):
    config = chest_synthetic.get_config("smoke")
    config.data.data_dir = {data_dir!r}
    return config


def get_sweep(arg=None):
    return [{{"seed": 1}}, {{"seed": 2}}]
"""


def test_chest_synthetic_smoke_runs_through_main_evaluate_and_predict(tmp_path, env):
    data_dir = str(tmp_path / "tfds")
    workdir = str(tmp_path / "chest")
    run(
        "experiments.main",
        "--config=experiments/configs/chest_synthetic.py:smoke",
        f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}",
        env=env,
    )
    path = os.path.join(workdir, "eval", "validation", "metrics.json")
    with open(path) as f:
        body = json.load(f)
    assert body["classes"] == ["normal", "opacity", "effusion"]
    assert "by_group" not in body and "by_body_part" not in body  # no groups
    rows = read_csv(os.path.join(workdir, "eval", "validation", "predictions.csv"))
    assert "body_part" not in rows[0] and "group" not in rows[0]
    assert "## Heatmaps" in open(os.path.join(workdir, "report.md")).read()

    run("experiments.evaluate", f"--workdir={workdir}", env=env)
    with open(path) as f:
        assert json.load(f)["study"] == body["study"]

    images = tmp_path / "new_images" / "study1"
    images.mkdir(parents=True)
    Image.fromarray(draw(1, np.random.default_rng(3))).save(images / "view1.png")
    output = str(tmp_path / "scores.csv")
    run(
        "experiments.predict",
        f"--workdir={workdir}",
        f"--input={images.parent}",
        f"--output={output}",
        env=env,
    )
    (row,) = read_csv(output)
    assert list(row) == ["study", "n_images", "prob_normal", "prob_opacity", "prob_effusion"] + [
        "pred",
        "label",
    ]
    assert row["label"] in ("normal", "opacity", "effusion")


@pytest.mark.slow  # a sweep of this dataset-agnostic path runs above (the manifest's)
def test_a_chest_synthetic_sweep_runs_and_is_summarised(tmp_path, env):
    config = tmp_path / "chest_sweep.py"
    config.write_text(CHEST_SWEEP.format(data_dir=str(tmp_path / "tfds")))
    sweep = str(tmp_path / "sweep")
    run("experiments.sweep", f"--config={config}", f"--workdir={sweep}", env=env)
    rows = read_csv(os.path.join(sweep, "sweep.csv"))
    assert len(rows) == 2 and all(r["kappa"] for r in rows)
