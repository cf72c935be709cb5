"""The guard in tests/conftest.py sees a run that leaves the host changed: a shared
directory's mode or owner, a user or group added or removed. The comparison is
pure; two tests run the real guard in an inner pytest session: one changes its
HOME (a directory made for it), one leaves a process running."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.host_guard import (
    GUARDED_DIRS,
    RUN_MARKER,
    HostSnapshot,
    PodmanObject,
    created_in_events,
    differences,
    left_in_temp,
    processes_with_env,
    snapshot,
)

pytest_plugins = ["pytester"]

DIR = stat.S_IFDIR
ROOT_LINE = "root:x:0:0:root:/root:/bin/bash"
PEER_LINE = "pacd-peer-test:x:999:999::/home/pacd-peer-test:/usr/sbin/nologin"


def _host(tmp_mode: int = 0o1777, tmp_owner: int = 0, users: dict[str, str] | None = None,
          groups: dict[str, str] | None = None) -> HostSnapshot:
    return HostSnapshot({"/": (DIR | 0o755, 0, 0), "/tmp": (DIR | tmp_mode, tmp_owner, 0)},
                        users if users is not None else {"root": ROOT_LINE},
                        groups if groups is not None else {"root": "root:x:0:"})


def test_the_guard_watches_the_shared_directories_a_run_could_open() -> None:
    # /tmp lost its sticky bit once (a test widened every parent of its socket):
    # these are the directories every user shares.
    assert {"/", "/tmp", "/var/tmp", "/run"} <= set(GUARDED_DIRS)


def test_an_unchanged_host_has_no_differences() -> None:
    assert differences(_host(), _host()) == []


def test_tmp_losing_its_sticky_bit_is_named() -> None:
    assert differences(_host(), _host(tmp_mode=0o777)) == [
        "/tmp: mode 1777 owner 0:0 -> mode 0777 owner 0:0"]


def test_a_changed_owner_is_named() -> None:
    assert differences(_host(), _host(tmp_owner=1000)) == [
        "/tmp: mode 1777 owner 0:0 -> mode 1777 owner 1000:0"]


def test_a_user_left_behind_is_named() -> None:
    after = _host(users={"root": ROOT_LINE, "pacd-peer-test": PEER_LINE})
    assert differences(_host(), after) == [f"user 'pacd-peer-test' added: {PEER_LINE}"]


def test_a_removed_group_and_an_edited_user_are_named() -> None:
    before = _host(groups={"root": "root:x:0:", "peers": "peers:x:998:"})
    after = _host(users={"root": "root:x:0:0:root:/root:/bin/sh"})
    assert differences(before, after) == [
        f"user 'root' changed: {ROOT_LINE} -> root:x:0:0:root:/root:/bin/sh",
        "group 'peers' removed: peers:x:998:",
    ]


def test_snapshot_reads_modes_owners_and_entries(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text(f"{ROOT_LINE}\n")
    (etc / "group").write_text("root:x:0:\n")
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    before = snapshot([str(shared), str(tmp_path / "missing")], etc)
    assert before.users == {"root": ROOT_LINE}
    assert before.dirs[str(tmp_path / "missing")] is None
    shared.chmod(0o777)
    (etc / "passwd").write_text(f"{ROOT_LINE}\n{PEER_LINE}\n")
    after = snapshot([str(shared), str(tmp_path / "missing")], etc)
    uid, gid = os.getuid(), os.getgid()
    assert differences(before, after) == [
        f"{shared}: mode 0755 owner {uid}:{gid} -> mode 0777 owner {uid}:{gid}",
        f"user 'pacd-peer-test' added: {PEER_LINE}",
    ]


def test_an_entry_new_in_a_temporary_directory_is_named() -> None:
    before = HostSnapshot({}, {}, {}, frozenset({"/tmp/kept"}))
    after = HostSnapshot({}, {}, {}, frozenset({"/tmp/kept", "/var/tmp/wine-x", "/tmp/mldbm"}))
    assert left_in_temp(before, after) == ["/tmp/mldbm: left behind",
                                           "/var/tmp/wine-x: left behind"]
    # One that went away is not this guard's business (another program's).
    assert left_in_temp(after, before) == []


def test_snapshot_lists_the_temporary_directories(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").write_text("")
    taken = snapshot([], temp_dirs=[str(tmp_path), str(tmp_path / "absent")])
    assert taken.temp == {str(tmp_path / "a"), str(tmp_path / "b")}


GUARD_CONFTEST = "from tests.conftest import host_left_as_found  # noqa: F401\n"


def _guarded_inner_run(pytester: pytest.Pytester, test_source: str,
                       *args: str) -> pytest.RunResult:
    """An inner pytest run of ``test_source`` under this suite's session guard."""
    pytester.makeconftest(GUARD_CONFTEST)
    pytester.makepyfile(test_source)
    return pytester.runpytest_inprocess(*args)


def _run_leaving_a_file_in_tmp(pytester: pytest.Pytester,
                               *args: str) -> tuple[pytest.RunResult, Path]:
    left = Path("/tmp") / f"pacd-guard-probe-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        result = _guarded_inner_run(pytester, f"""
            def test_leaves_a_file():
                with open({str(left)!r}, "w") as f:
                    f.write("left")
            """, *args)
    finally:
        left.unlink(missing_ok=True)
    return result, left


def test_the_session_guard_fails_a_ci_run_that_leaves_a_file_in_tmp(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACD_REQUIRE_SYSTEM", "1")
    result, left = _run_leaving_a_file_in_tmp(pytester)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*the test run left the host changed*",
                                 f"*{left}: left behind*"])


def test_outside_ci_a_file_left_in_tmp_is_a_warning(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    # Another program of a developer's machine may write there meanwhile.
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("PACD_REQUIRE_SYSTEM", raising=False)
    result, left = _run_leaving_a_file_in_tmp(pytester, "-W", "default")
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(["*may have left these behind*", f"*{left}: left behind*"])


def test_the_session_guard_fails_a_run_that_changes_home(pytester: pytest.Pytester) -> None:
    # pytester gives the inner run its own HOME (a directory made for it), so the
    # inner test changes only that.
    home = os.environ["HOME"]
    mode = stat.S_IMODE(os.stat(home).st_mode)
    try:
        result = _guarded_inner_run(pytester, """
            import os

            def test_changes_home():
                os.chmod(os.environ["HOME"], 0o777)
            """)
    finally:
        os.chmod(home, mode)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines([
        "*the test run left the host changed*",
        f"*{home}: mode {mode:04o} owner * -> mode 0777 owner *",
    ])


def test_the_session_guard_fails_a_run_that_leaves_a_process_and_stops_it(
        pytester: pytest.Pytester, tmp_path: Path) -> None:
    pid_file = tmp_path / "leaked.pid"
    # Its own session, as a daemon a test forgot would be: ending the test does not end it.
    result = _guarded_inner_run(pytester, f"""
        import subprocess

        def test_leaves_a_sleeper():
            proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
            open({str(pid_file)!r}, "w").write(str(proc.pid))
        """)
    pid = int(pid_file.read_text())
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*the test run left the host changed*",
                                 f"*process {pid} still running: sleep 300*"])
    # Killed by the guard; only its zombie (our child, inprocess) may remain, unless
    # subprocess's own clean-up (at any later Popen of this process) reaped it first.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    assert not Path(f"/proc/{pid}").exists()


def test_a_process_without_the_runs_marker_is_not_counted(tmp_path: Path) -> None:
    entry = f"{RUN_MARKER}=probe-{os.getpid()}"
    env = {**os.environ, RUN_MARKER: entry.split("=", 1)[1]}
    marked = subprocess.Popen(["sleep", "300"], env=env)
    unmarked = subprocess.Popen(["sleep", "300"],
                                env={k: v for k, v in os.environ.items() if k != RUN_MARKER})
    try:
        found = processes_with_env(entry)
        assert found == {marked.pid: "sleep 300"}
    finally:
        for proc in (marked, unmarked):
            proc.kill()
            proc.wait()


def _event(kind: str, status: str, id_: str, name: str) -> str:
    return json.dumps({"ID": id_, "Name": name, "Status": status, "Type": kind,
                       "Time": "2026-01-01T00:00:00Z"})


def test_the_pods_and_containers_a_run_made_are_read_from_its_podman_events() -> None:
    lines = [
        _event("container", "create", "c1", "p-infra"),
        _event("pod", "create", "p", "pacd-1-writer"),
        _event("container", "create", "c2", "pacd-2-reader"),
        _event("container", "start", "c2", "pacd-2-reader"),
        json.dumps({"Name": "localhost/x:1", "Status": "pull", "Type": "image"}),
        _event("container", "create", "c3", "pacd-3-gone"),
        _event("container", "remove", "c3", "pacd-3-gone"),
        '{"ID": "c4", "Name": "cut off as the serv',
    ]
    assert created_in_events(lines) == [
        PodmanObject("container", "c1", "p-infra"), PodmanObject("pod", "p", "pacd-1-writer"),
        PodmanObject("container", "c2", "pacd-2-reader")]
