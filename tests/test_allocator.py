"""murajax.allocator: the malloc murajax's programs run with. `python -m experiments.X`
restarts itself once with tcmalloc (or jemalloc) preloaded where one is installed
(`MURAJAX_ALLOCATOR`, default 'auto'); a benchmark peer runs without it; a bad choice is one
line."""

import os
import subprocess
import sys

import pytest

from experiments import _run_as_program
from murajax import allocator

LIBRARIES = {"tcmalloc": "libtcmalloc_minimal.so.4", "jemalloc": "libjemalloc.so.2"}


def _installed(*names: str):
    return lambda name: LIBRARIES[name] if name in names else None


def test_auto_preloads_tcmalloc_before_jemalloc_and_keeps_the_users_preload():
    env = allocator.preload_environment({"LD_PRELOAD": "libmine.so"}, _installed(*LIBRARIES))
    assert env["LD_PRELOAD"] == "libtcmalloc_minimal.so.4 libmine.so"
    assert env[allocator.PRELOADED_ENV] == "libtcmalloc_minimal.so.4"
    env = allocator.preload_environment({}, _installed("jemalloc"))
    assert env["LD_PRELOAD"] == "libjemalloc.so.2"
    env = allocator.preload_environment({"MURAJAX_ALLOCATOR": "jemalloc"}, _installed(*LIBRARIES))
    assert env["LD_PRELOAD"] == "libjemalloc.so.2"


@pytest.mark.parametrize(
    "environ",
    [
        {"MURAJAX_ALLOCATOR": "system"},
        {allocator.PRELOADED_ENV: "libtcmalloc_minimal.so.4"},  # re-executed already
        {"LD_PRELOAD": "/opt/lib/libjemalloc.so.2"},  # the user's own choice
        {},  # auto, with nothing installed
    ],
)
def test_no_restart_when_the_choice_is_made_or_nothing_is_installed(environ):
    installed = _installed() if environ == {} else _installed(*LIBRARIES)
    assert allocator.preload_environment(environ, installed) is None


def test_a_bad_choice_is_one_line_naming_it_and_what_is_valid():
    with pytest.raises(allocator.AllocatorError, match=r"'fast' is not one of auto, tcmalloc"):
        allocator.preload_environment({"MURAJAX_ALLOCATOR": "fast"}, _installed(*LIBRARIES))
    with pytest.raises(allocator.AllocatorError, match=r"no tcmalloc library.*apt-get install"):
        allocator.preload_environment({"MURAJAX_ALLOCATOR": "tcmalloc"}, _installed("jemalloc"))


def test_without_preload_removes_only_what_murajax_added():
    env = allocator.preload_environment({"LD_PRELOAD": "libmine.so"}, _installed(*LIBRARIES))
    assert allocator.without_preload(env) == {"LD_PRELOAD": "libmine.so"}
    env = allocator.preload_environment({"PATH": "/bin"}, _installed(*LIBRARIES))
    assert allocator.without_preload(env) == {"PATH": "/bin"}
    assert allocator.without_preload({"LD_PRELOAD": "libtcmalloc.so.4"}) == {
        "LD_PRELOAD": "libtcmalloc.so.4"
    }


def test_only_experiments_programs_restart():
    assert _run_as_program(["python", "-m", "experiments.main", "--config=x"])
    assert _run_as_program(["python", "-X", "importtime", "-I", "-m", "experiments.sweep"])
    assert _run_as_program(["python", "-mexperiments.evaluate"])
    assert not _run_as_program(["python", "-m", "pytest", "tests"])
    assert not _run_as_program(["python", "-c", "import experiments"])
    assert not _run_as_program(["python", "experiments/bench/peer.py", "{}"])


def expected_malloc() -> str:
    """What `python -m experiments.X` runs with here: tcmalloc, else jemalloc, else 'system'."""
    for name in ("tcmalloc", "jemalloc"):
        if allocator.find_library(name):
            return name
    return "system"


def test_a_bad_choice_stops_a_program_in_one_line_before_it_starts():
    env = {**os.environ, "MURAJAX_ALLOCATOR": "fastest"}
    env.pop(allocator.PRELOADED_ENV, None)
    result = subprocess.run(
        [sys.executable, "-m", "experiments.main", "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "murajax: MURAJAX_ALLOCATOR='fastest' is not one of auto, tcmalloc, jemalloc, system"
    ]


def test_this_process_reports_the_malloc_it_was_started_with():
    expected = "system"
    for name, libraries in (("tcmalloc", "tcmalloc"), ("jemalloc", "jemalloc")):
        if libraries in os.environ.get("LD_PRELOAD", ""):
            expected = name
            break
    assert allocator.malloc_in_use() == expected


def test_the_launcher_runs_a_command_with_the_programs_malloc():
    """`python -m murajax.allocator COMMAND` (what `make test` runs pytest with)."""
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator.PRELOADED_ENV)}
    report = "import murajax.allocator as a; print(a.malloc_in_use())"
    command = [sys.executable, "-m", "murajax.allocator", sys.executable, "-c", report]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected_malloc()
    env["MURAJAX_ALLOCATOR"] = "system"
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "system"
    missing = subprocess.run(
        [sys.executable, "-m", "murajax.allocator", "no-such-command-here"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 127
    assert missing.stderr.strip() == (
        "murajax: cannot run 'no-such-command-here': No such file or directory"
    )


def test_the_launcher_refuses_a_bad_choice_in_one_line():
    env = {**os.environ, "MURAJAX_ALLOCATOR": "fastest"}
    result = subprocess.run(
        [sys.executable, "-m", "murajax.allocator", "true"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "murajax: MURAJAX_ALLOCATOR='fastest' is not one of auto, tcmalloc, jemalloc, system"
    )
