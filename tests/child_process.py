"""Running Python code in a child process, so that a crash (SIGFPE, SIGSEGV) in native code
fails one test instead of ending the test run, and so that settings read once per process
(`ONEDNN_MAX_CPU_ISA`) take effect."""

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_python(
    code: str, *, env: Mapping[str, str | None] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """`python -c code` in the repository root, with this environment changed by `env` (a
    None value removes the variable); its output captured as text. Running past `timeout`
    seconds kills it and fails the test with the end of its output."""
    environment = dict(os.environ)
    for name, value in (env or {}).items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    try:
        return subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env=environment,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        output = "\n".join(_text(stream)[-2000:] for stream in (e.stdout, e.stderr))
        message = f"{code!r} did not finish in {timeout} s; its output ends:\n{output}"
        raise AssertionError(message) from None


def _text(stream: str | bytes | None) -> str:
    if isinstance(stream, bytes):
        return stream.decode(errors="replace")
    return stream or ""


def describe(result: subprocess.CompletedProcess, tail: int = 3000) -> str:
    """How a child process ended (its exit status, or the signal that killed it) and the end
    of its stderr, for an assertion message."""
    code = result.returncode
    how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
    return f"{how}; its stderr ends:\n{result.stderr[-tail:]}"
