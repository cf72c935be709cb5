"""A connection from another OS user is refused and audited, even when file
permissions would let it in (the kernel's peer credentials decide)."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess

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


def _peer_uid() -> int:
    if os.geteuid() != 0 or shutil.which("useradd") is None or shutil.which("runuser") is None:
        require_system("root with useradd and runuser, to create a second OS user")
    try:
        return pwd.getpwnam(PEER_USER).pw_uid
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        PEER_USER], check=True)
        return pwd.getpwnam(PEER_USER).pw_uid


def test_other_uid_refused_and_audited(daemon: DaemonProcess) -> None:
    uid = _peer_uid()
    # Open the path for the test so only the peer-credential check stands in the way.
    path = daemon.socket
    for directory in [path.parent, *path.parents[1:]]:
        if directory == directory.parent:
            break
        mode = os.stat(directory).st_mode & 0o777
        os.chmod(directory, mode | 0o011)
    os.chmod(path, 0o666)
    # The system interpreter: one the other user can execute (not a per-user shim).
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else "python3"
    out = subprocess.run(["runuser", "-u", PEER_USER, "--", python, "-c", CLIENT, str(path)],
                         capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["status"] == 403
    assert answer["body"]["error"]["code"] == "peer_refused"
    refused = [e for e in daemon.audit() if e["action"] == "peer_refused"]
    assert len(refused) == 1
    assert refused[0]["decision"] == "deny"
    assert refused[0]["details"]["peer_uid"] == uid
    # The owner's own uid is still served.
    assert daemon.client().status()["version"]
