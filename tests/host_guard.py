"""What a test run must leave as it found it: the modes and owners of the shared
directories, and the OS's users and groups.

``snapshot`` reads the host; ``differences`` compares two snapshots and is pure,
so its rules are tested without changing anything on the machine.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

GUARDED_DIRS: tuple[str, ...] = ("/", "/tmp", "/var/tmp", "/run")


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
