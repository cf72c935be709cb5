"""Who may call an owner-socket route: the token check, and the audit log's trust.

The route wrapper asks :meth:`OwnerAccess.authorize` for every route above
basic; a route that needs a token only sometimes (adding a key to an enrolled
owner) asks :meth:`OwnerAccess.require` itself.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from pacd.api.health import untrusted_extra
from pacd.api.route import Principal, Route
from pacd.api.services import Services
from pacd.approvals import Approval
from pacd.core.models import SecurityLevel
from pacd.errors import AuditUntrusted, PresenceRequired, TokenExpired, TokenRevoked, Unauthorized

#: the approval kind that re-anchors the audit log (the one approvable while it is untrusted)
AUDIT_REANCHOR = "audit.reanchor"


class OwnerAccess:
    def __init__(self, services: Services) -> None:
        self.services = services

    async def authorize(self, request: web.Request, route: Route) -> Principal:
        if route.level == SecurityLevel.basic.value:
            return Principal(level="basic")
        return await self.require(request, SecurityLevel(route.level), route.operation)

    async def require(self, request: web.Request, level: SecurityLevel,
                      operation: str) -> Principal:
        self.check_audit_trust()
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else None
        try:
            # On the loop when the read connection is free (an indexed read and a
            # MAC cost less than two thread hand-offs); in a thread when it is busy
            # or the token is single-use (its use is a write that may wait on a fsync).
            info = self.services.tokens.check_if_quick(token, level)
            if info is None:
                info = await asyncio.to_thread(self.services.tokens.check, token, level)
        except (Unauthorized, TokenExpired, TokenRevoked, PresenceRequired) as exc:
            # Tell the client which ceremony would help, whatever the failure; the
            # server records the refusal (with this level) as the request's entry.
            exc.extra.setdefault("required_level", level.value)
            raise
        return Principal(level=info.level.value, token_id=info.token_id, scope=info.scope,
                         expires_at=info.expires_at)

    def check_audit_trust(self) -> None:
        """Refuse anything above basic while the audit log cannot vouch for itself."""
        health = self.services.audit.health()
        if health.refusing:
            raise AuditUntrusted(
                health.reason() + "; actions above basic are refused until the owner "
                "re-anchors the log (`pacd audit reanchor`)", **untrusted_extra(health))

    def gate_approval(self, approval: Approval) -> None:
        """While the log is untrusted only its re-anchoring can be approved."""
        if approval.kind != AUDIT_REANCHOR:
            self.check_audit_trust()
