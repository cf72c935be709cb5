"""The session guard in tests/conftest.py fails a run that leaves a Podman pod or
container it created, names each and removes it; Podman objects of anyone else
(another run sharing the host's storage) it leaves alone. The guard runs for real
in an inner pytest session, as the process guard's test does."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacd.runtime.service import podman_binary
from tests.conftest import require_system

pytest_plugins = ["pytester"]

pytestmark = [pytest.mark.system, pytest.mark.podman]


@pytest.fixture
def podman() -> str:
    binary = podman_binary()
    if binary is None:
        require_system("podman")
    assert binary is not None
    return binary


def pod_exists(podman: str, name: str) -> bool:
    code = subprocess.run([podman, "pod", "exists", name], capture_output=True, timeout=60,
                          check=False).returncode
    assert code in (0, 1), code  # 1: no such pod; anything else is Podman failing
    return code == 0


@pytest.fixture
def others_pod(podman: str) -> Iterator[str]:
    """A pod made outside the run's Podman services (Podman's own default settings), as
    another run or the user would make one: not the run's to remove."""
    name = f"pacd-guard-other-{secrets.token_hex(4)}"
    subprocess.run([podman, "pod", "create", "--name", name], capture_output=True,
                   timeout=120, check=True)
    yield name
    subprocess.run([podman, "pod", "rm", "--force", "--ignore", name], capture_output=True,
                   timeout=120, check=True)


def test_the_session_guard_fails_a_run_that_leaves_a_pod_and_removes_it(
        pytester: pytest.Pytester, podman: str, others_pod: str, tmp_path: Path) -> None:
    name = f"pacd-guard-test-{secrets.token_hex(4)}"
    pytester.makeconftest("from tests.conftest import host_left_as_found  # noqa: F401\n")
    # Made the way every Podman object of a test run is: with the run's containers.conf
    # (tests.podman_env), here through the CLI rather than the run's service.
    pytester.makepyfile(f"""
        import subprocess
        from pathlib import Path

        from pacd.runtime.service import service_env
        from tests.podman_env import write_run_containers_conf

        def test_leaves_a_pod():
            conf = write_run_containers_conf(Path({str(tmp_path / "containers.conf")!r}))
            subprocess.run([{podman!r}, "pod", "create", "--name", {name!r}],
                           env=service_env(conf), capture_output=True, check=True)
        """)
    result = pytester.runpytest_inprocess()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines([
        "*the test run left the host changed*",
        f"*podman pod {name} (*) left behind, removed with its containers *-infra*",
    ])
    assert not pod_exists(podman, name)
    assert others_pod not in result.stdout.str()
    assert pod_exists(podman, others_pod)
