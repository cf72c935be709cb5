"""An older ciphertext put back into the state database is not served to the agent.

The real daemon, a real Podman container running the reference agent, the
vault keyed from the real keychain: the agent writes a value twice, the older
ciphertext is copied back over the newer one with plain SQLite while the daemon
is stopped, and the agent's next read is refused (``integrity_error``),
audited as a deny, and reported as ``state.integrity_failure``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import closing

import pytest

from pacd.config import load_config
from tests.system.agents_env import (
    Deployment,
    agent_spec,
    make_deployment,
    make_spec,
    short_base,
    wait_until,
)

__all__ = ["make_deployment", "short_base"]

pytestmark = [pytest.mark.system, pytest.mark.podman]


def test_rolled_back_ciphertext_is_refused_and_audited(
        make_deployment: Callable[..., Deployment], python_image: str) -> None:
    d = make_deployment()
    spec = make_spec("vault", [agent_spec("writer", python_image)],
                     [{"name": "personal", "category": "personal", "scope": "local",
                       "agents": ["writer"], "cross_container": "isolated"}])
    cid = str(d.create(spec)["id"])
    assert d.start(cid)["state"] == "running"
    state_db = load_config(d.daemon.env).state_db
    where = "container = ? AND concern = 'personal' AND key = 'balance'"

    code, out = d.exec_agent(cid, "writer", "put", "personal", "balance", "old: 10 EUR")
    assert code == 0, out
    with closing(sqlite3.connect(state_db)) as conn:
        old = conn.execute(f"SELECT value FROM sealed_data WHERE {where}", (cid,)).fetchone()[0]
    code, out = d.exec_agent(cid, "writer", "put", "personal", "balance", "new: 99999 EUR")
    assert code == 0, out

    assert d.daemon.stop(timeout=30) == 0
    with closing(sqlite3.connect(state_db)) as conn, conn:
        conn.execute(f"UPDATE sealed_data SET value = ? WHERE {where}", (old, cid))
    d.daemon.start()
    wait_until(lambda: d.agent_states(cid) == {"writer": "running"}, 60, "agent running")

    code, out = d.exec_agent(cid, "writer", "get", "personal", "balance")
    assert code == 1, out
    assert out["status"] == 500
    assert out["error"]["error"]["code"] == "integrity_error"
    assert "old" not in str(out)

    reads = d.audit(actor=f"agent:{cid}/writer", action="agent.data.read")
    assert [(e["decision"], e["details"].get("code")) for e in reads] == [
        ("deny", "integrity_error")]
    key = f"{cid}/personal/balance"
    wait_until(lambda: bool(d.audit(action="state.integrity_failure")), 10, "failure entry")
    failures = d.audit(action="state.integrity_failure")
    assert [e["details"] for e in failures] == [{"table": "sealed_data", "key": key}]
    assert {"table": "sealed_data", "key": key} in \
        d.daemon.client().status()["integrity_failures"]

    # A second read is refused again but reported only once per run.
    code, out = d.exec_agent(cid, "writer", "get", "personal", "balance")
    assert code == 1 and out["status"] == 500
    assert len(d.audit(action="state.integrity_failure")) == 1
