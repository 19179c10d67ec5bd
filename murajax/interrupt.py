"""SIGTERM and SIGINT during training: finish the step, save a checkpoint, stop.

`StopSignals` is a context manager that `train_and_evaluate` runs inside. It installs
handlers for SIGTERM (a preemption notice) and SIGINT (Ctrl-C, a notebook's interrupt)
and restores the previous ones when it exits. What a first signal does depends on where
the run is:

- inside `deferring()` (the train loop): it is only recorded; the loop asks `stop_at(step)`
  after each step, saves a checkpoint at the step that finished and raises
  `TrainingInterrupted`;
- elsewhere (building the model, restoring, the final evaluation): it raises
  `TrainingInterrupted` at once, since nothing unsaved would be lost.

A second signal exits at once with status 128 + signal (no checkpoint, no clean-up).

Several processes (`jax.distributed`) must stop at the same step, or the collective
checkpoint save would hang: every `sync_every` steps they exchange their requests through
the coordination service's key-value store (host to host, the devices keep running) and
all stop if any was asked to. One process checks a Python attribute after each step: no
host sync.
"""

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any, Protocol

from jax._src import distributed

from murajax.errors import TrainingInterrupted

SIGNALS = (signal.SIGTERM, signal.SIGINT)
SYNC_EVERY = 10  # steps between multi-process agreements (a stop waits at most this many)
BARRIER_TIMEOUT_MS = 5 * 60 * 1000

_sessions = 0  # StopSignals entered in this process; the same count on every process


def signal_name(signum: int) -> str:
    """'SIGTERM', 'SIGINT', ... for a signal number."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def exit_status(signum: int) -> int:
    """The exit status a shell reports for a program that a signal stopped: 128 + signum."""
    return 128 + signum


class KeyValueClient(Protocol):
    """The part of JAX's distributed runtime client that `Agreement` uses."""

    def key_value_set(self, key: str, value: str) -> None: ...
    def wait_at_barrier(self, barrier_id: str, timeout_in_ms: int) -> None: ...
    def key_value_dir_get(self, key: str) -> list[tuple[str, str]]: ...
    def key_value_delete(self, key: str) -> None: ...


class Agreement:
    """Processes agree on whether to stop, every `sync_every` steps, through `client`.

    `decide(step, signum)` (called by every process after every step, with this process's
    pending signal or None) returns the signal to stop for (the highest requested by any
    process) or None. Only steps that are multiples of `sync_every`, or `final=True`,
    exchange anything; all processes call it at the same steps, so they decide alike.
    """

    def __init__(self, client: KeyValueClient, process_index: int, session: int, sync_every: int):
        self._client = client
        self._process = process_index
        self._prefix = f"murajax/stop/{session}"
        self._sync_every = sync_every
        self._last: str | None = None

    def decide(self, step: int, signum: int | None, *, final: bool = False) -> int | None:
        if not final and step % self._sync_every:
            return None
        key = f"{self._prefix}/{step}{'f' if final else ''}"
        self._client.key_value_set(f"{key}/{self._process}", str(signum or 0))
        self._client.wait_at_barrier(key, BARRIER_TIMEOUT_MS)
        values = [int(value) for _, value in self._client.key_value_dir_get(f"{key}/")]
        if self._process == 0 and self._last is not None:
            self._client.key_value_delete(self._last)  # every process has read it
        self._last = key
        return max(values) or None


def _distributed_client() -> Any:
    """JAX's distributed runtime client (orbax reaches it the same way), or None."""
    return distributed.global_state.client


class StopSignals:
    """Handlers for SIGTERM and SIGINT while training (see the module docstring).

    Off the main thread Python cannot install handlers: then it installs none and never
    asks to stop. `process_count > 1` agrees through JAX's distributed client (or `client`).
    """

    def __init__(
        self,
        *,
        process_index: int = 0,
        process_count: int = 1,
        sync_every: int = SYNC_EVERY,
        client: KeyValueClient | None = None,
    ):
        self.signum: int | None = None  # the first signal received, if any
        self._deferred = False
        self._previous: dict[int, Any] = {}
        self._process_count = process_count
        self._process_index = process_index
        self._sync_every = sync_every
        self._client = client
        self._agreement: Agreement | None = None

    def __enter__(self) -> "StopSignals":
        global _sessions
        _sessions += 1
        if self._process_count > 1:
            client = self._client if self._client is not None else _distributed_client()
            self._agreement = Agreement(client, self._process_index, _sessions, self._sync_every)
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            # None: the previous handler was not installed from Python; the default is the
            # closest Python can restore.
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        if self.signum is not None:
            os.write(2, f"\n[murajax] second {signal_name(signum)}: exiting now\n".encode())
            os._exit(exit_status(signum))
        self.signum = signum
        if not self._deferred:
            raise TrainingInterrupted(
                f"interrupted by {signal_name(signum)} (no training step was lost)",
                signum=signum,
            )

    @contextlib.contextmanager
    def deferring(self) -> Iterator[None]:
        """Within it, a first signal is recorded for `stop_at` instead of raising."""
        self._deferred = True
        try:
            yield
        finally:
            self._deferred = False

    def stop_at(self, step: int, *, final: bool = False) -> int | None:
        """The signal to stop for after `step` (None: carry on). Several processes agree
        every `sync_every` steps and at `final=True` (call it on every process after the
        last step); one process answers from the handler's record at once."""
        if self._agreement is None:
            return self.signum
        return self._agreement.decide(step, self.signum, final=final)
