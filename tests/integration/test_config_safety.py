"""Settings that would weaken security are checked at start, not trusted.

A config file others can write to, a token lifetime beyond the model's hour,
and an fprintd bus taken from the environment each stop the daemon before it
opens anything, with a message naming the file or key and the fix; a bus that
is not the system bus is shown by ``pacd status`` and ``pacd doctor``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

from pacd.errors import ConfigError
from tests.integration.harness import DaemonProcess

#: a bus nobody answers on (the daemon's start-up report of it fails fast)
BUS = "unix:path=/nonexistent/pacd-test-bus"


def _refused(d: DaemonProcess) -> str:
    d.start(wait=False)
    assert d.proc is not None
    assert d.proc.wait(30) == ConfigError.exit_code, d.log()
    assert not (d.home / "state.sqlite3").exists()  # refused before opening anything
    return d.log()


def test_group_writable_config_is_refused_at_start(
        make_daemon: Callable[..., DaemonProcess]) -> None:
    d = make_daemon(start=False)
    os.chmod(d.config_path, 0o664)
    log = _refused(d)
    assert f"config file {d.config_path} has mode 0664" in log
    assert f"chmod 600 {d.config_path}" in log
    # Writable by everyone: the same refusal.
    os.chmod(d.config_path, 0o646)
    assert f"chmod 600 {d.config_path}" in _refused(d)
    # Made private, the same file is accepted.
    os.chmod(d.config_path, 0o600)
    d.start()
    assert d.client().status()["version"]


def test_config_owned_by_another_user_is_refused_at_start(
        make_daemon: Callable[..., DaemonProcess]) -> None:
    d = make_daemon(start=False)
    if os.getuid() == 0:
        # root can hand the file to another uid: the daemon must not trust it
        os.chown(d.config_path, 65534, -1)
        log = _refused(d)
        assert f"config file {d.config_path} belongs to uid 65534" in log
        os.chown(d.config_path, 0, -1)
    else:
        # without root, a file of another uid is one we did not write: /etc/passwd is root's
        d.env["PACD_CONFIG"] = "/etc/passwd"
        assert "config file /etc/passwd belongs to uid 0" in _refused(d)


def test_token_lifetime_over_an_hour_is_refused(
        make_daemon: Callable[..., DaemonProcess]) -> None:
    d = make_daemon(settings={"token_lifetime_s": 3601}, start=False)
    log = _refused(d)
    assert f"token_lifetime_s (in {d.config_path}) must be at most 3600" in log
    # The environment is held to the same bound.
    d.config_path.write_text("")
    d.env["PACD_TOKEN_LIFETIME"] = "86400"
    assert "token_lifetime_s (from PACD_TOKEN_LIFETIME) must be at most 3600" in _refused(d)


def test_approval_ttl_over_a_day_and_a_zero_limit_are_refused(
        make_daemon: Callable[..., DaemonProcess]) -> None:
    d = make_daemon(settings={"approval_ttl_s": 86401}, start=False)
    assert "approval_ttl_s" in _refused(d)
    d.config_path.write_text("max_connections = 0\n")
    assert "max_connections" in _refused(d)


def test_fprintd_bus_from_the_environment_is_refused_at_start(
        make_daemon: Callable[..., DaemonProcess]) -> None:
    d = make_daemon(env={"PACD_FPRINTD_BUS": BUS}, start=False)
    log = _refused(d)
    assert "PACD_FPRINTD_BUS is not read from the environment" in log
    assert f"set fprintd_bus_address in {d.config_path}" in log


def test_status_and_doctor_name_a_fprintd_bus_that_is_not_the_system_bus(
        make_daemon: Callable[..., DaemonProcess]) -> None:
    plain = make_daemon("plain")
    assert plain.client().status()["fprintd_bus_address"] is None
    assert "fprintd bus" not in plain.cli("status").stdout
    assert "fprintd bus" not in plain.cli("doctor").stdout

    d = make_daemon("bus", settings={"fprintd_bus_address": BUS})
    assert d.client().status()["fprintd_bus_address"] == BUS
    human = d.cli("status")
    assert human.returncode == 0, human.stderr
    assert f"fprintd bus: {BUS} (NOT the system bus" in human.stdout
    assert json.loads(d.cli("status", "--json").stdout)["fprintd_bus_address"] == BUS
    doctor = json.loads(d.cli("doctor", "--json").stdout)
    [check] = [c for c in doctor["checks"] if c["name"] == "fprintd bus"]
    assert check["status"] == "warn" and BUS in check["detail"]
    assert str(d.config_path) in check["fix"]
