"""A daemon start loads what every request needs, and nothing only some requests need.

Podman's client (podman-py, requests, urllib3), python-fido2 (its server, its
attestation verifiers with cryptography's X.509, its COSE keys with
cryptography's public-key modules), the OpenAPI document builder and the
Kubernetes export's YAML writer are imported when a request first needs them:
importing them all at start-up made the daemon take most of a second to answer
its first status request and hold a third more memory while idle. A new
top-level import that pulls one of them back in fails here. So does one of
another platform's parts: ctypes (launchd's socket), the LaunchAgent plist
writer (plistlib, pyexpat), Touch ID's verifier and Windows' ACL reader are
imported where they are used, on their platform.

The keychain's backend is chosen among keyring's backends for this platform,
not by keyring's discovery (an entry-point scan importing every installed
backend; on Linux its macOS backend runs ldconfig and gcc): 60-90 ms of a start.
"""

from __future__ import annotations

import argparse
import gc
import importlib.abc
import importlib.util
import json
import os
import subprocess
import sys
import types
from importlib.machinery import ModuleSpec
from pathlib import Path

import pytest

#: modules (and their submodules) no request made at start-up needs
DEFERRED = ("podman", "requests", "urllib3", "fido2", "cryptography.x509",
            "cryptography.hazmat.primitives.asymmetric", "pacd.runtime.podman",
            "pacd.api.openapi", "yaml",
            "ctypes", "plistlib", "pacd.launchagent", "pacd.presence.macos",
            "pacd.windows_acl")

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


def test_the_presence_report_made_at_start_loads_no_ceremony_client() -> None:
    # The daemon reports its presence methods from the start (a thread of its own,
    # awaited before the first answer): listing USB keys needs fido2's HID
    # transport only. The ceremony's client (fido2.client, its attestation
    # formats, cryptography's X.509) cost about 75 ms of that start.
    probe = ("import json, sys\n"
             "from pacd.presence.report import presence_methods_report\n"
             "names = [a.name for a in presence_methods_report(None, ())]\n"
             "print(json.dumps([names, sorted(sys.modules)]))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=120, check=True)
    names, loaded = json.loads(out.stdout)
    assert names == ["FIDO2 security key (USB)", "fprintd", "touchid", "windows-hello"]
    early = sorted(name for name in loaded
                   if name.startswith(("fido2.client", "fido2.webauthn", "fido2.attestation",
                                       "cryptography.x509", "pacd.presence.client")))
    assert early == [], early


def test_looking_for_a_podman_socket_does_not_load_podman_py(tmp_path: Path) -> None:
    # The daemon asks this before it connects: with no socket there, it never loads
    # the adapter at all.
    probe = ("import sys; from pacd.runtime.podman_url import no_podman_socket; "
             f"said = no_podman_socket('unix://{tmp_path}/missing.sock', {{}}); "
             "print(said is not None, 'podman' in sys.modules, 'requests' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.split() == ["True", "False", "False"]


#: creates the keychain store as the daemon does, spying on keyring's discovery
_KEYCHAIN_PROBE = """
import json, sys
import keyring.backend
scans = []
discover = keyring.backend.get_all_keyring
def spy(*args, **kwargs):
    scans.append(1)
    return discover(*args, **kwargs)
keyring.backend.get_all_keyring = spy
from pacd.errors import KeychainError
from pacd.vault.keychain import KeyringSecretStore
try:
    said = KeyringSecretStore("pacd-test:choice", timeout_s=60).backend_name
except KeychainError as exc:
    said = f"{type(exc).__name__}: {exc}"
print(json.dumps({"said": said, "scans": len(scans),
                  "backends": sorted(m for m in sys.modules if m.startswith("keyring.backends."))}))
"""


def _choose_keychain(tmp_path: Path, **env: str) -> dict[str, object]:
    # No keyring configuration of this host or run: the platform's own choice.
    environ = {k: v for k, v in os.environ.items() if k != "PYTHON_KEYRING_BACKEND"}
    environ.update(XDG_CONFIG_HOME=str(tmp_path / "config"), **env)
    out = subprocess.run([sys.executable, "-c", _KEYCHAIN_PROBE], capture_output=True,
                         text=True, timeout=120, check=True, env=environ)
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_choosing_the_keychain_does_not_run_keyrings_discovery(tmp_path: Path) -> None:
    # Whether or not this host has a keychain: the scan is never made.
    result = _choose_keychain(tmp_path)
    assert result["scans"] == 0, result
    if sys.platform.startswith("linux"):
        foreign = [m for m in result["backends"]  # type: ignore[attr-defined]
                   if m.startswith(("keyring.backends.macOS", "keyring.backends.Windows"))]
        assert foreign == [], result


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the Secret Service's bus")
def test_no_reachable_keychain_refuses_naming_each_backend(tmp_path: Path) -> None:
    # Fail closed: no keychain on the bus is KeychainUnavailable, never a fallback,
    # and it says why each of the platform's backends cannot serve.
    result = _choose_keychain(tmp_path,
                              DBUS_SESSION_BUS_ADDRESS=f"unix:path={tmp_path}/no-bus")
    said = str(result["said"])
    assert said.startswith("KeychainUnavailable: no secure keychain"), said
    assert "keyring.backends.SecretService.Keyring is not usable here" in said
    assert "keyring.backends.libsecret.Keyring is not usable here" in said
    assert "gnome-keyring" in said  # the fix
    assert result["scans"] == 0, result


def test_the_choice_made_ahead_of_need_is_already_vetted(tmp_path: Path) -> None:
    # keyring_backend() runs in the discovery thread and is cached: what it keeps
    # must have passed select_backend, so a backend that drops secrets is refused
    # there and nothing unvetted is ever kept for the store.
    probe = ("from pacd.errors import KeychainUnavailable\n"
             "from pacd.vault.keychain import keyring_backend\n"
             "try:\n"
             "    print('kept', type(keyring_backend()).__module__)\n"
             "except KeychainUnavailable as exc:\n"
             "    print('refused', exc)\n")
    environ = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config"),
               "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring"}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=120, check=True, env=environ)
    assert out.stdout.startswith("refused no secure keychain: keyring chose "
                                 "keyring.backends.null.Keyring"), out.stdout


class _DaemonStandIn(importlib.abc.Loader, importlib.abc.MetaPathFinder):
    """``pacd.daemon`` as the import system finds it, saying whether the cyclic
    collector ran while it was imported and when its main() was called."""

    def __init__(self) -> None:
        self.collector_on: dict[str, bool] = {}

    def find_spec(self, name: str, path: object, target: object = None) -> ModuleSpec | None:
        return importlib.util.spec_from_loader(name, self) if name == "pacd.daemon" else None

    def create_module(self, spec: ModuleSpec) -> None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        self.collector_on["importing"] = gc.isenabled()

        def main(config: object) -> int:
            self.collector_on["running"] = gc.isenabled()
            return 0

        module.main = main  # type: ignore[attr-defined]


def test_the_daemons_imports_run_with_the_collector_paused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import pacd
    import pacd.daemon
    from pacd import cli

    stand_in = _DaemonStandIn()
    monkeypatch.setattr(pacd, "daemon", pacd.daemon)  # put back afterwards
    monkeypatch.delitem(sys.modules, "pacd.daemon")
    monkeypatch.setattr(sys, "meta_path", [stand_in, *sys.meta_path])
    monkeypatch.setattr(cli, "load_config", lambda: types.SimpleNamespace(keystore="passphrase"))
    assert gc.isenabled()
    assert cli.cmd_daemon(argparse.Namespace(), None) == 0
    assert stand_in.collector_on == {"importing": False, "running": True}
    assert gc.isenabled()


def test_a_paused_collector_is_left_as_it_was() -> None:
    gc.disable()
    try:
        from pacd.cli import collector_paused

        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the caller's choice, not turned on behind its back
    finally:
        gc.enable()
