"""A daemon start loads what every request needs, and nothing only some requests need.

Podman's client (podman-py, requests, urllib3), python-fido2 (its server, its
attestation verifiers with cryptography's X.509, its COSE keys with
cryptography's public-key modules), the OpenAPI document builder and the
Kubernetes export's YAML writer are imported when a request first needs them:
importing them all at start-up made the daemon take most of a second to answer
its first status request and hold a third more memory while idle. A new
top-level import that pulls one of them back in fails here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

#: modules (and their submodules) no request made at start-up needs
DEFERRED = ("podman", "requests", "urllib3", "fido2", "cryptography.x509",
            "cryptography.hazmat.primitives.asymmetric", "pacd.runtime.podman",
            "pacd.api.openapi", "yaml")

_PROBE = """
import json, sys
import pacd.daemon
print(json.dumps(sorted(sys.modules)))
"""


def _modules_after_importing_the_daemon() -> set[str]:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                         timeout=120, check=True)
    return set(json.loads(out.stdout))


def test_importing_the_daemon_defers_podman_fido2_server_and_openapi() -> None:
    loaded = _modules_after_importing_the_daemon()
    assert "pacd.daemon" in loaded and "aiohttp.web" in loaded  # the probe did import it
    early = sorted(name for name in loaded
                   if any(name == d or name.startswith(d + ".") for d in DEFERRED))
    assert early == [], f"imported at daemon start, though only some requests need them: {early}"


def test_looking_for_a_podman_socket_does_not_load_podman_py(tmp_path: Path) -> None:
    # The daemon asks this before it connects: with no socket there, it never loads
    # the adapter at all.
    probe = ("import sys; from pacd.runtime.podman_url import no_podman_socket; "
             f"said = no_podman_socket('unix://{tmp_path}/missing.sock', {{}}); "
             "print(said is not None, 'podman' in sys.modules, 'requests' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.split() == ["True", "False", "False"]
