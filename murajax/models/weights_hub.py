"""ImageNet weights by name: `model.weights="imagenet"` -> Keras's file, fetched once.

For "vgg16" and "densenet169", "imagenet" names the backbone-only ("notop") file that
`keras.applications` loads for `weights="imagenet", include_top=False`: the same URL and the
same hash as Keras's own `get_file` call (copied here from Keras's source, so that murajax
never imports Keras). `resolve_weights(model, weights)` turns "imagenet" into a local path:

    $MURAJAX_CACHE/weights/<file name>      ($MURAJAX_CACHE: default ~/.cache/murajax)

A file already there whose hash is right is used as it is, without any network request (so a
file placed there by hand works offline). Otherwise it is downloaded from Keras's URL, or
from `$MURAJAX_WEIGHTS_URL/<file name>` when that variable is set (a mirror or a firewalled
cluster's own server), with the standard library's `urllib` (which honours `$https_proxy`
and `$no_proxy`). The download goes to a temporary file in the same folder, is checked
against the hash (md5 for these files: Keras's rule picks sha256 only for 64-digit hashes)
and only then renamed into place with `os.replace`, so an interrupted or damaged download
never leaves a file that looks complete. No more than the file's known size is read, so a
server that sends more (without a Content-Length, or with a larger one) cannot fill the disk.
Processes that fetch the same file at once wait for each other on a lock file where the
file system has locks (`fcntl.flock`), at most `$MURAJAX_DOWNLOAD_LOCK_TIMEOUT` seconds
(default `LOCK_TIMEOUT_S`), and are safe without it: each writes its own temporary file and
the rename is atomic.

A download that fails (offline, a refused connection, an HTTP error, a short or damaged
file, a server that sends more than the file's size) raises one `WeightsError` line naming
the URL, what went wrong and where to place the file by hand; so does a lock that another
process holds for longer than the timeout (naming the lock file and that process).
"""

import contextlib
import dataclasses
import hashlib
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.client import HTTPException
from typing import Any

from tqdm import tqdm

from murajax import files
from murajax.compilation_cache import cache_root
from murajax.errors import WeightsError

try:
    import fcntl
except ImportError:  # not POSIX: the atomic rename alone keeps the cache consistent
    fcntl = None

IMAGENET = "imagenet"
"""The `model.weights` value that names a model's ImageNet weights."""

URL_ENV_VAR = "MURAJAX_WEIGHTS_URL"
"""Base URL that replaces Keras's: the file name is appended to it."""

TIMEOUT_S = 60.0
"""Seconds a connection or a read may stall before the download fails."""

PROGRESS_MIN_BYTES = 1 << 20
"""Files at least this large show a tqdm progress bar (on a terminal)."""

LOCK_TIMEOUT_ENV_VAR = "MURAJAX_DOWNLOAD_LOCK_TIMEOUT"
"""Seconds to wait for another process's download of the same file (`LOCK_TIMEOUT_S` unset)."""

LOCK_TIMEOUT_S = 600.0
"""How long a process waits, by default, for another one that downloads the same file."""

_LOCK_POLL_S = 0.1

STALE_PART_S = 3600.0
"""A temporary download untouched for this long belongs to a process that died: removed."""

_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class WeightsFile:
    """A weights file that `keras.applications` downloads: its URL and `get_file` hash."""

    model: str  # the murajax model whose backbone it fills
    url: str
    file_hash: str  # md5 (32 hex digits) or sha256 (64), as Keras's `file_hash` argument
    size: int  # bytes: no download reads more

    @property
    def file_name(self) -> str:
        """The file's name, the last part of its URL."""
        return self.url.rsplit("/", 1)[-1]


# From keras/src/applications/vgg16.py and densenet.py (Keras 3.x): WEIGHTS_PATH_NO_TOP,
# DENSENET169_WEIGHT_PATH_NO_TOP and the `file_hash` of their `get_file` calls; the sizes are
# the files' (Keras's download progress prints them: 58889256/58889256, 51877672/51877672).
IMAGENET_FILES: dict[str, WeightsFile] = {
    "vgg16": WeightsFile(
        model="vgg16",
        url="https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
        "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        file_hash="6d6bbae143d832006294945121d1f1fc",
        size=58_889_256,
    ),
    "densenet169": WeightsFile(
        model="densenet169",
        url="https://storage.googleapis.com/tensorflow/keras-applications/densenet/"
        "densenet169_weights_tf_dim_ordering_tf_kernels_notop.h5",
        file_hash="b8c4d4c20dd625c148057b9ff1c1176b",
        size=51_877_672,
    ),
}
"""Models whose `model.weights` may be "imagenet", and the backbone file each gets."""

# --------------------------------------------------------------------------- names and places


def imagenet_models() -> list[str]:
    """The models that have ImageNet weights to download, sorted."""
    return sorted(IMAGENET_FILES)


def imagenet_file(model_name: str) -> WeightsFile:
    """The ImageNet weights file of `model_name`; a one-line `WeightsError` if it has none."""
    if model_name not in IMAGENET_FILES:
        which = ", ".join(repr(n) for n in imagenet_models())
        raise WeightsError(
            f"model {model_name!r} has no ImageNet weights to download (models that have:"
            f" {which}); give the path of a Keras .h5 weights file instead of {IMAGENET!r}"
        )
    return IMAGENET_FILES[model_name]


def weights_dir() -> str:
    """Where downloaded weights are cached: `$MURAJAX_CACHE/weights`."""
    return os.path.join(cache_root(), "weights")


def cached_path(entry: WeightsFile) -> str:
    """The path a weights file is cached at (and where a user may place it by hand)."""
    return os.path.abspath(os.path.join(weights_dir(), entry.file_name))


def download_url(entry: WeightsFile) -> str:
    """Keras's URL for `entry`, or `$MURAJAX_WEIGHTS_URL/<file name>` when that is set."""
    base = os.environ.get(URL_ENV_VAR, "").strip()
    return f"{base.rstrip('/')}/{entry.file_name}" if base else entry.url


# --------------------------------------------------------------------------- hashes


def hash_algorithm(file_hash: str) -> str:
    """Keras's `get_file(hash_algorithm="auto")` rule: sha256 for 64 hex digits, else md5."""
    return "sha256" if len(file_hash) == 64 else "md5"


def file_digest(path: str, algorithm: str) -> str:
    """The hex digest of the file at `path` ("md5" or "sha256")."""
    hasher = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


def cached_digest(path: str, file_hash: str) -> str | None:
    """The digest (by `file_hash`'s algorithm) of the file at `path`; None if there is none."""
    if not os.path.isfile(path):
        return None
    return file_digest(path, hash_algorithm(file_hash))


# --------------------------------------------------------------------------- messages


def _reason(error: BaseException) -> str:
    """A short, one-line account of why a request failed ("Connection refused", "HTTP 404
    Not Found", ...)."""
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        if not isinstance(error.reason, BaseException):
            return str(error.reason)
        error = error.reason
    if isinstance(error, TimeoutError):
        return f"no answer within {TIMEOUT_S:g} s"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def by_hand(entry: WeightsFile, path: str) -> str:
    """How to place the file by hand: the exact path and the hash it must have."""
    algorithm = hash_algorithm(entry.file_hash)
    return (
        f"download that file yourself and place it at {path} ({algorithm} {entry.file_hash}),"
        f" or set ${URL_ENV_VAR} to a mirror that holds {entry.file_name}"
    )


def _size_text(size: int | None) -> str:
    """'58.9 MB', '1000 bytes' or 'unknown size'."""
    if size is None:
        return "unknown size"
    return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size} bytes"


# --------------------------------------------------------------------------- downloading


def lock_timeout_s() -> float:
    """Seconds to wait for another process's download: `$MURAJAX_DOWNLOAD_LOCK_TIMEOUT`, or
    `LOCK_TIMEOUT_S`. A value that is not a number of seconds is a one-line `WeightsError`."""
    text = os.environ.get(LOCK_TIMEOUT_ENV_VAR, "").strip()
    if not text:
        return LOCK_TIMEOUT_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # also NaN
        raise WeightsError(
            f"${LOCK_TIMEOUT_ENV_VAR}={text} is not a number of seconds (expected e.g. 600)"
        )
    return seconds


def _lock_holder(handle: Any) -> str:
    """Who holds a lock file, as its holder wrote it ('pid 123 on host'), or 'unknown'."""
    handle.seek(0)
    text = handle.read(200).decode("utf8", "replace").strip()
    return text.splitlines()[0] if text else "unknown"


def _acquire(handle: Any, deadline: float) -> bool:
    """Takes an exclusive `flock` on the open file `handle`, trying again until the
    `time.monotonic()` `deadline` while another process holds it (then `TimeoutError`).
    False where the file system has no locks (e.g. an NFS mount without lockd)."""
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:  # held by another process
            if time.monotonic() >= deadline:
                raise TimeoutError(handle.name) from None
            time.sleep(_LOCK_POLL_S)
        except OSError:
            return False


@contextlib.contextmanager
def _file_lock(path: str, timeout_s: float, what: str) -> Iterator[None]:
    """Holds an exclusive `flock` on `path` (created if needed) where the file system has
    locks, and writes 'pid N on HOST' into it; elsewhere (no `fcntl`, a file system without
    locks) it holds nothing. Waits at most `timeout_s` for another holder, then raises a
    one-line `WeightsError` naming `path`, the holder and `what` it was waited for."""
    if fcntl is None:
        yield
        return
    try:
        handle = open(path, "a+b")  # closed below, after the lock is released
    except OSError:
        yield
        return
    with handle:
        try:
            locked = _acquire(handle, time.monotonic() + timeout_s)
        except TimeoutError:
            raise WeightsError(
                f"waited {timeout_s:g} s for the lock {path}, held by {_lock_holder(handle)},"
                f" that downloads {what}: wait for it to finish or stop it, or set"
                f" ${LOCK_TIMEOUT_ENV_VAR} to wait longer"
            ) from None
        if not locked:
            yield
            return
        try:
            with contextlib.suppress(OSError):
                handle.truncate(0)
                handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
                handle.flush()
            yield
        finally:
            with contextlib.suppress(OSError):
                handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_stale_parts(folder: str, file_name: str, now: float) -> None:
    """Removes temporary downloads of `file_name` left by processes that died (untouched for
    `STALE_PART_S`; a live download writes to its file every chunk)."""
    prefix = files.part_prefix(file_name)
    for name in os.listdir(folder):
        if name.startswith(prefix) and name.endswith(files.PART_SUFFIX):
            path = os.path.join(folder, name)
            with contextlib.suppress(OSError):
                if now - os.path.getmtime(path) > STALE_PART_S:
                    os.remove(path)


def _progress(total: int | None, name: str) -> Any:
    """A tqdm bar for a download of `total` bytes: shown on a terminal for large files."""
    show = total is None or total >= PROGRESS_MIN_BYTES
    return tqdm(
        total=total,
        desc=name,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=None if show else True,  # None: only when stderr is a terminal
        leave=False,
        file=sys.stderr,
    )


def _stream(url: str, out: Any, entry: WeightsFile, path: str) -> tuple[int, int | None]:
    """Copies `url`'s body into the open file `out`; returns (bytes read, Content-Length).

    Reads at most `entry.size + 1` bytes (one more tells a longer body) and nothing when the
    Content-Length is over `entry.size`. Says on stderr what it downloads once the server has
    answered (so a failure to connect is the error's line alone)."""
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        if total is not None and total > entry.size:
            return 0, total
        print(
            f"[murajax] downloading the ImageNet weights of {entry.model} from {url}"
            f" ({_size_text(total)}) to {path}",
            file=sys.stderr,
            flush=True,
        )
        received = 0
        with _progress(total, entry.file_name) as bar:
            while chunk := response.read(min(_CHUNK, entry.size + 1 - received)):
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    return received, total


def download(entry: WeightsFile, url: str, path: str) -> None:
    """Downloads `url` to `path`, verified against `entry.file_hash`.

    The bytes go to a temporary file beside `path` (`.<name>.<random>.part`), which is
    renamed to `path` (`os.replace`, atomic) only once its size and hash are right; on any
    failure it is removed and one `WeightsError` line says what failed, the URL and how to
    place the file by hand. Concurrent calls for the same `path` each write their own
    temporary file, so neither corrupts the other.
    """
    what = f"the ImageNet weights of {entry.model}"
    folder = os.path.dirname(path)
    with contextlib.ExitStack() as stack:
        try:
            os.makedirs(folder, exist_ok=True)
            part = stack.enter_context(files.replacing(path))
        except OSError as e:
            raise WeightsError(
                f"cannot store {what} in {folder} ({_reason(e)}): set $MURAJAX_CACHE to a"
                f" writable folder, or {by_hand(entry, path)}"
            ) from None
        with open(part, "wb") as out:
            try:
                received, total = _stream(url, out, entry, path)
            except (OSError, HTTPException, ValueError) as e:  # URLError, timeouts, resets
                raise WeightsError(
                    f"cannot download {what} from {url} ({_reason(e)}): {by_hand(entry, path)}"
                ) from None
        if total is not None and total > entry.size:
            raise WeightsError(
                f"the server at {url} announces {total} bytes for {what}, which are"
                f" {entry.size} bytes, so nothing was downloaded: {by_hand(entry, path)}"
            )
        if received > entry.size:
            raise WeightsError(
                f"the server at {url} sent more than the {entry.size} bytes of {what}: the"
                f" download was stopped and not kept: {by_hand(entry, path)}"
            )
        if total is not None and received != total:
            raise WeightsError(
                f"the download of {what} from {url} stopped after {received} of {total} bytes"
                f" and was not kept: run again, or {by_hand(entry, path)}"
            )
        algorithm = hash_algorithm(entry.file_hash)
        digest = file_digest(part, algorithm)
        if digest != entry.file_hash.lower():
            raise WeightsError(
                f"the file downloaded from {url} has {algorithm} {digest}, not the expected"
                f" {entry.file_hash} of {what} (a damaged download, or another file at that"
                f" URL), and was not kept: {by_hand(entry, path)}"
            )


def fetch(entry: WeightsFile) -> str:
    """The local path of `entry`: the cached file if its hash is right (no network), else
    downloaded once into the cache (see `download`), waiting at most `lock_timeout_s()` for
    another process that downloads it. Raises `WeightsError` on failure."""
    path = cached_path(entry)
    expected = entry.file_hash.lower()
    if cached_digest(path, entry.file_hash) == expected:
        return path
    folder = os.path.dirname(path)
    with contextlib.suppress(OSError):  # if it cannot be created, `download` says why
        os.makedirs(folder, exist_ok=True)
    lock = os.path.join(folder, f".{entry.file_name}.lock")
    with _file_lock(lock, lock_timeout_s(), f"the ImageNet weights of {entry.model}"):
        found = cached_digest(path, entry.file_hash)  # another process may have fetched it
        if found == expected:
            return path
        try:
            download(entry, download_url(entry), path)
        except WeightsError as e:
            if found is None:
                raise
            algorithm = hash_algorithm(entry.file_hash)
            raise WeightsError(f"{e} (the file now at {path} has {algorithm} {found})") from None
        with contextlib.suppress(OSError):
            _remove_stale_parts(folder, entry.file_name, time.time())
    return path


def resolve_weights(model_name: str, weights: str | os.PathLike | None) -> str | None:
    """The weights file `model.weights` names: "imagenet" becomes the cached (and, the first
    time, downloaded) ImageNet file of `model_name`; a path or None comes back as it is.

    Raises `WeightsError` (one line) for a model without ImageNet weights or a download
    that fails.
    """
    if weights is None:
        return None
    if os.fspath(weights) != IMAGENET:
        return os.fspath(weights)
    return fetch(imagenet_file(model_name))
