"""Who is on the other end of a Unix socket, as the kernel reports it.

Linux: ``SO_PEERCRED`` (``struct ucred``: pid, uid, gid). macOS/BSD:
``LOCAL_PEERCRED`` (``struct xucred``: version, uid, ngroups, groups[16]) at
level ``SOL_LOCAL`` (0). The values come from the kernel at connect time, so a
client cannot lie about them. Anything we cannot read is "unknown" and the
caller refuses the connection (fail closed).
"""

from __future__ import annotations

import socket
import struct
import sys
from dataclasses import dataclass
from typing import Protocol


class _SockOpt(Protocol):
    def getsockopt(self, level: int, optname: int, buflen: int) -> bytes: ...


@dataclass(frozen=True)
class PeerCred:
    uid: int
    pid: int | None
    gid: int | None


_SOL_LOCAL = 0
_LOCAL_PEERCRED = 0x001
_XUCRED = struct.Struct("=IIh")  # cr_version, cr_uid, cr_ngroups (then groups)


def peer_cred(sock: _SockOpt) -> PeerCred | None:
    """The peer's credentials, or None if the platform cannot tell us."""
    try:
        if sys.platform.startswith("linux"):
            size = struct.calcsize("3i")
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, size)
            pid, uid, gid = struct.unpack("3i", raw[:size])
            return PeerCred(uid=uid, pid=pid, gid=gid)
        if sys.platform == "darwin" or "bsd" in sys.platform:
            optname = getattr(socket, "LOCAL_PEERCRED", _LOCAL_PEERCRED)
            raw = sock.getsockopt(_SOL_LOCAL, optname, _XUCRED.size + 4 * 16 + 4)
            _version, uid, _ngroups = _XUCRED.unpack_from(raw)
            return PeerCred(uid=uid, pid=None, gid=None)
    except (OSError, struct.error):
        return None
    return None
