"""Shared pytest set-up: fast XLA:CPU flags before jax is imported."""

import os

import pytest

from murajax import xla_flags

xla_flags.set_default()
# The command-line programs that tests start compile afresh and write no compilation cache
# under ~ (tests/test_compilation_cache.py turns it on in temporary folders).
os.environ.setdefault("MURAJAX_COMPILATION_CACHE", "")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    """A TFDS data_dir holding `trivial_mura` (tests/trivial_mura.py), built once per session."""
    from tests.trivial_mura import TrivialMura

    path = str(tmp_path_factory.mktemp("tfds"))
    TrivialMura(data_dir=path, file_format="array_record").download_and_prepare()
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    """The environment of a module's commands: one compilation cache for all of them, so that
    only the first command compiles the train step (a rerun loads it, as a user's reruns do)."""
    cache = str(tmp_path_factory.mktemp("jax_cache"))
    return {**os.environ, "MURAJAX_COMPILATION_CACHE": cache}
