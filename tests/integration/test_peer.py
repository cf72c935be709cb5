"""A connection from another OS user is refused and audited, even when file
permissions would let it in (the kernel's peer credentials decide)."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_system
from tests.integration.harness import DaemonProcess

PEER_USER = "pacd-peer-test"

CLIENT = r"""
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(sys.argv[1])
s.sendall(b"GET /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
head, _, body = data.partition(b"\r\n\r\n")
print(json.dumps({"status": int(head.split()[1]), "body": json.loads(body)}))
"""


@pytest.fixture(scope="module")
def peer_uid() -> Iterator[int]:
    """A second OS user for this module's tests: created once, removed at the end.
    A user of that name that was already there is used and left alone."""
    if os.geteuid() != 0 or any(shutil.which(p) is None for p in ("useradd", "userdel",
                                                                  "runuser")):
        require_system("root with useradd, userdel and runuser, to create a second OS user")
    try:
        existing: int | None = pwd.getpwnam(PEER_USER).pw_uid
    except KeyError:
        existing = None
    if existing is not None:
        yield existing
        return
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    PEER_USER], check=True)
    try:
        yield pwd.getpwnam(PEER_USER).pw_uid
    finally:
        subprocess.run(["userdel", PEER_USER], check=True)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    # The other user must traverse every directory down to the socket. Under /tmp
    # (1777) only directories this test made have to be opened; a TMPDIR elsewhere
    # might need a shared parent changed, so it is not used here.
    with tempfile.TemporaryDirectory(prefix="pacd-peer-", dir="/tmp") as d:
        yield Path(d)


@contextlib.contextmanager
def opened_to_others(socket_path: Path, own_root: Path) -> Iterator[None]:
    """Lets any user reach ``socket_path``: o+x on each directory from its parent up
    to ``own_root`` (all made for this test), 0666 on the socket; all restored."""
    owned = [socket_path.parent, *socket_path.parent.parents]
    owned = owned[:owned.index(own_root) + 1]
    for shared in own_root.parents:
        assert os.stat(shared).st_mode & stat.S_IXOTH, (
            f"{shared} is not traversable by other users; the test does not change it")
    changed: list[tuple[Path, int]] = []
    try:
        for path, extra in [*((d, 0o011) for d in owned), (socket_path, 0o066)]:
            mode = stat.S_IMODE(os.stat(path).st_mode)
            changed.append((path, mode))
            os.chmod(path, mode | extra)
        yield
    finally:
        for path, mode in reversed(changed):
            os.chmod(path, mode)


def test_other_uid_refused_and_audited(daemon: DaemonProcess, peer_uid: int,
                                       short_tmp: Path) -> None:
    path = daemon.socket
    # The system interpreter: one the other user can execute (not a per-user shim).
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else "python3"
    # Open the path for the test so only the peer-credential check stands in the way.
    with opened_to_others(path, short_tmp):
        out = subprocess.run(["runuser", "-u", PEER_USER, "--", python, "-c", CLIENT,
                              str(path)], capture_output=True, text=True, timeout=30,
                             check=False)
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["status"] == 403
    assert answer["body"]["error"]["code"] == "peer_refused"
    refused = [e for e in daemon.audit() if e["action"] == "peer_refused"]
    assert len(refused) == 1
    assert refused[0]["decision"] == "deny"
    assert refused[0]["details"]["peer_uid"] == peer_uid
    # The owner's own uid is still served.
    assert daemon.client().status()["version"]
