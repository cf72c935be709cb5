"""The floor handler: what an authorised metadata read costs on this stack, and no more.

An aiohttp application on a Unix socket whose one route does only what
pacd's authorised ``GET /v1/sessions/current`` must: look the bearer token's
SHA-256 up in an SQLite table, compute one HMAC (an audit entry's chain link)
and insert that entry into a WAL-mode table without waiting for an fsync
(``synchronous=OFF``). No level table, no MAC on the token row, no
decision record, no JSON encoder beyond one small body: the ratio of pacd's
latency over this one is what pacd's own machinery costs.

Run as its own process, like the daemon: ``python -m bench.floor_server
SOCKET DIR`` with the token on stdin; it serves until its stdin closes.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import sqlite3
import sys
import time
from pathlib import Path

from aiohttp import web

KEY = bytes(range(32))


def _open(directory: Path, token: str) -> tuple[sqlite3.Connection, sqlite3.Connection]:
    state = sqlite3.connect(str(directory / "floor-state.sqlite3"), isolation_level=None)
    state.execute("PRAGMA journal_mode=WAL")
    state.execute("CREATE TABLE tokens (token_hash BLOB PRIMARY KEY, token_id TEXT,"
                  " level TEXT, scope TEXT, expires_at REAL)")
    state.execute("INSERT INTO tokens VALUES (?, 'floor', 'enhanced', '*', ?)",
                  (hashlib.sha256(token.encode()).digest(), time.time() + 3600))
    log = sqlite3.connect(str(directory / "floor-log.sqlite3"), isolation_level=None)
    log.execute("PRAGMA journal_mode=WAL")
    log.execute("PRAGMA synchronous=OFF")
    log.execute("CREATE TABLE log (seq INTEGER PRIMARY KEY, ts REAL, action TEXT,"
                " target TEXT, mac BLOB)")
    return state, log


def application(state: sqlite3.Connection, log: sqlite3.Connection) -> web.Application:
    prev = [b"\0" * 32]

    async def current(request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        token = header[7:] if header[:7].lower() == "bearer " else ""
        row = state.execute(
            "SELECT token_id, level, scope, expires_at FROM tokens WHERE token_hash = ?",
            (hashlib.sha256(token.encode()).digest(),)).fetchone()
        if row is None or row[3] <= time.time():
            return web.Response(status=401)
        now = time.time()
        entry = f"{now!r}|session.current|{row[0]}".encode()
        mac = hmac.new(KEY, prev[0] + entry, hashlib.sha256).digest()
        log.execute("INSERT INTO log (ts, action, target, mac) VALUES (?, ?, ?, ?)",
                    (now, "session.current", row[0], mac))
        prev[0] = mac
        body = json.dumps({"token_id": row[0], "level": row[1], "scope": row[2],
                           "expires_at": row[3]}).encode()
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/v1/sessions/current", current)
    return app


async def serve(sock: str, directory: Path, token: str) -> None:
    state, log = _open(directory, token)
    runner = web.AppRunner(application(state, log), access_log=None, handle_signals=False)
    await runner.setup()
    await web.UnixSite(runner, sock).start()
    try:
        await asyncio.to_thread(sys.stdin.read)  # until the benchmark closes our stdin
    finally:
        await runner.cleanup()
        state.close()
        log.close()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], Path(sys.argv[2]), sys.stdin.readline().strip()))
