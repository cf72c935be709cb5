"""Which FIDO2 security keys are plugged in over USB, and why none is found (Linux).

Apart from :mod:`pacd.presence.client` (the ceremony) because the daemon asks
this at every start, for the presence methods its status reports: listing
keys needs python-fido2's HID transport only (about 4 ms to import), while the
ceremony's client pulls in fido2's WebAuthn client, attestation formats and
cryptography's X.509 (about 130 ms and several MB the daemon never uses).
"""

from __future__ import annotations

import glob
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fido2.ctap import CtapDevice

UDEV_HINT = (
    "on Linux your login session needs access to /dev/hidraw*: install the FIDO udev"
    " rules (Debian/Ubuntu: apt install libfido2-1; Fedora: dnf install libfido2),"
    " then unplug and replug the key"
)


def list_authenticators() -> list[CtapDevice]:
    """FIDO2 keys reachable over USB HID (empty when none, or none readable)."""
    from fido2.hid import CtapHidDevice

    try:
        return list(CtapHidDevice.list_devices())
    except OSError:
        return []


def hidraw_diagnosis() -> str:
    """Why no key was found, as far as this process can tell (Linux)."""
    nodes = sorted(glob.glob("/dev/hidraw*"))
    if not nodes:
        return "no USB HID device present; plug in a security key"
    unreadable = [n for n in nodes if not os.access(n, os.R_OK | os.W_OK)]
    if unreadable:
        return f"{len(unreadable)} HID device(s) not accessible to you; {UDEV_HINT}"
    return "no FIDO2 security key among the HID devices present; plug one in"
