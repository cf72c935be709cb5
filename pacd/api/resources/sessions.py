"""Sessions: begin and complete a WebAuthn ceremony, open one by fprintd, show the current one."""

from __future__ import annotations

from typing import Any, cast

from pacd import messages
from pacd.api.peercred import client_label
from pacd.api.resources.common import in_thread
from pacd.api.resources.platform import PlatformSessions
from pacd.api.route import WRITTEN, Call, Route
from pacd.api.services import Services
from pacd.approvals import iso
from pacd.core.models import SecurityLevel
from pacd.errors import InvalidRequest, NotFound, PacdError, PresenceFailed
from pacd.presence.evidence import VerifiedPresence


class SessionRoutes:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.platform = PlatformSessions(services)

    def routes(self) -> list[Route]:
        return [
            Route("POST", "/v1/sessions/begin", "begin_session",
                  "request options for an enhanced or biometric session", self.begin_session,
                  request=messages.SessionBegin, response=messages.SessionOptions,
                  errors=(NotFound,), action="session.begin"),
            Route("POST", "/v1/sessions/complete", "complete_session",
                  "verify the assertion and issue a token", self.complete_session,
                  request=messages.SessionComplete, response=messages.SessionToken,
                  errors=(PresenceFailed, InvalidRequest), action="session.create"),
            self.platform.route(),
            Route("GET", "/v1/sessions/current", "current_session",
                  "the session the presented token belongs to", self.current_session,
                  # any session will do: the lowest level a token can have
                  level=SecurityLevel.enhanced.value, response=messages.SessionView,
                  action="session.current", audit=WRITTEN),
        ]

    async def begin_session(self, call: Call) -> messages.SessionOptions:
        body: messages.SessionBegin = call.body
        # keyed per client (its pid) for the bound on unfinished ceremonies
        client = client_label(call.request.transport)
        options = await in_thread(self.services.rp.begin_session, body.level, client)
        return messages.SessionOptions(session_id=str(options["session_id"]),
                                       publicKey=options["publicKey"], origin=options["origin"])

    async def complete_session(self, call: Call) -> messages.SessionToken:
        body: messages.SessionComplete = call.body

        def complete() -> tuple[VerifiedPresence, Any]:
            presence = self.services.rp.complete_session(body.session_id, body.credential)
            return presence, self.services.tokens.issue(presence.level)

        try:
            presence, issued = await in_thread(complete)
        except PacdError as exc:
            await call.decision.record("session.create", "", "deny", exc.message,
                                       {"code": exc.code})
            raise
        await call.decision.record("session.create", issued.token_id, "allow",
                                   f"{presence.level.value} session opened",
                                   {"credential_id": presence.credential_id.hex(),
                                    "user_verified": presence.user_verified,
                                    "software": presence.software})
        return messages.SessionToken(token=issued.token, level=issued.level.value,
                                     expires_at=iso(issued.expires_at) or "")

    async def current_session(self, call: Call) -> messages.SessionView:
        principal = call.principal
        return messages.SessionView(token_id=principal.token_id or "",
                                    level=cast(messages.Level, principal.level),
                                    scope=principal.scope or "",
                                    expires_at=iso(principal.expires_at) or "")
