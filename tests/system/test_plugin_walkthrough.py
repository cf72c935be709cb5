"""The seed's plugin story walked end to end, in order, as a new user would: the real
daemon, real Podman, the CLI where the README uses it, the software key for presence.

The seed's Text Formatter, written field for field as the seed writes it (plus an
``id``), is submitted with the reference plugin's image, approved with a biometric
assertion, runs and answers its agent; another agent is refused, the 11th call of a
burst is rate limited, an image whose digest changed is not started, an uninstall
ends calls, and the seed's External Data Harvester is refused for every reason the
seed gives (and the others it has). The audit log is read after each step.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pacd.presence.client import authenticate
from pacd.runtime.hardening import plugin_container_name
from pacd.runtime.podman import PodmanRuntime
from tests.integration.harness import ROOT, Silent
from tests.system.agents_env import (
    AgentReply,
    AgentSocket,
    Deployment,
    _ConnectedHTTP,
    agent_request,
    agent_spec,
    make_deployment,
    short_base,
    wait_until,
)
from tests.system.test_plugin_containers import (
    FORMAT,
    PLUGIN_ID,
    _plugin_busy,
    answers_format,
    own_tag,
    plugin_socket,
    state_of,
)

__all__ = ["make_deployment", "own_tag", "short_base"]

pytestmark = [pytest.mark.system, pytest.mark.podman]

#: The seed's "Example: Safe Plugin", field for field with the seed's names, plus an id.
TEXT_FORMATTER = {
    "id": "E621E1F8-C36C-495A-93FC-0C247A3E6E5F",
    "name": "Text Formatter",
    "requiredCapabilities": ["textGeneration"],
    "endpoints": [
        {"path": "/format", "method": "POST", "requiresAuth": True,
         "rateLimit": {"requestsPerMinute": 60, "burstSize": 10}},
    ],
    "securityRequirements": {
        "carbonBasedAuthRequired": True,
        "domainIsolation": True,
        "maxDataAccess": "readOnly",
    },
}

#: The seed's "Example: Rejected Plugin", field for field.
HARVESTER = {
    "name": "External Data Harvester",
    "requiredCapabilities": ["networkAccess", "fileAccess", "databaseQuery"],
    "securityRequirements": {
        "carbonBasedAuthRequired": False,
        "domainIsolation": False,
        "maxDataAccess": "crossDomain",
    },
}

FORMATTED = {"text": "Hello Plugin World", "style": "title"}
URL = "/v1/plugins/text-formatter/format"


def pacd(d: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    """The ``pacd`` CLI against this daemon, with the owner's biometric session."""
    assert d.owner.token is not None
    return subprocess.run([sys.executable, "-m", "pacd", *args],
                          env={**d.daemon.env, "PACD_TOKEN": d.owner.token}, cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)


def post(target: AgentSocket, body: bytes = FORMAT, timeout: float = 30) -> AgentReply:
    return agent_request(target, "POST", URL, body, timeout=timeout,
                         headers={"Content-Type": "application/json"})


def burst(d: Deployment, cid: str, agent: str
          ) -> tuple[list[AgentReply], list[AgentReply], AgentReply]:
    """The endpoint's burst of ten calls made at once, then calls one by one until one
    is refused: the ten replies, those answered after them, and the refusal.

    The bucket refills one call a second, so a burst that took longer than that
    (a loaded machine) has one answered call more per second it took: the calls
    past the ten are returned with how long the whole took, and the caller checks
    them against it (none when it took under a second).

    The ten go two after another on each of five connections made beforehand
    (the agent's own process holds one of the ten its policy allows), all five
    sent together, so the whole burst takes far less than the second in which the
    bucket refills one call.
    """
    agent_socket = d.agent(cid, agent)
    connections = [agent_socket.connect() for _ in range(5)]
    replies: list[list[AgentReply]] = [[] for _ in connections]
    go = threading.Barrier(len(connections) + 1)

    def send(i: int) -> None:
        conn = _ConnectedHTTP(lambda: connections[i], 30)
        go.wait()
        try:
            for _ in range(2):  # on the same connection (HTTP keep-alive)
                conn.request("POST", URL, body=FORMAT,
                             headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                replies[i].append(AgentReply(response.status, response.read(),
                                             dict(response.getheaders())))
        finally:
            conn.close()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(connections))]
    for thread in threads:
        thread.start()
    go.wait()
    started = time.monotonic()
    for thread in threads:
        thread.join(60)
    past: list[AgentReply] = []
    reply = post(agent_socket)
    while reply.status == 200 and len(past) < 10:
        past.append(reply)
        reply = post(agent_socket)
    # Whole seconds the burst took: how many calls the bucket may have refilled.
    refills = int(time.monotonic() - started)
    assert len(past) <= refills, (len(past), refills)
    return [r for pair in replies for r in pair], past, reply


def test_the_seeds_plugins_walked_through_as_a_new_user(
        make_deployment: Callable[..., Deployment], python_image: str, busybox_image: str,
        plugin_image: str, own_tag: str, podman_runtime: PodmanRuntime,
        tmp_path: Path) -> None:
    d = make_deployment()
    spec = {"name": "studio", "policy": {"allow_plugins": True},
            "agents": [agent_spec("writer", python_image), agent_spec("reader", python_image)],
            "concerns": [{"name": "personal", "category": "personal", "scope": "local",
                          "agents": ["writer", "reader"], "cross_container": "isolated"}]}
    spec_path = tmp_path / "studio.json"
    spec_path.write_text(json.dumps(spec))
    created = pacd(d, "container", "create", str(spec_path), "--json")
    assert created.returncode == 0, created.stderr
    cid = str(json.loads(created.stdout)["id"])
    started = pacd(d, "container", "start", cid)
    assert started.returncode == 0, started.stderr
    digest = podman_runtime.inspect_image(own_tag)["Id"]
    digest = digest if digest.startswith("sha256:") else f"sha256:{digest}"

    # 1. The seed's Text Formatter validates and is queued, with the reference plugin's
    #    image (a tag of its own, changed in step 5).
    schema_path = tmp_path / "text-formatter.json"
    schema_path.write_text(json.dumps(TEXT_FORMATTER))
    submitted = pacd(d, "plugin", "submit", cid, str(schema_path), "--agent", "writer",
                     "--image", own_tag, "--json")
    assert submitted.returncode == 0, submitted.stderr
    queued = json.loads(submitted.stdout)
    approval_id = str(queued["approval_id"])
    assert queued["required_level"] == "biometric"
    detail = d.daemon.client().request("GET", f"/v1/approvals/{approval_id}")
    assert detail["summary"].startswith("install plugin Text Formatter for agent writer")
    assert digest in detail["summary"]
    body = detail["payload"]["body"]
    assert (body["image"], body["image_digest"]) == (own_tag, digest)
    # the seed's id kept; the schema written in pacd's one spelling
    assert body["schema"]["id"] == PLUGIN_ID
    assert body["schema"]["endpoints"] == [
        {"path": "/format", "method": "POST", "requires_auth": True,
         "rate_limit": {"requests_per_minute": 60, "burst_size": 10}}]
    [request] = d.audit(action="approval.plugin.install.request", target=approval_id)
    assert (request["decision"], request["details"]["required_level"]) == ("info", "biometric")
    assert state_of(d, cid)[0] == "pending"

    # 2. A touch without user verification does not approve it (enhanced, not biometric);
    #    an assertion with the key's user verification does.
    assertion = tmp_path / "assertion.json"
    touch_only = {**detail["publicKey"], "userVerification": "discouraged"}
    assertion.write_text(json.dumps(authenticate(touch_only, detail["origin"], Silent(),
                                                 device=d.owner.device)))
    not_enough = pacd(d, "approve", approval_id, "--credential-json", str(assertion))
    assert not_enough.returncode == 3, not_enough  # 3: a higher level is needed
    [weak] = d.audit(action="approval.plugin.install.approve", target=approval_id)
    assert weak["decision"] == "deny", weak
    assert state_of(d, cid)[0] == "pending"
    assertion.write_text(json.dumps(d.owner.sign_approval(approval_id)))
    approved = pacd(d, "approve", approval_id, "--credential-json", str(assertion))
    assert approved.returncode == 0, approved.stderr
    [_, entry] = d.audit(action="approval.plugin.install.approve", target=approval_id)
    assert entry["decision"] == "allow"
    evidence = entry["details"]["evidence"]
    assert (evidence["level"], evidence["user_verified"]) == ("biometric", True)
    assert entry["details"]["payload"]["body"]["image_digest"] == digest

    # 3. It runs, as the approved image.
    wait_until(lambda: answers_format(plugin_socket(d, cid)), 60, "the plugin answering")
    assert state_of(d, cid) == ("running", "")
    listing = pacd(d, "plugin", "list", cid)
    assert listing.stdout.strip() == "Text Formatter for writer: running", listing
    [start] = d.audit(action="plugin.start", target=cid)
    assert (start["decision"], start["details"]["image_digest"]) == ("allow", digest)

    # 4. Its agent calls it through its own socket: ten calls at once are answered with
    #    the formatted text, the 11th is rate limited; the other agent is refused.
    answered, refilled, limited = burst(d, cid, "writer")
    assert [r.status for r in answered] == [200] * 10, answered
    answered += refilled  # only on a machine too loaded to send eleven calls in a second
    assert all(r.json() == {**FORMATTED, "caller": f"{cid}/writer"} for r in answered)
    assert (limited.status, limited.json()["error"]["code"]) == (429, "rate_limited")
    assert limited.headers["Retry-After"] == "1"
    other = post(d.agent(cid, "reader"))
    assert (other.status, other.json()["error"]["code"]) == (403, "forbidden")
    calls = d.audit(action="agent.plugin.call")
    allowed = [e for e in calls if e["decision"] == "allow"]
    assert [(e["actor"], e["details"]["status"]) for e in allowed] == [
        (f"agent:{cid}/writer", 200)] * len(answered)
    assert all(e["details"]["bytes_in"] == len(FORMAT) and e["details"]["bytes_out"] > 0
               for e in allowed)
    assert [(e["actor"], e["details"]["code"]) for e in calls if e["decision"] == "deny"] == [
        (f"agent:{cid}/writer", "rate_limited"), (f"agent:{cid}/reader", "forbidden")]

    # 5. The same plugin, its image now other content: not started, audited, shown.
    pacd(d, "container", "stop", cid)
    repository, tag = own_tag.rsplit(":", 1)
    podman_runtime.tag_image(busybox_image, repository, tag)
    assert pacd(d, "container", "start", cid).returncode == 0
    state, reason = state_of(d, cid)
    assert state == "refused" and digest.removeprefix("sha256:") in reason
    listing = pacd(d, "plugin", "list", cid)
    assert listing.stdout.startswith("Text Formatter for writer: refused ("), listing
    shown = pacd(d, "container", "show", cid)
    assert "plugin Text Formatter for writer: refused" in shown.stdout, shown
    # its container from before stays stopped: not started again
    name = plugin_container_name(cid, PLUGIN_ID, "writer")
    assert podman_runtime.state(name) == "exited"
    [denied] = d.audit(action="plugin.start", target=cid, decision="deny")
    assert denied["details"]["state"] == "refused"
    refused_call = post(d.agent(cid, "writer"))
    assert (refused_call.status, refused_call.json()["error"]["code"]) == (404, "not_found")

    # The tag names the approved content again: the plugin runs again.
    podman_runtime.tag_image(plugin_image, repository, tag)
    pacd(d, "container", "stop", cid)
    assert pacd(d, "container", "start", cid).returncode == 0
    wait_until(lambda: answers_format(plugin_socket(d, cid)), 60, "the plugin answering again")

    # 6. Uninstall ends calls: the one the plugin holds fails, new ones are 404.
    held: list[AgentReply] = []
    writer = d.agent(cid, "writer")
    caller = threading.Thread(target=lambda: held.append(
        post(writer, json.dumps({"text": "x", "delay": 50}).encode(), timeout=120)))
    caller.start()
    wait_until(lambda: _plugin_busy(podman_runtime, cid), 30, "the held call reaching the plugin")
    gone = d.owner.authed().request("DELETE", f"/v1/containers/{cid}/plugins/text-formatter")
    assert gone == {"container_id": cid, "plugin_id": PLUGIN_ID, "agents": ["writer"],
                    "removed": True}
    caller.join(60)
    assert not caller.is_alive()
    assert (held[0].status, held[0].json()["error"]["code"]) == (502, "plugin_unavailable")
    after = post(writer)
    assert (after.status, after.json()["error"]["code"]) == (404, "not_found")
    assert podman_runtime.state(name) == "missing"
    assert pacd(d, "plugin", "list", cid).stdout.strip() == "no plugins"
    [uninstalled] = d.audit(action="plugin.uninstall", target=cid)
    assert uninstalled["decision"] == "allow"

    # 7. The seed's External Data Harvester is refused, every reason named as written.
    harvester_path = tmp_path / "harvester.json"
    harvester_path.write_text(json.dumps(HARVESTER))
    refused = pacd(d, "plugin", "submit", cid, str(harvester_path), "--agent", "writer")
    assert refused.returncode == 2, refused
    reasons = [
        "securityRequirements.carbonBasedAuthRequired: must be true (only the verified "
        "human owner may use a plugin)",
        "securityRequirements.domainIsolation: must be true (a plugin may not break domain "
        "isolation)",
        "securityRequirements.maxDataAccess: crossDomain is never granted to a plugin "
        "(it would cross concern isolation)",
        "requiredCapabilities[0]: networkAccess is not a capability of agent 'writer'",
        "requiredCapabilities[0]: networkAccess reaches outside this machine, which the "
        "policy does not allow (allow_external_apis is false)",
        "requiredCapabilities[1]: fileAccess is not a capability of agent 'writer'",
        "requiredCapabilities[2]: databaseQuery is not a capability of agent 'writer'",
        "endpoints: a plugin must declare at least one endpoint",
    ]
    assert [line.removeprefix("  - ") for line in refused.stderr.splitlines()
            if line.startswith("  - ")] == reasons
    [rejected] = d.audit(action="plugin.submit")
    assert (rejected["decision"], rejected["target"]) == ("deny", cid)
    assert rejected["details"]["errors"] == reasons
    # nothing queued for it: the only approval is the Text Formatter's
    approvals = d.daemon.client().request("GET", "/v1/approvals")["approvals"]
    assert [a["id"] for a in approvals] == [approval_id]
