"""The Windows owner pipe's parts that run anywhere: its name, its security descriptor
(owner only, nothing injected through a malformed SID) and the byte-stream adapter
http.client speaks through, here over real OS pipes.

Only a Windows machine shows the rest (the DACL keeping another user out,
FILE_FLAG_FIRST_PIPE_INSTANCE against a squatter, the process-owner checks):
see pacd/named_pipe.py and the README.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from collections.abc import Callable, Iterator

import pytest

from pacd.errors import ConfigError
from pacd.named_pipe import (
    PipeHTTPConnection,
    PipeStream,
    check_sid,
    open_owner_pipe,
    owner_only_sddl,
    pipe_name,
)

OWNER = "S-1-5-21-1004336348-1177238915-682003330-1001"


def test_the_pipe_is_named_for_its_owner() -> None:
    assert pipe_name(OWNER) == "\\\\.\\pipe\\pacd-" + OWNER


@pytest.mark.parametrize("bad", [
    "S-1-5-21-1)(A;;GA;;;WD",  # closes the ACE and adds Everyone
    "WD", "BA", "SY", "", "S-1-5", "s-1-5-21-1-2", "S-1-5-21-1 ", "S-1-5-21-1\n",
    "S-1-5-21-1/../x",
])
def test_a_malformed_sid_is_refused_before_it_reaches_the_descriptor(bad: str) -> None:
    with pytest.raises(ConfigError, match="not a Windows SID"):
        owner_only_sddl(bad)
    with pytest.raises(ConfigError):
        pipe_name(bad)


def test_the_descriptor_admits_the_owner_only_and_inherits_nothing() -> None:
    sddl = owner_only_sddl(OWNER)
    assert sddl == f"O:{OWNER}G:{OWNER}D:P(D;;GA;;;NU)(A;;GA;;;{OWNER})"
    dacl = sddl.split("D:", 1)[1]
    assert dacl.startswith("P(")  # protected: no inherited entries
    aces = re.findall(r"\(([^)]*)\)", dacl)
    allows = [ace for ace in aces if ace.startswith("A;")]
    assert allows == [f"A;;GA;;;{OWNER}"]
    # network logons are denied before anything is allowed (deny entries come first)
    assert aces[0] == "D;;GA;;;NU"
    for trustee in ("WD", "AN", "BA", "SY", "AU", "BU", "IU"):
        assert f";{trustee})" not in sddl
    assert check_sid(OWNER) == OWNER


@pytest.fixture
def pipes() -> Iterator[Callable[[], tuple[int, int]]]:
    made: list[int] = []

    def make() -> tuple[int, int]:
        r, w = os.pipe()
        made.extend((r, w))
        return r, w

    yield make
    for fd in made:
        with contextlib.suppress(OSError):
            os.close(fd)


def test_http_over_the_pipe_stream_sends_a_whole_request_through_short_writes(
        pipes: Callable[[], tuple[int, int]]) -> None:
    request_r, request_w = pipes()
    response_r, response_w = pipes()
    body = json.dumps({"reachable": True}).encode()
    os.write(response_w, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
             b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    writes: list[int] = []

    def short_write(data: bytes) -> int:
        # a pipe may take fewer bytes than offered: at most 7 here
        n = os.write(request_w, data[:7])
        writes.append(n)
        return n

    conn = PipeHTTPConnection("\\\\.\\pipe\\pacd-" + OWNER, timeout=5)
    stream = PipeStream(lambda n: os.read(response_r, n), short_write, lambda: None)
    conn.sock = stream
    conn.request("POST", "/v1/status", body=b'{"x": 1}',
                 headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200
    assert json.loads(response.read()) == {"reachable": True}
    # the finished response leaves the connection open for the next request
    assert not stream.closed
    os.close(request_w)
    sent = b""
    while chunk := os.read(request_r, 4096):
        sent += chunk
    assert sent.startswith(b"POST /v1/status HTTP/1.1\r\n")
    assert sent.endswith(b'\r\n\r\n{"x": 1}')
    assert b"Content-Length: 8\r\n" in sent
    assert len(writes) > 1 and max(writes) <= 7


def test_a_broken_pipe_ends_a_response_read_to_the_end_of_the_stream(
        pipes: Callable[[], tuple[int, int]]) -> None:
    response_r, response_w = pipes()
    os.write(response_w, b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npartial")
    os.close(response_w)

    def read(n: int) -> bytes:
        data = os.read(response_r, n)
        if not data:
            # what Windows reports once the server closed its end (ERROR_BROKEN_PIPE)
            raise BrokenPipeError(109, "The pipe has been ended")
        return data

    closed: list[bool] = []
    stream = PipeStream(read, lambda data: len(data), lambda: closed.append(True))
    conn = PipeHTTPConnection("\\\\.\\pipe\\pacd-" + OWNER, timeout=5)
    conn.sock = stream
    conn.request("GET", "/v1/status")
    response = conn.getresponse()
    assert response.read() == b"partial"
    conn.close()
    assert closed == [True]


def test_a_pipe_that_takes_nothing_fails_the_write_instead_of_spinning(
        pipes: Callable[[], tuple[int, int]]) -> None:
    stream = PipeStream(lambda n: b"", lambda data: 0, lambda: None)
    with pytest.raises(BrokenPipeError):
        stream.sendall(b"GET / HTTP/1.1\r\n\r\n")


@pytest.mark.skipif(sys.platform == "win32", reason="the refusal off Windows")
def test_the_owner_pipe_is_refused_off_windows() -> None:
    with pytest.raises(ConfigError, match="only on Windows"):
        open_owner_pipe(pipe_name(OWNER))
