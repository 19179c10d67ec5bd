"""Checkpoints: torn saves are never restored, unreadable ones fall back, retention keeps the
latest N and the best K, and the validation split never takes part in a choice."""

import glob
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import chex
import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tfds_mura  # noqa: F401  (registers the MURA datasets)
from murajax import checkpoint as ckpt
from murajax import inference, train, writers
from murajax import workdir as workdir_lib
from tests.trivial_mura import TrivialMura, trivial_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------- helpers


def _state(step: int, size: int = 1000) -> dict:
    """A small pytree whose values say which step saved it (a typed PRNG key included)."""
    return {"w": jnp.arange(size, dtype=jnp.float32) + step, "key": jax.random.key(step)}


def _iterator() -> grain.DatasetIterator:
    return iter(grain.MapDataset.range(1000).to_iter_dataset())


def _save_steps(
    workdir: str,
    steps: list[int],
    kappas: dict[int, float] | None = None,
    *,
    keep_latest: int = 100,
    keep_best: int = 100,
) -> list[int]:
    """Saves `_state(step)` at `steps` (the iterator advanced `step` times), with holdout
    kappa metrics where `kappas` has one; returns the manager's steps afterwards."""
    kappas = kappas or {}
    manager = ckpt.make_manager(workdir, keep_latest=keep_latest, keep_best=keep_best)
    iterator, position = _iterator(), 0
    for step in steps:
        for _ in range(step - position):
            next(iterator)
        position = step
        metrics = {workdir_lib.BEST_METRIC: kappas[step]} if step in kappas else None
        ckpt.save(manager, step, _state(step), iterator, {"step": step}, metrics)
    kept = list(manager.all_steps())
    manager.close()
    return kept


def _restore_latest(workdir: str) -> tuple[tuple | None, int]:
    """`restore_latest` on a fresh manager: (`(state, step)` or None, the iterator's next)."""
    manager = ckpt.make_manager(workdir, keep_latest=100, keep_best=100)
    iterator = _iterator()
    try:
        restored = ckpt.restore_latest(manager, _state(0), iterator)
    finally:
        manager.close()
    return restored, int(next(iterator))


def _step_dir(workdir: str, step: int) -> str:
    return os.path.join(workdir, workdir_lib.CHECKPOINTS_DIR, str(step))


# --------------------------------------------------------------------------- torn saves

SAVE_FOREVER = """
import sys
import grain
import numpy as np
from murajax import checkpoint as ckpt

manager = ckpt.make_manager(sys.argv[1], keep_latest=100)
iterator = iter(grain.MapDataset.range(1000).to_iter_dataset())
for step in range(1, 1000):
    next(iterator)
    # 64 MB of incompressible values: each save takes a good fraction of a second.
    state = {"w": np.random.default_rng(step).standard_normal(16_000_000, np.float32)}
    ckpt.save(manager, step, state, iterator, {"step": step})
"""


ARRAYS_BEING_WRITTEN = os.path.join(f"state{ckpt.TMP_SUFFIX}", "ocdbt.process_0", "d")
"""Inside a step's temporary folder: where orbax writes the state's arrays, before that item
and then the step are finalised (each by a rename)."""


def _kill_during_a_save(process: subprocess.Popen, folder: str, timeout: float = 120) -> str:
    """SIGKILLs `process` while the arrays of a step after the first are being written into
    `folder`; returns the name of the step's temporary folder. The process is stopped
    (SIGSTOP) first, and killed only if the save is still unfinished then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read()
        names = os.listdir(folder) if os.path.isdir(folder) else []
        torn = [n for n in names if ckpt.TMP_SUFFIX in n and not n.startswith("1.")]
        if torn and _entries(os.path.join(folder, torn[0], ARRAYS_BEING_WRITTEN)):
            process.send_signal(signal.SIGSTOP)
            if os.path.exists(os.path.join(folder, torn[0])):
                process.kill()
                process.wait()
                return torn[0]
            process.send_signal(signal.SIGCONT)  # renamed meanwhile: catch the next save
        time.sleep(0.001)
    process.kill()
    raise AssertionError("no save to interrupt")


def _entries(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def test_a_save_killed_midway_is_never_restored(tmp_path, capsys):
    workdir = str(tmp_path)
    folder = os.path.join(workdir, workdir_lib.CHECKPOINTS_DIR)
    process = subprocess.Popen(
        [sys.executable, "-c", SAVE_FOREVER, workdir],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    torn = _kill_during_a_save(process, folder)
    torn_step = int(torn.split(".")[0])
    finished = sorted(int(n) for n in os.listdir(folder) if n.isdigit())
    assert finished == list(range(1, torn_step))  # the interrupted step is not finalised
    # Half a save is on disk (its arrays unfinished), but orbax does not list it...
    assert f"state{ckpt.TMP_SUFFIX}" in os.listdir(os.path.join(folder, torn))
    manager = ckpt.make_manager(workdir, keep_latest=100)
    assert list(manager.all_steps()) == finished
    # ...and resuming takes the one before, exactly as saved.
    iterator = iter(grain.MapDataset.range(1000).to_iter_dataset())
    template = {"w": np.zeros(16_000_000, np.float32)}
    state, step = ckpt.restore_latest(manager, template, iterator)
    manager.close()
    assert step == torn_step - 1
    expected = np.random.default_rng(step).standard_normal(16_000_000, np.float32)
    np.testing.assert_array_equal(np.asarray(state["w"]), expected)
    assert int(next(iterator)) == step  # the iterator resumes after `step` elements
    out = capsys.readouterr().out
    assert f"removing {folder}/{torn}: a checkpoint interrupted while being written" in out
    assert not os.path.exists(os.path.join(folder, torn))


# --------------------------------------------------------------------------- unreadable


def _largest_array_file(step_dir: str) -> str:
    files = glob.glob(os.path.join(step_dir, "state", "ocdbt.process_0", "d", "*"))
    return max(files, key=os.path.getsize)


def _truncate(path: str) -> None:
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


CORRUPTIONS = {
    "array file truncated": lambda d: _truncate(_largest_array_file(d)),
    "array file deleted": lambda d: os.remove(_largest_array_file(d)),
    "state folder deleted": lambda d: shutil.rmtree(os.path.join(d, "state")),
    "iterator state truncated": lambda d: _truncate(os.path.join(d, "data", "process_0-of-1.json")),
    "metadata JSON truncated": lambda d: _truncate(os.path.join(d, "meta", "metadata")),
    "metrics JSON truncated": lambda d: _truncate(os.path.join(d, "metrics", "metrics")),
    "checkpoint metadata truncated": lambda d: _truncate(os.path.join(d, "_CHECKPOINT_METADATA")),
    "emptied": lambda d: [shutil.rmtree(d), os.makedirs(d)],
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_an_unreadable_newest_checkpoint_falls_back_to_the_one_before(tmp_path, capsys, corruption):
    workdir = str(tmp_path)
    _save_steps(workdir, [1, 2, 3], {1: 0.1, 2: 0.2, 3: 0.3})
    CORRUPTIONS[corruption](_step_dir(workdir, 3))
    capsys.readouterr()
    restored, next_element = _restore_latest(workdir)
    state, step = restored
    assert step == 2
    chex.assert_trees_all_equal(state["w"], _state(2)["w"])
    assert (
        jax.random.key_data(state["key"]).tolist() == jax.random.key_data(_state(2)["key"]).tolist()
    )
    assert next_element == 2
    warnings = [line for line in capsys.readouterr().out.splitlines() if "warning" in line]
    assert len(warnings) == 1, warnings
    moved = os.path.join(workdir, workdir_lib.UNREADABLE_DIR, "3")
    assert f"{_step_dir(workdir, 3)} " in warnings[0] and moved in warnings[0]
    assert os.path.isdir(moved) and not os.path.exists(_step_dir(workdir, 3))
    # The resumed run saves step 3 again.
    assert _save_steps(workdir, [3], {3: 0.3}) == [1, 2, 3]


def test_fallback_goes_back_as_far_as_it_must(tmp_path, capsys):
    workdir = str(tmp_path)
    _save_steps(workdir, [1, 2, 3, 4])
    _truncate(_largest_array_file(_step_dir(workdir, 4)))
    os.remove(os.path.join(_step_dir(workdir, 3), "data", "process_0-of-1.json"))
    (state, step), next_element = _restore_latest(workdir)
    assert (step, next_element, float(state["w"][0])) == (2, 2, 2.0)
    out = capsys.readouterr().out
    assert out.count("cannot be restored") == 2
    assert sorted(os.listdir(os.path.join(workdir, workdir_lib.UNREADABLE_DIR))) == ["3", "4"]
    assert _save_steps(workdir, [3, 4]) == [1, 2, 3, 4]


def test_a_step_set_aside_again_keeps_the_earlier_one(tmp_path, capsys):
    """`_set_aside` when `checkpoints_unreadable/<step>` exists (the step broke, was saved
    again and broke again): the new one goes to `<step>.1`, then `<step>.2`, and nothing set
    aside before is overwritten or merged into."""
    workdir = str(tmp_path)
    aside = os.path.join(workdir, workdir_lib.UNREADABLE_DIR)
    for earlier in ("3", "3.1"):
        os.makedirs(os.path.join(aside, earlier))
        with open(os.path.join(aside, earlier, "earlier.txt"), "w") as f:
            f.write(earlier)
    _save_steps(workdir, [2, 3])
    _truncate(_largest_array_file(_step_dir(workdir, 3)))
    capsys.readouterr()
    (_, step), _ = _restore_latest(workdir)
    assert step == 2
    moved = os.path.join(aside, "3.2")
    assert f"moved to {moved}, falling back to checkpoint 2" in capsys.readouterr().out
    assert sorted(os.listdir(moved)) == sorted(os.listdir(_step_dir(workdir, 2)))
    for earlier in ("3", "3.1"):
        assert os.listdir(os.path.join(aside, earlier)) == ["earlier.txt"]
        with open(os.path.join(aside, earlier, "earlier.txt")) as f:
            assert f.read() == earlier
    _save_steps(workdir, [3])
    assert ckpt._set_aside(workdir_lib.checkpoints_dir(workdir), 3) == os.path.join(aside, "3.3")
    assert sorted(os.listdir(aside)) == ["3", "3.1", "3.2", "3.3"]


def test_no_restorable_checkpoint_is_one_error_and_moves_nothing(tmp_path):
    workdir = str(tmp_path)
    _save_steps(workdir, [1, 2])
    for step in (1, 2):
        shutil.rmtree(os.path.join(_step_dir(workdir, step), "state"))
    with pytest.raises(ckpt.CheckpointError) as raised:
        _restore_latest(workdir)
    message = str(raised.value)
    assert "\n" not in message and "can be restored" in message
    assert "2: KeyError" in message and "1: KeyError" in message and "--workdir" in message
    assert sorted(os.listdir(os.path.join(workdir, workdir_lib.CHECKPOINTS_DIR))) == ["1", "2"]


def test_an_empty_workdir_has_nothing_to_restore(tmp_path):
    assert _restore_latest(str(tmp_path)) == (None, 0)


# --------------------------------------------------------------------------- retention


def _expected_kept(saved: list[int], kappas: dict[int, float], latest: int, best: int) -> set:
    """The latest `latest` of `saved` and the `best` highest kappas (ties: later step)."""
    ranked = sorted(
        kappas, key=lambda s: (workdir_lib.best_metric({workdir_lib.BEST_METRIC: kappas[s]}), s)
    )
    return set(sorted(saved)[-latest:]) | set(ranked[-best:])


# Eight checkpoints with holdout kappas (the steps between evaluations have none); the two
# best are early, so only the best-K policy keeps them.
SAVED = [2, 3, 4, 6, 8, 9, 10, 12, 14, 15, 16]
KAPPAS = {2: 0.1, 4: 0.7, 6: 0.55, 8: 0.3, 10: 0.6, 12: 0.2, 14: 0.25, 16: 0.05}


def test_retention_keeps_exactly_the_latest_n_and_the_best_k(tmp_path):
    workdir = str(tmp_path)
    kept = _save_steps(workdir, SAVED, KAPPAS, keep_latest=2, keep_best=2)
    assert sorted(kept) == [4, 10, 15, 16]
    assert set(kept) == _expected_kept(SAVED, KAPPAS, 2, 2)
    manager = ckpt.make_manager(workdir, keep_latest=2, keep_best=2)
    assert manager.best_step() == ckpt.select_step(manager, "best") == 4
    assert ckpt.select_step(manager, "latest") == 16
    manager.close()


def test_retention_is_the_same_across_resumes(tmp_path):
    """A run resumed twice (a new manager each time) keeps what one manager keeps."""
    workdir = str(tmp_path)
    for part in (SAVED[:3], SAVED[3:8], SAVED[8:]):
        kept = _save_steps(workdir, part, KAPPAS, keep_latest=2, keep_best=2)
    assert sorted(kept) == [4, 10, 15, 16]


def test_best_takes_the_later_of_equal_kappas_and_never_a_nan(tmp_path):
    workdir = str(tmp_path)
    kappas = {2: 0.5, 4: math.nan, 6: 0.5, 8: 0.1, 10: math.nan}
    kept = _save_steps(workdir, sorted(kappas), kappas, keep_latest=1, keep_best=2)
    assert sorted(kept) == [2, 6, 10] == sorted(_expected_kept(sorted(kappas), kappas, 1, 2))
    manager = ckpt.make_manager(workdir, keep_latest=1, keep_best=2)
    assert manager.best_step() == 6
    manager.close()


# --------------------------------------------------------------------------- validation


class TrivialMuraScrambledValidation(TrivialMura):
    """`trivial_mura` with its validation studies' labels permuted among them (images,
    study ids and the train split unchanged)."""

    def _generate_examples(self, split: str, num_studies: int):
        examples = list(super()._generate_examples(split, num_studies))
        if split == "train":
            yield from examples
            return
        studies = list(dict.fromkeys(example["study_id"] for _, example in examples))
        labels = {example["study_id"]: example["label"] for _, example in examples}
        permuted = np.random.default_rng(5).permutation([labels[s] for s in studies])
        new_label = dict(zip(studies, permuted.tolist(), strict=True))
        for key, example in examples:
            yield key, {**example, "label": new_label[example["study_id"]]}


@pytest.fixture(scope="module")
def scrambled_data_dir(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("tfds_scrambled"))
    TrivialMuraScrambledValidation(data_dir=path, file_format="array_record").download_and_prepare()
    return path


def _selection_run(dataset: str, data_dir: str, workdir: str) -> dict:
    """A run that selects its checkpoint ('best') and Youden threshold; its metrics.json."""
    config = trivial_config(
        data_dir, steps=16, eval_every=4, checkpoint_every=4, keep_checkpoints=1, keep_best=2
    )
    config.data.dataset = dataset
    config.optim.learning_rate = 0.02
    config.eval.threshold_method = "youden"
    config.eval.checkpoint = "best"
    config.eval.bootstrap_samples = 10
    return train.train_and_evaluate(config, workdir)["validation"]


def test_scrambled_validation_labels_change_no_choice(data_dir, scrambled_data_dir, tmp_path):
    plain = _selection_run("trivial_mura", data_dir, str(tmp_path / "plain"))
    scrambled = _selection_run(
        "trivial_mura_scrambled_validation", scrambled_data_dir, str(tmp_path / "scrambled")
    )
    # The scrambling reached the validation split's scores...
    assert plain["study"]["kappa"] != scrambled["study"]["kappa"]
    # ...but not the checkpoint chosen, its threshold, the training or the holdout log.
    assert plain["step"] == scrambled["step"]
    assert plain["threshold"] == scrambled["threshold"]
    assert plain["threshold_chosen_on"] == "holdout"

    def log(workdir: str) -> list[dict]:
        rows = writers.read_metrics(workdir)
        return [
            {k: v for k, v in r.items() if k != "images_per_sec"}
            for r in rows
            if r["split"] != "validation"
        ]

    assert log(str(tmp_path / "plain")) == log(str(tmp_path / "scrambled"))
    holdout = {r["step"]: r["kappa"] for r in log(str(tmp_path / "plain")) if "kappa" in r}
    assert len(set(holdout.values())) > 1  # a real choice between checkpoints
    steps = {}
    for name in ("plain", "scrambled"):
        manager = ckpt.make_manager(str(tmp_path / name), keep_latest=1, keep_best=2)
        steps[name] = sorted(manager.all_steps())
        manager.close()
    assert steps["plain"] == steps["scrambled"]
    for step in steps["plain"]:
        a, b = (
            inference.load(str(tmp_path / n), str(step)).states[0] for n in ("plain", "scrambled")
        )
        chex.assert_trees_all_equal(
            (a.params, a.batch_stats, a.opt_state, jax.random.key_data(a.key)),
            (b.params, b.batch_stats, b.opt_state, jax.random.key_data(b.key)),
        )
