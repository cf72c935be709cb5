"""The audit log's health as the API tells it: status view, refusal extras, events."""

from __future__ import annotations

from typing import Any

from pacd import messages
from pacd.audit import AuditHealth


def untrusted_extra(health: AuditHealth) -> dict[str, Any]:
    if health.untrusted is not None:
        return {"first_bad_seq": health.untrusted.first_bad_seq}
    return {"checkpoint_failures": health.checkpoint_failures}


def health_view(health: AuditHealth) -> messages.AuditHealthView:
    return messages.AuditHealthView(
        trusted=not health.refusing, head_seq=health.head_seq,
        checkpoint_seq=health.checkpoint_seq, checkpoint_age_s=health.checkpoint_age_s,
        untrusted=None if health.untrusted is None else messages.AuditUntrustedView(
            first_bad_seq=health.untrusted.first_bad_seq, found=health.untrusted.found),
        checkpoint_error=None if health.checkpoint_error is None else
        messages.AuditCheckpointErrorView(message=health.checkpoint_error,
                                          count=health.checkpoint_failures))


def audit_event(health: AuditHealth, when: str | None = None) -> dict[str, Any]:
    """The event telling subscribers the log refuses (``audit.untrusted``) or why not."""
    event: dict[str, Any] = {"type": "audit.untrusted" if health.refusing else "audit.trusted"}
    if when is not None:
        event["time"] = when
    if health.untrusted is not None:
        event |= {"first_bad_seq": health.untrusted.first_bad_seq,
                  "found": health.untrusted.found}
    if health.checkpoint_error is not None:
        event |= {"checkpoint_error": health.checkpoint_error,
                  "count": health.checkpoint_failures}
    return event
