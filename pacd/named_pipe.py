"""The owner socket on Windows: the same HTTP over a named pipe only the owner can open.

CPython has no ``AF_UNIX`` on Windows, so the daemon serves its HTTP on
``\\\\.\\pipe\\pacd-<owner's SID>`` instead:

- the pipe's security descriptor (:func:`owner_only_sddl`) has a protected DACL
  with one allow entry, for the owner's SID, and denies network logons; the
  pipe is also created with ``PIPE_REJECT_REMOTE_CLIENTS``;
- the first instance is created with ``FILE_FLAG_FIRST_PIPE_INSTANCE``, so if
  another process (squatter) already owns the name the daemon fails to start
  instead of serving beside it;
- the server checks each client's process owner (``GetNamedPipeClientProcessId``
  → token user SID) and the client checks the server's
  (``GetNamedPipeServerProcessId``): a pipe of that name held by anyone but the
  owner is refused (:class:`pacd.errors.PeerRefused`).

The daemon serves it through :class:`pacd.api.owner_listener.PipeListener`
(over :class:`Win32PipeEndpoint` here) and clients reach it through
:func:`pacd.transport.connection`; both choose it on Windows only.

What runs on any machine, and is tested on Linux: the pipe name and SDDL
construction, :class:`PipeStream` (the byte-stream adapter through which
``http.client`` speaks over a pipe handle: partial writes, end of stream on a
broken pipe, ``shutdown`` ending a blocked read) and, in
tests/unit/test_owner_transport.py, the listener's accept loop serving the
daemon's HTTP server with socketpairs standing in for pipe instances.
Everything under ``if sys.platform == "win32"`` calls the Win32 API through
ctypes and has run on no machine of this project yet: only a Windows machine
can show that the DACL keeps another user out, that the first-instance flag
defeats a squatter, and that the owner checks hold
(tests/unit/test_owner_pipe_windows.py, in the Windows CI job; README, "what
has been run where"). It is not type-checked here either (mypy checks for linux).
"""

from __future__ import annotations

import http.client
import io
import re
import sys
from collections.abc import Callable

from pacd.errors import ConfigError, PeerRefused

PIPE_PREFIX = "\\\\.\\pipe\\pacd-"
#: a string SID: S-1-<authority>-<sub authorities>, e.g. S-1-5-21-1004336348-...-1001
_SID = re.compile(r"S-1-[0-9]{1,14}(-[0-9]{1,10}){1,15}")
#: SDDL rights and trustees used below: GA = GENERIC_ALL, NU = NETWORK logon users
_DENY_NETWORK = "(D;;GA;;;NU)"


def check_sid(sid: str) -> str:
    """``sid`` if it is a well-formed string SID; anything else could inject SDDL."""
    if not _SID.fullmatch(sid):
        raise ConfigError(f"not a Windows SID: {sid!r}")
    return sid


def pipe_name(sid: str) -> str:
    """The owner pipe of the user ``sid``: one per user, its name says whose."""
    return PIPE_PREFIX + check_sid(sid)


def owner_only_sddl(sid: str) -> str:
    """The pipe's security descriptor: owned by ``sid``, DACL protected (``P``: nothing
    inherited), network logons denied first, then full access for ``sid`` and no one
    else (no entry for SYSTEM, Administrators or Everyone)."""
    sid = check_sid(sid)
    return f"O:{sid}G:{sid}D:P{_DENY_NETWORK}(A;;GA;;;{sid})"


class PipeStream(io.RawIOBase):
    """A byte stream over a pipe handle's read and write calls.

    ``read(n)`` returns up to ``n`` bytes (b"" or a ``BrokenPipeError`` — Windows'
    ERROR_BROKEN_PIPE — is the end of the stream); ``write(b)`` returns how many
    bytes it took, which may be fewer. HTTP's own framing (Content-Length,
    chunks) does the rest: the pipe is in byte mode, a stream like a socket.
    """

    def __init__(self, read: Callable[[int], bytes], write: Callable[[bytes], int],
                 close: Callable[[], None], cancel: Callable[[], None] | None = None) -> None:
        super().__init__()
        self._read, self._write, self._close = read, write, close
        self._cancel = cancel
        self._shut = False

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        try:
            data = self._read(len(buffer))
        except BrokenPipeError:
            return 0
        except OSError:
            if self._shut:
                return 0  # our own shutdown aborted the read (ERROR_OPERATION_ABORTED)
            raise
        buffer[:len(data)] = data
        return len(data)

    def write(self, data: bytes) -> int:  # type: ignore[override]
        return self._write(bytes(data))

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            sent = self.write(bytes(view))
            if sent <= 0:
                raise BrokenPipeError("the pipe took no bytes")
            view = view[sent:]

    def shutdown(self, how: int) -> None:
        """As ``socket.shutdown`` for a thread that must end another's blocked read
        (the tray ends its event stream so): cancels the pending I/O (Windows:
        ``CancelIoEx``), after which that read returns end of stream or fails."""
        del how  # a pipe has no half-close: both directions end
        self._shut = True
        if self._cancel is not None:
            self._cancel()

    def makefile(self, mode: str = "rb") -> io.BufferedReader:
        """What http.client reads a response from. Closing it (as http.client does after
        each response) leaves the pipe open, as a socket's makefile does."""
        if mode != "rb":
            raise ValueError(f"PipeStream.makefile supports 'rb' only, not {mode!r}")
        return io.BufferedReader(_Borrowed(self))

    def close(self) -> None:
        if not self.closed:
            self._close()
        super().close()


class _Borrowed(io.RawIOBase):
    """Reads through to a :class:`PipeStream` without owning it."""

    def __init__(self, stream: PipeStream) -> None:
        super().__init__()
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        return self._stream.readinto(buffer)


class PipeHTTPConnection(http.client.HTTPConnection):
    """``http.client`` over the owner pipe, after checking who serves it.

    ``opener`` makes the :class:`PipeStream` (on Windows :func:`open_owner_pipe`,
    which opens the pipe and checks its server's owner; tests pass a stand-in).
    """

    def __init__(self, name: str, timeout: float | None,
                 opener: Callable[[str], PipeStream] | None = None) -> None:
        super().__init__("localhost", timeout=timeout)
        self.pipe_name = name
        self._opener = opener or open_owner_pipe

    def connect(self) -> None:
        self.sock = self._opener(self.pipe_name)


def open_owner_pipe(name: str) -> PipeStream:
    if sys.platform == "win32":
        return _win32_open(name)
    raise ConfigError(f"the owner pipe exists only on Windows (this is {sys.platform})")


def _owner_sid_unknown() -> str:
    raise ConfigError(f"Windows user SIDs exist only on Windows (this is {sys.platform})")


current_user_sid: Callable[[], str] = _owner_sid_unknown


if sys.platform == "win32":
    import _winapi
    import asyncio
    import ctypes
    from asyncio import windows_events, windows_utils
    from ctypes import wintypes

    _kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    _advapi32 = ctypes.WinDLL("advapi32", use_last_error=True)
    _PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
    _TOKEN_QUERY = 0x0008
    _TOKEN_USER = 1
    _SDDL_REVISION_1 = 1
    # <winbase.h>; _winapi has only the message-mode constants
    _PIPE_TYPE_BYTE = 0x00000000
    _PIPE_READMODE_BYTE = 0x00000000
    _PIPE_REJECT_REMOTE_CLIENTS = 0x00000008

    class _SecurityAttributes(ctypes.Structure):
        _fields_ = [("nLength", wintypes.DWORD), ("lpSecurityDescriptor", wintypes.LPVOID),
                    ("bInheritHandle", wintypes.BOOL)]

    def _check(ok: int) -> None:
        if not ok:
            raise ctypes.WinError(ctypes.get_last_error())

    def _token_sid(process: int) -> str:
        token = wintypes.HANDLE()
        _check(_advapi32.OpenProcessToken(wintypes.HANDLE(process), _TOKEN_QUERY,
                                          ctypes.byref(token)))
        try:
            size = wintypes.DWORD()
            _advapi32.GetTokenInformation(token, _TOKEN_USER, None, 0, ctypes.byref(size))
            buf = ctypes.create_string_buffer(size.value)
            _check(_advapi32.GetTokenInformation(token, _TOKEN_USER, buf, size,
                                                 ctypes.byref(size)))
            psid = ctypes.cast(buf, ctypes.POINTER(ctypes.c_void_p))[0]  # TOKEN_USER.User.Sid
            text = wintypes.LPWSTR()
            _check(_advapi32.ConvertSidToStringSidW(ctypes.c_void_p(psid), ctypes.byref(text)))
            try:
                return str(text.value)
            finally:
                _kernel32.LocalFree(text)
        finally:
            _kernel32.CloseHandle(token)

    def _current_user_sid() -> str:
        return _token_sid(_kernel32.GetCurrentProcess())

    current_user_sid = _current_user_sid

    def process_user_sid(pid: int) -> str:
        process = _kernel32.OpenProcess(_PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
        _check(process)
        try:
            return _token_sid(process)
        finally:
            _kernel32.CloseHandle(process)

    def _other_end_sid(handle: int, server: bool) -> str:
        pid = wintypes.ULONG()
        query = (_kernel32.GetNamedPipeServerProcessId if server
                 else _kernel32.GetNamedPipeClientProcessId)
        _check(query(wintypes.HANDLE(handle), ctypes.byref(pid)))
        return process_user_sid(pid.value)

    def _win32_open(name: str) -> PipeStream:
        handle = _winapi.CreateFile(name, _winapi.GENERIC_READ | _winapi.GENERIC_WRITE, 0,
                                    _winapi.NULL, _winapi.OPEN_EXISTING, 0, _winapi.NULL)
        try:
            if _other_end_sid(handle, server=True) != current_user_sid():
                raise PeerRefused(f"{name} is served by a process of another user")
        except BaseException:
            _winapi.CloseHandle(handle)
            raise

        def read(n: int) -> bytes:
            data, _err = _winapi.ReadFile(handle, n)
            return bytes(data)

        def write(data: bytes) -> int:
            written, _err = _winapi.WriteFile(handle, data)
            return int(written)

        def cancel() -> None:
            # ends a ReadFile another thread is blocked in (the tray's event stream)
            _kernel32.CancelIoEx(wintypes.HANDLE(handle), None)

        return PipeStream(read, write, lambda: _winapi.CloseHandle(handle), cancel)

    class OwnerPipeServer(windows_events.PipeServer):  # type: ignore[misc]
        """asyncio's pipe server with our security descriptor, byte mode, local clients only.

        It reuses asyncio's private pipe-server internals (``_address``,
        ``_free_instances``, ``_get_unconnected_pipe``), as
        ``ProactorEventLoop.start_serving_pipe`` does: pinned by the CI build on Windows.
        The base class creates the first instance in its constructor, so a squatter
        already holding the name makes construction fail.
        """

        def __init__(self, address: str, sid: str) -> None:
            descriptor = ctypes.c_void_p()
            _check(_advapi32.ConvertStringSecurityDescriptorToSecurityDescriptorW(
                owner_only_sddl(sid), _SDDL_REVISION_1, ctypes.byref(descriptor), None))
            self._attributes = _SecurityAttributes(
                ctypes.sizeof(_SecurityAttributes), descriptor, False)
            super().__init__(address)

        def _server_pipe_handle(self, first: bool) -> windows_utils.PipeHandle | None:
            if self.closed():
                return None
            flags = _winapi.PIPE_ACCESS_DUPLEX | _winapi.FILE_FLAG_OVERLAPPED
            if first:
                flags |= _winapi.FILE_FLAG_FIRST_PIPE_INSTANCE  # a squatter makes this fail
            handle = _winapi.CreateNamedPipe(
                self._address, flags,
                _PIPE_TYPE_BYTE | _PIPE_READMODE_BYTE | _winapi.PIPE_WAIT
                | _PIPE_REJECT_REMOTE_CLIENTS,
                _winapi.PIPE_UNLIMITED_INSTANCES, windows_utils.BUFSIZE, windows_utils.BUFSIZE,
                _winapi.NMPWAIT_WAIT_FOREVER, ctypes.addressof(self._attributes))
            pipe = windows_utils.PipeHandle(handle)
            self._free_instances.add(pipe)
            return pipe

    class Win32PipeEndpoint:
        """The owner pipe for :class:`pacd.api.owner_listener.PipeListener`: accepts
        on the proactor loop, names each client's owner, makes asyncio's duplex pipe
        transport. Created before the databases open, so a squatter stops the start."""

        def __init__(self, sid: str) -> None:
            self.address = pipe_name(sid)
            self._sid = sid
            self._server = OwnerPipeServer(self.address, sid)

        async def accept(self) -> windows_utils.PipeHandle | None:
            loop = asyncio.get_running_loop()
            while True:
                pipe = self._server._get_unconnected_pipe()
                if pipe is None:
                    return None  # closed
                try:
                    connected = await loop._proactor.accept_pipe(pipe)  # type: ignore[attr-defined]
                except OSError:
                    pipe.close()  # the client went away before we saw it
                    if self._server.closed():
                        return None
                    continue
                self._server._free_instances.discard(connected)
                return connected  # type: ignore[no-any-return]

        def peer_sid(self, pipe: windows_utils.PipeHandle) -> str:
            return _other_end_sid(pipe.fileno(), server=False)

        def client_pid(self, pipe: windows_utils.PipeHandle) -> int:
            pid = wintypes.ULONG()
            _check(_kernel32.GetNamedPipeClientProcessId(wintypes.HANDLE(pipe.fileno()),
                                                         ctypes.byref(pid)))
            return int(pid.value)

        def attach(self, pipe: windows_utils.PipeHandle, protocol: asyncio.Protocol,
                   extra: dict[str, object]) -> None:
            loop = asyncio.get_running_loop()
            loop._make_duplex_pipe_transport(pipe, protocol, extra=extra)  # type: ignore[attr-defined]

        def discard(self, pipe: windows_utils.PipeHandle) -> None:
            pipe.close()

        def close(self) -> None:
            self._server.close()
