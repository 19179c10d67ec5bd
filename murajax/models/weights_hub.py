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
never leaves a file that looks complete. Processes that fetch the same file at once wait for
each other on a lock file where the file system has locks (`fcntl.flock`), and are safe
without it: each writes its own temporary file and the rename is atomic.

A download that fails (offline, a refused connection, an HTTP error, a short or damaged
file) raises one `WeightsError` line naming the URL, what went wrong and where to place the
file by hand.
"""

import contextlib
import dataclasses
import hashlib
import os
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

STALE_PART_S = 3600.0
"""A temporary download untouched for this long belongs to a process that died: removed."""

_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class WeightsFile:
    """A weights file that `keras.applications` downloads: its URL and `get_file` hash."""

    model: str  # the murajax model whose backbone it fills
    url: str
    file_hash: str  # md5 (32 hex digits) or sha256 (64), as Keras's `file_hash` argument

    @property
    def file_name(self) -> str:
        """The file's name, the last part of its URL."""
        return self.url.rsplit("/", 1)[-1]


# From keras/src/applications/vgg16.py and densenet.py (Keras 3.x): WEIGHTS_PATH_NO_TOP,
# DENSENET169_WEIGHT_PATH_NO_TOP and the `file_hash` of their `get_file` calls.
IMAGENET_FILES: dict[str, WeightsFile] = {
    "vgg16": WeightsFile(
        model="vgg16",
        url="https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
        "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        file_hash="6d6bbae143d832006294945121d1f1fc",
    ),
    "densenet169": WeightsFile(
        model="densenet169",
        url="https://storage.googleapis.com/tensorflow/keras-applications/densenet/"
        "densenet169_weights_tf_dim_ordering_tf_kernels_notop.h5",
        file_hash="b8c4d4c20dd625c148057b9ff1c1176b",
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


@contextlib.contextmanager
def _file_lock(path: str) -> Iterator[None]:
    """Holds an exclusive `flock` on `path` (created if needed) where the file system has
    locks; elsewhere (no `fcntl`, a file system without locks) it holds nothing."""
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
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:  # e.g. an NFS mount without lockd
            yield
            return
        try:
            yield
        finally:
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

    Says on stderr what it downloads once the server has answered (so a failure to connect
    is the error's line alone)."""
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        print(
            f"[murajax] downloading the ImageNet weights of {entry.model} from {url}"
            f" ({_size_text(total)}) to {path}",
            file=sys.stderr,
            flush=True,
        )
        received = 0
        with _progress(total, entry.file_name) as bar:
            while chunk := response.read(_CHUNK):
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
    downloaded once into the cache (see `download`). Raises `WeightsError` on failure."""
    path = cached_path(entry)
    expected = entry.file_hash.lower()
    if cached_digest(path, entry.file_hash) == expected:
        return path
    folder = os.path.dirname(path)
    with contextlib.suppress(OSError):  # if it cannot be created, `download` says why
        os.makedirs(folder, exist_ok=True)
    with _file_lock(os.path.join(folder, f".{entry.file_name}.lock")):
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
