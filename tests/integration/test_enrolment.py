"""Enrolling presence credentials through the real daemon: who may add a key, and when.

A registration begun while the owner had no key was authorised by nothing but
that emptiness; it must not turn into a second key once the owner has one.
"""

from __future__ import annotations

import pytest

from pacd.errors import PacdError
from pacd.presence.client import register
from tests.integration.harness import DaemonProcess, Owner, Silent
from tests.softauthn import SoftAuthenticator


def _credential_ids(daemon: DaemonProcess) -> int:
    return int(daemon.client().status()["owner"]["credentials"])


def test_a_registration_begun_before_the_first_key_cannot_add_a_second(
        daemon: DaemonProcess) -> None:
    owner = Owner(daemon)
    owner.init()
    c = daemon.client()
    # Another process of the owner's uid begins while nothing is enrolled...
    early = c.request("POST", "/v1/owner/credentials/begin", {"label": "intruder"})
    # ...the owner enrols key A fully...
    owner.enroll("key A")
    assert _credential_ids(daemon) == 1
    # ...and the early registration, completed with a key of its own, is refused.
    intruder = SoftAuthenticator()
    credential = register(early["publicKey"], early["origin"], Silent(), device=intruder)
    with pytest.raises(PacdError) as refused:
        c.request("POST", "/v1/owner/credentials/complete",
                  {"credential": credential, "registration_id": early["registration_id"]})
    # Enrolling key A dropped every registration begun without a session: the early
    # one is unknown by now.
    assert (refused.value.status, refused.value.code) == (403, "presence_failed")
    assert "unknown, used or expired registration" in refused.value.message
    assert _credential_ids(daemon) == 1
    enrolments = [(e["decision"], e["target"]) for e in daemon.audit()
                  if e["action"] == "credential.enroll"]
    assert [d for d, _ in enrolments] == ["allow", "deny"]
    assert enrolments[1][1] == early["registration_id"]


def test_a_second_key_is_enrolled_once_the_first_key_approves_it(
        daemon: DaemonProcess) -> None:
    owner = Owner(daemon)
    owner.init()
    owner.enroll("key A")
    owner.session("biometric")
    queued = owner.enroll("key B", device=SoftAuthenticator())
    assert queued["required_level"] == "carbonProof"
    assert _credential_ids(daemon) == 1
    assert owner.approve(queued["approval_id"])["state"] == "approved"
    assert _credential_ids(daemon) == 2
