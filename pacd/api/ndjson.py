"""Answers that are streams of JSON lines (``application/x-ndjson``).

The event stream and an image build answer the same way: headers first, then
each line as its source yields it. A quiet source is polled so that a client
that went away is noticed; a client that stops reading is dropped rather than
waited for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

#: how long a quiet source is waited on before the client's connection is looked at
POLL_S = 5.0
#: a line not taken by the client within this long ends the stream
WRITE_TIMEOUT_S = 5.0

#: the next line within ``poll_s`` seconds; None if none came; EOFError when done
LineSource = Callable[[float], Awaitable[bytes | None]]


async def open_stream(request: web.Request) -> web.StreamResponse:
    """Send the headers of a JSON-lines answer (its audit entry is due now)."""
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson",
                                       "Cache-Control": "no-store"})
    await resp.prepare(request)
    return resp


async def relay(request: web.Request, resp: web.StreamResponse, source: LineSource,
                first: tuple[bytes, ...] = ()) -> web.StreamResponse:
    """Write ``first``, then every line of ``source`` until it ends or the client goes."""
    try:
        for head in first:
            await resp.write(head)
        while True:
            try:
                line = await source(POLL_S)
            except EOFError:
                break
            if line is None:
                # Nothing to send: notice a client that went away.
                if request.transport is None or request.transport.is_closing():
                    break
                continue
            async with asyncio.timeout(WRITE_TIMEOUT_S):
                await resp.write(line)
    except (TimeoutError, ConnectionError):
        # A client that does not read is dropped, not waited for.
        if request.transport is not None:
            request.transport.close()
    return resp


def queue_source(queue: asyncio.Queue[bytes | None]) -> LineSource:
    """A source reading ``queue`` (filled from another thread); None in it ends the stream."""

    async def next_line(poll_s: float) -> bytes | None:
        try:
            data = await asyncio.wait_for(queue.get(), poll_s)
        except TimeoutError:
            return None
        if data is None:
            raise EOFError
        return data

    return next_line
