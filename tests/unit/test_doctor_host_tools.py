"""``pacd doctor`` names each program Podman needs for pacd's containers, and the
command that installs the missing ones. The search directories are handed in,
so a machine that lacks a piece is a directory that lacks the file."""

from __future__ import annotations

from pathlib import Path

from pacd.doctor import check_host_tools
from pacd.runtime.host_tools import HOST_TOOLS


def _bin_dir(base: Path, *names: str) -> Path:
    base.mkdir()
    for name in names:
        exe = base / name
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
    return base


def _by_name(checks: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    return {c["name"]: c for c in checks}


def test_doctor_names_a_missing_catatonit_and_the_apt_command_that_installs_it(
        tmp_path: Path) -> None:
    path = _bin_dir(tmp_path / "bin", "podman", "conmon", "runc")
    helpers = _bin_dir(tmp_path / "libexec")
    checks = _by_name(check_host_tools([path], [helpers], rootless=False, apt=True))
    catatonit = checks["runtime: catatonit"]
    # Podman is there, so a container create will fail: that is a failure, not a warning.
    assert catatonit["status"] == "fail"
    assert "catatonit not found" in catatonit["detail"]
    assert "init" in catatonit["detail"]
    assert catatonit["fix"].removeprefix("sudo ") == "apt-get install catatonit"
    assert checks["runtime: podman"] == {"name": "runtime: podman", "status": "ok",
                                         "detail": str(path / "podman"), "fix": ""}
    assert checks["runtime: conmon"]["status"] == "ok"
    assert checks["runtime: runc"]["status"] == "ok"
    # A root daemon runs rootful Podman: the rootless helpers are not asked for.
    assert not any(name.startswith("runtime: newuidmap") for name in checks)


def test_catatonit_only_on_path_is_still_missing_for_podman_init(tmp_path: Path) -> None:
    # Podman 4's --init stats /usr/libexec/podman/catatonit, not PATH.
    path = _bin_dir(tmp_path / "bin", "podman", "conmon", "runc", "catatonit")
    helpers = _bin_dir(tmp_path / "libexec")
    checks = _by_name(check_host_tools([path], [helpers], rootless=False, apt=True))
    assert checks["runtime: catatonit"]["status"] == "fail"
    found = _by_name(check_host_tools([path], [_bin_dir(tmp_path / "podman", "catatonit")],
                                      rootless=False, apt=True))
    assert found["runtime: catatonit"]["status"] == "ok"
    assert found["runtime: catatonit"]["detail"] == str(tmp_path / "podman" / "catatonit")


def test_an_empty_machine_gets_one_install_line_per_piece(tmp_path: Path) -> None:
    empty = _bin_dir(tmp_path / "empty")
    checks = check_host_tools([empty], [empty], rootless=True, apt=True)
    assert [c["name"] for c in checks] == [f"runtime: {t.name}" for t in HOST_TOOLS]
    # Without Podman at all containers are a missing feature (warn), not a broken one.
    assert {c["status"] for c in checks} == {"warn"}
    fixes = {c["name"]: c["fix"].removeprefix("sudo ") for c in checks}
    assert fixes["runtime: podman"] == "apt-get install podman"
    assert fixes["runtime: runc"] == "apt-get install runc"
    assert fixes["runtime: newuidmap"] == "apt-get install uidmap"
    assert fixes["runtime: slirp4netns"] == "apt-get install slirp4netns"
    assert "runc or crun not found" in _by_name(checks)["runtime: runc"]["detail"]


def test_without_apt_the_fix_names_the_package_for_any_package_manager(tmp_path: Path) -> None:
    empty = _bin_dir(tmp_path / "empty")
    catatonit = _by_name(check_host_tools([empty], [empty], rootless=False,
                                          apt=False))["runtime: catatonit"]
    assert "apt-get" not in catatonit["fix"]
    assert catatonit["fix"].startswith("install catatonit with your system's package manager")
