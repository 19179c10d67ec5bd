"""`python -m experiments.results`: the results page regenerated from real (smoke) sweeps."""

import os
import subprocess
import sys

import pytest

from experiments import results_page as results
from murajax import sweep
from murajax.config import ConfigError
from murajax.report import sweep as sweep_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    """A trained baseline:smoke sweep, and a pretrained sweep that could not run (its
    sweep.json written as the sweep writes it before training, no run trained)."""
    root = tmp_path_factory.mktemp("results")
    baseline = str(root / "baseline")
    loaded = sweep.load_sweep("experiments/configs/baseline.py:smoke")
    sweep.run_sweep(loaded, baseline, log=lambda _: None)
    pretrained = str(root / "pretrained")
    spec = "experiments/configs/pretrained.py"
    sweep.write_state(pretrained, spec, sweep.load_sweep(spec).runs, {})
    return {"baseline": baseline, "pretrained": pretrained, "root": str(root)}


@pytest.fixture
def empty_cache(tmp_path, monkeypatch) -> str:
    monkeypatch.setenv("MURAJAX_CACHE", str(tmp_path / "cache"))
    return str(tmp_path / "cache")


def _section(page: str, heading: str) -> str:
    start = page.index(f"## {heading}")
    end = page.find("\n## ", start + 1)
    return page[start : end if end >= 0 else None]


def test_page_has_every_experiment_with_table_or_plain_reason(folders, tmp_path, empty_cache):
    assigned = results.assign_folders(
        [folders["baseline"], f"pretrained={folders['pretrained']}", "regularisation=/no/such"]
    )
    assert assigned["baseline"] == folders["baseline"]  # matched by its sweep.json
    output = str(tmp_path / "docs" / "results.md")
    page = results.write_page(assigned, output, machine_text="test machine")
    assert "`mura_synthetic` is not MURA" in page and "Machine: test machine." in page
    for e in results.EXPERIMENTS:
        section = _section(page, f"{e.section} {e.title}")
        assert "Command: `python -m experiments.sweep --config=" in section
        assert f"<!-- interpretation:{e.name} -->" in section
    baseline = _section(page, "5.1 Baseline performance")
    assert "--config=experiments/configs/baseline.py:smoke" in baseline
    assert "A `:smoke` sweep" in baseline and "**validation** split" in baseline
    row = next(line for line in baseline.splitlines() if line.startswith("| base |"))
    metrics = sweep_report.summarise(folders["baseline"])["rows"][0]
    assert f"{metrics['kappa']:.3f} [{metrics['kappa_ci_low']:.3f}," in row
    assert f"{metrics['auroc']:.3f}" in row and row.rstrip().endswith("| done |")
    assert "![ROC curves" in baseline
    assert os.path.isfile(tmp_path / "docs" / "results" / "baseline_roc.png")
    pretrained = _section(page, "5.4 Pre-trained models")
    assert "| " not in pretrained  # no table
    assert "No run of" in pretrained and "need ImageNet's weights" in pretrained
    weights = os.path.join(empty_cache, "weights")
    assert f"`{weights}/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5`" in pretrained
    assert "densenet169_weights_tf_dim_ordering_tf_kernels_notop.h5" in pretrained
    assert "does not exist" in _section(page, "5.3 Regularisation")
    assert "no sweep folder was given" in _section(page, "5.2 Image size")


def test_regenerating_keeps_the_written_interpretation(folders, tmp_path, empty_cache):
    output = str(tmp_path / "results.md")
    assigned = {"baseline": folders["baseline"]}
    page = results.write_page(assigned, output, machine_text="m")
    assert page.count(results.INTERPRETATION_TODO) == len(results.EXPERIMENTS)
    written = "The CNN separates the classes.\nA second sentence."
    edited = page.replace(
        f"<!-- interpretation:baseline -->\n{results.INTERPRETATION_TODO}",
        f"<!-- interpretation:baseline -->\n{written}",
    )
    with open(output, "w") as f:
        f.write(edited)
    again = results.write_page(assigned, output, machine_text="m")
    assert (
        f"<!-- interpretation:baseline -->\n{written}\n<!-- /interpretation:baseline -->" in again
    )
    assert again.count(results.INTERPRETATION_TODO) == len(results.EXPERIMENTS) - 1
    assert again == edited  # nothing else changed: same folders, same page


def test_command_line_writes_the_page_and_refuses_bad_folders_in_one_line(folders, tmp_path):
    env = {**os.environ, "MURAJAX_CACHE": str(tmp_path / "cache")}
    output = str(tmp_path / "page.md")

    def run(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "experiments.results", *args]
        return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)

    done = run(f"--sweeps={folders['baseline']}", f"--output={output}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"[results] wrote {output} from baseline={folders['baseline']}" in done.stdout
    with open(output) as f:
        assert "| base |" in f.read()
    done = run(f"--sweeps=nope={folders['baseline']}", f"--output={output}")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        "error: --sweeps: unknown experiment 'nope' (known: baseline, image_size,"
        " regularisation, pretrained, optimizers)"
    )


def test_folders_that_cannot_be_matched_are_refused(folders):
    with pytest.raises(ConfigError, match="has no sweep.json naming one of the thesis's"):
        results.assign_folders([folders["root"]])
    with pytest.raises(ConfigError, match="two folders for baseline"):
        results.assign_folders([folders["baseline"], f"baseline={folders['baseline']}"])
