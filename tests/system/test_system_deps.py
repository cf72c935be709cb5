"""A fresh Debian machine gets every program pacd and its tests run from
``scripts/install-system-deps``.

For each program in ``PROGRAMS`` (the tests' and scripts' own) and in
``pacd.runtime.host_tools.HOST_TOOLS`` (what Podman runs for pacd), the test
finds the executable here, asks dpkg which package ships it, and fails when
that package is not installed by the script's ``PACKAGES`` list. A second test
keeps ``PROGRAMS`` honest: every program named literally in a subprocess call,
``shutil.which`` or ``command -v`` in the repository must be listed.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from pacd.runtime.host_tools import HOST_TOOLS, find_tool
from tests.conftest import require_system

ROOT = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = ROOT / "scripts" / "install-system-deps"


@dataclass(frozen=True)
class Program:
    name: str
    used_by: str
    #: the exact file used, when the user runs a fixed path rather than a PATH lookup
    path: str | None = None


PROGRAMS: tuple[Program, ...] = (
    Program("dbus-run-session", "scripts/dev-session (the private session bus)"),
    Program("gnome-keyring-daemon", "scripts/dev-session, scripts/run_dev.py (the real keychain)"),
    Program("mktemp", "scripts/dev-session (a fresh HOME)"),
    Program("sleep", "tests/unit/test_host_guard.py (a process a test leaves running)"),
    Program("apt-get", "scripts/install-system-deps, tests/podman_env.py (image packages)"),
    Program("dpkg-query", "scripts/install-system-deps (what is installed)"),
    Program("dpkg", "tests/podman_env.py (unpacks the Python test image)"),
    Program("dbus-daemon", "tests/fprintd_mock.py (a private bus for the fprintd double), "
            "scripts/run_dev.py (make run's session bus)"),
    Program("useradd", "tests/integration/test_peer.py (a second OS user)"),
    Program("userdel", "tests/integration/test_peer.py (removes that user)"),
    Program("runuser", "tests/integration/test_peer.py (connects as that user)"),
    Program("python3", "tests/integration/test_peer.py (an interpreter any user can run)",
            "/usr/bin/python3"),
    Program("mount", "tests/integration/test_audit_decisions.py (a full disk)"),
    Program("umount", "tests/integration/test_audit_decisions.py (a full disk)"),
    Program("busybox", "tests/podman_env.py (the offline test images)", "/bin/busybox"),
    Program("nsenter", "tests/pidns_connector.py (a connection from inside a container)"),
    Program("unshare", "tests/pidns_connector.py, bench/agent_bench.py (a stand-in container)"),
    Program("ss", "tests/system/test_agents.py (a listening socket's accept backlog)"),
    Program("ip", "Podman (container network setup)"),
    Program("fuse-overlayfs", "rootless Podman on kernels without native overlay"),
    Program("Xvfb", "the tray on a machine without a display (make run)"),
    Program("dpkg-deb", "packaging/linux/build-deb (make package)"),
    Program("strip", "packaging/linux/build-deb (the bundled shared objects)"),
    Program("ldd", "packaging/linux/trim-qt (the Qt libraries the tray needs)"),
    Program("lintian", "packaging/linux/test-deb"),
    Program("systemd-analyze", "packaging/linux/test-deb (verifies the user units)"),
    Program("systemd-socket-activate", "packaging/linux/test-deb (socket activation)"),
    Program("makensis", "tests/system/test_packaging.py (the Windows installer)"),
    Program("wine", "tests/system/test_packaging.py (installs and uninstalls it)"),
    Program("wineserver", "tests/system/test_packaging.py (waits for wine's processes)"),
    Program("trayer", "scripts/screenshots (a tray host on the private X server)"),
    Program("xdotool", "scripts/screenshots (finds and clicks the tray's windows)"),
    Program("import", "scripts/screenshots (ImageMagick: saves the PNGs)"),
)

#: programs only tests that run on Windows call (skipped elsewhere): no Debian package
WINDOWS_ONLY: dict[str, str] = {
    "icacls": "tests/unit/test_windows_start_real.py (grants Everyone access to a file)",
}

#: everything the test resolves, by name: the tests' programs and Podman's helpers
EXPECTED = sorted({p.name for p in PROGRAMS} | {n for t in HOST_TOOLS for n in t.names[:1]})


def install_list() -> list[str]:
    """``PACKAGES`` of scripts/install-system-deps, the one list of what to install."""
    match = re.search(r'^PACKAGES="([^"]*)"', INSTALL_SCRIPT.read_text(), re.MULTILINE)
    assert match, f"no PACKAGES=\"...\" in {INSTALL_SCRIPT}"
    return match.group(1).split()


def _merged_usr_aliases(path: str) -> list[str]:
    # On merged-/usr Debian /bin is /usr/bin, but dpkg records the path the
    # package shipped, which may be either spelling.
    aliases = [path]
    for short in ("/bin/", "/sbin/", "/lib/"):
        if path.startswith(short):
            aliases.append("/usr" + path)
        elif path.startswith("/usr" + short):
            aliases.append(path.removeprefix("/usr"))
    return aliases


def owning_package(path: Path) -> str | None:
    """The Debian package whose file list has ``path`` (or the file a link resolves to)."""
    spellings = list(dict.fromkeys(
        [*_merged_usr_aliases(str(path)), *_merged_usr_aliases(os.path.realpath(path))]))
    # One query for all spellings (dpkg reads every file list each time); it exits
    # non-zero when any spelling is unknown, which is expected here.
    out = subprocess.run(["dpkg-query", "-S", *spellings], capture_output=True, text=True,
                         check=False)
    owners: dict[str, str] = {}
    for line in out.stdout.splitlines():
        packages, _, file = line.partition(": ")
        if not line.startswith("diversion by"):
            owners[file] = packages.split(",")[0].strip().split(":")[0]
    return next((owners[s] for s in spellings if s in owners), None)


@cache
def installed_by_script() -> dict[str, str]:
    """Package → why a machine that ran the script has it: listed, part of every
    Debian system (Essential, or Priority required, which even a minimal
    debootstrap installs), or a hard dependency (no alternatives) of one of those."""
    fields = subprocess.run(
        ["dpkg-query", "-W", "-f",
         "${Package}\t${Essential}\t${Priority}\t${Pre-Depends}, ${Depends}\n"],
        capture_output=True, text=True, check=True).stdout
    base: list[str] = []
    depends: dict[str, list[str]] = {}
    for line in fields.splitlines():
        package, essential, priority, deps = line.split("\t")
        if essential == "yes" or priority == "required":
            base.append(package)
        depends[package] = [d.split("(")[0].split(":")[0].strip() for d in deps.split(",")
                            if d.strip() and "|" not in d]
    why = {p: "in PACKAGES" for p in install_list()}
    why.update({p: "on every Debian system" for p in base if p not in why})
    todo = list(why)
    while todo:
        package = todo.pop()
        for dep in depends.get(package, []):
            if dep and dep not in why:
                why[dep] = f"a dependency of {package}"
                todo.append(dep)
    return why


def resolve(name: str) -> Path | None:
    for tool in HOST_TOOLS:
        if tool.name == name:
            return find_tool(tool)
    program = next(p for p in PROGRAMS if p.name == name)
    if program.path is not None:
        return Path(program.path) if os.access(program.path, os.X_OK) else None
    # sbin is not on a desktop user's PATH but useradd, runuser and ip live there.
    found = shutil.which(name, path=os.pathsep.join(
        [os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"]))
    return Path(found) if found else None


@pytest.mark.system
def test_install_list_is_a_list_of_package_names() -> None:
    packages = install_list()
    assert {"podman", "runc", "conmon", "catatonit"} <= set(packages)
    assert all(re.fullmatch(r"[a-z0-9][a-z0-9+.-]+", p) for p in packages), packages


@pytest.mark.system
@pytest.mark.parametrize("name", EXPECTED)
def test_install_script_installs_the_package_of(name: str) -> None:
    if shutil.which("dpkg-query") is None:
        require_system("dpkg-query (a Debian system)")
    path = resolve(name)
    if path is None:
        require_system(f"{name}: not found here; scripts/install-system-deps installs it")
        return
    package = owning_package(path)
    assert package is not None, f"{name} ({path}) belongs to no Debian package"
    for tool in HOST_TOOLS:
        if tool.name == name:
            # What pacd doctor tells the owner to install must be what ships it.
            assert package == tool.package, (
                f"pacd doctor says `apt-get install {tool.package}` for {name}, "
                f"but {path} is in {package}")
    assert package in installed_by_script(), (
        f"{name} ({path}) is in Debian package {package!r}, which "
        f"scripts/install-system-deps does not install: add it to PACKAGES")


# --- the list of programs is complete -------------------------------------------------

_SUBPROCESS_CALLS = {"run", "Popen", "call", "check_call", "check_output",
                     "create_subprocess_exec"}


def _literal_programs(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        first = node.args[0]
        if called in ("which", "create_subprocess_exec") and isinstance(first, ast.Constant):
            yield str(first.value)
        elif called in _SUBPROCESS_CALLS and isinstance(first, ast.List) and first.elts:
            head = first.elts[0]
            if isinstance(head, ast.Constant) and isinstance(head.value, str):
                yield head.value


def programs_named_in_the_repository() -> dict[str, str]:
    found: dict[str, str] = {}
    for top in ("pacd", "gui", "tests", "bench", "scripts"):
        for path in sorted((ROOT / top).rglob("*.py")):
            for name in _literal_programs(ast.parse(path.read_text(), str(path))):
                found.setdefault(name, str(path.relative_to(ROOT)))
    for path in sorted((ROOT / "scripts").iterdir()):
        if path.suffix == "" and path.is_file():
            for name in re.findall(r"command -v ([\w.+-]+)", path.read_text()):
                found.setdefault(name, str(path.relative_to(ROOT)))
    return found


def test_every_program_the_repository_runs_is_checked() -> None:
    named = programs_named_in_the_repository()
    # the scan sees the programs it must (a scan that finds nothing proves nothing)
    assert {"useradd", "runuser", "dbus-daemon", "podman", "gnome-keyring-daemon"} <= set(named)
    unchecked = {name: where for name, where in named.items()
                 if name not in EXPECTED and name not in WINDOWS_ONLY}
    assert not unchecked, (
        f"programs run but not in tests/system/test_system_deps.py PROGRAMS: {unchecked}")
