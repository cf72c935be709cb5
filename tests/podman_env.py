"""Real Podman for the tests: a private API service and offline-built test images.

Fixtures (register with ``pytest_plugins = ["tests.podman_env"]``):

* ``podman_service`` (session): a real ``podman system service`` on a socket
  in a temp directory, with pacd's containers.conf; yields its URL.
* ``podman_runtime`` (session): a ``PodmanRuntime`` connected to it.
* ``busybox_image`` / ``python_image`` (session): image references, built
  without any registry: a busybox-static root filesystem, and one with
  Python 3.11 unpacked from Debian packages plus the reference agent at
  ``/agent/agent.py``. Built once per machine (kept by tag; the Python image
  is rebuilt when the reference agent changes).
* ``run_label`` / ``podman_cleanup``: every container a test creates carries
  ``TEST_LABEL=<run id>``; they are removed after each test and at session
  end, pass or fail.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.server
import io
import json
import os
import shutil
import socketserver
import subprocess
import tarfile
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from pacd.errors import PacdError
from pacd.runtime.hardening import AgentRunSpec
from pacd.runtime.podman import PodmanRuntime
from pacd.runtime.service import (
    podman_binary,
    start_podman_service,
    stop_podman_service,
    write_containers_conf,
)
from tests.conftest import require_system
from tests.host_guard import PODMAN_EVENTS

REPO = Path(__file__).resolve().parent.parent
REFERENCE_AGENT = REPO / "examples" / "reference_agent" / "agent.py"
REFERENCE_PLUGIN = REPO / "examples" / "reference_plugin" / "plugin.py"

BUSYBOX_IMAGE = "localhost/pacd-test-busybox:1"
PYTHON_IMAGE = "localhost/pacd-test-python:1"
PLUGIN_IMAGE = "localhost/pacd-test-text-formatter:1"
_PLUGIN_DIGEST_LABEL = "com.luciverse.pacd-test-plugin-sha256"
TEST_LABEL = "com.luciverse.pacd-test-run"
_AGENT_DIGEST_LABEL = "com.luciverse.pacd-test-agent-sha256"

#: the smallest Debian 12 set that runs `python3 -c 'import socket, http.client, json'`
PYTHON_DEBS = ("python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib",
               "libc6", "zlib1g", "libexpat1")
BUSYBOX = Path("/bin/busybox")


def _cache_dir() -> Path:
    base = os.environ.get("PACD_TEST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pacd-test")
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


# --- the service -------------------------------------------------------------------


def write_run_containers_conf(path: Path) -> Path:
    """pacd's containers.conf, logging Podman's events where this test run's host guard
    reads them (``PODMAN_EVENTS``): every pod and container made through it is known
    to be this run's."""
    conf = write_containers_conf(path)
    events = os.environ.get(PODMAN_EVENTS)
    if events:
        # no size limit: a rotation would drop the oldest creations
        conf.write_text(conf.read_text().replace(
            "[engine]\n", f"[engine]\nevents_logfile_path = {json.dumps(events)}\n"
                          'events_logfile_max_size = "0"\n'))
    return conf



@pytest.fixture(scope="session")
def podman_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if podman_binary() is None:
        require_system("podman")
    # Short path: a Unix socket path must fit in 108 bytes.
    base = Path(tempfile.mkdtemp(prefix="pacd-podman-"))
    conf = write_run_containers_conf(base / "containers.conf")
    socket_path = base / "podman.sock"
    try:
        proc = start_podman_service(socket_path, conf)
    except PacdError as exc:
        shutil.rmtree(base, ignore_errors=True)
        require_system(f"podman system service: {exc.message}")
        raise  # unreachable: require_system skips or fails
    try:
        yield f"unix://{socket_path}"
    finally:
        stop_podman_service(proc)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def run_label() -> str:
    return uuid.uuid4().hex


@pytest.fixture(scope="session")
def podman_runtime(podman_service: str, run_label: str) -> Iterator[PodmanRuntime]:
    runtime = PodmanRuntime.connect(podman_service)
    try:
        yield runtime
    finally:
        remove_labelled(runtime, {TEST_LABEL: run_label})
        runtime.close()


@pytest.fixture
def podman_cleanup(podman_runtime: PodmanRuntime, run_label: str) -> Iterator[None]:
    """Removes this run's test containers after the test, whatever its outcome."""
    yield
    remove_labelled(podman_runtime, {TEST_LABEL: run_label})


def remove_labelled(runtime: PodmanRuntime, labels: dict[str, str]) -> list[str]:
    removed = []
    for container in runtime.list_labelled(labels):
        runtime.remove(container.id, force=True, missing_ok=True)
        removed.append(container.name)
    return removed


def tag_for_run(spec: AgentRunSpec, run_label: str) -> AgentRunSpec:
    """The spec with this test run's label, so cleanup finds the container."""
    return dataclasses.replace(spec, labels={**spec.labels, TEST_LABEL: run_label})


# --- images ---------------------------------------------------------------------------


def _add_dir(tar: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    tar.addfile(info)


def _add_symlink(tar: tarfile.TarFile, name: str, target: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    tar.addfile(info)


def _busybox_layer(tar: tarfile.TarFile, with_dirs: bool = True) -> None:
    if with_dirs:
        for d in ("bin", "etc", "dev", "proc", "sys", "run", "var"):
            _add_dir(tar, d)
        _add_dir(tar, "tmp", 0o1777)
    tar.add(str(BUSYBOX), arcname="bin/busybox")
    applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            _add_symlink(tar, f"bin/{applet}", "busybox")


def _import(runtime: PodmanRuntime, buf: io.BytesIO, ref: str, changes: list[str]) -> None:
    buf.seek(0)
    runtime.import_image(buf, ref, changes)


def ensure_busybox_image(runtime: PodmanRuntime) -> str:
    """``localhost/pacd-test-busybox:1`` from /bin/busybox via ``podman import``."""
    if runtime.image_exists(BUSYBOX_IMAGE):
        return BUSYBOX_IMAGE
    if not BUSYBOX.is_file():
        require_system("busybox-static (/bin/busybox) for the offline test image")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        _busybox_layer(tar)
    _import(runtime, buf, BUSYBOX_IMAGE,
            ["ENV PATH=/bin", 'CMD ["/bin/busybox", "sleep", "3600"]'])
    return BUSYBOX_IMAGE


@pytest.fixture(scope="session")
def busybox_image(podman_runtime: PodmanRuntime) -> str:
    return ensure_busybox_image(podman_runtime)


def _python_debs() -> list[Path]:
    cache = _cache_dir() / "debs"
    cache.mkdir(parents=True, exist_ok=True)
    have = {p.name.split("_")[0]: p for p in cache.glob("*.deb")}
    missing = [name for name in PYTHON_DEBS if name not in have]
    if missing:
        if shutil.which("apt-get") is None:
            require_system("apt-get (to fetch Python packages for the test image)")
        result = subprocess.run(["apt-get", "download", *missing], cwd=cache,
                                capture_output=True, text=True, check=False)
        if result.returncode != 0 and os.geteuid() == 0:
            # A machine whose package lists were cleaned: refresh them once and retry.
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, check=False)
            result = subprocess.run(["apt-get", "download", *missing], cwd=cache,
                                    capture_output=True, text=True, check=False)
        if result.returncode != 0:
            require_system(f"apt-get download {' '.join(missing)}: {result.stderr.strip()}")
        have = {p.name.split("_")[0]: p for p in cache.glob("*.deb")}
    return [have[name] for name in PYTHON_DEBS]


def _agent_digest() -> str:
    return hashlib.sha256(REFERENCE_AGENT.read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def python_image(podman_runtime: PodmanRuntime) -> str:
    digest = _agent_digest()
    if podman_runtime.image_exists(PYTHON_IMAGE):
        labels = podman_runtime.inspect_image(PYTHON_IMAGE).get("Labels") or {}
        if labels.get(_AGENT_DIGEST_LABEL) == digest:
            return PYTHON_IMAGE
    if not BUSYBOX.is_file():
        require_system("busybox-static (/bin/busybox) for the offline test image")
    if shutil.which("dpkg") is None:
        require_system("dpkg (to unpack Python packages for the test image)")
    debs = _python_debs()
    with tempfile.TemporaryDirectory(prefix="pacd-pyroot-") as tmp:
        root = Path(tmp)
        for deb in debs:
            subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
        (root / "usr/bin/python3").symlink_to("python3.11")
        (root / "bin").mkdir(exist_ok=True)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for d in ("dev", "proc", "sys", "run", "var", "agent"):
                _add_dir(tar, d)
            _add_dir(tar, "tmp", 0o1777)
            for entry in sorted(root.iterdir()):
                tar.add(str(entry), arcname=entry.name)
            _busybox_layer(tar, with_dirs=False)
            tar.add(str(REFERENCE_AGENT), arcname="agent/agent.py")
        _import(podman_runtime, buf, PYTHON_IMAGE, [
            "ENV PATH=/usr/bin:/bin",
            "ENV PYTHONDONTWRITEBYTECODE=1",
            f"LABEL {_AGENT_DIGEST_LABEL}={digest}",
            'CMD ["/usr/bin/python3", "/agent/agent.py", "serve"]',
        ])
    return PYTHON_IMAGE


@pytest.fixture(scope="session")
def plugin_image(podman_runtime: PodmanRuntime, python_image: str) -> str:
    """The reference plugin (the seed's Text Formatter) on the Python image, built
    offline with Podman (the base is local; nothing is pulled)."""
    digest = hashlib.sha256(REFERENCE_PLUGIN.read_bytes() + python_image.encode()
                            + podman_runtime.inspect_image(python_image)["Id"].encode()
                            ).hexdigest()
    if podman_runtime.image_exists(PLUGIN_IMAGE):
        labels = podman_runtime.inspect_image(PLUGIN_IMAGE).get("Labels") or {}
        if labels.get(_PLUGIN_DIGEST_LABEL) == digest:
            return PLUGIN_IMAGE
        stale = str(podman_runtime.inspect_image(PLUGIN_IMAGE)["Id"])
    else:
        stale = ""
    with tempfile.TemporaryDirectory(prefix="pacd-plugin-") as tmp:
        context = Path(tmp)
        shutil.copy(REFERENCE_PLUGIN, context / "plugin.py")
        (context / "Containerfile").write_text(
            f"FROM {python_image}\n"
            "COPY plugin.py /plugin/plugin.py\n"
            f"LABEL {_PLUGIN_DIGEST_LABEL}={digest}\n"
            'CMD ["/usr/bin/python3", "/plugin/plugin.py"]\n', encoding="utf-8")
        for _line in podman_runtime.build_image(context, "Containerfile", PLUGIN_IMAGE):
            pass
    if stale:
        # The build moved the tag: the old image would be left behind untagged.
        with contextlib.suppress(PacdError):
            podman_runtime.remove_image(stale)
    return PLUGIN_IMAGE


# --- an agent socket for runtime tests ------------------------------------------------


class _AgentRoutes(http.server.BaseHTTPRequestHandler):
    """API.md's whoami and data routes, in memory: enough to prove that a process in
    the container reaches the socket mounted at /run/pacd/agent.sock and that the
    reference agent speaks the contract. The daemon's real routes (policy, vault,
    audit) are tested by the daemon's own integration tests."""

    protocol_version = "HTTP/1.1"
    server: _AgentSocketServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def address_string(self) -> str:
        return "agent-socket"

    def _reply(self, status: int, body: bytes = b"", ctype: str = "application/json") -> None:
        self.send_response(status)
        if status != 204:
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if status != 204:
            self.wfile.write(body)

    def _route(self, method: str) -> None:
        self.server.requests.append((method, self.path))
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = self.path.split("/")
        if method == "GET" and self.path == "/v1/whoami":
            self._reply(200, json.dumps(self.server.identity).encode())
        elif len(parts) == 5 and parts[1:3] == ["v1", "data"]:
            key = (unquote(parts[3]), unquote(parts[4]))
            if key[0] not in self.server.identity["concerns"]:
                self._reply(403, json.dumps({"error": {"code": "forbidden",
                                                       "message": "not connected"}}).encode())
            elif method == "PUT":
                self.server.data[key] = body
                self._reply(204)
            elif method == "GET" and key in self.server.data:
                self._reply(200, self.server.data[key], "application/octet-stream")
            elif method == "DELETE":
                self.server.data.pop(key, None)
                self._reply(204)
            else:
                self._reply(404, b'{"error": {"code": "not_found", "message": "absent"}}')
        elif method == "GET" and self.path == "/v1/messages":
            self._reply(200, b"[]")
        else:
            self._reply(404, b'{"error": {"code": "not_found", "message": "no route"}}')

    def do_GET(self) -> None:
        self._route("GET")

    def do_PUT(self) -> None:
        self._route("PUT")

    def do_DELETE(self) -> None:
        self._route("DELETE")


class _AgentSocketServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, identity: dict[str, Any]) -> None:
        self.identity = identity
        self.data: dict[tuple[str, str], bytes] = {}
        self.requests: list[tuple[str, str]] = []
        super().__init__(path, _AgentRoutes)


class AgentSocket:
    """A listening agent socket in a fresh directory; ``.path`` is what gets mounted."""

    def __init__(self, identity: dict[str, Any]) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="pacd-agent-"))
        self.path = self.dir / "agent.sock"
        self.server = _AgentSocketServer(str(self.path), identity)
        # uid 1000 in the container must be able to connect; the directory (0700)
        # keeps everyone else on the host out.
        os.chmod(self.path, 0o666)
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        shutil.rmtree(self.dir, ignore_errors=True)
