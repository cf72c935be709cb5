"""What a test run must leave as it found it: the modes and owners of the shared
directories, the OS's users and groups, and no process of its own still running.

``snapshot`` reads the host; ``differences`` compares two snapshots and is pure,
so its rules are tested without changing anything on the machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

GUARDED_DIRS: tuple[str, ...] = ("/", "/tmp", "/var/tmp", "/run")

#: Set in the environment of the test run, so every process a test starts (and
#: everything those start, unless they clear their environment) carries it.
RUN_MARKER = "PACD_TEST_RUN"


@dataclass(frozen=True)
class HostSnapshot:
    #: path → (full st_mode, uid, gid); None for a path that does not exist
    dirs: dict[str, tuple[int, int, int] | None]
    #: user name → its whole /etc/passwd line
    users: dict[str, str]
    #: group name → its whole /etc/group line
    groups: dict[str, str]


def _entries(path: Path) -> dict[str, str]:
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    return {line.split(":", 1)[0]: line for line in lines if line and not line.startswith("#")}


def snapshot(dirs: Iterable[str], etc: Path = Path("/etc")) -> HostSnapshot:
    state: dict[str, tuple[int, int, int] | None] = {}
    for directory in dirs:
        try:
            st = os.lstat(directory)
        except FileNotFoundError:
            state[directory] = None
        else:
            state[directory] = (st.st_mode, st.st_uid, st.st_gid)
    return HostSnapshot(state, _entries(etc / "passwd"), _entries(etc / "group"))


def _describe(entry: tuple[int, int, int] | None) -> str:
    if entry is None:
        return "absent"
    mode, uid, gid = entry
    return f"mode {mode & 0o7777:04o} owner {uid}:{gid}"


def _entry_changes(kind: str, before: dict[str, str], after: dict[str, str]) -> list[str]:
    changes = [f"{kind} {name!r} added: {after[name]}" for name in after if name not in before]
    changes += [f"{kind} {name!r} removed: {before[name]}" for name in before if name not in after]
    changes += [f"{kind} {name!r} changed: {before[name]} -> {after[name]}"
                for name in before if name in after and before[name] != after[name]]
    return changes


def differences(before: HostSnapshot, after: HostSnapshot) -> list[str]:
    """Each change from ``before`` to ``after``, said so a reader can undo it."""
    changes = [f"{path}: {_describe(before.dirs.get(path))} -> {_describe(after.dirs.get(path))}"
               for path in dict.fromkeys([*before.dirs, *after.dirs])
               if before.dirs.get(path) != after.dirs.get(path)]
    changes += _entry_changes("user", before.users, after.users)
    changes += _entry_changes("group", before.groups, after.groups)
    return changes


def processes_with_env(entry: str, proc: Path = Path("/proc")) -> dict[int, str]:
    """pid → command line of each process whose environment holds ``entry``
    ("NAME=value") exactly; zombies have no environment and are not listed."""
    needle = entry.encode()
    found: dict[int, str] = {}
    for pid_dir in proc.iterdir():
        if not pid_dir.name.isdigit() or int(pid_dir.name) == os.getpid():
            continue
        try:
            if needle not in (pid_dir / "environ").read_bytes().split(b"\0"):
                continue
            argv = (pid_dir / "cmdline").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        found[int(pid_dir.name)] = " ".join(a.decode(errors="replace") for a in argv if a)
    return found


def stop_left_running(entry: str, grace_s: float = 5.0) -> list[str]:
    """Waits up to ``grace_s`` for processes carrying ``entry`` to end (one may be
    exiting as the run ends), then kills those left and names each."""
    deadline = time.monotonic() + grace_s
    while (left := processes_with_env(entry)) and time.monotonic() < deadline:
        time.sleep(0.05)  # polling the process table; no event says "a process ended"
    for pid in left:
        with contextlib.suppress(ProcessLookupError):  # ended meanwhile
            os.kill(pid, signal.SIGKILL)
    return [f"process {pid} still running: {cmd}" for pid, cmd in sorted(left.items())]
