"""What the client checks before it signs, and how it keeps its session token."""

from __future__ import annotations

import copy
import json
import os
import stat
from pathlib import Path
from typing import Any

from pacd.client import Client, approval_challenge_matches
from pacd.config import load_config
from tests.integration.harness import DaemonProcess, Owner, plugin, spec_with_plugins


def _pending_approval(daemon: DaemonProcess) -> dict[str, Any]:
    owner = Owner(daemon)
    owner.init()
    owner.enroll()
    owner.session("biometric")
    container = owner.authed().request("POST", "/v1/containers", spec_with_plugins())
    queued = owner.authed().request("POST", f"/v1/containers/{container['id']}/plugins",
                                    {"agent": "writer", "schema": plugin("text-formatter")})
    detail: dict[str, Any] = daemon.client().request("GET",
                                                     f"/v1/approvals/{queued['approval_id']}")
    return detail


def test_the_signed_challenge_must_be_the_digest_of_the_shown_payload(
        daemon: DaemonProcess) -> None:
    detail = _pending_approval(daemon)
    assert approval_challenge_matches(detail)

    shown_other = copy.deepcopy(detail)  # the owner would read one thing...
    shown_other["payload"]["body"]["agent"] = "analyst"
    assert not approval_challenge_matches(shown_other)

    signs_other = copy.deepcopy(detail)  # ...and the key would sign another
    other = json.loads(json.dumps(detail["publicKey"]))
    other["challenge"] = other["challenge"][::-1]
    signs_other["publicKey"] = other
    assert not approval_challenge_matches(signs_other)

    advertised_other = copy.deepcopy(detail)
    advertised_other["challenge"] = signs_other["publicKey"]["challenge"]
    assert not approval_challenge_matches(advertised_other)

    for broken in ({**detail, "publicKey": None}, {**detail, "challenge": "%%%"},
                   {k: v for k, v in detail.items() if k != "payload"}, [], None):
        assert not approval_challenge_matches(broken)


def _client(tmp_path: Path) -> Client:
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    config = load_config({"PACD_HOME": str(tmp_path / "home"),
                          "PACD_SOCKET": str(run / "pacd.sock")})
    return Client(config, use_token_cache=True)


TOKEN = {"token": "secret-token-value", "level": "biometric",
         "expires_at": "2999-01-01T00:00:00Z"}


def test_token_cache_is_written_privately_whatever_is_planted(tmp_path: Path) -> None:
    client = _client(tmp_path)
    directory = client.token_path.parent
    planted = directory / "client-token.tmp"  # the name an older client wrote through
    planted.write_bytes(b"")
    os.chmod(planted, 0o644)
    old = os.umask(0)  # even with no umask, the token file is the owner's alone
    try:
        client.save_token(TOKEN)
    finally:
        os.umask(old)
    assert planted.read_bytes() == b""
    assert stat.S_IMODE(os.lstat(client.token_path).st_mode) == 0o600
    assert json.loads(client.token_path.read_text())["token"] == TOKEN["token"]
    assert client.token() == TOKEN["token"]
    # No temporary file is left behind.
    assert sorted(p.name for p in directory.iterdir()) == ["client-token.json",
                                                           "client-token.tmp"]


def test_token_cache_does_not_follow_a_planted_symlink(tmp_path: Path) -> None:
    client = _client(tmp_path)
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    (client.token_path.parent / "client-token.tmp").symlink_to(target)
    client.save_token(TOKEN)
    assert target.read_bytes() == b""
    assert not client.token_path.is_symlink()
    assert client.token() == TOKEN["token"]
