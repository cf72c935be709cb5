"""The host programs pacd's containers need besides Podman's API, where Podman
looks for each, and the Debian package that installs it.

Podman's API answers even when a helper it runs per container is missing; the
failure only shows when a container is created (``container-init binary not
found``) or a kube play needs its pause process. ``pacd doctor`` reports each
missing piece with the command that installs it, and the system tests check
that ``scripts/install-system-deps`` installs every package named here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: where Podman looks for its helpers (containers.conf ``helper_binaries_dir``,
#: and the default ``init_path`` /usr/libexec/podman/catatonit)
PODMAN_HELPER_DIRS: tuple[Path, ...] = (
    Path("/usr/local/libexec/podman"), Path("/usr/local/lib/podman"),
    Path("/usr/libexec/podman"), Path("/usr/lib/podman"),
)

#: Podman also finds conmon and the OCI runtime in these, whatever the caller's PATH
#: (a desktop user's PATH on Debian lacks the sbin directories, where runc lives)
_SYSTEM_DIRS: tuple[Path, ...] = (
    Path("/usr/local/bin"), Path("/usr/local/sbin"), Path("/usr/bin"), Path("/usr/sbin"),
    Path("/bin"), Path("/sbin"),
)


@dataclass(frozen=True)
class HostTool:
    #: the executable's name; the first of ``names`` found is used
    names: tuple[str, ...]
    #: the Debian/Ubuntu package that installs the first name
    package: str
    #: what fails without it, said to the owner
    needed_for: str
    #: searched on the executable search path
    on_path: bool = True
    #: searched in Podman's helper directories
    in_helper_dirs: bool = False
    #: only rootless Podman (a daemon not running as root) runs it
    rootless_only: bool = False

    @property
    def name(self) -> str:
        return self.names[0]


HOST_TOOLS: tuple[HostTool, ...] = (
    HostTool(("podman",), "podman", "running agent containers"),
    HostTool(("conmon",), "conmon", "watching each container's process", in_helper_dirs=True),
    # pacd's own Podman service selects runc; a user's own service may use crun.
    HostTool(("runc", "crun"), "runc", "starting containers (the OCI runtime)"),
    # Podman 4's --init stats /usr/libexec/podman/catatonit itself, so only the
    # helper directories count (Debian's catatonit package puts a link there).
    HostTool(("catatonit",), "catatonit",
             "the init (PID 1) of every agent container and the pause process of kube play",
             on_path=False, in_helper_dirs=True),
    HostTool(("newuidmap",), "uidmap", "the user namespace of rootless containers",
             rootless_only=True),
    HostTool(("newgidmap",), "uidmap", "the user namespace of rootless containers",
             rootless_only=True),
    HostTool(("slirp4netns",), "slirp4netns", "the network of rootless containers",
             rootless_only=True),
)


def default_path_dirs() -> list[Path]:
    """The caller's PATH, then the system directories Podman searches on its own."""
    dirs = [Path(d) for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    return list(dict.fromkeys([*dirs, *_SYSTEM_DIRS]))


def find_tool(tool: HostTool, path_dirs: Sequence[Path] | None = None,
              helper_dirs: Sequence[Path] | None = None) -> Path | None:
    """The executable Podman would run for ``tool``, or None when there is none."""
    dirs: list[Path] = []
    if tool.in_helper_dirs:
        dirs += PODMAN_HELPER_DIRS if helper_dirs is None else helper_dirs
    if tool.on_path:
        dirs += default_path_dirs() if path_dirs is None else path_dirs
    for name in tool.names:
        for directory in dirs:
            candidate = directory / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
    return None


def install_command(packages: Sequence[str], *, apt: bool, root: bool) -> str:
    """The command that installs ``packages``: exact on apt systems, a hint elsewhere."""
    names = " ".join(dict.fromkeys(packages))
    if apt:
        return f"{'' if root else 'sudo '}apt-get install {names}"
    return (f"install {names} with your system's package manager "
            f"(these are the Debian/Ubuntu package names)")
