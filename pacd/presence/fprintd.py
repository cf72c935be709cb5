"""Linux fingerprint verification through fprintd, over the system D-Bus.

The daemon itself asks fprintd (``net.reactivated.Fprint``) to verify the
owner: claim the default reader, start a verification, wait for the
``VerifyStatus`` signal, then always stop and release the reader. pacd never
sees fingerprint data — fprintd answers only "match" or not.

Only signals sent by the current owner of ``net.reactivated.Fprint`` are
believed: on the system bus only the fprintd service may own that name, while
any local process could emit a signal that merely *looks* like its
``VerifyStatus``. A fingerprint match signs nothing, so this evidence reaches
the biometric level but can never be a carbonProof for a particular action.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from jeepney import DBusAddress, MatchRule, new_method_call
from jeepney.bus_messages import message_bus
from jeepney.io.blocking import DBusConnection, open_dbus_connection
from jeepney.wrappers import DBusErrorResponse, unwrap_msg

from pacd.core.models import SecurityLevel
from pacd.errors import CeremonyTimeout, PresenceFailed, PresenceUnavailable
from pacd.presence.evidence import VerifiedPresence
from pacd.presence.verifiers import Availability

BUS_NAME = "net.reactivated.Fprint"
MANAGER_PATH = "/net/reactivated/Fprint/Manager"
MANAGER_IFACE = "net.reactivated.Fprint.Manager"
DEVICE_IFACE = "net.reactivated.Fprint.Device"
ERROR_PREFIX = "net.reactivated.Fprint.Error."

# Results after which fprintd wants another scan (it keeps verifying unless done).
_RETRY = {
    "verify-retry-scan": "scan again",
    "verify-swipe-too-short": "swipe was too short",
    "verify-finger-not-centered": "finger was not centred",
    "verify-remove-and-retry": "remove the finger and try again",
}


class FprintdVerifier:
    name = "fprintd"

    def __init__(
        self,
        bus_address: str | None = None,
        username: str = "",
        call_timeout_s: float = 5.0,
    ) -> None:
        #: None: the system bus; otherwise a D-Bus address (tests use a private bus)
        self.bus_address = bus_address
        #: "" means the user the daemon runs as (fprintd resolves it from the caller)
        self.username = username
        self.call_timeout_s = call_timeout_s

    # --- availability -------------------------------------------------------

    def availability(self) -> Availability:
        try:
            conn = self._connect()
        except PresenceUnavailable as exc:
            return Availability(False, exc.message, self.name)
        try:
            if not self._name_present(conn):
                return Availability(
                    False,
                    f"{BUS_NAME} not on the system bus: install fprintd"
                    " (Debian/Ubuntu: apt install fprintd)",
                    self.name,
                )
            try:
                device = self._default_device(conn)
                fingers = self._call(conn, device, DEVICE_IFACE, "ListEnrolledFingers", "s",
                                     (self.username,))
            except PresenceUnavailable as exc:
                return Availability(False, exc.message, self.name)
            except DBusErrorResponse as exc:
                if _error(exc) == "NoEnrolledPrints":
                    fingers = ([],)
                else:
                    return Availability(False, f"fprintd: {_describe(exc)}", self.name)
            if not fingers[0]:
                return Availability(
                    False, "no fingerprint enrolled for you: run fprintd-enroll", self.name
                )
            return Availability(
                True, f"fingerprint reader ready, {len(fingers[0])} finger(s) enrolled", self.name
            )
        finally:
            conn.close()

    # --- verification -------------------------------------------------------

    def verify(self, challenge: bytes, timeout_s: float) -> VerifiedPresence:
        if timeout_s <= 0:
            raise ValueError("timeout must be positive")
        deadline = time.monotonic() + timeout_s
        conn = self._connect()
        claimed = started = False
        try:
            if not self._name_present(conn):
                raise PresenceUnavailable(f"{BUS_NAME} not on the system bus: install fprintd")
            owner = self._name_owner(conn)
            device = self._default_device(conn)
            rule = MatchRule(type="signal", sender=owner, interface=DEVICE_IFACE,
                             member="VerifyStatus", path=device)
            with conn.filter(rule, bufsize=16) as queue:
                unwrap_msg(conn.send_and_get_reply(message_bus.AddMatch(rule),
                                                   timeout=self.call_timeout_s))
                self._device_call(conn, device, "Claim", "s", (self.username,))
                claimed = True
                self._device_call(conn, device, "VerifyStart", "s", ("any",))
                started = True
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise CeremonyTimeout("no finger on the reader in time")
                    try:
                        msg = conn.recv_until_filtered(queue, timeout=remaining)
                    except TimeoutError as exc:
                        raise CeremonyTimeout("no finger on the reader in time") from exc
                    result, done = str(msg.body[0]), bool(msg.body[1])
                    if result == "verify-match":
                        return VerifiedPresence(
                            level=SecurityLevel.biometric,
                            credential_id=b"",
                            user_present=True,
                            user_verified=True,
                            method="fprintd",
                        )
                    if result == "verify-no-match":
                        raise PresenceFailed("fingerprint did not match")
                    if result == "verify-disconnected":
                        raise PresenceUnavailable("the fingerprint reader was disconnected")
                    if result in _RETRY and not done:
                        continue
                    raise PresenceFailed(
                        f"fingerprint not verified: {_RETRY.get(result, result)}"
                    )
        finally:
            if started:
                self._quietly(conn, device, "VerifyStop")
            if claimed:
                self._quietly(conn, device, "Release")
            conn.close()

    # --- D-Bus plumbing -----------------------------------------------------

    def _connect(self) -> DBusConnection:
        try:
            return open_dbus_connection(bus=self.bus_address or "SYSTEM")
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            where = self.bus_address or "the system D-Bus"
            raise PresenceUnavailable(
                f"fprintd: {where} is not running here, so {BUS_NAME} is not on it"
            ) from exc
        except (OSError, TimeoutError, KeyError, ValueError) as exc:
            where = self.bus_address or "the system bus"
            raise PresenceUnavailable(f"fprintd: cannot connect to {where}: {exc}") from exc

    def _name_present(self, conn: DBusConnection) -> bool:
        owned = unwrap_msg(conn.send_and_get_reply(
            message_bus.NameHasOwner(BUS_NAME), timeout=self.call_timeout_s))[0]
        if owned:
            return True
        # fprintd normally starts on demand (D-Bus activation).
        names = unwrap_msg(conn.send_and_get_reply(
            message_bus.ListActivatableNames(), timeout=self.call_timeout_s))[0]
        return BUS_NAME in names

    def _name_owner(self, conn: DBusConnection) -> str:
        owned = unwrap_msg(conn.send_and_get_reply(
            message_bus.NameHasOwner(BUS_NAME), timeout=self.call_timeout_s))[0]
        if not owned:
            # Not running yet: start it now (D-Bus activation) so it has an owner to trust.
            unwrap_msg(conn.send_and_get_reply(
                message_bus.StartServiceByName(BUS_NAME), timeout=self.call_timeout_s))
        return str(unwrap_msg(conn.send_and_get_reply(
            message_bus.GetNameOwner(BUS_NAME), timeout=self.call_timeout_s))[0])

    def _default_device(self, conn: DBusConnection) -> str:
        try:
            return str(self._call(conn, MANAGER_PATH, MANAGER_IFACE, "GetDefaultDevice")[0])
        except DBusErrorResponse as exc:
            if _error(exc) == "NoSuchDevice":
                raise PresenceUnavailable("no fingerprint reader found") from exc
            raise PresenceUnavailable(f"fprintd: {_describe(exc)}") from exc

    def _call(  # noqa: PLR0917
        self,
        conn: DBusConnection,
        path: str,
        interface: str,
        method: str,
        signature: str | None = None,
        body: tuple[Any, ...] = (),
    ) -> tuple[Any, ...]:
        address = DBusAddress(path, bus_name=BUS_NAME, interface=interface)
        try:
            reply = conn.send_and_get_reply(
                new_method_call(address, method, signature, body), timeout=self.call_timeout_s
            )
        except TimeoutError as exc:
            raise PresenceUnavailable(f"fprintd did not answer {method}") from exc
        return tuple(unwrap_msg(reply))

    def _device_call(
        self, conn: DBusConnection, device: str, method: str, signature: str,
        body: tuple[Any, ...],
    ) -> None:
        try:
            self._call(conn, device, DEVICE_IFACE, method, signature, body)
        except DBusErrorResponse as exc:
            name = _error(exc)
            if name == "AlreadyInUse":
                raise PresenceUnavailable(
                    "the fingerprint reader is busy (claimed by another program); try again"
                ) from exc
            if name == "PermissionDenied":
                raise PresenceUnavailable(
                    "not allowed to use the fingerprint reader (polkit refused)"
                ) from exc
            if name == "NoEnrolledPrints":
                raise PresenceUnavailable(
                    "no fingerprint enrolled for you: run fprintd-enroll"
                ) from exc
            raise PresenceUnavailable(f"fprintd refused {method}: {_describe(exc)}") from exc

    def _quietly(self, conn: DBusConnection, device: str, method: str) -> None:
        # Cleanup must not hide the real outcome; fprintd frees the device
        # itself when our connection drops, should this call fail.
        with contextlib.suppress(DBusErrorResponse, PresenceUnavailable, OSError):
            self._call(conn, device, DEVICE_IFACE, method)


def _error(exc: DBusErrorResponse) -> str:
    name = str(exc.name or "")
    return name[len(ERROR_PREFIX):] if name.startswith(ERROR_PREFIX) else name


def _describe(exc: DBusErrorResponse) -> str:
    detail = exc.data[0] if exc.data and isinstance(exc.data[0], str) else ""
    return f"{exc.name}: {detail}" if detail else str(exc.name)
