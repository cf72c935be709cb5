"""Shared test plumbing.

System tests use real OS parts (gnome-keyring, Podman, D-Bus). When one is
missing they skip on a developer machine but FAIL under ``CI=true`` or
``PACD_REQUIRE_SYSTEM=1``, so a green CI run proves the real parts ran.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.host_guard import (
    GUARDED_DIRS,
    PODMAN_EVENTS,
    RUN_MARKER,
    differences,
    left_in_temp,
    remove_left_in_podman,
    snapshot,
    stop_left_running,
)

# Property tests check what is generated, not how fast: on a loaded 2-core CI runner
# Hypothesis's timing checks (per-example deadline, "data generation is too slow")
# fail tests whose every example passed.
settings.register_profile("pacd", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("pacd")


def system_required() -> bool:
    return os.environ.get("CI", "").lower() == "true" or os.environ.get(
        "PACD_REQUIRE_SYSTEM"
    ) == "1"


def require_system(what: str) -> None:
    """Call when a real system dependency is missing: skip locally, fail in CI."""
    message = f"system dependency missing: {what}"
    if system_required():
        pytest.fail(message + " (required because CI=true or PACD_REQUIRE_SYSTEM=1)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def real_keychain() -> str:
    """Asserts the process sees a real, unlocked Secret Service keychain."""
    try:
        import keyring
        from keyring.backends import SecretService

        backend = keyring.get_keyring()
        if not isinstance(backend, SecretService.Keyring):
            require_system(f"Secret Service keychain (keyring chose {backend!r}); use make test")
        backend.get_password("pacd-test-probe", "probe")
    except Exception as exc:  # any failure here means "no keychain"
        require_system(f"unlocked keychain: {exc}")
    return "SecretService"


@pytest.fixture(scope="session", autouse=True)
def host_left_as_found(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Fails the run when it changed a shared directory's mode or owner, or the
    OS's users or groups, or left a process it started running, or a Podman pod or
    container it created: tests touch only what they made and undo the rest.
    Processes are recognised by a marker in the environment every child of this
    run inherits; those left are killed. Pods and containers are the ones this
    run's Podman services logged creating (``PODMAN_EVENTS``); those left are
    removed.

    An entry new in /tmp or /var/tmp fails the run under CI=true (or
    PACD_REQUIRE_SYSTEM=1) on Linux, where nothing else runs beside `make test`;
    elsewhere (a developer's machine, the macOS runner's packaging job) another
    program may have made it, so it is a warning naming it."""
    # Made before the snapshot: pytest keeps its base directories there on purpose.
    tmp_path_factory.getbasetemp()
    dirs = [*GUARDED_DIRS, *([os.environ["HOME"]] if os.environ.get("HOME") else [])]
    before = snapshot(dirs)
    outer = os.environ.get(RUN_MARKER)
    marker = f"{RUN_MARKER}={os.getpid()}-{secrets.token_hex(8)}"
    os.environ[RUN_MARKER] = marker.split("=", 1)[1]
    outer_events = os.environ.get(PODMAN_EVENTS)
    events_dir = Path(tempfile.mkdtemp(prefix="pacd-run-"))
    events = events_dir / "podman-events.log"
    os.environ[PODMAN_EVENTS] = str(events)
    try:
        yield
    finally:
        # An inner run (pytester) restores the outer run's marker and events log.
        for name, value in ((RUN_MARKER, outer), (PODMAN_EVENTS, outer_events)):
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value
    try:
        # Pods first: removing them also ends the processes that run their containers.
        changes = remove_left_in_podman(events) + stop_left_running(marker)
    finally:
        shutil.rmtree(events_dir, ignore_errors=True)
    after = snapshot(dirs)
    changes = differences(before, after) + changes
    left = left_in_temp(before, after)
    if left and not (system_required() and sys.platform.startswith("linux")):
        warnings.warn("the test run may have left these behind (or another program made "
                      "them meanwhile):\n  " + "\n  ".join(left), stacklevel=1)
        left = []
    if changes or left:
        pytest.fail("the test run left the host changed (restore it by hand):\n  "
                    + "\n  ".join(changes + left), pytrace=False)
