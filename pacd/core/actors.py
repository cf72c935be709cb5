"""Who an audit entry names as its actor, where that is fixed rather than a peer."""

from __future__ import annotations

#: the actor of entries the daemon writes on its own account (start, stop,
#: expiries, orphan containers, retention, integrity findings, abandoned appends)
DAEMON_ACTOR = "pacd"
