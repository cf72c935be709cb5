"""Approvals: list and show them, approve one with an assertion, deny one.

Approving and denying write their entries through the request's decision
(:mod:`pacd.approvals` is handed ``call.decision``): the approval's entry is
the request's entry.
"""

from __future__ import annotations

from functools import partial
from typing import Any, cast

from pacd import messages
from pacd.api.resources.common import in_thread
from pacd.api.route import WRITTEN, Call, Route
from pacd.api.services import Services
from pacd.approvals import Approval, b64url, iso
from pacd.core.models import SecurityLevel
from pacd.core.rules import Action, required_level
from pacd.errors import AuditError, Conflict, Forbidden, NotFound, PresenceFailed
from pacd.plugins.api import PLUGIN_INSTALL, start_approved_plugin


class ApprovalRoutes:
    def __init__(self, services: Services) -> None:
        self.services = services

    def routes(self) -> list[Route]:
        return [
            Route("GET", "/v1/approvals", "list_approvals", "pending and recent approvals",
                  self.list_approvals, level=required_level(Action.list_approvals).value,
                  query=messages.ApprovalQuery, response=messages.ApprovalList,
                  action="approval.list", audit=WRITTEN),
            Route("GET", "/v1/approvals/{id}", "show_approval",
                  "the canonical payload and request options over its digest",
                  self.show_approval, level=required_level(Action.list_approvals).value,
                  response=messages.ApprovalDetail, errors=(NotFound,),
                  # durable: handing out its options starts the carbonProof clock
                  action="approval.show"),
            Route("POST", "/v1/approvals/{id}/approve", "approve",
                  "approve with an assertion over the approval's challenge", self.approve,
                  request=messages.Approve, response=messages.ApprovalResolved,
                  errors=(NotFound, Conflict, PresenceFailed, Forbidden, AuditError),
                  action="approval.approve"),
            Route("POST", "/v1/approvals/{id}/deny", "deny", "deny a pending approval",
                  self.deny, level=required_level(Action.deny_approval).value,
                  request=messages.Deny, response=messages.ApprovalResolved,
                  errors=(NotFound, Conflict), action="approval.deny"),
        ]

    @staticmethod
    def _approval_view(a: Approval) -> messages.ApprovalView:
        return messages.ApprovalView(
            id=a.id, kind=a.kind, state=cast(messages.ApprovalState, a.state),
            required_level=a.required_level.value,
            summary=a.summary, requester=a.requester, created_at=iso(a.created_at) or "",
            expires_at=iso(a.expires_at) or "", resolved_at=iso(a.resolved_at),
            reason=a.reason, requester_pid=a.requester_pid, requester_exe=a.requester_exe)

    async def list_approvals(self, call: Call) -> messages.ApprovalList:
        q: messages.ApprovalQuery = call.query
        items, next_cursor = await in_thread(self.services.approvals.page, q.limit, q.cursor)
        return messages.ApprovalList(approvals=[self._approval_view(a) for a in items],
                                     next_cursor=next_cursor)

    async def show_approval(self, call: Call) -> messages.ApprovalDetail:
        def detail() -> messages.ApprovalDetail:
            a = self.services.approvals.get(call.params["id"])
            options: dict[str, Any] | None = None
            origin = self.services.config.origin
            if a.state == "pending":
                try:
                    opts = self.services.rp.request_options_for_challenge(
                        a.challenge, a.required_level.satisfies(SecurityLevel.biometric))
                    options, origin = opts["publicKey"], str(opts["origin"])
                except NotFound:
                    options = None  # nothing enrolled: the approval cannot be signed yet
            v = self._approval_view(a)
            return messages.ApprovalDetail(**{**v.__dict__, "payload": a.payload,
                                              "challenge": b64url(a.challenge),
                                              "publicKey": options, "origin": origin})

        return await in_thread(detail)

    async def approve(self, call: Call) -> messages.ApprovalResolved:
        body: messages.Approve = call.body

        def verify(challenge: bytes, level: SecurityLevel) -> dict[str, Any]:
            presence = self.services.rp.verify_for_challenge(
                challenge, body.credential,
                require_uv=level.satisfies(SecurityLevel.biometric),
                carbon_proof=level == SecurityLevel.carbonProof)
            if not presence.level.satisfies(level):
                raise PresenceFailed(
                    f"this approval needs {level.value}; the assertion proves "
                    f"{presence.level.value}")
            return {"credential_id": presence.credential_id.hex(),
                    "user_verified": presence.user_verified, "level": presence.level.value,
                    "software": presence.software}

        done = await in_thread(
            partial(self.services.approvals.approve, record=call.decision),
            call.params["id"], verify, call.decision.actor, body.credential)
        if done.kind == PLUGIN_INSTALL and done.state == "approved":
            await start_approved_plugin(self.services, done)
        return messages.ApprovalResolved(id=done.id, state=cast(messages.ApprovalState, done.state),
                                         result=done.result)

    async def deny(self, call: Call) -> messages.ApprovalResolved:
        body: messages.Deny = call.body
        done = await in_thread(partial(self.services.approvals.deny, record=call.decision),
                               call.params["id"], body.reason, call.decision.actor)
        return messages.ApprovalResolved(id=done.id,
                                         state=cast(messages.ApprovalState, done.state),
                                         result=None)
