"""What a user installs works: the wheel from ``python -m build`` installed with
pipx into a fresh venv runs a daemon its own CLI reaches, and the Linux .deb
(``packaging/linux/test-deb``) installs, socket-activates and purges cleanly.

Everything is built and installed under ``tmp_path`` with its own
``PACD_HOME``/``PACD_SOCKET``; the .deb test changes the host's dpkg database
and purges its package again in a ``finally``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_system

ROOT = Path(__file__).resolve().parents[2]

#: what a source checkout has that is not source (the copy to build from leaves them out)
_NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info",
                                     "__pycache__", ".*_cache", ".hypothesis", ".dev")


def _build(tmp_path: Path) -> Path:
    """``python -m build`` on a copy of the tree, so the checkout gets no build/ or egg-info."""
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=_NOT_SOURCE)
    dist = tmp_path / "dist"
    result = subprocess.run([sys.executable, "-m", "build", "--outdir", str(dist), str(source)],
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return dist


def _wait_for_status(pacd: Path, env: dict[str, str], daemon: subprocess.Popen[bytes],
                     log: Path, timeout: float = 60.0) -> dict[str, object]:
    """Asks the installed CLI until the daemon answers (or exits, or time runs out)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            pytest.fail(f"daemon exited with {daemon.returncode}:\n{log.read_text()}")
        result = subprocess.run([str(pacd), "status", "--json"], env=env, capture_output=True,
                                text=True, timeout=30, check=False)
        if result.returncode == 0:
            status: dict[str, object] = json.loads(result.stdout)
            return status
        last = result.stdout + result.stderr
        time.sleep(0.2)
    pytest.fail(f"installed daemon never answered `pacd status`: {last}\n{log.read_text()}")


@pytest.fixture
def stopped_afterwards() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@pytest.mark.system
def test_the_wheel_installed_with_pipx_runs_a_daemon_its_own_cli_reaches(
        tmp_path: Path, real_keychain: str,
        stopped_afterwards: list[subprocess.Popen[bytes]]) -> None:
    dist = _build(tmp_path)
    wheels = sorted(dist.glob("pacd-*-py3-none-any.whl"))
    sdists = sorted(dist.glob("pacd-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in dist.iterdir())
    with zipfile.ZipFile(wheels[0]) as wheel:
        entry_points = next(wheel.read(n).decode() for n in wheel.namelist()
                            if n.endswith(".dist-info/entry_points.txt"))
        assert "pacd = pacd.cli:main" in entry_points
        assert "pacd-tray = gui.launch:main" in entry_points
        assert "gui/icons/pacd.svg" in wheel.namelist()

    pipx_home = tmp_path / "pipx"
    bin_dir = tmp_path / "bin"
    pipx_env = {**os.environ, "PIPX_HOME": str(pipx_home), "PIPX_BIN_DIR": str(bin_dir),
                "PIPX_MAN_DIR": str(tmp_path / "man"),
                "PIPX_SHARED_LIBS": str(tmp_path / "pipx-shared")}
    installed = subprocess.run(
        [sys.executable, "-m", "pipx", "install", str(wheels[0])],
        env=pipx_env, capture_output=True, text=True, timeout=600, check=False)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    pacd = bin_dir / "pacd"
    assert pacd.exists() and (bin_dir / "pacd-tray").exists()
    # the commands are the venv pipx made, not this checkout's
    venv_python = pipx_home / "venvs" / "pacd" / "bin" / "python"
    origin = subprocess.run([str(venv_python), "-c", "import pacd; print(pacd.__file__)"],
                            capture_output=True, text=True, timeout=60, check=True,
                            cwd=tmp_path).stdout.strip()
    assert origin.startswith(str(pipx_home)), origin
    # without the gui extra the tray says what to install instead of a traceback
    tray = subprocess.run([str(bin_dir / "pacd-tray")], capture_output=True, text=True,
                          timeout=60, check=False)
    assert tray.returncode == 2, tray.stdout + tray.stderr
    assert "pacd[gui]" in tray.stderr and "Traceback" not in tray.stderr

    _assert_daemon_answers_its_cli_and_stops(pacd, tmp_path, stopped_afterwards)


def _assert_daemon_answers_its_cli_and_stops(
        pacd: Path, tmp_path: Path, stopped_afterwards: list[subprocess.Popen[bytes]]) -> None:
    """``pacd daemon`` from the installed command answers that command's ``pacd status``
    and ends cleanly on SIGTERM, after which the same CLI says the daemon is gone."""
    home = tmp_path / "home"
    config = tmp_path / "config.toml"
    config.write_text("")
    env = {**os.environ, "PACD_HOME": str(home), "PACD_SOCKET": str(tmp_path / "run" / "s.sock"),
           "PACD_CONFIG": str(config)}
    env.pop("PACD_TOKEN", None)
    log = tmp_path / "daemon.log"
    with log.open("ab") as out:
        daemon = subprocess.Popen([str(pacd), "daemon"], env=env, cwd=tmp_path,
                                  stdout=out, stderr=subprocess.STDOUT)
    stopped_afterwards.append(daemon)
    status = _wait_for_status(pacd, env, daemon, log)
    assert status["reachable"] is True
    assert status["version"] == _version()

    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(30) == 0, log.read_text()
    gone = subprocess.run([str(pacd), "status", "--json"], env=env, capture_output=True,
                          text=True, timeout=30, check=False)
    assert gone.returncode == 11  # daemon_unavailable: one situation, one exit code
    assert json.loads(gone.stdout)["error"]["code"] == "daemon_unavailable"


def _version() -> str:
    from pacd import __version__
    return __version__


CANNOT_RUN_HERE = 77  # packaging/linux/test-deb: not root, not Debian, or pacd already installed


@pytest.mark.system
def test_the_deb_installs_answers_from_its_activated_socket_and_purges_without_a_trace(
        real_keychain: str) -> None:
    """packaging/linux/test-deb: build, lintian (no errors), install, systemd-analyze
    --user verify, the bundled Qt, socket activation answering the installed
    ``pacd status``, purge leaving no unit enabled and no file installed."""
    if shutil.which("dpkg") is None or os.geteuid() != 0:
        require_system("root on a Debian system (the test installs and purges the .deb)")
    result = subprocess.run([str(ROOT / "packaging" / "linux" / "test-deb")],
                            capture_output=True, text=True, timeout=900, check=False)
    if result.returncode == CANNOT_RUN_HERE:
        require_system(result.stderr.strip())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "== passed" in result.stdout


def _freeze(spec: str, tmp_path: Path) -> Path:
    """A PyInstaller one-dir build of ``packaging/freeze/<spec>.spec`` under ``tmp_path``.

    Offline by construction: PyInstaller only collects what the venv already has.
    """
    pyinstaller = Path(sys.executable).parent / "pyinstaller"
    if not pyinstaller.exists():
        require_system("PyInstaller in the venv (the freeze extra, part of dev)")
    result = subprocess.run(
        [str(pyinstaller), "--noconfirm", "--log-level", "WARN",
         "--distpath", str(tmp_path / "dist"), "--workpath", str(tmp_path / "work"),
         str(ROOT / "packaging" / "freeze" / f"{spec}.spec")],
        capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    return tmp_path / "dist" / spec


@pytest.mark.system
def test_the_frozen_daemon_bundle_runs_a_daemon_its_own_cli_reaches(
        tmp_path: Path, real_keychain: str,
        stopped_afterwards: list[subprocess.Popen[bytes]]) -> None:
    bundle = _freeze("pacd", tmp_path)
    pacd = bundle / "pacd"
    # the daemon bundle carries no Qt and none of the build venv's test tools
    internal = {p.name for p in (bundle / "_internal").iterdir()}
    assert not internal & {"PySide6", "pytest", "hypothesis", "mypy", "pydantic_core"}, internal
    version = subprocess.run([str(pacd), "--version"], capture_output=True, text=True,
                             timeout=60, check=False, cwd=tmp_path,
                             env={**os.environ, "PYTHONPATH": str(tmp_path / "nowhere")})
    assert version.returncode == 0, version.stdout + version.stderr
    assert version.stdout.strip() == f"pacd {_version()}"
    _assert_daemon_answers_its_cli_and_stops(pacd, tmp_path, stopped_afterwards)


@pytest.mark.system
def test_the_frozen_tray_bundle_loads_qt_and_says_when_there_is_no_tray(
        tmp_path: Path) -> None:
    """The tray bundle imports the tray with its own Qt and platform plugins: with Qt's
    offscreen platform (which has no system tray) it starts, says so and exits 1."""
    bundle = _freeze("pacd-tray", tmp_path)
    assert (bundle / "_internal" / "gui" / "icons" / "pacd.svg").exists()
    tray = subprocess.run([str(bundle / "pacd-tray")], capture_output=True, text=True,
                          timeout=120, check=False, cwd=tmp_path,
                          env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert tray.returncode == 1, tray.stdout + tray.stderr
    assert "no system tray on this desktop" in tray.stderr
    assert "Traceback" not in tray.stderr


RUN_KEY = r"HKCU\Software\Microsoft\Windows\CurrentVersion\Run"
UNINSTALL_KEY = r"HKCU\Software\Microsoft\Windows\CurrentVersion\Uninstall\pacd"


@pytest.mark.system
def test_the_windows_installer_needs_no_admin_writes_its_run_key_and_uninstalls_without_a_trace(
        tmp_path: Path) -> None:
    """packaging/windows/pacd.nsi compiled with makensis (warnings are errors) and run
    silently under wine in a private prefix, with placeholder bundles: what only
    Windows shows (the real bundles starting, the uninstaller stopping a running
    tray and daemon) is the Windows CI job's."""
    for tool in ("makensis", "wine", "wineserver"):
        if shutil.which(tool) is None:
            require_system(f"{tool} (scripts/install-system-deps installs nsis and wine)")
    bundles = tmp_path / "bundles"
    for exe in ("pacd/pacd.exe", "pacd-tray/pacd-tray.exe"):
        (bundles / exe).parent.mkdir(parents=True)
        (bundles / exe).write_bytes(b"placeholder " + exe.encode())
    installer = tmp_path / "pacd-win64.exe"
    nsi = ROOT / "packaging" / "windows" / "pacd.nsi"
    # per user, no elevation: wine does not enforce UAC, so the script says it itself
    script = nsi.read_text()
    assert "RequestExecutionLevel user" in script.splitlines()
    assert 'InstallDir "$LOCALAPPDATA\\Programs\\pacd"' in script.splitlines()
    assert "HKLM" not in script and "$PROGRAMFILES" not in script
    built = subprocess.run(["makensis", "-V2", "-WX", f"-DVERSION={_version()}",
                            f"-DDIST={bundles}", f"-DOUTFILE={installer}", str(nsi)],
                           capture_output=True, text=True, timeout=300, check=False)
    assert built.returncode == 0, built.stdout + built.stderr
    assert installer.read_bytes()[:2] == b"MZ"

    (tmp_path / "home").mkdir()
    (tmp_path / "tmp").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    # TMPDIR: wineserver makes its socket directory (wine-XXXXXX) there and leaves it
    env.update(WINEPREFIX=str(tmp_path / "wine"), WINEDEBUG="-all", TMPDIR=str(tmp_path / "tmp"),
               # no Mono/Gecko download prompts, no menu entries in the real HOME
               WINEDLLOVERRIDES="mscoree,mshtml=;winemenubuilder.exe=d",
               HOME=str(tmp_path / "home"), XDG_DATA_HOME=str(tmp_path / "home" / "share"),
               XDG_CONFIG_HOME=str(tmp_path / "home" / "config"))

    def wine(*args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["wine", *args], env=env, capture_output=True, text=True,
                                timeout=300, check=False)
        # the installer and the uninstaller's copy of itself run on after wine returns
        subprocess.run(["wineserver", "-w"], env=env, timeout=300, check=True)
        return result

    def run_value() -> str | None:
        query = wine("reg", "query", RUN_KEY, "/v", "pacd")
        if query.returncode != 0:
            return None
        line = next(line for line in query.stdout.splitlines() if "REG_SZ" in line)
        return line.split("REG_SZ", 1)[1].strip()

    try:
        assert run_value() is None
        installed = wine(str(installer), "/S")
        assert installed.returncode == 0, installed.stdout + installed.stderr
        local = next((tmp_path / "wine" / "drive_c" / "users").glob("*/AppData/Local"))
        home = local / "Programs" / "pacd"
        assert (home / "pacd" / "pacd.exe").read_bytes() == b"placeholder pacd/pacd.exe"
        assert (home / "pacd-tray" / "pacd-tray.exe").exists()
        value = run_value()
        assert value is not None and value.startswith('"C:\\users\\')
        assert value.endswith('\\AppData\\Local\\Programs\\pacd\\pacd-tray\\pacd-tray.exe"')
        assert wine("reg", "query", UNINSTALL_KEY, "/v", "UninstallString").returncode == 0
        # the owner's data, which the uninstaller must keep
        (local / "pacd").mkdir()
        (local / "pacd" / "state.db").write_bytes(b"owner data")

        removed = wine(str(home / "uninstall.exe"), "/S")
        assert removed.returncode == 0, removed.stdout + removed.stderr
        assert run_value() is None
        assert wine("reg", "query", UNINSTALL_KEY).returncode != 0
        assert not home.exists(), sorted(str(p) for p in home.rglob("*"))
        assert (local / "pacd" / "state.db").read_bytes() == b"owner data"
    finally:
        subprocess.run(["wineserver", "-k"], env=env, timeout=60, check=False)
