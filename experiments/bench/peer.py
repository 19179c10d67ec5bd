"""A peer's measurement in a process of its own that imports nothing of murajax:
`python experiments/bench/peer.py JOB` (run by path, not with `-m`).

Importing the `experiments` package changes the process for murajax (its `XLA_FLAGS` default,
and glibc's malloc settings of `murajax.allocator`), so a peer run as `-m
experiments.bench...` would not run as its own users run it. Run as a script, this file loads
its sibling modules (`keras_peer`, `torch_peer`, `timing`) as a private package instead, and
the row says `isolated: true` when neither `experiments` nor `murajax` was imported. The
environment (e.g. `XLA_FLAGS`, which Keras on JAX reads) is the runner's.

JOB is a JSON object with `framework`, `spec` (`workloads.peer_spec`), `dtype` and the timing
settings; the result is one line `RESULT {...}` on stdout. This module imports nothing but the
standard library at import time (the runner imports `FRAMEWORKS` from it).
"""

import importlib
import importlib.util
import json
import os
import sys
import types
from typing import Any

RESULT_PREFIX = "RESULT "
SCRIPT = os.path.abspath(__file__)
_PRIVATE_PACKAGE = "_murajax_bench_peer"

FRAMEWORKS: dict[str, dict[str, Any]] = {
    "murajax": {"kind": "murajax", "conv_impl": "auto"},
    "murajax-xla": {"kind": "murajax", "conv_impl": "xla"},
    "murajax-direct": {"kind": "murajax", "conv_impl": "onednn-direct"},
    "keras-tf": {"kind": "keras", "backend": "tensorflow", "jit_compile": "auto"},
    "keras-tf-xla": {"kind": "keras", "backend": "tensorflow", "jit_compile": True},
    "keras-jax": {"kind": "keras", "backend": "jax", "jit_compile": "auto"},
    "torch-eager": {"kind": "torch", "mode": "eager"},
    "torch-compile": {"kind": "torch", "mode": "compile"},
}
"""Every framework a train-step row can name, and how it is measured. 'keras-tf' uses Keras's
own choice of `jit_compile` (no XLA on a CPU-only machine); 'keras-tf-xla' forces XLA, to
check that choice; 'murajax-direct' is murajax without Winograd convolutions
(`model.conv_impl='onednn-direct'`). murajax's rows run in `experiments.bench.worker`, the
others here."""

TIMING_KEYS = ("min_seconds", "min_steps", "warmup_steps", "turns", "deadline")
"""The job fields that every framework's `measure` takes as its timing settings."""


def isolated() -> bool:
    """Whether this process has imported neither `experiments` nor `murajax`."""
    return not any(name.split(".")[0] in ("experiments", "murajax") for name in list(sys.modules))


def measure(job: dict[str, Any], package: str) -> dict[str, Any]:
    """Measures the peer row `job` with the modules of `package` (this folder's package)."""
    settings = FRAMEWORKS[job["framework"]]
    timing = {k: job[k] for k in TIMING_KEYS if k in job}
    if settings["kind"] == "keras":
        keras_peer = importlib.import_module(f"{package}.keras_peer")
        row = keras_peer.measure(
            job["spec"],
            job["dtype"],
            settings["backend"],
            jit_compile=settings["jit_compile"],
            **timing,
        )
    elif settings["kind"] == "torch":
        torch_peer = importlib.import_module(f"{package}.torch_peer")
        row = torch_peer.measure(job["spec"], job["dtype"], settings["mode"], **timing)
    else:
        raise ValueError(f"{job['framework']!r} is not a peer")
    row["isolated"] = isolated()
    return row


def _private_package() -> str:
    """Registers this folder as a package of its own name (not `experiments.bench`), so that
    its modules' relative imports work without importing `experiments`."""
    folder = os.path.dirname(SCRIPT)
    if sys.path and os.path.abspath(sys.path[0] or ".") == folder:
        sys.path.pop(0)  # nothing else should resolve to this folder's module names
    package = types.ModuleType(_PRIVATE_PACKAGE)
    package.__path__ = [folder]
    package.__spec__ = importlib.util.spec_from_loader(_PRIVATE_PACKAGE, None, is_package=True)
    sys.modules[_PRIVATE_PACKAGE] = package
    return _PRIVATE_PACKAGE


def main(argv: list[str]) -> None:
    """Runs the JSON job in `argv[1]` and prints its result as one `RESULT` line."""
    if len(argv) != 2:
        raise SystemExit("usage: python experiments/bench/peer.py '{\"framework\": ...}'")
    row = measure(json.loads(argv[1]), _private_package())
    sys.stdout.flush()
    print(RESULT_PREFIX + json.dumps(row), flush=True)


if __name__ == "__main__":
    main(sys.argv)
