"""Every benchmark `make bench` runs still runs, and prints the ratio it exists for.

Each runs once in its smallest configuration (``--smoke``, seconds) as its own
process, like ``python -m bench.<name>``; the numbers mean nothing then, but a
benchmark that broke, or stopped printing its comparison, fails here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import BENCHES
from tests.conftest import require_system

ROOT = Path(__file__).resolve().parents[2]
#: benchmarks that start a private Podman service (and the daemon, with the keychain)
NEEDS_PODMAN = {"api_bench", "start_bench", "soak_bench"}
#: benchmarks that start the daemon (with the keychain) but no Podman
NEEDS_KEYCHAIN = {"tray_bench"}
#: the line each benchmark exists for: its comparison against the baseline
RATIO = {
    "vault_bench": r"MiB seal\+open .* ratio \d+\.\d\d \(target >= 0\.50\)",
    "audit_bench": r"group commit .* ratio \d+\.\dx \(target >= 10x",
    "agent_bench": r"one agent socket, every read audited .* ratio \d+\.\d\d",
    "api_bench": (r"ratio pacd GET /v1/sessions/current p50 / floor handler p50, c=16: \d+\.\d\d"
                  r" \(target <= 1\.20"),
    "start_bench": (r"daemon start to first GET /v1/status answer, .* \(target <= 0\.4 s"
                    r"[\s\S]*daemon idle RSS after start: median \d+\.\d MB \(target <= 50 MB"
                    r"[\s\S]*ratio pacd/podman: \d+\.\d\d"),
    # the soak's comparison is each server against itself: before -> after
    "soak_bench": (r"daemon \(owner socket\) +\d+\.\d -> +\d+\.\d -> +\d+\.\d MiB"
                   r" +\d+ -> +\d+ -> +\d+"),
    "tray_bench": r"ratio p95 / target: \d+\.\d\d \(target p95 <= 100 ms\)",
}


def test_every_benchmark_is_covered_here() -> None:
    assert set(BENCHES) == set(RATIO) and set(RATIO) >= NEEDS_PODMAN


def _run(name: str) -> str:
    out = subprocess.run([sys.executable, "-m", f"bench.{name}", "--smoke"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, (out.stdout, out.stderr)
    # Other work on the machine moves every number: each run says how busy it was.
    assert re.match(r"load average before: \d+\.\d\d/", out.stdout), out.stdout[:300]
    assert re.search(r"\nload average after: \d+\.\d\d/", out.stdout), out.stdout[-300:]
    return out.stdout


@pytest.mark.parametrize("name", sorted(set(BENCHES) - NEEDS_PODMAN - NEEDS_KEYCHAIN))
def test_benchmark_smallest_configuration_prints_its_ratio(name: str) -> None:
    assert re.search(RATIO[name], _run(name)), name


@pytest.mark.system
@pytest.mark.podman
@pytest.mark.parametrize("name", sorted(NEEDS_PODMAN))
def test_podman_benchmark_smallest_configuration_prints_its_ratio(
        name: str, real_keychain: str) -> None:
    if shutil.which("podman") is None:
        require_system("podman (apt install podman)")
    assert re.search(RATIO[name], _run(name)), name


@pytest.mark.system
@pytest.mark.parametrize("name", sorted(NEEDS_KEYCHAIN))
def test_daemon_benchmark_smallest_configuration_prints_its_ratio(
        name: str, real_keychain: str) -> None:
    assert re.search(RATIO[name], _run(name)), name
