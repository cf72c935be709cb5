"""Agent socket directories get the owner socket's check: created private, or refused."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacd.agents.server import bind_agent_socket, socket_path
from pacd.errors import ConfigError

CONTAINER = "c" * 32


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory short enough for a socket path (pytest's tmp_path is not)."""
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="pacd-") as name:
        yield Path(name)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_agent_socket_directories_are_created_private_with_only_the_agents_searchable(
        short_dir: Path) -> None:
    path = socket_path(short_dir / "run" / "agents", CONTAINER, "helper")
    sock = bind_agent_socket(path)
    try:
        assert (_mode(path.parent.parent.parent), _mode(path.parent.parent),
                _mode(path.parent), _mode(path)) == (0o700, 0o700, 0o711, 0o666)
    finally:
        sock.close()


@pytest.mark.parametrize(("level", "opened"), [(2, 0o755), (1, 0o777), (0, 0o733)])
def test_an_agent_socket_directory_someone_opened_up_is_refused_not_chmodded(
        short_dir: Path, level: int, opened: int) -> None:
    path = socket_path(short_dir / "run" / "agents", CONTAINER, "helper")
    # agents/ (2), agents/<container>/ (1), agents/<container>/<agent>/ (0)
    target = path.parents[level]
    target.mkdir(parents=True, mode=0o700)
    os.chmod(target, opened)
    with pytest.raises(ConfigError, match="needs it private"):
        bind_agent_socket(path).close()
    assert _mode(target) == opened  # left as found: the owner decides what happened
    assert not path.exists()
