"""The daemon's open-file limit: lifted as far as the platform lets a process lift it.

Every agent socket's connections, the databases and the audit log share one
descriptor table; the common POSIX soft default (1024) is reached long before
the per-socket connection caps would be. Windows has no RLIMIT_NOFILE (sockets
and pipes are handles, limited only by memory; the C runtime's descriptor table
is not what the daemon's connections use), so there is nothing to lift there.
The platform is passed in so the choice is tested on any machine.
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("pacd.daemon")


def raise_open_file_limit(platform: str = sys.platform) -> int | None:
    """Lift the soft RLIMIT_NOFILE to the hard limit; the new soft limit, or None on
    a platform without one (Windows)."""
    if platform == "win32":
        return None
    import resource  # POSIX only: imported where it is used, never on Windows

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # An unlimited hard limit still has the kernel's nr_open ceiling: ask for 2^20.
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
        return soft
    return target
