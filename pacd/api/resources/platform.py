"""``POST /v1/sessions/platform``: a session proven by a presence method the daemon runs.

With fprintd the daemon itself asks the machine's fingerprint reader whether
the owner is there (the person touches the reader; pacd only ever hears
"match" or not) and, on a match, issues a token exactly as
``/v1/sessions/complete`` does. Nothing is signed, so the evidence reaches the
biometric level at most (``pacd.presence.levels``): a carbonProof still needs
an assertion over the action itself.

With Touch ID (macOS) the daemon asks the owner's enrolled Secure Enclave key
to sign a fresh challenge; the Mac shows its own fingerprint prompt and the
daemon checks the signature against the enrolled credential. That signature
covers the session request, not any one action, so it too opens a biometric
session at most. Where Touch ID cannot work (not a Mac, no sensor, no enrolled
key) the route refuses with ``presence_unavailable`` and says why.

The route is closed unless an owner exists and the owner listed the method in
``platform_presence``: on a machine where anyone at the keyboard may touch the
reader, opening sessions that way must be the owner's explicit choice.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from pacd import messages
from pacd.api.route import Call, Route
from pacd.api.services import Services
from pacd.approvals import iso
from pacd.core.models import SecurityLevel
from pacd.errors import (
    AuditError,
    CeremonyError,
    CeremonyTimeout,
    Forbidden,
    InvalidRequest,
    PacdError,
    PresenceFailed,
    PresenceMethodUnavailable,
    PresenceUnavailable,
)
from pacd.presence.evidence import VerifiedPresence
from pacd.presence.fprintd import FprintdVerifier
from pacd.presence.levels import ceremony_for, level_for
from pacd.presence.verifiers import PresenceVerifier

if TYPE_CHECKING:
    from pacd.presence.macos import SecureEnclaveKey

log = logging.getLogger("pacd.api")

ACTION = "session.create"
#: each D-Bus call to fprintd (claim, start, stop, release) gets this long
CALL_TIMEOUT_S = 5.0
#: beyond the finger timeout, time for the calls around the wait; a verifier
#: still running after that is abandoned (and keeps the reader marked in use)
GRACE_S = 4 * CALL_TIMEOUT_S


def _os_user() -> str:
    """The user fprintd verifies: the one the daemon runs as (its owner).

    fprintd is Linux's, so ``pwd`` (POSIX only) is imported here, never at import
    time: the daemon imports this module on Windows too."""
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return ""  # no passwd entry: fprintd then resolves the calling user itself


class PlatformSessions:
    """Opens sessions with the daemon's own presence methods (fprintd, Touch ID)."""

    def __init__(self, services: Services,
                 touchid_key: Callable[[], SecureEnclaveKey] | None = None) -> None:
        self.services = services
        # The Secure Enclave key is where pacd meets macOS (pyobjc); it is made
        # per request, and raises PresenceUnavailable off macOS. By default
        # pacd.presence.macos's, imported by the first Touch ID request.
        self._touchid_key = touchid_key
        # One verification at a time: the reader serves one claim, and a second
        # request must not queue a touch the person is not expecting.
        self._in_use = threading.Lock()

    def route(self) -> Route:
        return Route(
            "POST", "/v1/sessions/platform", "platform_session",
            "the daemon verifies the owner with the machine's own fingerprint reader "
            "(fprintd or Touch ID; enable with platform_presence) and issues a token, "
            "biometric at most",
            self.create, request=messages.PlatformSession, response=messages.SessionToken,
            errors=(Forbidden, PresenceFailed, PresenceMethodUnavailable, InvalidRequest),
            action=ACTION)

    async def create(self, call: Call) -> messages.SessionToken:
        body: messages.PlatformSession = call.body
        try:
            await self._check_allowed(body.method)
            requested = self._requested(SecurityLevel(body.level))
            verified = await self._verify(body.method)
            level = self._grant(verified, requested)
            issued = await asyncio.to_thread(self.services.tokens.issue, level)
        except AuditError:
            raise  # there is no log to record the refusal in
        except PacdError as exc:
            await call.decision.record(ACTION, "", "deny", exc.message,
                                       {"code": exc.code, "status": exc.status,
                                        "method": body.method})
            raise
        await call.decision.record(ACTION, issued.token_id, "allow",
                                   f"{issued.level.value} session opened with {body.method}",
                                   {"method": body.method,
                                    "user_verified": verified.user_verified})
        return messages.SessionToken(token=issued.token, level=issued.level.value,
                                     expires_at=iso(issued.expires_at) or "")

    # --- the decision ---------------------------------------------------------

    async def _check_allowed(self, method: str) -> None:
        # Checked before anyone is asked to touch anything: fail closed.
        if await asyncio.to_thread(self.services.owners.get_owner) is None:
            raise Forbidden("no owner identity yet: run `pacd init --name NAME` first, then "
                            f"enable {method} with platform_presence = [\"{method}\"] in "
                            "config.toml")
        if method not in self.services.config.platform_presence:
            raise Forbidden(
                f"sessions by {method} are not enabled: add platform_presence = "
                f"[\"{method}\"] to {self.services.config.config_path} (or set "
                f"PACD_PLATFORM_PRESENCE={method}) and restart the daemon")

    @staticmethod
    def _requested(level: SecurityLevel) -> SecurityLevel:
        if ceremony_for(level).bound_to_action:
            # A session never carries carbonProof: that is one action's own assertion.
            raise InvalidRequest("carbonProof is proven per action, not by a session")
        return level

    @staticmethod
    def _grant(verified: VerifiedPresence, requested: SecurityLevel) -> SecurityLevel:
        proved = level_for(verified)  # a match signs nothing: biometric at most
        if not proved.satisfies(requested):
            raise PresenceFailed(f"{verified.method} proved {proved.value}; a "
                                 f"{requested.value} session needs more")
        return requested

    # --- the verification -----------------------------------------------------

    def verifier(self, method: str) -> PresenceVerifier:
        """The verifier for ``method``, ready to ask; PresenceMethodUnavailable
        (with the reason) when it cannot work here. May block: run in a thread."""
        if method == "touchid":
            from pacd.presence.macos import SecureEnclaveKey, TouchIdVerifier

            try:
                touchid = TouchIdVerifier(self.services.owners, self.services.clock,
                                          (self._touchid_key or SecureEnclaveKey)())
            except PresenceUnavailable as exc:
                raise PresenceMethodUnavailable(exc.message) from None
            # Checked before any prompt: a Mac without an enrolled pacd key must
            # not show a fingerprint dialog whose answer nothing can check.
            found = touchid.availability()
            if not found.available:
                raise PresenceMethodUnavailable(found.reason)
            return touchid
        return FprintdVerifier(bus_address=self.services.config.fprintd_bus_address,
                               username=_os_user(), call_timeout_s=CALL_TIMEOUT_S)

    async def _verify(self, method: str) -> VerifiedPresence:
        timeout = self.services.config.platform_presence_timeout_s
        verifier = await asyncio.to_thread(self.verifier, method)
        if not self._in_use.acquire(blocking=False):
            raise PresenceMethodUnavailable(
                "a fingerprint verification is already in progress; try again when it ends")

        def run() -> VerifiedPresence:
            try:
                # A fresh challenge per request: Touch ID signs it (checked against
                # the enrolled credential); fprintd signs nothing.
                return verifier.verify(secrets.token_bytes(32), timeout)
            finally:
                self._in_use.release()

        try:
            future = asyncio.get_running_loop().run_in_executor(None, run)
        except BaseException:
            self._in_use.release()
            raise
        try:
            # Shielded: a request that goes away must not leave the reader claimed;
            # the verifier always stops and releases it itself.
            return await asyncio.wait_for(asyncio.shield(future), timeout + GRACE_S)
        except TimeoutError:
            raise PresenceMethodUnavailable(f"{method} did not answer in time") from None
        except CeremonyTimeout:
            raise PresenceFailed(f"no finger on the reader within {timeout:g} s") from None
        except PresenceUnavailable as exc:
            raise PresenceMethodUnavailable(exc.message) from None
        except CeremonyError as exc:
            raise PresenceFailed(exc.message) from None
        except PacdError:
            raise
        except Exception as exc:
            # The bus answered something the verifier did not expect: no session.
            log.exception("%s verification failed", method)
            raise PresenceMethodUnavailable(f"{method} verification failed: {exc}") from None
