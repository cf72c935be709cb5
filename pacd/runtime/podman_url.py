"""Where Podman's API service is, and whether there is one to try at all.

Apart from the adapter (:mod:`pacd.runtime.podman`) so that deciding where to
look costs no podman-py, requests or urllib3: a daemon on a machine where
Podman's socket does not exist never loads them (see :func:`no_podman_socket`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

ROOTFUL_SOCKET = Path("/run/podman/podman.sock")


def start_hint(socket_path: str | os.PathLike[str] | None = None) -> str:
    path = socket_path or "$XDG_RUNTIME_DIR/podman/podman.sock"
    return (
        "start Podman's API service: `systemctl --user enable --now podman.socket` "
        "(rootless; `systemctl enable --now podman.socket` as root), or run "
        f"`podman system service --time 0 unix://{path}`"
    )


# --- where Podman is -----------------------------------------------------------


def normalize_url(url: str) -> str:
    """``/path`` and ``unix:/path`` become ``unix:///path``; other schemes pass through."""
    if url.startswith("/"):
        return "unix://" + url
    parsed = urlparse(url)
    if parsed.scheme in ("unix", "http+unix") and not parsed.netloc:
        return "unix://" + parsed.path
    return url


def rootless_socket(env: Mapping[str, str]) -> Path:
    runtime_dir = env.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    return Path(runtime_dir) / "podman" / "podman.sock"


def candidate_podman_urls(config_url: str | None, env: Mapping[str, str]) -> list[str]:
    """Where to look, in order. An explicit URL is the only candidate: when the
    owner names a Podman, pacd never silently talks to a different one."""
    explicit = env.get("PACD_PODMAN_URL") or config_url
    if explicit:
        return [normalize_url(explicit)]
    return [normalize_url(str(rootless_socket(env))), normalize_url(str(ROOTFUL_SOCKET))]


def resolve_podman_url(config_url: str | None, env: Mapping[str, str]) -> str:
    """``PACD_PODMAN_URL``, else the config URL, else the rootless user socket if it
    exists, else the rootful one if it exists, else the rootless path (so that the
    error which follows names the socket the owner should start)."""
    candidates = candidate_podman_urls(config_url, env)
    if len(candidates) == 1:
        return candidates[0]
    for url in candidates:
        if Path(urlparse(url).path).exists():
            return url
    return candidates[0]


def no_podman_socket(config_url: str | None, env: Mapping[str, str]) -> str | None:
    """Why Podman cannot be reached without trying, or None when it is worth a try.

    When every candidate is a Unix socket that does not exist there is nothing to
    connect to: the answer (what connecting would have said, and how to start
    Podman) comes without loading the adapter. Any other URL is tried.
    """
    failures: list[str] = []
    for url in candidate_podman_urls(config_url, env):
        if not url.startswith("unix://") or os.path.exists(urlparse(url).path):
            return None
        failures.append(f"{url}: ping: cannot reach Podman at {url} (no such socket)")
    return ("Podman is not reachable (" + "; ".join(failures) + "); "
            + start_hint(rootless_socket(env)))
