"""Files and directories private to the owner's uid: one rule to check them, one way to write.

The rule: a path pacd trusts (PACD_HOME, the socket directory, config.toml)
must belong to the daemon's own uid and must not be open to others in the
ways that matter for it — a directory not at all, a file not for writing
(a setting others can edit is a setting others choose). A refusal is a
:class:`~pacd.errors.ConfigError` naming the path and the command that fixes it.

The writer: secrets (the token cache, the passphrase keystore) are written to
a fresh, unguessable name created with ``O_EXCL|O_NOFOLLOW``, fsynced, then
renamed over the target, so nothing already sitting in the directory (a
planted file or symlink) can receive them and a crash leaves the old or the
new content, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pacd.errors import ConfigError
from pacd.named_pipe import current_user_sid

if TYPE_CHECKING:
    from pacd import windows_acl


def refuse_unless_ours(path: Path, st: os.stat_result, what: str, instead: str, *,
                       open_bits: int, mode: int, platform: str = sys.platform,
                       security: Callable[[Path], windows_acl.Security] | None = None,
                       user_sid: Callable[[], str] = current_user_sid) -> None:
    """Raise ConfigError unless ``st`` (of ``path``) is owned by us with no ``open_bits`` set.

    ``mode`` is what the fix suggests (``chmod <mode> <path>``); ``instead``
    says what else the owner can do. On Windows (``platform`` "win32") the same
    rule is read from the path's owner SID and DACL (:mod:`pacd.windows_acl`;
    ``security`` and ``user_sid`` are replaced in tests).
    """
    if platform == "win32":
        # Imported here: the daemon and the CLI import this module on every platform.
        from pacd import windows_acl

        found = windows_acl.problem((security or windows_acl.file_security)(path), user_sid(),
                                    windows_acl.forbidden_rights(open_bits))
        if found is not None:
            raise ConfigError(f"{what} {path} {found}; pacd needs it private to you: {instead}")
        return
    if st.st_uid != os.getuid():
        raise ConfigError(
            f"{what} {path} belongs to uid {st.st_uid}, not to you "
            f"(uid {os.getuid()}); {instead}"
        )
    if st.st_mode & open_bits:
        raise ConfigError(
            f"{what} {path} has mode {stat.S_IMODE(st.st_mode):04o}; pacd needs it private "
            f"to you: run `chmod {mode:o} {path}` or {instead}"
        )


def check_private_config(path: Path) -> None:
    """A config file others could write to (or that is not ours) is refused.

    Its settings decide how long tokens live and which bus may vouch for a
    fingerprint; whoever can edit it could weaken them.
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ConfigError(f"config: cannot read {path}: {exc}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"config file {path} is not a regular file")
    refuse_unless_ours(path, st, "config file", "set PACD_CONFIG to a file of your own",
                       open_bits=0o022, mode=0o600)


def write_private(path: Path, data: bytes, *, sync_dir: bool = False) -> None:
    """Replace ``path`` with ``data`` (mode 0600) through an exclusive temporary file.

    ``sync_dir`` also fsyncs the directory, so the rename itself survives a crash.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    # Windows has neither O_NOFOLLOW nor O_CLOEXEC (nor fchmod before 3.13); there
    # the new file takes the private directory's DACL, checked by refuse_unless_ours.
    flags = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
             | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
    fd = os.open(tmp, flags, 0o600)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o600)  # whatever the umask did
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd != -1:
            os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if sync_dir and hasattr(os, "O_DIRECTORY"):  # Windows cannot open a directory so
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
