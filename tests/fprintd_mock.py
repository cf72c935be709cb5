"""A D-Bus mock of fprintd on a private bus (the machine has no fingerprint reader).

``PrivateBus`` runs a real ``dbus-daemon`` for the test; ``FprintdMock``
serves ``net.reactivated.Fprint`` on it with dbus-fast (Manager and one
Device) and a scriptable outcome, so pacd's real jeepney client code talks real
D-Bus to something that behaves like fprintd:

- ``outcome``: ``"match"``, ``"no-match"``, ``"retry-then-match"``,
  ``"silent"`` (never answers: the caller must time out) or
  ``"disconnected"``;
- ``busy``: Claim fails with ``net.reactivated.Fprint.Error.AlreadyInUse``;
- ``enrolled``: the fingers ListEnrolledFingers reports;
- ``calls``: every method called, in order (tests check Release happened);
- ``emit()``: sends a ``VerifyStatus`` signal as fprintd, whenever a test says.
"""

import asyncio
import shutil
import subprocess
import threading
from collections.abc import Iterator
from typing import Annotated

import pytest
from dbus_fast import BusType, DBusError
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusObjectPath, DBusSignature, DBusStr
from dbus_fast.service import ServiceInterface, dbus_method, dbus_signal

from tests.conftest import require_system

BUS_NAME = "net.reactivated.Fprint"
MANAGER_PATH = "/net/reactivated/Fprint/Manager"
DEVICE_PATH = "/net/reactivated/Fprint/Device/0"
ERR = "net.reactivated.Fprint.Error."

StrList = Annotated[list[str], DBusSignature("as")]
PathList = Annotated[list[str], DBusSignature("ao")]
VerifyStatusArgs = Annotated[tuple[str, bool], DBusSignature("sb")]


class PrivateBus:
    """A throwaway ``dbus-daemon --session`` (its own socket, its own policy)."""

    def __init__(self) -> None:
        if shutil.which("dbus-daemon") is None:
            raise FileNotFoundError("dbus-daemon")
        self.proc = subprocess.Popen(
            ["dbus-daemon", "--session", "--nofork", "--print-address=1"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.address = self.proc.stdout.readline().strip()
        if not self.address:
            self.close()
            raise RuntimeError("dbus-daemon did not print an address")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


class _Device(ServiceInterface):
    def __init__(self, mock: "FprintdMock") -> None:
        super().__init__("net.reactivated.Fprint.Device")
        self.mock = mock
        self.claimed = False

    @dbus_method()
    def Claim(self, username: DBusStr) -> None:
        self.mock.calls.append("Claim")
        if self.mock.busy or self.claimed:
            raise DBusError(ERR + "AlreadyInUse", "Device was already claimed")
        self.claimed = True

    @dbus_method()
    def Release(self) -> None:
        self.mock.calls.append("Release")
        if not self.claimed:
            raise DBusError(ERR + "ClaimDevice", "Device was not claimed before use")
        self.claimed = False

    @dbus_method()
    def ListEnrolledFingers(self, username: DBusStr) -> StrList:
        self.mock.calls.append("ListEnrolledFingers")
        if not self.mock.enrolled:
            raise DBusError(ERR + "NoEnrolledPrints", "Failed to discover prints")
        return list(self.mock.enrolled)

    @dbus_method()
    def VerifyStart(self, finger_name: DBusStr) -> None:
        self.mock.calls.append(f"VerifyStart:{finger_name}")
        if not self.claimed:
            raise DBusError(ERR + "ClaimDevice", "Device was not claimed before use")
        script = {
            "match": [("verify-match", True)],
            "no-match": [("verify-no-match", True)],
            "retry-then-match": [("verify-retry-scan", False), ("verify-match", True)],
            "disconnected": [("verify-disconnected", True)],
            "silent": [],
        }[self.mock.outcome]
        loop = asyncio.get_running_loop()
        for i, (result, done) in enumerate(script):
            loop.call_later(0.05 * (i + 1), self.VerifyStatus, result, done)

    @dbus_method()
    def VerifyStop(self) -> None:
        self.mock.calls.append("VerifyStop")

    @dbus_signal()
    def VerifyStatus(self, result: str, done: bool) -> VerifyStatusArgs:
        return (result, done)


class _Manager(ServiceInterface):
    def __init__(self, mock: "FprintdMock") -> None:
        super().__init__("net.reactivated.Fprint.Manager")
        self.mock = mock

    @dbus_method()
    def GetDefaultDevice(self) -> DBusObjectPath:
        self.mock.calls.append("GetDefaultDevice")
        if not self.mock.has_reader:
            raise DBusError(ERR + "NoSuchDevice", "No devices available")
        return DEVICE_PATH

    @dbus_method()
    def GetDevices(self) -> PathList:
        return [DEVICE_PATH] if self.mock.has_reader else []


class FprintdMock:
    def __init__(self, bus_address: str) -> None:
        self.bus_address = bus_address
        self.outcome = "match"
        self.busy = False
        self.has_reader = True
        self.enrolled: list[str] = ["right-index-finger"]
        self.calls: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fprintd-mock", daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise RuntimeError(f"fprintd mock did not start: {self._error!r}")

    @property
    def device_claimed(self) -> bool:
        return self._device.claimed

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        try:
            bus = await MessageBus(bus_address=self.bus_address, bus_type=BusType.SESSION).connect()
            self._device = _Device(self)
            bus.export(MANAGER_PATH, _Manager(self))
            bus.export(DEVICE_PATH, self._device)
            await bus.request_name(BUS_NAME)
            self._stop = asyncio.Event()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            raise
        self._ready.set()
        await self._stop.wait()
        bus.disconnect()

    def emit(self, result: str, done: bool) -> None:
        """Send a ``VerifyStatus`` signal from fprintd's own connection, now."""
        sent = asyncio.run_coroutine_threadsafe(self._emit(result, done), self._loop)
        sent.result(5)

    async def _emit(self, result: str, done: bool) -> None:
        self._device.VerifyStatus(result, done)

    def close(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)


# --- fixtures: a private bus with the mock on it, for any test module -------


@pytest.fixture
def bus() -> Iterator[PrivateBus]:
    if shutil.which("dbus-daemon") is None:
        require_system("dbus-daemon (apt install dbus)")
    private = PrivateBus()
    yield private
    private.close()


@pytest.fixture
def fprintd(bus: PrivateBus) -> Iterator[FprintdMock]:
    mock = FprintdMock(bus.address)
    yield mock
    mock.close()
