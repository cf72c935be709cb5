"""Every presence method pacd knows, whether it works here and why not (doctor, status).

It sits above the verifiers (:mod:`pacd.presence.verifiers` is their shared
interface): it asks each one, none of them imports it.
"""

from __future__ import annotations

import sys
from collections.abc import Collection
from dataclasses import replace

from pacd.presence.verifiers import Availability


def fido2_usb_availability() -> Availability:
    from pacd.presence.usb_keys import hidraw_diagnosis, list_authenticators

    name = "FIDO2 security key (USB)"
    if sys.platform == "win32":
        return Availability(False, "on Windows keys are reached through Windows Hello's"
                            " WebAuthn API (see that entry)", name)
    devices = list_authenticators()
    if devices:
        return Availability(True, f"{len(devices)} key(s) connected", name)
    if sys.platform.startswith("linux"):
        return Availability(False, hidraw_diagnosis(), name)
    return Availability(False, "no security key connected; plug one in", name)


def presence_methods_report(fprintd_bus_address: str | None = None,
                            platform_enabled: Collection[str] | None = None,
                            ) -> list[Availability]:
    """Every presence method pacd knows, whether it works here, and why not.

    With ``platform_enabled`` (the config's ``platform_presence``) the methods
    the daemon runs itself also say whether the owner enabled them for sessions.
    """
    from pacd.presence.fprintd import FprintdVerifier
    from pacd.presence.macos import TouchIdVerifier
    from pacd.presence.windows import windows_hello_availability

    report = [fido2_usb_availability()]
    if sys.platform.startswith("linux"):
        report.append(FprintdVerifier(bus_address=fprintd_bus_address).availability())
    else:
        report.append(Availability(False, "fprintd is Linux only", FprintdVerifier.name))
    if platform_enabled is not None:
        report[-1] = _with_enablement(report[-1], platform_enabled)
    touchid = TouchIdVerifier.probe()
    report.append(touchid if platform_enabled is None
                  else _with_enablement(touchid, platform_enabled))
    report.append(windows_hello_availability())
    return report


#: what a method the owner enabled for sessions says in its ``reason`` (status
#: ``presence_methods[].detail``); the tray offers such a method (see :func:`enabled_for_sessions`)
ENABLED_NOTE = "; enabled for sessions (pacd session --platform "


def enabled_for_sessions(detail: str) -> bool:
    """Whether a ``presence_methods`` entry's detail says the owner enabled it."""
    return ENABLED_NOTE in detail


def _with_enablement(entry: Availability, enabled: Collection[str]) -> Availability:
    if entry.name in enabled:
        note = f"{ENABLED_NOTE[2:]}{entry.name})"
    else:
        note = (f"not enabled for sessions (platform_presence = [\"{entry.name}\"] in "
                "config.toml enables it)")
    return replace(entry, reason=f"{entry.reason}; {note}")
