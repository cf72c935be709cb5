"""``pacd doctor`` next to a running daemon reports what the daemon uses.

The daemon may run with another keychain (``make run`` gives it a private one)
than the shell doctor runs in. The real daemon runs inside the test session's
keychain; doctor runs without a session bus, so this shell has no keychain.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from tests.integration.harness import ROOT, DaemonProcess


def _doctor(env: dict[str, str]) -> dict[str, dict[str, Any]]:
    done = subprocess.run([sys.executable, "-m", "pacd", "doctor", "--json"], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.stdout, done.stderr
    return {c["name"]: c for c in json.loads(done.stdout)["checks"]}


def test_doctor_reports_the_daemons_keychain_not_the_shells(daemon: DaemonProcess) -> None:
    status = daemon.client().status()
    env = {k: v for k, v in daemon.env.items() if k != "DBUS_SESSION_BUS_ADDRESS"}
    checks = _doctor(env)
    assert checks["keychain"]["status"] == "ok"
    assert checks["keychain"]["detail"] == (
        f"the daemon's: {status['keychain_backend']} ({status['keystore']})")
    own = checks["keychain (this shell)"]
    assert own["status"] == "warn"
    # The shell's own result: no keychain here, the daemon's backend named as unusable.
    assert own["detail"].startswith("no secure keychain: "), own
    assert f"{status['keychain_backend']} is not usable here" in own["detail"]
    assert checks["daemon"]["status"] == "ok"
    assert checks["podman"]["detail"].startswith("the daemon's")
    assert all(c["detail"].startswith("the daemon's") for n, c in checks.items()
               if n.startswith("presence: ") and not n.endswith("(this shell)")
               and n != "presence: demo authenticator")


def test_doctor_labels_nothing_where_shell_and_daemon_agree(daemon: DaemonProcess) -> None:
    assert "DBUS_SESSION_BUS_ADDRESS" in os.environ
    checks = _doctor(daemon.env)
    assert checks["keychain"]["status"] == "ok"
    assert "keychain (this shell)" not in checks
