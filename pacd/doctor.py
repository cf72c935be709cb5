"""``pacd doctor``: check every dependency here and say how to fix each.

Each check is ``{"name", "status": ok|warn|fail, "detail", "fix"}``. ``fail``
means pacd cannot work as configured (no keychain, unsafe socket directory);
``warn`` means a feature is missing (no Podman, no presence method yet).

When a daemon answers, its keychain, Podman and presence methods are what pacd
uses, and they may not be what this shell sees (``make run`` gives the daemon
a private keychain and Podman service): doctor then reports the daemon's view
(from ``GET /v1/status``) under the plain names, and this shell's own result
next to it as ``… (this shell)`` wherever the two differ. A keychain this
shell cannot reach is a warning then, not a failure: the daemon holds the keys
(only ``--demo`` needs the keychain on this side).
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pacd.config import Config
from pacd.errors import PacdError

Check = dict[str, Any]


def _check(name: str, status: str, detail: str, fix: str = "") -> Check:
    return {"name": name, "status": status, "detail": detail, "fix": fix}


def check_keychain(config: Config) -> Check:
    from pacd.vault.keychain import open_secret_store

    try:
        store = open_secret_store(config)
        store.get("pacd-doctor-probe")
    except PacdError as exc:
        return _check("keychain", "fail", exc.message,
                      "unlock or start your OS keychain, or configure the passphrase keystore")
    return _check("keychain", "ok", f"{store.backend_name} ({config.keystore})")


def check_socket(config: Config) -> tuple[list[Check], dict[str, Any] | None]:
    """The socket directory and the daemon; with the daemon's status when it answers."""
    from pacd.client import Client

    checks: list[Check] = []
    status: dict[str, Any] | None = None
    directory = config.socket.parent
    if directory.exists():
        st = os.lstat(directory)
        if st.st_uid != os.getuid() or st.st_mode & 0o077 or not stat.S_ISDIR(st.st_mode):
            checks.append(_check("socket directory", "fail",
                                 f"{directory} is mode {stat.S_IMODE(st.st_mode):04o}, uid "
                                 f"{st.st_uid}", f"chmod 700 {directory} (and own it)"))
        else:
            checks.append(_check("socket directory", "ok", f"{directory} (0700, yours)"))
    else:
        checks.append(_check("socket directory", "ok",
                             f"{directory} will be created 0700 by the daemon"))
    try:
        status = Client(config, use_token_cache=False, timeout=5).status()
        checks.append(_check("daemon", "ok", f"pacd {status['version']} on {config.socket}"))
    except PacdError as exc:
        checks.append(_check("daemon", "warn", exc.message,
                             "pacd daemon   (or: systemctl --user start pacd)"))
    return checks, status


def podman_socket(config: Config) -> Path | None:
    url = config.podman_url
    if url:
        return Path(url.removeprefix("unix://")) if url.startswith(("unix://", "/")) else None
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    candidates = [Path(runtime) / "podman" / "podman.sock"] if runtime else []
    candidates.append(Path("/run/podman/podman.sock"))
    return next((c for c in candidates if c.exists()), candidates[0])


def check_podman(config: Config) -> Check:
    path = podman_socket(config)
    fix = "systemctl --user enable --now podman.socket (or set PACD_PODMAN_URL)"
    if path is None:
        return _check("podman", "warn", f"unsupported PACD_PODMAN_URL {config.podman_url}", fix)
    conn = http.client.HTTPConnection("localhost", timeout=5)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    try:
        sock.connect(str(path))
        conn.sock = sock
        conn.request("GET", "/_ping")
        resp = conn.getresponse()
        body = resp.read().decode(errors="replace")
    except OSError as exc:
        return _check("podman", "warn", f"no Podman service at {path}: {exc.strerror or exc}",
                      fix)
    finally:
        conn.close()
    if resp.status != 200:
        return _check("podman", "warn", f"{path} answered HTTP {resp.status}", fix)
    return _check("podman", "ok", f"{path} ({body.strip()})")


def check_host_tools(path_dirs: Sequence[Path] | None = None,
                     helper_dirs: Sequence[Path] | None = None, *,
                     rootless: bool | None = None, apt: bool | None = None) -> list[Check]:
    """One check per program Podman runs for pacd's containers (``HOST_TOOLS``).

    ``path_dirs`` and ``helper_dirs`` say where to look (default: PATH plus the
    system directories, and Podman's helper directories); ``rootless`` and ``apt``
    default to what this process is and has."""
    from pacd.runtime.host_tools import HOST_TOOLS, find_tool, install_command

    root = os.geteuid() == 0
    rootless = not root if rootless is None else rootless
    apt = shutil.which("apt-get") is not None if apt is None else apt
    found = {t: find_tool(t, path_dirs, helper_dirs) for t in HOST_TOOLS
             if rootless or not t.rootless_only}
    podman_here = any(path is not None for t, path in found.items() if t.name == "podman")
    checks: list[Check] = []
    for tool, path in found.items():
        name = f"runtime: {tool.name}"
        if path is not None:
            checks.append(_check(name, "ok", str(path)))
            continue
        where = " or ".join(tool.names)
        # Without Podman containers are simply unavailable (warn); with Podman but
        # without this piece, creating a container fails (fail).
        checks.append(_check(name, "fail" if podman_here else "warn",
                             f"{where} not found: needed for {tool.needed_for}",
                             install_command([tool.package], apt=apt, root=root)))
    return checks


def check_presence(config: Config | None = None) -> list[Check]:
    try:
        from pacd.presence.report import presence_methods_report

        report = (presence_methods_report() if config is None else
                  presence_methods_report(config.fprintd_bus_address, config.platform_presence))
    except Exception as exc:  # a broken probe is itself a finding
        return [_check("presence", "warn", f"cannot list presence methods: {exc}")]
    checks = [_check(f"presence: {a.name}", "ok" if a.available else "warn", a.reason)
              for a in report]
    if not any(a.available for a in report):
        checks.append(_check("presence", "warn", "no presence method is available here",
                             "plug in a FIDO2 security key"))
    return checks


def check_fprintd_bus(config: Config) -> list[Check]:
    """Named whenever fprintd is not reached on the system bus: a bus that answers
    "match" opens biometric sessions, so the owner must know it is not the real one."""
    if config.fprintd_bus_address is None:
        return []
    return [_check("fprintd bus", "warn",
                   f"fprintd is reached on {config.fprintd_bus_address}, not the system bus: "
                   "whatever answers there can open biometric sessions",
                   f"remove fprintd_bus_address from {config.config_path} unless this is a "
                   "test bus you run yourself")]


# --- the daemon's view ------------------------------------------------------------

THIS_SHELL = " (this shell)"


def _own(check: Check, status: str | None = None, fix: str | None = None) -> Check:
    """This shell's result of a check, labelled as such."""
    return {**check, "name": check["name"] + THIS_SHELL,
            "status": status or check["status"], "fix": check["fix"] if fix is None else fix}


def daemon_keychain(status: dict[str, Any], own: Check) -> list[Check]:
    backend = f"{status['keychain_backend']} ({status.get('keystore', 'keychain')})"
    error = (status.get("audit") or {}).get("checkpoint_error")
    if error:
        ours = _check("keychain", "warn",
                      f"the daemon's: {backend}, but its audit checkpoint write failed "
                      f"{error['count']} time(s): {error['message']}",
                      "unlock the keychain the daemon uses (pacd status shows the audit)")
    else:
        ours = _check("keychain", "ok", f"the daemon's: {backend}")
    if own["status"] == "ok" and own["detail"] == backend:
        return [ours]
    # The daemon holds the keys; this shell needs the keychain only for --demo.
    return [ours, _own(own, "warn" if own["status"] == "fail" else own["status"],
                       "only pacd --demo needs this shell to reach the daemon's keychain; "
                       "with make run: . .dev/env")]


def daemon_podman(status: dict[str, Any], own: Check, own_path: Path | None) -> list[Check]:
    fix = "systemctl --user enable --now podman.socket (or set podman_url for the daemon)"
    view = status.get("podman")
    if view is None:
        ours = _check("podman", "warn", "the daemon runs without a container runtime", fix)
        url = None
    else:
        url = view.get("url")
        ours = (_check("podman", "ok", f"the daemon's: {url}") if view["connected"] else
                _check("podman", "warn", f"the daemon's: {view['detail']}", fix))
    daemon_path = Path(url.removeprefix("unix://")) if url else None
    # Not connected, the daemon names no socket: then only the verdicts can differ.
    if own["status"] == ours["status"] and daemon_path in (None, own_path):
        return [ours]
    return [ours, _own(own)]


def daemon_presence(status: dict[str, Any], own: list[Check]) -> list[Check]:
    methods = status.get("presence_methods") or []
    checks = [_check(f"presence: {p['name']}", "ok" if p["available"] else "warn",
                     f"the daemon's: {p['detail']}") for p in methods]
    if not any(p["available"] for p in methods):
        checks.append(_check("presence", "warn",
                             "the daemon sees no presence method available",
                             "plug in a FIDO2 security key"))
    seen = {c["name"]: c["status"] for c in checks}
    checks += [_own(c) for c in own if seen.get(c["name"]) != c["status"]]
    demo = status.get("demo_authenticator") or {}
    if demo.get("allowed"):
        checks.append(_check("presence: demo authenticator", "warn",
                             f"the daemon accepts the software demo key (NOT secure); "
                             f"{demo.get('enrolled', 0)} enrolled",
                             "remove allow_software_authenticator from the daemon's "
                             "config.toml outside a trial"))
    return checks


def run_checks(config: Config) -> list[Check]:
    keychain = check_keychain(config)
    socket_checks, status = check_socket(config)
    podman = check_podman(config)
    presence = check_presence(config)
    if status is None:
        return [keychain, *socket_checks, podman, *check_host_tools(), *presence,
                *check_fprintd_bus(config)]
    return [*daemon_keychain(status, keychain), *socket_checks,
            *daemon_podman(status, podman, podman_socket(config)), *check_host_tools(),
            *daemon_presence(status, presence), *check_fprintd_bus(config)]
