"""A listening socket inside a running container's network namespace.

The container has only loopback; a listener on its ``127.0.0.1`` is reachable
by its processes and by nothing else on the machine, while the daemon that
holds the socket connects out from its own namespace.
"""

from __future__ import annotations

import socket
import subprocess
import sys

from pacd.errors import RuntimeFailed

HELPER_TIMEOUT_S = 10.0


def bind_in_netns(pid: int, host: str, port: int) -> socket.socket:
    """A TCP listener on ``host:port`` in the network namespace of process ``pid``."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with ours:
            try:
                proc = subprocess.run(
                    [sys.executable, "-I", "-m", "pacd.egress.netns_helper", str(pid),
                     str(theirs.fileno()), host, str(port)],
                    pass_fds=(theirs.fileno(),), capture_output=True, text=True,
                    timeout=HELPER_TIMEOUT_S, check=False)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise RuntimeFailed(f"egress listener for pid {pid}: {exc}") from exc
            finally:
                theirs.close()
            if proc.returncode != 0:
                raise RuntimeFailed(
                    f"egress listener for pid {pid}: {proc.stderr.strip() or proc.returncode}")
            ours.settimeout(HELPER_TIMEOUT_S)
            _, fds, _, _ = socket.recv_fds(ours, 64, 1)
    except OSError as exc:
        raise RuntimeFailed(f"egress listener for pid {pid}: {exc}") from exc
    if len(fds) != 1:
        raise RuntimeFailed(f"egress listener for pid {pid}: no socket came back")
    return socket.socket(fileno=fds[0])
