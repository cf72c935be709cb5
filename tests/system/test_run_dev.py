"""Ctrl-C on ``make run``: everything stops, in order, and the audit log's
last entry is covered by its keychain checkpoint.

The terminal delivers SIGINT to its whole foreground process group. The test
does exactly that to ``scripts/run-dev`` (make run's launcher), running with
the tray (offscreen), a private keychain, a private Podman service and the
daemon, then checks that the daemon's last entry (``daemon.stop``) is what the
checkpoint in the keychain names, and that no process of any part is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pacd.client import Client
from pacd.config import load_config
from pacd.errors import DaemonUnavailable
from tests.conftest import require_system

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]
RUN_DEV = ROOT / "scripts" / "run-dev"
DEV_SESSION = ROOT / "scripts" / "dev-session"

CHECKPOINT_PROBE = """
import sys
from pathlib import Path
from pacd.audit import checkpoint_name, read_checkpoint
from pacd.vault import KeyringSecretStore, namespace_for_home
home = Path(sys.argv[1])
found = read_checkpoint(KeyringSecretStore(namespace_for_home(home)),
                        checkpoint_name(home / "audit.sqlite3"))
print(-1 if found is None else found[0])
"""


@pytest.fixture
def dev_dir() -> Iterator[Path]:
    # Short: the daemon's socket lives under it (Unix socket paths are ~107 bytes).
    with tempfile.TemporaryDirectory(prefix="pacd-rd-") as d:
        yield Path(d)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_for_record(record: Path, launcher: subprocess.Popen[bytes], log: Path
                     ) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert launcher.poll() is None, f"the launcher exited:\n{log.read_text()}"
        if record.exists():
            doc: dict[str, Any] = json.loads(record.read_text())
            if {"daemon", "tray"} <= doc["processes"].keys():
                return doc
        time.sleep(0.1)
    raise AssertionError(f"the launcher did not start everything:\n{log.read_text()}")


def _status(client: Client) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        try:
            status: dict[str, Any] = client.status()
            return status
        except DaemonUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_ctrl_c_on_make_run_stops_the_keychain_after_the_daemon_checkpointed(
        dev_dir: Path) -> None:
    for program in ("dbus-daemon", "gnome-keyring-daemon", "podman"):
        if shutil.which(program) is None:
            require_system(program)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PACD_") and k not in (
               "XDG_RUNTIME_DIR", "DISPLAY", "WAYLAND_DISPLAY", "DBUS_SESSION_BUS_ADDRESS")}
    env.update(PACD_DEV_DIR=str(dev_dir), QT_QPA_PLATFORM="offscreen")
    log = dev_dir / "launcher.log"
    with log.open("wb") as out:
        # A session of its own, as a terminal's foreground job has a group of its own.
        launcher = subprocess.Popen([str(RUN_DEV)], env=env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
    groups = [launcher.pid]
    try:
        record = _wait_for_record(dev_dir / "run" / "launcher.json", launcher, log)
        groups += [p["pgid"] for p in record["processes"].values()]
        assert record["launcher"] == launcher.pid
        client = Client(load_config({"PACD_SOCKET": str(dev_dir / "run" / "pacd.sock"),
                                     "PACD_HOME": str(dev_dir / "state"),
                                     "PACD_CONFIG": str(dev_dir / "config.toml")}),
                        use_token_cache=False, timeout=30)
        status = _status(client)
        assert status["demo_authenticator"]["allowed"] is True  # the dev config
        # The daemon follows the launcher's private Podman service, and says so.
        podman_url = f"unix://{dev_dir / 'podman' / 'podman.sock'}"
        deadline = time.monotonic() + 30
        while not (status["podman"] or {}).get("connected"):
            assert time.monotonic() < deadline, status["podman"]
            time.sleep(0.1)
            status = client.status()
        assert status["podman"]["url"] == podman_url
        client.request("POST", "/v1/owner", {"name": "Ada"})

        os.killpg(launcher.pid, signal.SIGINT)  # Ctrl-C
        assert launcher.wait(120) == 0, log.read_text()
    finally:
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError):
                if pgid != launcher.pid:
                    os.killpg(pgid, signal.SIGKILL)
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait(10)
    text = log.read_text(errors="replace")
    assert "checkpoint not written" not in text, text
    assert "had to kill" not in text, text
    assert [g for g in groups if _group_alive(g)] == [], text

    # The checkpoint in the (now stopped) keychain names the daemon's last entry.
    home = dev_dir / "state"
    with contextlib.closing(sqlite3.connect(home / "audit.sqlite3")) as db:
        last_seq, last_action = db.execute(
            "SELECT seq, action FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
    assert last_action == "daemon.stop"
    probe_env = {k: v for k, v in env.items() if k != "PACD_IN_DEV_SESSION"}
    probe_env["PACD_DEV_HOME"] = str(dev_dir / "home")
    probe = subprocess.run([str(DEV_SESSION), sys.executable, "-c", CHECKPOINT_PROBE,
                            str(home)], env=probe_env, cwd=ROOT, capture_output=True,
                           text=True, timeout=60, check=False)
    assert probe.returncode == 0, probe.stderr
    assert int(probe.stdout.strip()) == last_seq
