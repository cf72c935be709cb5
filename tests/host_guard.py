"""What a test run must leave as it found it: the modes and owners of the shared
directories, the OS's users and groups, no process of its own still running, no
Podman pod or container it created, and nothing new in the shared temporary
directories.

``snapshot`` reads the host; ``differences`` compares two snapshots and is pure,
so its rules are tested without changing anything on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

GUARDED_DIRS: tuple[str, ...] = ("/", "/tmp", "/var/tmp", "/run")

#: Where a tool a test runs writes when nobody tells it where (lintian's cache,
#: wineserver's socket directory were found left there): whatever is new in them
#: at the end of a run was left behind.
TEMP_DIRS: tuple[str, ...] = ("/tmp", "/var/tmp")

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
    #: the path of each entry of the temporary directories
    temp: frozenset[str] = frozenset()


def _entries(path: Path) -> dict[str, str]:
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    return {line.split(":", 1)[0]: line for line in lines if line and not line.startswith("#")}


def snapshot(dirs: Iterable[str], etc: Path = Path("/etc"),
             temp_dirs: Iterable[str] = TEMP_DIRS) -> HostSnapshot:
    state: dict[str, tuple[int, int, int] | None] = {}
    for directory in dirs:
        try:
            st = os.lstat(directory)
        except FileNotFoundError:
            state[directory] = None
        else:
            state[directory] = (st.st_mode, st.st_uid, st.st_gid)
    temp: set[str] = set()
    for directory in temp_dirs:
        with contextlib.suppress(FileNotFoundError):
            temp.update(os.path.join(directory, name) for name in os.listdir(directory))
    return HostSnapshot(state, _entries(etc / "passwd"), _entries(etc / "group"),
                        frozenset(temp))


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


def left_in_temp(before: HostSnapshot, after: HostSnapshot) -> list[str]:
    """Each entry of the temporary directories that is new in ``after``."""
    return [f"{path}: left behind" for path in sorted(after.temp - before.temp)]


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


# --- Podman ----------------------------------------------------------------------

#: The file this run's Podman services log their events to (containers.conf
#: ``events_logfile_path``, see tests.podman_env): it names every pod and container
#: the run created, and nothing of another run sharing the host's Podman storage,
#: which a name prefix or a time window could not tell apart.
PODMAN_EVENTS = "PACD_TEST_PODMAN_EVENTS"


@dataclass(frozen=True)
class PodmanObject:
    kind: str  # "pod" or "container"
    id: str
    name: str


def created_in_events(lines: Iterable[str]) -> list[PodmanObject]:
    """The pods and containers Podman's event lines say were created and not removed
    since, in the order they were created."""
    made: dict[str, PodmanObject] = {}
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:  # a line cut off as the service stopped
            continue
        if not isinstance(event, dict) or event.get("Type") not in ("pod", "container"):
            continue
        key = f"{event['Type']}:{event.get('ID', '')}"
        if event.get("Status") == "create":
            made[key] = PodmanObject(str(event["Type"]), str(event.get("ID", "")),
                                     str(event.get("Name", "")))
        elif event.get("Status") == "remove":
            made.pop(key, None)
    return list(made.values())


def _podman_json(podman: str, *args: str) -> list[dict[str, object]]:
    out = subprocess.run([podman, *args, "--format", "json"], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    listed = json.loads(out or "[]")
    return listed if isinstance(listed, list) else []


def remove_left_in_podman(events: Path, podman: str | None = None) -> list[str]:
    """Removes each pod and container the run's Podman events say it created and that
    still exists (a pod with whatever is in it), and names each."""
    podman = podman or shutil.which("podman")
    if podman is None or not events.exists():
        return []
    made = created_in_events(events.read_text(errors="replace").splitlines())
    if not made:
        return []
    pods = {str(p["Id"]) for p in _podman_json(podman, "pod", "ps")}
    containers = {str(c["Id"]): c for c in _podman_json(podman, "ps", "--all")}
    left_pods = [o for o in made if o.kind == "pod" and o.id in pods]
    left = [o for o in made if o.kind == "container" and o.id in containers]
    removed_with_pod = {o.id for o in left if containers[o.id].get("Pod") in
                        {p.id for p in left_pods}}
    if left_pods:
        subprocess.run([podman, "pod", "rm", "--force", "--ignore", *(p.id for p in left_pods)],
                       capture_output=True, timeout=120, check=True)
    alone = [o for o in left if o.id not in removed_with_pod]
    if alone:
        subprocess.run([podman, "rm", "--force", "--ignore", *(o.id for o in alone)],
                       capture_output=True, timeout=120, check=True)
    lines = []
    for pod in left_pods:
        inside = sorted(o.name for o in left if containers[o.id].get("Pod") == pod.id)
        lines.append(f"podman pod {pod.name} ({pod.id[:12]}) left behind, removed"
                     + (f" with its containers {', '.join(inside)}" if inside else ""))
    lines += [f"podman container {o.name} ({o.id[:12]}) left behind, removed" for o in alone]
    return lines
