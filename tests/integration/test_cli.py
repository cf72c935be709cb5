"""The ``pacd`` command line as a subprocess against the real daemon."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

from openapi_spec_validator import validate

from pacd.errors import RuntimeUnavailable
from tests.integration.harness import EXAMPLES, DaemonProcess, Owner, plugin, spec_with_plugins


def test_daemon_not_running_says_how_to_start(
        make_daemon: Callable[..., DaemonProcess]) -> None:
    d = make_daemon(start=False)
    out = d.cli("status")
    assert out.returncode == 11
    assert "pacd daemon" in out.stderr and "systemctl --user start pacd" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    out = d.cli("status", "--json")
    assert out.returncode == 11
    assert len(out.stdout.strip().splitlines()) == 1  # exactly one JSON document
    assert json.loads(out.stdout) == {"error": {
        "code": "daemon_unavailable", "reachable": False,
        "message": out.stderr.strip().removeprefix("pacd: ")}}


def test_cli_end_to_end(make_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    # Podman is pinned down: a socket path where nothing listens, whatever the host runs.
    daemon = make_daemon(env={"PACD_PODMAN_URL": f"unix://{tmp_path / 'no-podman.sock'}"})
    out = daemon.cli("init", "--name", "Alice")
    assert out.returncode == 0, out.stderr
    assert "owner Alice created" in out.stdout
    status = json.loads(daemon.cli("status", "--json").stdout)
    assert status["reachable"] is True and status["owner"]["name"] == "Alice"
    assert daemon.cli("init", "--name", "Bob").returncode == 5  # conflict

    spec_path = tmp_path / "studio.json"
    spec_path.write_text(json.dumps(spec_with_plugins()))
    refused = daemon.cli("container", "create", str(spec_path))
    assert refused.returncode == 3
    assert "pacd session --level biometric" in refused.stderr

    owner = Owner(daemon)
    owner.enroll()
    daemon.env["PACD_TOKEN"] = owner.session("biometric")
    created = json.loads(daemon.cli("container", "create", str(spec_path), "--json").stdout)
    cid = created["id"]
    toml = daemon.cli("container", "create", str(EXAMPLES / "specs" / "home.toml"))
    assert toml.returncode == 0, toml.stderr
    listed = daemon.cli("container", "list")
    assert "studio" in listed.stdout and "home" in listed.stdout
    assert "agent writer" in daemon.cli("container", "show", cid).stdout
    config = json.loads(daemon.cli("container", "config", cid, "--json").stdout)
    assert config["env"]["CARBON_BASED_AUTH"] == "required"
    assert config["user"] == "1000:1000"
    validate(json.loads(daemon.cli("container", "openapi", cid, "--json").stdout))
    # Podman is not reachable: the runtime routes say so, with the runtime's exit code.
    for args in (("container", "start", cid), ("image", "build", cid)):
        out = daemon.cli(*args)
        assert out.returncode == RuntimeUnavailable.exit_code == 10, (args, out.stderr)
        assert "podman.socket" in out.stderr, out.stderr

    schema_path = tmp_path / "formatter.json"
    schema_path.write_text(json.dumps(plugin("text-formatter")))
    queued = json.loads(daemon.cli("plugin", "submit", cid, str(schema_path), "--agent",
                                   "writer", "--json").stdout)
    approval_id = queued["approval_id"]
    assert approval_id in daemon.cli("approvals").stdout
    credential_path = tmp_path / "assertion.json"
    credential_path.write_text(json.dumps(owner.sign_approval(approval_id)))
    approved = daemon.cli("approve", approval_id, "--credential-json", str(credential_path))
    assert approved.returncode == 0, approved.stderr
    assert "approved" in approved.stdout
    again = daemon.cli("approve", approval_id, "--credential-json", str(credential_path))
    assert again.returncode == 5  # conflict: never executed twice

    harvester = tmp_path / "harvester.json"
    harvester.write_text(json.dumps(plugin("external-data-harvester")))
    rejected = daemon.cli("plugin", "submit", cid, str(harvester), "--agent", "analyst")
    assert rejected.returncode == 2
    reasons = [line for line in rejected.stderr.splitlines() if line.startswith("  - ")]
    assert len(reasons) >= 6

    schema_path.write_text(json.dumps(plugin("text-formatter") | {"version": "2.0.0"}))
    second = json.loads(daemon.cli("plugin", "submit", cid, str(schema_path), "--agent",
                                   "writer", "--json").stdout)
    denied = daemon.cli("deny", second["approval_id"], "--reason", "no")
    assert denied.returncode == 0 and "denied" in denied.stdout

    # Removal must first reach Podman: without it nothing is deleted.
    removed = daemon.cli("container", "rm", "home")
    assert removed.returncode == RuntimeUnavailable.exit_code == 10, removed.stderr
    assert "podman.socket" in removed.stderr
    assert daemon.cli("container", "show", "home").returncode == 0

    tail = daemon.cli("audit", "tail", "--limit", "5")
    assert len(tail.stdout.strip().splitlines()) == 5
    verified = daemon.cli("audit", "verify", "--json")
    assert json.loads(verified.stdout)["ok"] is True

    # Tamper with one entry: verify fails and names it.
    with sqlite3.connect(daemon.home / "audit.sqlite3") as db:
        db.execute("UPDATE audit_log SET reason = 'edited' WHERE seq = 3")
    tampered = daemon.cli("audit", "verify")
    assert tampered.returncode == 9
    assert "entry 3" in tampered.stderr


def test_doctor_reports_each_check(daemon: DaemonProcess) -> None:
    out = daemon.cli("doctor", "--json")
    report = json.loads(out.stdout)
    names = {c["name"] for c in report["checks"]}
    assert {"keychain", "socket directory", "daemon", "podman"} <= names
    assert any(n.startswith("presence") for n in names)
    keychain = next(c for c in report["checks"] if c["name"] == "keychain")
    assert keychain["status"] == "ok"
    assert out.returncode == (0 if report["ok"] else 1)
    human = daemon.cli("doctor")
    assert "[  ok] keychain" in human.stdout


def test_plugin_without_image_keeps_its_old_meaning_and_an_image_needs_podman(
        make_daemon: Callable[..., DaemonProcess], tmp_path: Path) -> None:
    """A submission without an image is approved and recorded as before (listed as
    approved, never run); one with an image needs its digest from Podman, so with
    Podman down it is refused (503) and nothing is queued."""
    daemon = make_daemon(env={"PACD_PODMAN_URL": f"unix://{tmp_path / 'no-podman.sock'}"})
    owner = Owner(daemon)
    owner.init()
    owner.enroll()
    daemon.env["PACD_TOKEN"] = owner.session("biometric")
    cid = owner.authed().request("POST", "/v1/containers", spec_with_plugins())["id"]
    schema = tmp_path / "tf.json"
    schema.write_text(json.dumps(plugin("text-formatter-seed")))

    down = daemon.cli("plugin", "submit", cid, str(schema), "--agent", "writer",
                      "--image", "localhost/text-formatter:1")
    assert down.returncode == 10, down.stderr
    assert daemon.client().request("GET", "/v1/approvals")["approvals"] == []

    queued = daemon.cli("plugin", "submit", cid, str(schema), "--agent", "writer", "--json")
    assert queued.returncode == 0, queued.stderr
    approval_id = json.loads(queued.stdout)["approval_id"]
    body = daemon.client().request("GET", f"/v1/approvals/{approval_id}")["payload"]["body"]
    assert "image" not in body and "image_digest" not in body
    assert "Text Formatter 1.0.0 for writer: pending" in daemon.cli("plugin", "list",
                                                                     cid).stdout
    owner.approve(approval_id)
    listed = json.loads(daemon.cli("plugin", "list", cid, "--json").stdout)["plugins"]
    assert [(p["name"], p["state"], p["reason"], p["image"]) for p in listed] == [
        ("Text Formatter", "approved", "approved without an image: it does not run", "")]

    removed = daemon.cli("plugin", "remove", cid, "Text Formatter")
    assert removed.returncode == 0, removed.stderr
    assert json.loads(daemon.cli("plugin", "list", cid, "--json").stdout)["plugins"] == []
    assert daemon.cli("plugin", "remove", cid, "Text Formatter").returncode == 4
    # the uninstall, then the refused second one
    assert [e["decision"] for e in daemon.audit() if e["action"] == "plugin.uninstall"] == [
        "allow", "deny"]
