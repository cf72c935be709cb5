"""The audit log: read its entries, verify its chain, ask to re-anchor it."""

from __future__ import annotations

from functools import partial
from typing import Any

from pacd import messages
from pacd.api.access import AUDIT_REANCHOR
from pacd.api.resources.common import in_thread
from pacd.api.route import Call, Reply, Route
from pacd.api.services import Services
from pacd.approvals import Approval, iso
from pacd.audit import AuditHealth
from pacd.core.models import SecurityLevel
from pacd.core.rules import Action, required_level
from pacd.errors import Conflict, InvalidRequest

#: trusting a log its checkpoint no longer vouches for is a carbonProof decision;
#: asking for it is basic, so the daemon can be repaired while it refuses the rest
REANCHOR_LEVEL = SecurityLevel.carbonProof


class AuditRoutes:
    def __init__(self, services: Services) -> None:
        self.services = services

    def routes(self) -> list[Route]:
        return [
            Route("GET", "/v1/audit", "audit_entries", "audit entries in order",
                  self.audit_entries, level=required_level(Action.read_audit).value,
                  query=messages.AuditQuery, response=messages.AuditPage,
                  action="audit.read"),
            Route("POST", "/v1/audit/verify", "audit_verify", "verify the audit chain",
                  self.audit_verify, level=required_level(Action.verify_audit).value,
                  response=messages.AuditVerify, action="audit.verify"),
            Route("POST", "/v1/audit/reanchor", "reanchor_audit",
                  "ask to trust the audit log as it stands (a carbonProof approval of kind "
                  "audit.reanchor)", self.reanchor_audit,
                  level=required_level(Action.verify_audit).value,
                  response=messages.ApprovalAccepted, status=202, errors=(Conflict,),
                  action="audit.reanchor.request"),
        ]

    async def audit_entries(self, call: Call) -> messages.AuditPage:
        q: messages.AuditQuery = call.query
        after = q.after
        if q.cursor:
            if not (q.cursor.isascii() and q.cursor.isdigit()):
                raise InvalidRequest(f"cursor {q.cursor!r} is not a next_cursor this daemon "
                                     "gave")
            after = int(q.cursor)
        entries = await in_thread(self.services.audit.entries, after, q.limit)
        return messages.AuditPage(next_cursor=str(entries[-1].seq) if len(entries) == q.limit
                                  else None, entries=[
            messages.AuditEntryView(seq=e.seq, time=iso(e.time) or "", actor=e.actor,
                                    action=e.action, target=e.target,
                                    decision=e.decision,  # type: ignore[arg-type]
                                    reason=e.reason, details=e.details)
            for e in entries
        ])

    async def audit_verify(self, call: Call) -> messages.AuditVerify:
        result = await in_thread(self.services.audit.verify)
        return messages.AuditVerify(ok=result.ok, entries=result.entries,
                                    first_bad_seq=result.first_bad_seq, problem=result.problem)

    def _reanchor_body(self, health: AuditHealth) -> dict[str, Any]:
        head_seq, head_mac = self.services.audit.head()
        found = (health.untrusted.to_json() if health.untrusted is not None else
                 {"checkpoint_error": health.checkpoint_error,
                  "consecutive_failures": health.checkpoint_failures})
        return {"head_seq": head_seq, "head_mac": head_mac.hex(), "found": found}

    async def reanchor_audit(self, call: Call) -> Reply:
        health = self.services.audit.health()
        if not health.refusing:
            raise Conflict("the audit log is trusted: there is nothing to re-anchor")
        body = self._reanchor_body(health)
        summary = (f"re-anchor the audit log at entry {body['head_seq']} after: "
                   f"{health.reason()}")
        approval = await in_thread(
            partial(self.services.approvals.submit, record=call.decision,
                    process=call.process()), AUDIT_REANCHOR,
            body, call.decision.actor, summary, float(self.services.config.approval_ttl_s))
        return Reply(messages.ApprovalAccepted(approval_id=approval.id,
                                               required_level=approval.required_level.value,
                                               expires_at=iso(approval.expires_at) or ""), 202)

    def execute_audit_reanchor(self, conn: Any, approval: Approval) -> dict[str, Any]:
        """Check the log is still as the owner saw it; the checkpoint moves after the entry."""
        body = approval.body
        health = self.services.audit.health()
        if not health.refusing:
            raise Conflict("the audit log is already trusted")
        current = self._reanchor_body(health)
        seq = int(body["head_seq"])
        # Entries appended since the request are fine (the log keeps recording);
        # a different finding, or the entry the owner saw no longer there, is not.
        if current["found"] != body["found"] or not any(
                e.seq == seq and e.mac.hex() == body["head_mac"]
                for e in self.services.audit.entries(seq - 1, 1)):
            raise Conflict("the audit log changed since this re-anchor was requested; "
                           "request a new one")
        return {"anchored_from_seq": seq, "found": body["found"]}

    def anchor_after_entry(self, entry: Any) -> None:
        self.services.audit.reanchor(int(entry.seq))
