"""`model.weights="imagenet"`: Keras's ImageNet file, downloaded once, verified and cached.

No test contacts any host but 127.0.0.1. A local HTTP server (`http.server` in a thread, port
0) serves a VGG16 backbone file in the layout of Keras's distributed one (the real file name,
Keras 1 weight names, random values of VGG16's real shapes), and the module's hash for it is
put in place of Keras's for the test. `$MURAJAX_CACHE` points into `tmp_path`,
`$MURAJAX_WEIGHTS_URL` at the server (or at a closed port: offline), and `$no_proxy` lets
urllib reach 127.0.0.1 directly whatever proxy the machine sets.
"""

import ast
import contextlib
import dataclasses
import hashlib
import http.server
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from murajax import models
from murajax.config import ConfigError, ModelConfig
from murajax.errors import WeightsError
from murajax.models import keras_weights, weights_hub
from tests.legacy_h5 import flax_to_legacy_layers, write_legacy_h5

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VGG16 = weights_hub.IMAGENET_FILES["vgg16"]
NAME = VGG16.file_name  # vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5
LOCAL_HOSTS = "127.0.0.1,localhost"


# --------------------------------------------------------------------------- a local server


@dataclasses.dataclass
class Route:
    """What the server answers for one file: `body`, sent in `chunks` pieces with `delay_s`
    between them; `stall` (set by the test) holds the answer after the first piece."""

    body: bytes
    chunks: int = 1
    delay_s: float = 0.0
    declared_length: int | None = None  # Content-Length; None: len(body)
    stall: threading.Event | None = None
    endless: bool = False  # no Content-Length, `body` again and again (up to ENDLESS_LIMIT)


ENDLESS_LIMIT = 64 << 20
"""What an `endless` route sends at most, so that a client without a cap ends too."""


class Server:
    """`http.server` on 127.0.0.1 (port 0) in a thread, serving `routes` by file name and
    counting the requests for each."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802  (http.server's name)
                name = self.path.lstrip("/")
                server.requests.append(name)
                route = server.routes.get(name)
                if route is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                if route.endless:
                    self.end_headers()
                    with contextlib.suppress(OSError):  # the client stops reading
                        for _ in range(ENDLESS_LIMIT // len(route.body)):
                            self.wfile.write(route.body)
                    return
                length = len(route.body) if route.declared_length is None else route.declared_length
                self.send_header("Content-Length", str(length))
                self.end_headers()
                step = -(-len(route.body) // route.chunks)
                with contextlib.suppress(OSError):  # the client may go away
                    for i, start in enumerate(range(0, len(route.body), step)):
                        if i and route.stall is not None:
                            route.stall.wait(30)
                            return
                        self.wfile.write(route.body[start : start + step])
                        self.wfile.flush()
                        time.sleep(route.delay_s)

            def log_message(self, *args) -> None:  # quiet
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        for route in self.routes.values():
            if route.stall is not None:
                route.stall.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused): offline."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def vgg_backbone() -> dict:
    """Random values of VGG16's backbone variables (numpy), its real shapes."""
    shapes = keras_weights.backbone_shapes("vgg16")
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda s: rng.normal(0, 0.05, s.shape).astype(np.float32), shapes)


@pytest.fixture(scope="module")
def vgg_bytes(vgg_backbone, tmp_path_factory) -> bytes:
    """The bytes of a VGG16 notop file laid out as Keras's distributed one (Keras 1 names)."""
    path = tmp_path_factory.mktemp("served") / NAME
    layers = [("input_1", []), *flax_to_legacy_layers(vgg_backbone)]
    write_legacy_h5(path, layers, style="keras1")
    return path.read_bytes()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """`$MURAJAX_CACHE` in tmp_path, proxies bypassed for 127.0.0.1, and the download URL
    at a closed local port until a test points it at its server."""
    monkeypatch.setenv("MURAJAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(weights_hub.URL_ENV_VAR, closed_port_url())
    monkeypatch.setenv("no_proxy", LOCAL_HOSTS)
    monkeypatch.setenv("NO_PROXY", LOCAL_HOSTS)
    return tmp_path / "cache" / "weights"


@pytest.fixture
def served(server, cache, vgg_bytes, monkeypatch) -> Server:
    """The server holds the VGG16 file, the module expects its hash and size, the URL points
    there."""
    server.routes[NAME] = Route(vgg_bytes)
    entry = dataclasses.replace(VGG16, file_hash=md5(vgg_bytes), size=len(vgg_bytes))
    monkeypatch.setitem(weights_hub.IMAGENET_FILES, "vgg16", entry)
    monkeypatch.setenv(weights_hub.URL_ENV_VAR, server.url)
    return server


def leftovers(folder: Path) -> list[str]:
    """Temporary downloads in the cache folder (anything but the weights and the lock)."""
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


def assert_one_line(message: str, *parts: str) -> None:
    assert "\n" not in message, message
    for part in parts:
        assert part in message, (part, message)


def subprocess_env(cache: Path, url: str) -> dict[str, str]:
    return {
        **os.environ,
        "MURAJAX_CACHE": str(cache.parent),
        weights_hub.URL_ENV_VAR: url,
        "no_proxy": LOCAL_HOSTS,
        "NO_PROXY": LOCAL_HOSTS,
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": ROOT,
    }


# --------------------------------------------------------------------------- what murajax downloads


def _keras_get_file_calls(source: str) -> dict[str, tuple[str, str]]:
    """From a keras.applications module's source: {URL: (file name, file_hash)} of each of
    its `get_file(name, URL_CONSTANT, ..., file_hash=...)` calls."""
    tree = ast.parse(source)
    strings: dict[str, str] = {}

    def text(node: ast.expr) -> str:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return strings[node.id]
        if isinstance(node, ast.JoinedStr):
            return "".join(
                text(v.value if isinstance(v, ast.FormattedValue) else v) for v in node.values
            )
        raise ValueError(ast.dump(node))

    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            with contextlib.suppress(ValueError, KeyError):
                strings[node.targets[0].id] = text(node.value)
    calls = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "get_file":
            file_hash = next(k.value.value for k in node.keywords if k.arg == "file_hash")
            calls[text(node.args[1])] = (text(node.args[0]), file_hash)
    return calls


def test_the_files_and_hashes_are_keras_applications_own():
    """Read from the installed Keras's source, not imported (murajax never imports Keras)."""
    spec = importlib.util.find_spec("keras")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("keras is not installed (it is in the dev extra)")
    folder = Path(spec.submodule_search_locations[0]) / "src" / "applications"
    keras_files = {}
    for module in ("vgg16.py", "densenet.py"):
        keras_files |= _keras_get_file_calls((folder / module).read_text())
    assert weights_hub.imagenet_models() == ["densenet169", "vgg16"]
    for name, entry in weights_hub.IMAGENET_FILES.items():
        assert entry.url in keras_files, name
        assert keras_files[entry.url] == (entry.file_name, entry.file_hash), name
        assert entry.file_name == f"{name}_weights_tf_dim_ordering_tf_kernels_notop.h5"
        assert weights_hub.hash_algorithm(entry.file_hash) == "md5"  # Keras's "auto" rule


def test_hash_algorithm_and_digest(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"murajax")
    assert weights_hub.hash_algorithm("0" * 32) == "md5"
    assert weights_hub.hash_algorithm("0" * 64) == "sha256"
    assert weights_hub.file_digest(str(path), "md5") == hashlib.md5(b"murajax").hexdigest()
    sha = hashlib.sha256(b"murajax").hexdigest()
    assert weights_hub.file_digest(str(path), "sha256") == sha
    assert weights_hub.cached_digest(str(path), sha) == sha
    assert weights_hub.cached_digest(str(tmp_path / "missing"), sha) is None


def test_urls_and_cache_paths(monkeypatch, tmp_path):
    monkeypatch.delenv(weights_hub.URL_ENV_VAR, raising=False)
    assert weights_hub.download_url(VGG16) == VGG16.url  # Keras's own place
    for base in ("https://mirror.example/keras", "https://mirror.example/keras/"):
        monkeypatch.setenv(weights_hub.URL_ENV_VAR, base)
        assert weights_hub.download_url(VGG16) == f"https://mirror.example/keras/{NAME}"
    monkeypatch.setenv("MURAJAX_CACHE", str(tmp_path))
    assert weights_hub.cached_path(VGG16) == str(tmp_path / "weights" / NAME)
    monkeypatch.delenv("MURAJAX_CACHE")
    expected = os.path.join(os.path.expanduser("~"), ".cache", "murajax", "weights", NAME)
    assert weights_hub.cached_path(VGG16) == expected
    assert weights_hub.resolve_weights("vgg16", "my.h5") == "my.h5"  # a path stays a path
    assert weights_hub.resolve_weights("vgg16", None) is None


# --------------------------------------------------------------------------- downloads


def test_first_download_is_cached_verified_and_loads(served, cache, vgg_backbone, capsys):
    variables = models.load_keras_weights("vgg16", "imagenet")
    assert served.requests == [NAME]
    path = cache / NAME
    assert (
        path.is_file() and md5(path.read_bytes()) == weights_hub.IMAGENET_FILES["vgg16"].file_hash
    )
    assert leftovers(cache) == []
    assert path.stat().st_mode & 0o777 == 0o644  # readable by everyone who shares the cache
    for got, want in zip(jax.tree.leaves(variables), jax.tree.leaves(vgg_backbone), strict=True):
        np.testing.assert_array_equal(np.asarray(got), want)
    err = capsys.readouterr().err
    assert err.count("[murajax] downloading") == 1
    assert_one_line(err.strip(), served.url + NAME, str(path))


def test_cached_file_is_reused_without_a_request(served, cache):
    first = weights_hub.resolve_weights("vgg16", "imagenet")
    mtime = os.stat(first).st_mtime_ns
    assert weights_hub.resolve_weights("vgg16", "imagenet") == first
    assert served.requests == [NAME]  # one request, for the first call only
    assert os.stat(first).st_mtime_ns == mtime


def test_a_file_placed_by_hand_is_used_offline(served, cache, vgg_bytes, monkeypatch):
    cache.mkdir(parents=True)
    (cache / NAME).write_bytes(vgg_bytes)
    monkeypatch.setenv(weights_hub.URL_ENV_VAR, closed_port_url())
    assert weights_hub.resolve_weights("vgg16", "imagenet") == str(cache / NAME)
    assert served.requests == []


def test_a_cached_file_with_the_wrong_hash_is_downloaded_again(served, cache, vgg_bytes):
    cache.mkdir(parents=True)
    (cache / NAME).write_bytes(vgg_bytes[: len(vgg_bytes) // 2])  # e.g. copied in part
    assert weights_hub.resolve_weights("vgg16", "imagenet") == str(cache / NAME)
    assert served.requests == [NAME]
    assert (cache / NAME).read_bytes() == vgg_bytes


@pytest.mark.parametrize("damage", ["flipped_bytes", "cut_short"])
def test_a_corrupt_download_is_rejected_and_not_kept(served, cache, vgg_bytes, damage):
    if damage == "flipped_bytes":  # same length, other content: the hash says so
        body = bytearray(vgg_bytes)
        body[len(body) // 2] ^= 0xFF
        served.routes[NAME] = Route(bytes(body))
    else:  # the connection closes early: fewer bytes than Content-Length
        served.routes[NAME] = Route(vgg_bytes[:1000], declared_length=len(vgg_bytes))
    with pytest.raises(WeightsError) as error:
        weights_hub.resolve_weights("vgg16", "imagenet")
    expected = weights_hub.IMAGENET_FILES["vgg16"].file_hash
    message = str(error.value)
    assert_one_line(message, served.url + NAME, str(cache / NAME), "not kept", expected)
    assert ("has md5" in message) == (damage == "flipped_bytes")
    assert not (cache / NAME).exists()
    assert leftovers(cache) == []


@pytest.mark.parametrize("offline", ["connection_refused", "http_404"])
def test_offline_is_one_line_with_the_url_and_where_to_place_the_file(
    server, cache, monkeypatch, offline
):
    url = closed_port_url() if offline == "connection_refused" else server.url
    monkeypatch.setenv(weights_hub.URL_ENV_VAR, url)
    with pytest.raises(WeightsError) as error:
        models.load_keras_weights("vgg16", "imagenet")
    reason = "Connection refused" if offline == "connection_refused" else "HTTP 404"
    assert_one_line(
        str(error.value),
        "cannot download the ImageNet weights of vgg16",
        url + NAME,
        reason,
        f"place it at {cache / NAME} (md5 {VGG16.file_hash})",
        "$MURAJAX_WEIGHTS_URL",
    )
    assert not (cache / NAME).exists() and leftovers(cache) == []


def test_an_unwritable_cache_is_one_line(served, tmp_path, monkeypatch):
    """A cache folder that cannot be created (here: below a file, which holds for root too)."""
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv("MURAJAX_CACHE", str(tmp_path / "a_file" / "cache"))
    folder = tmp_path / "a_file" / "cache" / "weights"
    with pytest.raises(WeightsError) as error:
        weights_hub.resolve_weights("vgg16", "imagenet")
    assert_one_line(
        str(error.value),
        f"cannot store the ImageNet weights of vgg16 in {folder}",
        "set $MURAJAX_CACHE to a writable folder",
        f"place it at {folder / NAME}",
    )
    assert served.requests == []


def test_concurrent_downloads_each_write_their_own_file(server, cache, monkeypatch):
    """Without the lock (`download` itself, three threads at once), the atomic rename alone
    keeps the cache whole: every call succeeds, the file is verified, nothing is left over."""
    body = os.urandom(3 << 20)
    server.routes[NAME] = Route(body, chunks=6, delay_s=0.05)
    entry = dataclasses.replace(VGG16, file_hash=hashlib.sha256(body).hexdigest())
    path = str(cache / NAME)
    errors: list[BaseException] = []

    def fetch() -> None:
        try:
            weights_hub.download(entry, server.url + NAME, path)
        except BaseException as e:  # noqa: BLE001  (reported below)
            errors.append(e)

    threads = [threading.Thread(target=fetch) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(server.requests) == 3  # all three downloaded, at once
    assert Path(path).read_bytes() == body
    assert leftovers(cache) == []


FETCH_SCRIPT = """
import dataclasses, os, sys, time
from murajax.models import weights_hub
entry = weights_hub.IMAGENET_FILES["vgg16"]
weights_hub.IMAGENET_FILES["vgg16"] = dataclasses.replace(
    entry, file_hash=sys.argv[1], size=int(sys.argv[3])
)
print("ready", flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.01)
print(weights_hub.resolve_weights("vgg16", "imagenet"), flush=True)
"""


def test_concurrent_processes_share_one_download(served, cache, vgg_bytes, tmp_path):
    """Three processes ask for the file at the same moment while the server sends it slowly:
    one downloads (they wait on the lock), all get the same verified file, nothing is left."""
    served.routes[NAME] = Route(vgg_bytes, chunks=8, delay_s=0.1)
    go = tmp_path / "go"
    env = subprocess_env(cache, served.url)
    args = [sys.executable, "-c", FETCH_SCRIPT, md5(vgg_bytes), str(go), str(len(vgg_bytes))]
    procs = [
        subprocess.Popen(
            args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    try:
        for p in procs:  # all imported and waiting
            assert p.stdout.readline().strip() == "ready"
        go.touch()
        results = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (out, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
        assert out.strip() == str(cache / NAME)
    assert served.requests == [NAME]
    assert (cache / NAME).read_bytes() == vgg_bytes
    assert leftovers(cache) == []


def test_a_killed_download_leaves_nothing_that_looks_complete(
    served, cache, vgg_bytes, tmp_path, monkeypatch
):
    """SIGKILL in the middle of a download: only a `.part` file remains (never the file's
    name); the next fetch downloads it whole and removes the dead process's part."""
    stall = threading.Event()
    served.routes[NAME] = Route(vgg_bytes, chunks=4, stall=stall)
    go = tmp_path / "go"
    go.touch()
    env = subprocess_env(cache, served.url)
    args = [sys.executable, "-c", FETCH_SCRIPT, md5(vgg_bytes), str(go), str(len(vgg_bytes))]
    proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not any(p.stat().st_size for p in cache.glob(".*.part")):  # bytes arrived
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        stall.set()
    assert not (cache / NAME).exists()
    assert len(leftovers(cache)) == 1
    served.routes[NAME] = Route(vgg_bytes)
    monkeypatch.setattr(weights_hub, "STALE_PART_S", 0.0)  # the killed process's part is stale
    assert weights_hub.resolve_weights("vgg16", "imagenet") == str(cache / NAME)
    assert (cache / NAME).read_bytes() == vgg_bytes
    assert leftovers(cache) == []


def test_a_server_without_content_length_is_stopped_at_the_files_size(server, cache, monkeypatch):
    """A mirror that sends bytes without end and no Content-Length: the download stops just
    past the file's known size, in one line, and nothing of it is kept."""
    entry = dataclasses.replace(VGG16, file_hash=md5(b"x"), size=1 << 20)
    monkeypatch.setitem(weights_hub.IMAGENET_FILES, "vgg16", entry)
    monkeypatch.setenv(weights_hub.URL_ENV_VAR, server.url)
    server.routes[NAME] = Route(os.urandom(64 << 10), endless=True)
    written: list[int] = []
    real_stream = weights_hub._stream

    def stream(url, out, *args):  # how much reached the disk
        result = real_stream(url, out, *args)
        written.append(out.tell())
        return result

    monkeypatch.setattr(weights_hub, "_stream", stream)
    with pytest.raises(WeightsError) as error:
        weights_hub.resolve_weights("vgg16", "imagenet")
    assert_one_line(
        str(error.value),
        f"the server at {server.url}{NAME} sent more than the 1048576 bytes of the ImageNet"
        " weights of vgg16: the download was stopped and not kept",
        f"place it at {cache / NAME}",
    )
    assert written == [(1 << 20) + 1]
    assert leftovers(cache) == [] and not (cache / NAME).exists()


def test_a_content_length_over_the_files_size_is_refused_before_reading(served, cache, vgg_bytes):
    served.routes[NAME] = Route(vgg_bytes + b"more")
    with pytest.raises(WeightsError) as error:
        weights_hub.resolve_weights("vgg16", "imagenet")
    assert_one_line(
        str(error.value),
        f"the server at {served.url}{NAME} announces {len(vgg_bytes) + 4} bytes for the"
        f" ImageNet weights of vgg16, which are {len(vgg_bytes)} bytes, so nothing was downloaded",
    )
    assert leftovers(cache) == [] and not (cache / NAME).exists()


def test_waiting_for_another_processs_download_times_out_in_one_line_naming_it(
    served, cache, vgg_bytes, tmp_path, monkeypatch
):
    """A process that downloads (held up by its server) holds the lock: a second fetch waits
    at most $MURAJAX_DOWNLOAD_LOCK_TIMEOUT, then names the lock file and the holder."""
    stall = threading.Event()
    served.routes[NAME] = Route(vgg_bytes, chunks=4, stall=stall)
    go = tmp_path / "go"
    go.touch()
    env = subprocess_env(cache, served.url)
    args = [sys.executable, "-c", FETCH_SCRIPT, md5(vgg_bytes), str(go), str(len(vgg_bytes))]
    holder = subprocess.Popen(
        args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    outcome: list[BaseException] = []

    def second() -> None:
        try:
            weights_hub.resolve_weights("vgg16", "imagenet")
        except BaseException as e:  # noqa: BLE001  (checked below)
            outcome.append(e)

    try:
        deadline = time.monotonic() + 60
        while not any(p.stat().st_size for p in cache.glob(".*.part")):  # it is downloading
            assert time.monotonic() < deadline and holder.poll() is None, holder.stderr.read()
            time.sleep(0.05)
        monkeypatch.setenv("MURAJAX_DOWNLOAD_LOCK_TIMEOUT", "0.5")
        start = time.monotonic()
        thread = threading.Thread(target=second, daemon=True)  # a regression would hang
        thread.start()
        thread.join(30)
        waited = time.monotonic() - start
    finally:
        holder.kill()
        holder.wait(10)
        stall.set()
    assert not thread.is_alive() and 0.5 <= waited < 10
    (error,) = outcome
    assert isinstance(error, WeightsError)
    assert_one_line(
        str(error),
        f"waited 0.5 s for the lock {cache / ('.' + NAME + '.lock')}, held by pid {holder.pid} on ",
        "that downloads the ImageNet weights of vgg16",
        "set $MURAJAX_DOWNLOAD_LOCK_TIMEOUT to wait longer",
    )


@pytest.mark.parametrize("value", ["soon", "-1", "nan"])
def test_a_lock_timeout_that_is_not_seconds_is_one_line(cache, monkeypatch, value):
    monkeypatch.setenv("MURAJAX_DOWNLOAD_LOCK_TIMEOUT", value)
    with pytest.raises(WeightsError) as error:
        weights_hub.resolve_weights("vgg16", "imagenet")
    assert str(error.value) == (
        f"$MURAJAX_DOWNLOAD_LOCK_TIMEOUT={value} is not a number of seconds (expected e.g. 600)"
    )


def test_a_stale_part_is_removed_and_a_live_downloads_part_left_alone(served, cache, vgg_bytes):
    """After a download, parts untouched for STALE_PART_S (their process died) are removed;
    a part written a moment ago belongs to a download still running (another host, or a file
    system without locks) and stays."""
    cache.mkdir(parents=True)
    live, dead = cache / f".{NAME}.live.part", cache / f".{NAME}.dead.part"
    live.write_bytes(b"still arriving")
    dead.write_bytes(b"left by a killed process")
    an_hour_ago = time.time() - weights_hub.STALE_PART_S - 60
    os.utime(dead, (an_hour_ago, an_hour_ago))
    assert weights_hub.resolve_weights("vgg16", "imagenet") == str(cache / NAME)
    assert (cache / NAME).read_bytes() == vgg_bytes
    assert leftovers(cache) == [live.name]
    assert live.read_bytes() == b"still arriving"


# --------------------------------------------------------------------------- configs and programs


def test_imagenet_is_accepted_only_for_models_with_an_imagenet_file(monkeypatch):
    check = models.check_config  # model.name, model.backbone and model.weights
    for config in (
        ModelConfig(name="vgg16", weights="imagenet"),
        ModelConfig(name="densenet169", weights="imagenet"),
        ModelConfig(name="multiview", backbone="vgg16", weights="imagenet"),
    ):
        check(config)  # validation downloads nothing (the URL is not even set here)
    monkeypatch.delitem(weights_hub.IMAGENET_FILES, "densenet169")
    with pytest.raises(ConfigError) as error:
        check(ModelConfig(name="densenet169", weights="imagenet"))
    assert_one_line(
        str(error.value), "config.model.weights='imagenet'", "no ImageNet weights", "'vgg16'"
    )
    with pytest.raises(ConfigError, match="does not load weights"):
        check(ModelConfig(name="cnn", weights="imagenet"))
    with pytest.raises(WeightsError, match="has no ImageNet weights"):
        weights_hub.resolve_weights("cnn", "imagenet")


def test_pretrained_variables_by_name(served, cache, vgg_backbone):
    model = models.create("vgg16", num_classes=2)
    initial = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3), jnp.float32))
    )
    initial = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), initial)
    variables = models.pretrained_variables(ModelConfig(name="vgg16", weights="imagenet"), initial)
    np.testing.assert_array_equal(
        variables["params"]["block1_conv1"]["kernel"],
        vgg_backbone["params"]["block1_conv1"]["kernel"],
    )
    assert served.requests == [NAME]


NO_KERAS_SCRIPT = """
import dataclasses, sys
from murajax import models
from murajax.models import weights_hub
entry = weights_hub.IMAGENET_FILES["vgg16"]
weights_hub.IMAGENET_FILES["vgg16"] = dataclasses.replace(entry, file_hash=sys.argv[1])
variables = models.load_keras_weights("vgg16", "imagenet")
assert "block5_conv3" in variables["params"]
print(sorted(m for m in sys.modules if m.split(".")[0] == "keras") or "no keras")
"""


def test_loading_by_name_never_imports_keras(cache, vgg_bytes):
    """A fresh process loads `vgg16` weights by name (offline, from a file placed by hand in
    its cache, with its hash patched in the process) and has not imported `keras`."""
    cache.mkdir(parents=True)
    (cache / NAME).write_bytes(vgg_bytes)
    result = subprocess.run(
        [sys.executable, "-c", NO_KERAS_SCRIPT, md5(vgg_bytes)],
        env=subprocess_env(cache, closed_port_url()),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "no keras"


def test_main_offline_is_one_error_line_and_exit_2(cache, tmp_path):
    url = closed_port_url()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.main",
            "--config=experiments/configs/vgg16.py:smoke",
            f"--workdir={tmp_path / 'work'}",
            f"--config.data.data_dir={tmp_path / 'tfds'}",
            "--config.model.weights=imagenet",
        ],
        env={**subprocess_env(cache, url), "MURAJAX_COMPILATION_CACHE": ""},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert_one_line(lines[0], url + NAME, "Connection refused", f"place it at {cache / NAME}")
    assert not list((tmp_path / "work").glob("checkpoints/*"))  # nothing trained
