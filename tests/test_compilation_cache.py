"""JAX's persistent compilation cache (`murajax.compilation_cache`, `--compilation_cache`).

Each check runs in fresh processes: the cache only matters between processes.
"""

import json
import os
import subprocess
import sys

import pytest

from murajax import compilation_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Compiles one small function with the cache in argv[1]; prints the folder in use and JAX's
# cache hit/miss events.
PROGRAM = """
import json, sys
import jax, jax.numpy as jnp
from jax import monitoring
from murajax import compilation_cache

events = []
monitoring.register_event_listener(lambda event, **_: events.append(event))
folder = compilation_cache.enable(sys.argv[1])
jax.jit(lambda x: jnp.tanh(x) * 3.0 + x)(jnp.arange(16.0)).block_until_ready()
print(json.dumps({
    "folder": folder,
    "hits": events.count("/jax/compilation_cache/cache_hits"),
    "misses": events.count("/jax/compilation_cache/cache_misses"),
}))
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != compilation_cache.ENV_VAR}
    return {**env, **extra}


def _compile_once(folder: str) -> tuple[dict, str]:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, folder],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def test_a_second_process_loads_what_the_first_compiled(tmp_path):
    folder = str(tmp_path / "jax_cache")
    first, _ = _compile_once(folder)
    assert first["folder"] == folder
    assert first["misses"] >= 1 and first["hits"] == 0
    entries = sorted(os.listdir(folder))
    assert any(name.startswith("jit_") for name in entries), entries
    second, _ = _compile_once(folder)
    assert second["hits"] >= 1 and second["misses"] == 0
    assert sorted(os.listdir(folder)) == entries  # nothing compiled anew


def test_an_unwritable_folder_is_a_warning_not_a_failure(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result, stderr = _compile_once(str(blocker / "jax_cache"))
    assert result["folder"] is None and result["hits"] == result["misses"] == 0
    assert "murajax: warning: compilation cache" in stderr and "not writable" in stderr


def test_default_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(compilation_cache.ENV_VAR, raising=False)
    monkeypatch.setenv("MURAJAX_CACHE", str(tmp_path))
    assert compilation_cache.default_dir() == str(tmp_path / "jax_compilation_cache")
    monkeypatch.setenv(compilation_cache.ENV_VAR, str(tmp_path / "elsewhere"))
    assert compilation_cache.default_dir() == str(tmp_path / "elsewhere")
    monkeypatch.setenv(compilation_cache.ENV_VAR, "")
    assert compilation_cache.default_dir() == ""
    assert compilation_cache.enable("") is None and compilation_cache.enable(None) is None


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    """`mura_synthetic/tiny` built once, for the command-line runs."""
    from murajax import data
    from murajax.config import DataConfig

    folder = str(tmp_path_factory.mktemp("tfds"))
    data.prepare(DataConfig(dataset="mura_synthetic/tiny", data_dir=folder))
    return folder


def _main_args(workdir: str, data_dir: str, *flags: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "experiments.main",
        "--config=experiments/configs/quickstart.py:smoke",
        f"--workdir={workdir}",
        f"--config.data.data_dir={data_dir}",
        "--config.train.steps=2",
        "--config.optim.warmup_steps=1",
        "--config.train.eval_every=2",
        "--config.train.checkpoint_every=2",
        "--config.train.progress=False",
        "--config.eval.bootstrap_samples=10",
        *flags,
    ]


def _run_mains(*argvs: list[str]) -> list[subprocess.CompletedProcess]:
    """Runs `experiments.main` command lines concurrently (each process imports jax)."""
    env = _env(JAX_LOG_COMPILES="1")  # JAX then logs each persistent-cache hit
    processes = [
        subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for argv in argvs
    ]
    results = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return results


@pytest.mark.slow  # a minute of two training runs; the caches themselves: the tests above
def test_experiments_main_reruns_without_compiling_the_train_step(tmp_path, tiny_dir):
    folder = tmp_path / "jax_cache"
    (first,) = _run_mains(
        _main_args(str(tmp_path / "w1"), tiny_dir, f"--compilation_cache={folder}")
    )
    assert first.returncode == 0, first.stderr[-3000:]
    entries = sorted(os.listdir(folder))
    assert any(name.startswith("jit_train_step-") for name in entries), entries
    assert "cache hit for 'jit_train_step'" not in first.stderr
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    second, unwritable, off = _run_mains(
        # Another workdir (a rerun of the same config): every compilation is a cache hit.
        _main_args(str(tmp_path / "w2"), tiny_dir, f"--compilation_cache={folder}"),
        # An unwritable cache folder: a warning, and the run still works.
        _main_args(str(tmp_path / "w3"), tiny_dir, f"--compilation_cache={blocker}/cache"),
        # --compilation_cache= turns it off: nothing is read or written.
        _main_args(str(tmp_path / "w4"), tiny_dir, "--compilation_cache="),
    )
    for done in (second, unwritable, off):
        assert done.returncode == 0, done.stderr[-3000:]
    # The train step is not even traced: its executable is loaded (murajax.executable_cache).
    assert "train step loaded from the executable cache" in second.stdout + second.stderr
    assert "Finished tracing + transforming train_step" not in second.stderr
    assert "Persistent compilation cache hit" in second.stderr  # the evaluation's steps
    assert "murajax: warning: compilation cache" in unwritable.stderr
    assert "Persistent compilation cache hit" not in unwritable.stderr + off.stderr
    assert sorted(os.listdir(folder)) == entries
