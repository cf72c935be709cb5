"""fprintd verification against a D-Bus mock of fprintd on a private bus.

Real dbus-daemon, real jeepney client code in pacd, real dbus-fast service;
only fprintd itself (and the fingerprint reader behind it) is simulated.
"""

from __future__ import annotations

import threading
import time

import pytest

from pacd.core.models import SecurityLevel
from pacd.errors import CeremonyTimeout, PresenceFailed, PresenceUnavailable
from pacd.presence.fprintd import FprintdVerifier
from pacd.presence.levels import level_for
from pacd.presence.report import presence_methods_report
from tests.fprintd_mock import FprintdMock, PrivateBus, bus, fprintd

__all__ = ["bus", "fprintd"]  # the shared fixtures this module uses

pytestmark = pytest.mark.system


def test_match_gives_biometric_and_releases_the_reader(fprintd: FprintdMock) -> None:
    verifier = FprintdVerifier(bus_address=fprintd.bus_address)
    verified = verifier.verify(b"\x01" * 32, timeout_s=5)
    assert verified.level == SecurityLevel.biometric
    assert verified.method == "fprintd"
    assert level_for(verified) == SecurityLevel.biometric
    assert fprintd.calls[-3:] == ["VerifyStart:any", "VerifyStop", "Release"]
    assert not fprintd.device_claimed


def test_retry_scan_then_match(fprintd: FprintdMock) -> None:
    fprintd.outcome = "retry-then-match"
    verified = FprintdVerifier(bus_address=fprintd.bus_address).verify(b"\x02" * 32, 5)
    assert verified.user_verified


def test_no_match_is_refused_and_reader_released(fprintd: FprintdMock) -> None:
    fprintd.outcome = "no-match"
    with pytest.raises(PresenceFailed, match="did not match"):
        FprintdVerifier(bus_address=fprintd.bus_address).verify(b"\x03" * 32, 5)
    assert fprintd.calls[-2:] == ["VerifyStop", "Release"]
    assert not fprintd.device_claimed


def test_busy_reader_is_a_clear_error(fprintd: FprintdMock) -> None:
    fprintd.busy = True
    with pytest.raises(PresenceUnavailable, match="busy"):
        FprintdVerifier(bus_address=fprintd.bus_address).verify(b"\x04" * 32, 5)
    assert "VerifyStart:any" not in fprintd.calls
    assert "Release" not in fprintd.calls  # never claimed, nothing to release


def test_silent_reader_times_out_and_is_released(fprintd: FprintdMock) -> None:
    fprintd.outcome = "silent"
    started = time.monotonic()
    with pytest.raises(CeremonyTimeout):
        FprintdVerifier(bus_address=fprintd.bus_address).verify(b"\x05" * 32, timeout_s=0.5)
    assert time.monotonic() - started < 5
    assert fprintd.calls[-2:] == ["VerifyStop", "Release"]
    assert not fprintd.device_claimed


def test_disconnected_reader(fprintd: FprintdMock) -> None:
    fprintd.outcome = "disconnected"
    with pytest.raises(PresenceUnavailable, match="disconnected"):
        FprintdVerifier(bus_address=fprintd.bus_address).verify(b"\x06" * 32, 5)


def test_availability_explains_itself(fprintd: FprintdMock) -> None:
    verifier = FprintdVerifier(bus_address=fprintd.bus_address)
    ok = verifier.availability()
    assert ok.available and "1 finger" in ok.reason
    fprintd.enrolled = []
    none_enrolled = verifier.availability()
    assert not none_enrolled.available and "fprintd-enroll" in none_enrolled.reason
    fprintd.has_reader = False
    no_reader = verifier.availability()
    assert not no_reader.available and "no fingerprint reader" in no_reader.reason


def test_fprintd_missing_from_bus(bus: PrivateBus) -> None:
    verifier = FprintdVerifier(bus_address=bus.address)
    found = verifier.availability()
    assert not found.available
    assert "net.reactivated.Fprint not on the system bus" in found.reason
    with pytest.raises(PresenceUnavailable):
        verifier.verify(b"\x07" * 32, 1)


def test_spoofed_signal_from_another_client_is_ignored(fprintd: FprintdMock) -> None:
    """Anyone on the bus can emit a VerifyStatus-looking signal; only fprintd counts.

    Once the verifier has started verifying (so its match rule is in place), an
    attacker's "verify-match" goes first, then fprintd's own "verify-no-match":
    the verifier must act on fprintd's answer (the positive control that signals
    do reach it in this setup) and never on the attacker's."""
    from jeepney import new_signal
    from jeepney.bus_messages import message_bus
    from jeepney.io.blocking import open_dbus_connection
    from jeepney.wrappers import DBusAddress

    fprintd.outcome = "silent"
    attacker = open_dbus_connection(bus=fprintd.bus_address)
    errors: list[BaseException] = []

    def spoof_then_answer() -> None:
        try:
            deadline = time.monotonic() + 10
            while "VerifyStart:any" not in fprintd.calls and time.monotonic() < deadline:
                time.sleep(0.02)
            assert "VerifyStart:any" in fprintd.calls, fprintd.calls
            addr = DBusAddress("/net/reactivated/Fprint/Device/0",
                               interface="net.reactivated.Fprint.Device")
            attacker.send(new_signal(addr, "VerifyStatus", "sb", ("verify-match", True)))
            # A round trip through the bus: the spoof has been routed before fprintd speaks.
            attacker.send_and_get_reply(message_bus.GetId(), timeout=5)
            fprintd.emit("verify-no-match", True)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=spoof_then_answer)
    thread.start()
    try:
        with pytest.raises(PresenceFailed, match="did not match"):
            FprintdVerifier(bus_address=fprintd.bus_address).verify(b"\x08" * 32, 10.0)
    finally:
        thread.join()
        attacker.close()
    assert not errors
    assert fprintd.calls[-2:] == ["VerifyStop", "Release"]


def test_doctor_report_names_every_method(fprintd: FprintdMock) -> None:
    report = presence_methods_report(fprintd_bus_address=fprintd.bus_address)
    names = [a.name for a in report]
    assert names == ["FIDO2 security key (USB)", "fprintd", "touchid", "windows-hello"]
    by_name = {a.name: a for a in report}
    assert by_name["fprintd"].available
    assert not by_name["touchid"].available and by_name["touchid"].reason == "Touch ID: not macOS"
    assert not by_name["windows-hello"].available
    for entry in report:
        assert entry.reason
