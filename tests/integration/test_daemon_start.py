"""Start-up waits only for what the first status answer needs.

Podman (connecting, importing podman-py, the first reconcile) comes after the
socket listens, in the watcher's thread: a Podman that takes its time cannot
hold up the status, and a Podman whose socket does not exist is told without
loading the adapter at all. Which modules a start imports is checked in
tests/unit/test_daemon_start_imports.py.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.harness import DaemonProcess


class SilentPodman:
    """A Podman API socket that accepts connections and answers nothing until released:
    a Podman that is slow to answer (a service still starting, a stuck one)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen()
        self.accepted = threading.Event()
        self.released = threading.Event()
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self.released.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self._held.append(conn)
            self.accepted.set()

    def first_still_waiting(self) -> bool:
        """Whether the first connection is still open from the daemon's side, i.e.
        its request is still waiting for an answer (what it sent is read and dropped)."""
        conn = self._held[0]
        while True:
            try:
                if not conn.recv(65536, socket.MSG_DONTWAIT):
                    return False  # the daemon gave up on it
            except BlockingIOError:
                return True

    def release(self) -> None:
        """Close every held connection: the daemon's ping fails and it lets go."""
        self.released.set()
        self.listener.close()
        for conn in self._held:
            conn.close()
        self._thread.join(10)


@pytest.fixture
def silent_podman(short_tmp: Path) -> Iterator[SilentPodman]:
    podman = SilentPodman(short_tmp / "podman.sock")
    yield podman
    podman.release()


def test_status_answers_while_podman_has_not(
        make_daemon: Callable[..., DaemonProcess], silent_podman: SilentPodman) -> None:
    d = make_daemon(env={"PACD_PODMAN_URL": f"unix://{silent_podman.path}"})
    # The watcher is connecting (its ping is held unanswered) ...
    assert silent_podman.accepted.wait(30), d.log()
    # ... and the status answers all the same, saying Podman is not followed yet. (Its
    # body is cached until an input changes: a new owner makes it look at Podman again.)
    d.client().request("POST", "/v1/owner", {"name": "Alice"})
    status = d.client().status()
    assert status["owner"]["name"] == "Alice"
    assert silent_podman.first_still_waiting()  # answered before Podman, not after
    assert status["podman"]["connected"] is False
    assert status["podman"]["url"] == f"unix://{silent_podman.path}"
    silent_podman.release()
    assert d.stop() == 0, d.log()


def test_keychain_chosen_during_the_imports_is_still_vetted(
        make_daemon: Callable[..., DaemonProcess]) -> None:
    # keyring's choice is made in the background while the daemon imports; a backend
    # that drops every secret must still be refused, before anything listens.
    d = make_daemon(start=False,
                    env={"PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring"})
    d.start(wait=False)
    assert d.proc is not None
    assert d.proc.wait(30) == 8, d.log()
    assert "does not keep secrets in a protected keychain" in d.log()
    assert not d.socket.exists()


def test_no_podman_socket_is_told_without_loading_the_adapter(
        make_daemon: Callable[..., DaemonProcess], short_tmp: Path) -> None:
    missing = short_tmp / "no-podman.sock"
    d = make_daemon(env={"PACD_PODMAN_URL": f"unix://{missing}"})
    deadline = time.monotonic() + 30
    podman = d.client().status()["podman"]
    while podman["detail"] == "not connected yet" and time.monotonic() < deadline:
        time.sleep(0.05)
        podman = d.client().status()["podman"]
    # Said by the look for a socket, made before the adapter (podman-py) is imported.
    assert f"cannot reach Podman at unix://{missing} (no such socket)" in podman["detail"]
    assert "podman.socket" in podman["detail"]
    assert podman["connected"] is False

