"""The owner pipe for real: only a Windows machine runs these (the Windows job of
.github/workflows/package.yml does); on any other OS they are skipped, and
tests/unit/test_owner_transport.py covers what runs anywhere with stand-ins.

They show what no stand-in can: the daemon's server answering the client through
``\\\\.\\pipe\\pacd-<SID>`` with the Win32 security descriptor, the proactor's
pipe transport and both process-owner checks in place, and a second server on
the same name refused by ``FILE_FLAG_FIRST_PIPE_INSTANCE``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from pacd.api.owner_listener import PipeListener, open_listener
from pacd.api.route import Call, Json, Principal, Route
from pacd.api.server import OwnerServer
from pacd.audit import AuditLog
from pacd.config import Config
from pacd.transport import connection

pytestmark = pytest.mark.skipif(
    sys.platform != "win32", reason="the real owner pipe exists only on Windows")

KEY = bytes(range(32))


async def _status(call: Call) -> Json:
    return Json(b'{"reachable":true}')


async def _basic(request: object, route: Route) -> Principal:
    return Principal(level="basic")


def _config(tmp_path: Path) -> Config:
    return Config(home=tmp_path / "home", socket=tmp_path / "unused.sock")


def test_the_daemons_server_answers_the_client_over_the_real_owner_pipe(
        tmp_path: Path) -> None:
    async def main() -> tuple[int, object, str]:
        audit = AuditLog.open(tmp_path / "audit.db", KEY, None)
        listener = open_listener(_config(tmp_path))
        assert isinstance(listener, PipeListener)
        server = OwnerServer([Route("GET", "/v1/status", "getStatus", "status", _status,
                                    audited=False)],
                             _basic, audit, max_connections=4, max_body_bytes=1 << 16,
                             header_timeout_s=10)
        await server.start(listener)
        try:
            def ask() -> tuple[int, object]:
                conn = connection(tmp_path / "unused.sock", 30)
                try:
                    conn.request("GET", "/v1/status")
                    resp = conn.getresponse()
                    return resp.status, json.loads(resp.read())
                finally:
                    conn.close()

            status, body = await asyncio.to_thread(ask)
            return status, body, listener.where
        finally:
            await server.stop()
            listener.close()
            await asyncio.to_thread(audit.close)

    status, body, where = asyncio.run(main())
    assert (status, body) == (200, {"reachable": True})
    assert where.startswith("\\\\.\\pipe\\pacd-S-1-5-")


def test_a_second_server_on_the_owner_pipe_is_refused_as_a_squatter_would_be(
        tmp_path: Path) -> None:
    first = open_listener(_config(tmp_path))
    try:
        with pytest.raises(PermissionError):  # ERROR_ACCESS_DENIED from CreateNamedPipe
            open_listener(_config(tmp_path))
    finally:
        first.close()
