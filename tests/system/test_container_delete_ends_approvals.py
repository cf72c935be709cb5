"""Deleting a container ends what waits on it: its pending approvals are cancelled."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pacd.errors import Conflict
from tests.integration.harness import plugin, spec_with_plugins
from tests.system.agents_env import Deployment, make_deployment, short_base

__all__ = ["make_deployment", "short_base"]

pytestmark = [pytest.mark.system, pytest.mark.podman]


def test_deleting_a_container_cancels_its_pending_approvals_and_they_cannot_be_signed(
        make_deployment: Callable[..., Deployment]) -> None:
    d = make_deployment()
    authed = d.owner.authed()
    doomed = d.create(spec_with_plugins())
    kept = d.create(spec_with_plugins() | {"name": "kept"})
    ask = {"agent": "writer", "schema": plugin("text-formatter")}
    orphaned = authed.request("POST", f"/v1/containers/{doomed['id']}/plugins", ask)
    other = authed.request("POST", f"/v1/containers/{kept['id']}/plugins", ask)
    signed = d.owner.sign_approval(orphaned["approval_id"])
    assert d.daemon.client().status()["pending_approvals"] == 2

    authed.request("DELETE", f"/v1/containers/{doomed['id']}")
    client = d.daemon.client()
    ended = client.request("GET", f"/v1/approvals/{orphaned['approval_id']}")
    assert (ended["state"], ended["reason"], ended["publicKey"]) == (
        "expired", "container deleted", None)
    assert client.request("GET", f"/v1/approvals/{other['approval_id']}")["state"] == "pending"
    assert client.status()["pending_approvals"] == 1
    with pytest.raises(Conflict):
        client.request("POST", f"/v1/approvals/{orphaned['approval_id']}/approve",
                       {"credential": signed})
    # The CLI will not offer a ceremony for it either.
    offered = d.daemon.cli("approve", orphaned["approval_id"])
    assert offered.returncode == 2, offered.stderr
    assert f"approval {orphaned['approval_id']} is expired, not pending" in offered.stderr
    cancels = [(e["action"], e["decision"], e["details"]["container_id"])
               for e in d.audit(target=orphaned["approval_id"])
               if e["action"].endswith(".cancel")]
    assert cancels == [("approval.plugin.install.cancel", "deny", doomed["id"])]
