"""The workdir lock: one command at a time writes a workdir.

Every command that writes a workdir (`train.train_and_evaluate`, `reevaluate.reevaluate`,
`sweep.run_sweep` on the sweep folder, the sweep summary) holds `holding(workdir)` from
before it touches anything until it is done. The lock is `flock(LOCK_EX | LOCK_NB)` on
`<workdir>/.lock`, which records the holder (pid, host, command) as JSON. A second writer
gets `WorkdirInUse` at once (no waiting), naming the holder:

    workdir W is in use by pid 1234 on host h (experiments.main); wait for it to finish or
    use another --workdir

The kernel releases a flock when its process ends, however it ends (SIGKILL included), so a
killed run resumes without anything to clean up. The lock file stays (removing it would race
with a process opening it); its contents are only a description of the last holder.

Within one process the lock is re-entrant (a sweep holds its folder while each run holds its
own workdir; `train_and_evaluate` inside a command that already holds it). A child made by
`fork` (multiprocessing, grain's workers) closes its inherited copies at once, so that a
child outliving its parent does not keep the workdir locked.

The processes of one multi-host run (`jax.process_count() > 1`) share it: process 0 takes
the lock and tells the others whether it got it, so all of them go on, or all of them stop
with the same error. On a shared file system Linux emulates flock with POSIX locks on NFS,
so the lock holds across hosts there too.
"""

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import socket
import sys
import threading
from collections.abc import Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils

from murajax import errors
from murajax import workdir as workdir_lib


class WorkdirInUse(errors.WorkdirError):
    """Another process holds the workdir's lock; the message names it (pid, host, command)."""


@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds (or last held) a workdir's lock, as its lock file records it."""

    pid: int
    host: str
    command: str

    def describe(self) -> str:
        """'pid 1234 on host h (experiments.main)'."""
        return f"pid {self.pid} on host {self.host} ({self.command})"


def lock_path(workdir: str) -> str:
    """`<workdir>/.lock`."""
    return os.path.join(workdir, workdir_lib.LOCK_FILE)


def command_name() -> str:
    """What this process runs, for the lock file: the module of `python -m` (e.g.
    `experiments.main`), else the program's file name."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name and spec.name != "__main__":
        return spec.name
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"


def this_holder(command: str | None = None) -> Holder:
    """This process as a `Holder` (`command` defaults to `command_name()`)."""
    return Holder(os.getpid(), socket.gethostname(), command or command_name())


def parse_holder(text: str) -> Holder | None:
    """The `Holder` a lock file's text records; None if it records none (a holder that is
    still writing it, or a file that is not ours)."""
    try:
        values = json.loads(text)
        return Holder(int(values["pid"]), str(values["host"]), str(values["command"]))
    except (ValueError, TypeError, KeyError):
        return None


def read_holder(workdir: str) -> Holder | None:
    """The `Holder` recorded in `<workdir>/.lock`; None if there is none."""
    try:
        with open(lock_path(workdir)) as f:
            return parse_holder(f.read(4096))
    except OSError:
        return None


def in_use_message(workdir: str, holder: Holder | None) -> str:
    """The one line a second writer gets."""
    who = holder.describe() if holder is not None else "another process"
    return f"workdir {workdir} is in use by {who}; wait for it to finish or use another --workdir"


@dataclasses.dataclass
class _Held:
    fd: int
    depth: int


_held: dict[str, _Held] = {}  # real path of a lock file this process holds -> its descriptor
_guard = threading.Lock()


def _forget_after_fork() -> None:
    """In a forked child: close the inherited lock descriptors (the parent keeps its lock)."""
    for held in _held.values():
        with contextlib.suppress(OSError):
            os.close(held.fd)
    _held.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


def acquire(workdir: str, command: str | None = None) -> None:
    """Takes `workdir`'s lock for this process (again, if it holds it already: see
    `release`), recording `this_holder(command)` in the lock file; `workdir` must exist.

    Raises `WorkdirInUse` if another process holds it, `WorkdirError` if the lock file
    cannot be created or locked (an unwritable folder, a file system without locks)."""
    path = lock_path(workdir)
    key = os.path.realpath(path)
    with _guard:
        if key in _held:
            _held[key].depth += 1
            return
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise errors.WorkdirError(
                f"cannot lock workdir {workdir}: cannot create {path} ({e.strerror or e})"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = parse_holder(os.pread(fd, 4096, 0).decode(errors="replace"))
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise WorkdirInUse(in_use_message(workdir, holder)) from None
            raise errors.WorkdirError(
                f"cannot lock workdir {workdir}: flock on {path} failed ({e.strerror or e});"
                " use a workdir on a file system with locks"
            ) from None
        record = json.dumps(dataclasses.asdict(this_holder(command))) + "\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode(), 0)
        _held[key] = _Held(fd, 1)


def release(workdir: str) -> None:
    """Gives back one `acquire` of `workdir`'s lock; the last one unlocks it."""
    key = os.path.realpath(lock_path(workdir))
    with _guard:
        held = _held.get(key)
        if held is None:
            return
        held.depth -= 1
        if held.depth == 0:
            del _held[key]
            os.close(held.fd)  # closing the only descriptor releases the flock


def holds(workdir: str) -> bool:
    """Whether this process holds `workdir`'s lock."""
    return os.path.realpath(lock_path(workdir)) in _held


def _process_zero_says(ok: bool) -> bool:
    """Process 0's `ok`, on every process of a multi-host run."""
    return bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))


@contextlib.contextmanager
def holding(workdir: str, command: str | None = None) -> Iterator[None]:
    """Holds `workdir`'s lock (`acquire`) while the block runs; creates `workdir` if needed.

    With several processes (one multi-host run), process 0 takes it and every process
    learns whether it did: a refusal is raised on all of them (the others name the holder
    the lock file records)."""
    os.makedirs(workdir, exist_ok=True)
    if jax.process_count() == 1:
        acquire(workdir, command)
        try:
            yield
        finally:
            release(workdir)
        return
    refusal: errors.WorkdirError | None = None
    if jax.process_index() == 0:
        try:
            acquire(workdir, command)
        except errors.WorkdirError as e:
            refusal = e
    locked = _process_zero_says(refusal is None)
    if refusal is not None:
        raise refusal
    if not locked:
        raise WorkdirInUse(in_use_message(workdir, read_holder(workdir)))
    try:
        yield
    finally:
        if jax.process_index() == 0:
            release(workdir)
