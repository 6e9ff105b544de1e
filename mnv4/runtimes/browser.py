"""Artifacts in a browser: .onnx in ONNX Runtime Web, .tflite in LiteRT.js, inside headless Chromium.

`serve` runs mnv4's page (mnv4/web/page) on localhost with the artifacts, their manifests and the runtimes vendored
from mnv4/web's npm lock file, so the page works offline. `BrowserRunner` opens that page in headless Chromium
through mnv4/web/driver.mjs (Node.js, playwright-core) and runs batches in it, one browser per runner."""
from __future__ import annotations

import contextlib
import itertools
import json
import mimetypes
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np

from ..artifact.formats import FORMATS
from ..artifact.manifest import Manifest, read_manifest
from ..data import imagenet_class_names
from ..errors import DamagedArtifactError, MissingSystemPartError, MNV4Error, unknown_value
from .base import Runner, input_size, run_in_artifact_batches

WEB = Path(__file__).resolve().parents[1] / "web"
PAGE = WEB / "page"
NODE_MODULES = WEB / "node_modules"


@dataclass(frozen=True)
class Library:
    package: str  # its npm package
    label: str  # the runtime's name in records: "<label>-<backend>"
    backends: tuple[str, ...]


LIBRARIES = {
    "onnx": Library("onnxruntime-web", "ort-web", ("wasm", "webgpu", "webgl")),
    "tflite": Library("@litertjs/core", "litert-js", ("wasm", "webgpu")),
}
# What the page loads from each package, served under /vendor/<package>/: their builds, nothing else.
VENDORED = {"onnxruntime-web": ("dist",), "@litertjs/core": ("dist", "wasm"), "@litertjs/wasm-utils": ("dist",)}
DRIVER_PACKAGE = "playwright-core"

# Chromium as root in a container: no sandbox (it needs user namespaces), and nothing that reaches the network.
CHROMIUM_FLAGS = ("--no-sandbox", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync")
# WebGPU is behind a flag on Linux; SwiftShader, its CPU implementation, is the adapter every machine has, so that
# numbers do not depend on the GPU (or its absence) of the machine that ran them.
WEBGPU_FLAGS = ("--enable-unsafe-webgpu", "--use-webgpu-adapter=swiftshader")
# Cross-origin isolation, without which the browser gives WebAssembly no threads (SharedArrayBuffer).
ISOLATION_HEADERS = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp",
                     "Cross-Origin-Resource-Policy": "same-origin"}
MIME_TYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm",
              ".html": "text/html; charset=utf-8", ".json": "application/json"}


def library_of(path: Path) -> Library:
    row = next((row for name, row in LIBRARIES.items() if FORMATS[name].suffix == path.suffix), None)
    if row is None:
        suffixes = " and ".join(FORMATS[name].suffix for name in LIBRARIES)
        raise MNV4Error(f"the browser runs {suffixes} artifacts, not {path.name}")
    return row


def package_version(package: str) -> str:
    return json.loads((NODE_MODULES / package / "package.json").read_text())["version"]


def check_packages() -> None:
    """mnv4/web's npm packages, installed from its lock file (`npm ci`), or a one-line error saying how."""
    for package in (*VENDORED, DRIVER_PACKAGE):
        if not (NODE_MODULES / package / "package.json").is_file():
            raise MissingSystemPartError("mnv4/web's npm packages", f"npm ci --prefix {WEB}")


# ------------------------------------------------------------------------------------------------------ the server

def catalogue(artifacts: list[Path], allow_modified: bool = False) -> dict[str, tuple[Path, dict]]:
    """The served artifacts by name (the file's name, with its folder's where two share it): each path and what the
    page knows of it (/api/artifacts). Each needs its manifest beside it."""
    names = [path.name for path in artifacts]
    served = {}
    for index, path in enumerate(artifacts):
        name = path.name if names.count(path.name) == 1 else f"{path.parent.name}/{path.name}"
        if name in served:
            raise MNV4Error(f"two artifacts are named {name}: serve one of them, or rename it")
        library = library_of(path)
        manifest = read_manifest(path, allow_modified)
        served[name] = (path, page_row(name, f"/artifacts/{index}/{path.name}", manifest, library))
    return served


def layout_of(manifest: Manifest) -> str:
    return manifest.facts.get("input_layout", "NCHW")


def page_row(name: str, url: str, manifest: Manifest, library: Library) -> dict:
    """What the page needs of an artifact: its interface, preprocessing, labels and runtime."""
    facts = manifest.facts
    labels = manifest.labels or (imagenet_class_names() if manifest.num_classes == 1000 else None)
    return {"name": name, "url": url, "format": manifest.format, "variant": manifest.variant,
            "precision": manifest.precision, "resolution": manifest.resolution, "num_classes": manifest.num_classes,
            "batch": None if manifest.dynamic_batch else manifest.batch, "input_shape": facts.get("input_shape"),
            "input_dtype": facts.get("input_dtype", "float32"),
            "layout": layout_of(manifest),
            "preprocessing": _page_preprocessing(manifest), "labels": labels,
            "runtime": {"library": library.package, "version": package_version(library.package),
                        "backends": list(library.backends)}}


def _page_preprocessing(manifest: Manifest) -> dict:
    """The preprocessing the page applies to a photo: the manifest's, or where the model normalises its image input
    itself, the same resize and crop giving pixels 0 to 255 (mean 0, std 1/255)."""
    if manifest.facts.get("input_kind") != "image":
        return manifest.preprocessing
    return {**manifest.preprocessing, "mean": [0.0] * 3, "std": [1 / 255] * 3}


class Site:
    """What the server answers: a GET path to a file, or to the bytes of /api/artifacts."""

    def __init__(self, served: dict[str, tuple[Path, dict]], io_dir: Path | None):
        self.files = {row["url"]: path for path, row in served.values()}
        self.api = json.dumps([row for _, row in served.values()]).encode()
        self.io_dir = io_dir

    def resolve(self, url_path: str) -> Path | bytes | None:
        path = unquote(url_path)
        if path == "/api/artifacts":
            return self.api
        if path in self.files:
            return self.files[path]
        if path == "/":
            return PAGE / "index.html"
        top, _, rest = path.lstrip("/").partition("/")
        if top == "vendor":
            for package, folders in VENDORED.items():
                if rest.startswith(f"{package}/"):
                    return within(NODE_MODULES / package, rest[len(package) + 1:], folders)
            return None
        if top == "io" and self.io_dir:
            return within(self.io_dir, rest)
        return within(PAGE, path.lstrip("/"))


def within(root: Path, relative: str, folders: tuple[str, ...] | None = None) -> Path | None:
    """The file at `relative` under `root` (and under one of its `folders` where given), never outside it."""
    parts = relative.split("/")
    if not relative or ".." in parts or (folders is not None and parts[0] not in folders):
        return None
    path = (root / relative).resolve()
    return path if path.is_file() and path.is_relative_to(root.resolve()) else None


class Handler(BaseHTTPRequestHandler):
    site: Site  # set on the subclass each server makes

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.answer(body=True)

    def do_HEAD(self):  # noqa: N802
        self.answer(body=False)

    def answer(self, body: bool) -> None:
        found = self.site.resolve(urlsplit(self.path).path)
        if found is None:
            self.send_error(404)
            return
        data = found if isinstance(found, bytes) else None
        kind = "application/json" if data is not None else content_type(found)
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(data) if data is not None else found.stat().st_size))
        self.end_headers()
        if not body:
            return
        if data is not None:
            self.wfile.write(data)
            return
        with found.open("rb") as file:
            shutil.copyfileobj(file, self.wfile)

    def end_headers(self):
        # Every answer, error pages included.
        for header, value in ISOLATION_HEADERS.items():
            self.send_header(header, value)
        super().end_headers()

    def log_message(self, format, *args):  # noqa: A002 (http.server's signature)
        """Quiet: the page's requests are no news."""


def content_type(path: Path) -> str:
    return MIME_TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        """A browser that drops a connection (a cancelled load, a closed tab) is no error of the server's."""


@contextlib.contextmanager
def serve(artifacts: list[Path], port: int = 0, io_dir: Path | None = None,
          allow_modified: bool = False) -> Iterator[str]:
    """Serve mnv4's page with `artifacts` on 127.0.0.1 (`port`, 0: any free one) until the block ends; yields its base
    URL. With `io_dir`, its files are served at /io/<name> (a runner's input batches)."""
    check_packages()
    site = Site(catalogue([Path(path) for path in artifacts], allow_modified), io_dir)
    try:
        server = QuietServer(("127.0.0.1", port), type("SiteHandler", (Handler,), {"site": site}))
    except OSError as error:
        raise MNV4Error(f"cannot serve on 127.0.0.1:{port}: {error.strerror or error}") from None
    # A short poll: shutdown() waits for it, and a runner's close() for shutdown().
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="mnv4-web", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# ---------------------------------------------------------------------------------------------- the browser runner

def chromium_path() -> str:
    configured = os.environ.get("MNV4_CHROMIUM")
    found = shutil.which(configured) if configured else shutil.which("chromium")
    if not found:
        raise MissingSystemPartError(f"Chromium (MNV4_CHROMIUM={configured})" if configured else "Chromium")
    return found


def node_path() -> str:
    found = shutil.which("node")
    if not found:
        raise MissingSystemPartError("Node.js")
    return found


class PageError(Exception):
    """What the page (its runtime) or the driver said went wrong, in one line."""


class Driver:
    """mnv4/web/driver.mjs in a process of its own: a page in headless Chromium, called over JSON lines, one call at a
    time. Every process it starts (Node.js, Chromium's, even those Chromium leaves behind) carries `tag` in its
    environment, so that `end_processes` can end them all and nothing else."""

    def __init__(self, url: str, flags: tuple[str, ...], timeout: float):
        self.tag = f"MNV4_BROWSER_SESSION={uuid.uuid4().hex}"
        variable, value = self.tag.split("=")
        # TMPDIR: Playwright makes Chromium's profile there, whose sockets' paths must stay under Linux's 108 bytes:
        # a folder of the system's temporary one, not of a deep working folder (pytest's tmp_path under xdist).
        self.folder = Path(tempfile.mkdtemp(prefix="mnv4-chromium-"))
        env = {**os.environ, variable: value, "TMPDIR": str(self.folder)}
        self.log = self.folder / "driver.log"
        self.stopped: str | None = None  # why `receive` ended the processes
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [node_path(), str(WEB / "driver.mjs"), chromium_path(), url, *flags], cwd=WEB, env=env, text=True,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, start_new_session=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, name="mnv4-driver", daemon=True).start()
        try:
            self.browser = self.receive("the page to open", timeout)["ready"]["browser"]
        except BaseException:
            self.end()
            raise

    def end(self) -> None:
        """End its processes and remove its folder."""
        try:
            end_processes(self.process, self.tag)
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)  # the driver exited

    def call(self, name: str, *args, timeout: float):
        """window.mnv4[name](*args) in the page: its result, or a PageError with what went wrong."""
        return self.request({"call": name, "args": list(args)}, f"{name}()", timeout)

    def upload(self, selector: str, file: Path, timeout: float) -> None:
        """Choose `file` in the page's file input `selector`, as a user does."""
        self.request({"upload": selector, "file": str(file)}, f"choosing {file.name}", timeout)

    def table(self, selector: str, timeout: float) -> list[list[str]]:
        """The cells' texts of the page's table `selector`, once it has rows."""
        return self.request({"table": selector}, f"the rows of {selector}", timeout)

    def request(self, message: dict, what: str, timeout: float):
        try:
            self.process.stdin.write(json.dumps(message) + "\n")
            self.process.stdin.flush()
        except (OSError, ValueError):  # ValueError: its stdin closed, as a timed-out call leaves it
            raise PageError(self.exit_reason()) from None
        return self.receive(what, timeout)["result"]

    def receive(self, what: str, timeout: float) -> dict:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            # A late answer would be taken for the next call's: the browser goes, and the calls after this fail.
            end_processes(self.process, self.tag)
            self.stopped = f"the browser was stopped: no answer to {what} within {timeout:g} s"
            raise PageError(self.stopped) from None
        if line is None:
            raise PageError(self.exit_reason())
        message = json.loads(line)
        if "error" in message:
            raise PageError(message["error"])
        return message

    def exit_reason(self) -> str:
        """Why the driver is gone: stopped after a call timed out, or the page's last error or crash, or its exit code."""
        if self.stopped:
            return self.stopped
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        last = next((line for line in reversed(lines) if line.startswith("page ")), None)
        return f"the browser driver exited ({last or f'exit code {self.process.poll()}'})"


def end_processes(process: subprocess.Popen, tag: str) -> None:
    """End the driver (it closes the browser when its stdin closes), then whatever process of it is left."""
    try:
        with contextlib.suppress(OSError):
            process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    finally:
        kill_tagged(tag)


def shut_down(driver: Driver, server: contextlib.ExitStack, workdir: Path) -> None:
    """A runner's end: its browser, its server, its folder. A function of its parts, not a method: weakref.finalize
    must not hold the runner."""
    try:
        driver.end()
    finally:
        server.close()
        shutil.rmtree(workdir, ignore_errors=True)


def kill_tagged(tag: str, patience: float = 5.0) -> None:
    """SIGKILL every process whose environment carries `tag`, and every process of a group one of them leads (Chromium's
    zygotes and renderers, which do not inherit its environment), until none is left. Linux's /proc; elsewhere
    Playwright's own cleanup is all there is."""
    leaders: set[int] = set()
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        groups, tagged = live_processes(tag)
        leaders |= tagged
        doomed = [pid for pid, group in groups.items() if pid in leaders or group in leaders]
        if not doomed:
            return
        for pid in doomed:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def live_processes(tag: str) -> tuple[dict[int, int], set[int]]:
    """The process group of every live process (a zombie is gone: only its parent can reap it), and which of them carry
    `tag` in their environment."""
    groups, tagged = {}, set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            state, _parent, group = stat.read_text().rsplit(")", 1)[1].split()[:3]  # after "pid (command)"
            if state == "Z":
                continue
            pid = int(stat.parent.name)
            groups[pid] = int(group)
            if tag.encode() in (stat.parent / "environ").read_bytes():
                tagged.add(pid)
    return groups, tagged


class BrowserRunner(Runner):
    """An .onnx artifact in ONNX Runtime Web or a .tflite one in LiteRT.js, on `backend` (wasm, webgpu; webgl for
    ONNX), in headless Chromium: mnv4's page, driven by mnv4/web/driver.mjs. Each batch goes to the page as a file
    it fetches; the page puts it in the artifact's layout and runs it. A fixed-batch artifact is given its own batch
    size (and LiteRT.js, which cannot resize an input, gives every artifact a fixed one)."""

    measures_latency = True
    call_timeout_s = 300.0
    start_timeout_s = 60.0

    def __init__(self, path: str | Path, threads: int = 1, *, backend: str):
        super().__init__(path, threads)
        library = library_of(self.path)
        if backend not in library.backends:
            raise MNV4Error(unknown_value(f"{library.package} backend", backend, library.backends))
        self.backend, self.library = backend, library
        self.runtime = f"{library.label}-{backend}"
        for check in (check_packages, node_path, chromium_path):  # what is missing, said before anything starts
            check()
        manifest = read_manifest(self.path, allow_modified=True)  # the caller judges the manifest; this reads its shape
        self.input_size = input_size(manifest.facts.get("input_shape", (None,) * 4), layout_of(manifest))
        self.image_input = manifest.facts.get("input_kind") == "image"
        self._workdir = Path(tempfile.mkdtemp(prefix="mnv4-browser-"))
        self._io = self._workdir / "io"
        self._io.mkdir()
        self._names = (f"{index}.f32" for index in itertools.count())
        self._server = contextlib.ExitStack()
        self._finalizer = None
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        url = self._server.enter_context(serve([self.path], io_dir=self._io, allow_modified=True))
        flags = CHROMIUM_FLAGS + (WEBGPU_FLAGS if self.backend == "webgpu" else ())
        try:
            self._driver = Driver(url, flags, self.start_timeout_s)
        except PageError as error:
            raise MNV4Error(f"{self.runtime}: the browser did not start: {error}") from None
        # From here on the processes end with the runner, however it ends: close(), garbage collection or exit.
        self._finalizer = weakref.finalize(self, shut_down, self._driver, self._server, self._workdir)
        try:
            self.info = self._driver.call("load", self.path.name, self.backend, self.threads,
                                          timeout=self.call_timeout_s)
        except PageError as error:
            raise DamagedArtifactError(f"{self.runtime} cannot load {self.path.name}: {error}") from None
        self.artifact_batch = self.info["batch"]
        self.page_ms: float | None = None  # the last batch's time in the page, without the transfers

    def run(self, batch: np.ndarray) -> np.ndarray:
        return run_in_artifact_batches(batch, "NCHW", np.float32, self.artifact_batch, self._infer)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        name = next(self._names)
        (self._io / name).write_bytes(batch.astype("<f4").tobytes())
        try:
            result = self._driver.call("infer", f"/io/{name}", list(batch.shape), timeout=self.call_timeout_s)
        except PageError as error:
            raise DamagedArtifactError(f"{self.runtime} cannot run {self.path.name}: {error}") from None
        finally:
            (self._io / name).unlink(missing_ok=True)
        self.page_ms = result["ms"]
        return np.asarray(result["logits"], dtype=np.float32).reshape(result["shape"])

    def execution(self) -> dict:
        record = {"browser": f"Chromium {self._driver.browser}",
                  "library": f"{self.library.package} {package_version(self.library.package)}",
                  "backend": self.backend, "threads": self.info.get("threads")}
        for key in ("adapter", "fully_accelerated"):
            if self.info.get(key) is not None:
                record[key] = self.info[key]
        return record

    def close(self) -> None:
        """End the browser, its driver and the server now (they end anyway when the runner is collected, or at exit)."""
        if self._finalizer:
            self._finalizer()
        else:
            self._server.close()
            shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> BrowserRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["BrowserRunner", "LIBRARIES", "serve"]
