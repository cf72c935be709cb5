"""Who is on the other end of a Unix socket, as the kernel reports it.

Linux: ``SO_PEERCRED`` (``struct ucred``: pid, uid, gid). macOS/BSD:
``LOCAL_PEERCRED`` (``struct xucred``: version, uid, ngroups, groups[16]) at
level ``SOL_LOCAL`` (0). The values come from the kernel at connect time, so a
client cannot lie about them. Anything we cannot read is "unknown" and the
caller refuses the connection (fail closed).

On Linux the peer's pid also names its PID namespace (``/proc/PID/ns/pid``):
an agent socket serves only processes in its container's namespace, which a
host process of the same uid is not in (see :mod:`pacd.agents.server`).
"""

from __future__ import annotations

import os
import socket
import struct
import sys
from dataclasses import dataclass
from typing import Any, Protocol


class _SockOpt(Protocol):
    def getsockopt(self, level: int, optname: int, buflen: int) -> bytes: ...


class _Extra(Protocol):
    def get_extra_info(self, name: str, default: Any = None) -> Any: ...


@dataclass(frozen=True)
class PeerCred:
    uid: int
    pid: int | None
    gid: int | None


#: transport extra (``get_extra_info``) under which a transport that names its peer
#: itself (the Windows owner pipe, see :mod:`pacd.api.owner_listener`) hands over the
#: :class:`PeerCred` it established, or None for a peer it could not vouch for. Only
#: pacd's own listener code creates transports with it; a Unix socket never has it.
VERIFIED_PEER = "pacd.verified_peer"
_ABSENT = object()


def transport_peer(transport: _Extra) -> PeerCred | None:
    """Who is on the other end of an accepted connection: what the transport's
    creator verified (:data:`VERIFIED_PEER`), else the kernel's answer for its socket."""
    verified = transport.get_extra_info(VERIFIED_PEER, _ABSENT)
    if verified is not _ABSENT:
        return verified if isinstance(verified, PeerCred) else None
    sock = transport.get_extra_info("socket")
    return peer_cred(sock) if sock is not None else None


def client_label(transport: _Extra | None) -> str:
    """``pid:<n>`` of the process on the other end, as the relying party keys its
    per-client bound on unfinished ceremonies; "" when unknown.

    Through :func:`transport_peer`, so the Windows owner pipe's client (whose
    transport has no socket to ask) is named by the pid the pipe reported.
    """
    peer = transport_peer(transport) if transport is not None else None
    return f"pid:{peer.pid}" if peer is not None and peer.pid is not None else ""


def own_uid() -> int:
    """The uid peers are compared with: the daemon's own.

    Windows has no uids: there the owner is the user whose SID the pipe checks,
    and a peer that passed that check carries this number, the SID's last
    sub-authority (its RID, as Cygwin maps SIDs to uids). Only a Windows machine
    runs that branch.
    """
    getuid = getattr(os, "getuid", None)
    if getuid is not None:
        return int(getuid())
    from pacd.named_pipe import current_user_sid  # Windows only

    return int(current_user_sid().rsplit("-", 1)[1])


_SOL_LOCAL = 0
_LOCAL_PEERCRED = 0x001
_XUCRED = struct.Struct("=IIh")  # cr_version, cr_uid, cr_ngroups (then groups)
#: the only ``struct xucred`` layout we know (<sys/ucred.h>); any other is refused
XUCRED_VERSION = 0
_XUCRED_NGROUPS = 16


def parse_xucred(raw: bytes) -> PeerCred | None:
    """The uid in a ``LOCAL_PEERCRED`` answer, or None unless it is a version-0 ``xucred``.

    Pure, so the macOS/BSD path is tested on any machine: a buffer too short for
    the header, or a ``cr_version`` other than ``XUCRED_VERSION`` (a layout whose
    uid may sit elsewhere), is unknown and the caller refuses the peer.
    """
    if len(raw) < _XUCRED.size:
        return None
    version, uid, ngroups = _XUCRED.unpack_from(raw)
    if version != XUCRED_VERSION or not 0 <= ngroups <= _XUCRED_NGROUPS:
        return None
    return PeerCred(uid=uid, pid=None, gid=None)


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
            raw = sock.getsockopt(_SOL_LOCAL, optname, _XUCRED.size + 4 * _XUCRED_NGROUPS + 4)
            return parse_xucred(raw)
    except (OSError, struct.error):
        return None
    return None


def submitting_process(peer: PeerCred | None) -> dict[str, Any] | None:
    """``{"pid", "exe"}`` of the process on the other end, read as its request is handled.

    Recorded with an approval it submits, so the owner sees which program asked.
    The pid is the kernel's (``SO_PEERCRED``, taken when the process connected);
    ``exe`` is ``/proc/PID/exe`` read now, or None when it cannot be read (the
    process is gone, or no /proc). None without a pid (macOS/BSD report no pid).
    """
    if peer is None or peer.pid is None or peer.pid <= 0:
        return None
    try:
        exe: str | None = os.readlink(f"/proc/{peer.pid}/exe")
    except OSError:
        exe = None
    return {"pid": peer.pid, "exe": exe}


@dataclass(frozen=True)
class PidNamespace:
    """A PID namespace as the kernel identifies it: the nsfs inode of ``/proc/PID/ns/pid``.

    Compared, never trusted from a client: both sides are read from /proc by the daemon.
    """

    dev: int
    ino: int


def pid_namespace(pid: int | None) -> PidNamespace | None:
    """The PID namespace process ``pid`` is in, or None if it cannot be read.

    None covers a pid the kernel could not map into ours (0), a process that is
    gone, one we may not inspect, and platforms without /proc: all refused.
    """
    if pid is None or pid <= 0:
        return None
    try:
        st = os.stat(f"/proc/{pid}/ns/pid")
    except OSError:
        return None
    return PidNamespace(dev=st.st_dev, ino=st.st_ino)
