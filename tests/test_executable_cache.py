"""`murajax.executable_cache`: a compiled function kept on disk and loaded by a later process
without tracing, keyed by what made it; anything unreadable costs a compile, never an error."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from murajax import executable_cache


def _counted_step(traces: list):
    """A fresh jitted function (no in-memory cache of jit's to hit) that counts its traces."""

    def step(state, x):
        traces.append(1)
        return {"w": state["w"] - 0.1 * x.mean() * state["w"]}, jnp.sum(x * state["w"])

    return jax.jit(step, donate_argnums=0)


def _args(size: int = 4):
    return {"w": jnp.arange(size, dtype=jnp.float32)}, jnp.ones((2, size), jnp.float32)


def test_a_stored_executable_is_loaded_without_tracing(tmp_path):
    traces = []
    first = executable_cache.CachedExecutable(_counted_step(traces), "config A", tmp_path)
    want = first(*_args())
    assert len(traces) == 1 and not first.loaded
    assert len(list(tmp_path.glob("*.bin"))) == 1

    again = executable_cache.CachedExecutable(_counted_step(traces), "config A", tmp_path)
    got = again(*_args())
    assert again.loaded and len(traces) == 1  # not traced again
    jax.tree.map(np.testing.assert_array_equal, got, want)
    state, _ = again(*_args())  # and it keeps working
    np.testing.assert_array_equal(state["w"], want[0]["w"])


def test_another_identity_or_shape_compiles_anew(tmp_path):
    traces = []
    executable_cache.CachedExecutable(_counted_step(traces), "config A", tmp_path)(*_args())
    other = executable_cache.CachedExecutable(_counted_step(traces), "config B", tmp_path)
    other(*_args())
    assert not other.loaded and len(traces) == 2
    wider = executable_cache.CachedExecutable(_counted_step(traces), "config A", tmp_path)
    wider(*_args(size=8))
    assert not wider.loaded and len(traces) == 3
    assert len(list(tmp_path.glob("*.bin"))) == 3


def test_a_torn_file_is_a_warning_and_a_compile_that_replaces_it(tmp_path):
    traces = []
    executable_cache.CachedExecutable(_counted_step(traces), "config A", tmp_path)(*_args())
    [stored] = tmp_path.glob("*.bin")
    good = stored.read_bytes()
    stored.write_bytes(good[: len(good) // 2])
    torn = executable_cache.CachedExecutable(_counted_step(traces), "config A", tmp_path)
    with pytest.warns(RuntimeWarning, match=r"cannot load .*\.bin .*compiling instead"):
        state, total = torn(*_args())
    assert not torn.loaded and len(traces) == 2
    np.testing.assert_array_equal(total, _counted_step([])(*_args())[1])
    reloaded = executable_cache.CachedExecutable(_counted_step(traces), "config A", tmp_path)
    reloaded(*_args())
    assert reloaded.loaded and len(traces) == 2  # the compile rewrote a good file


def test_an_unwritable_folder_is_a_warning_and_the_step_still_runs(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    step = executable_cache.CachedExecutable(_counted_step([]), "config A", blocker / "sub")
    with pytest.warns(RuntimeWarning, match="cannot write"):
        _, total = step(*_args())
    assert float(total) == pytest.approx(12.0)


def test_no_folder_means_no_cache(tmp_path):
    traces = []
    step = executable_cache.CachedExecutable(_counted_step(traces), "config A", None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        step(*_args())
    assert not step.loaded and len(traces) == 1


def test_later_arguments_of_another_shape_fall_back_to_jit(tmp_path):
    traces = []
    step = executable_cache.CachedExecutable(_counted_step(traces), "config A", tmp_path)
    step(*_args())
    _, total = step(*_args(size=6))  # the stored executable takes size 4 only
    assert float(total) == pytest.approx(2 * sum(range(6)))


def test_the_key_covers_the_environment_and_the_identity():
    args = _args()
    key = executable_cache.cache_key("config A", args)
    assert key == executable_cache.cache_key("config A", args)
    assert key != executable_cache.cache_key("config B", args)
    assert key != executable_cache.cache_key("config A", _args(size=5))
    environment = executable_cache.environment()
    for part in ("murajax-sources=", "jaxlib=", "XLA_FLAGS=", "devices=", "onednn=", "cpu="):
        assert part in environment
    table = np.array([[1.0, 2.0]])
    assert executable_cache.describe(table) != executable_cache.describe(table * 2)


def test_the_train_steps_identity_follows_config_model_and_class_weights():
    """What `train` keys the train step by: the config, the model and the class weights the
    data gave; a model from outside murajax (whose source the key does not cover) gets none."""
    import flax.linen as nn

    from experiments.configs import quickstart
    from murajax import models, train

    config = quickstart.get_config("smoke")
    model = models.create_from_config(config.model)
    table = np.ones((7, 2), np.float32)
    identity = train._step_identity(config, model, table, None)
    assert identity == train._step_identity(config, model, table.copy(), None)
    assert identity != train._step_identity(config, model, table * 2, None)
    config.train.label_smoothing = 0.1
    assert identity != train._step_identity(config, model, table, None)

    class UsersModel(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(2)(x)

    assert train._step_identity(config, UsersModel(), table, None) is None


_ACROSS_PROCESSES = """
import sys
import jax
import jax.numpy as jnp
from murajax import executable_cache

jax.config.update("jax_compilation_cache_dir", sys.argv[1])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def step(x, y):
    return jnp.where(x > 0, x + y, x * 3).sum(axis=0) + jnp.tanh(y).mean()


cached = executable_cache.CachedExecutable(jax.jit(step), identity=sys.argv[2])
x = jnp.linspace(-1, 1, 64 * 64).reshape(64, 64)
print(float(cached(x, x * 2).sum()), cached.loaded)
"""


def test_an_executable_from_jaxs_persistent_cache_is_not_stored(tmp_path):
    """A compile that JAX's persistent cache answers (the same program under another murajax
    identity, as after an upgrade) is not stored: XLA:CPU cannot serialize such an executable
    whole, and loading it failed at run time ("Function ... not found"). Each run is a
    process, as a user's reruns are."""
    import subprocess
    import sys

    script = tmp_path / "step.py"
    script.write_text(_ACROSS_PROCESSES)

    def run(identity: str) -> list[str]:
        result = subprocess.run(
            [sys.executable, str(script), str(tmp_path / "jax_cache"), identity],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout.split()

    first = run("a")  # compiled: stored, and in JAX's cache
    assert first[-1] == "False"
    assert run("b") == first  # our miss, JAX's hit: not stored
    assert run("b") == first  # so this one compiles (from JAX's cache) and runs
    again = run("a")  # the real compile was stored and loads
    assert again == [first[0], "True"]
