"""Whether a file or directory on Windows is private to its owner: owner SID and DACL.

On Windows ``os.stat`` says nothing about who may use a path (``st_uid`` is 0,
the mode bits are made up from the read-only flag), so the POSIX rule of
:mod:`pacd.private_file` — ours, and not open to others — is read from the
path's security descriptor instead:

- its owner must be the SID of the user pacd runs as;
- its DACL must exist (a NULL DACL grants everyone everything) and no allow
  entry that applies to the path itself may grant a forbidden right to anyone
  but that user, SYSTEM or the Administrators group (who can take any file
  anyway, as root can on POSIX). Inheritable entries count too: they decide who
  may use what pacd creates in a directory later (CREATOR OWNER, which becomes
  the creator, is trusted). Deny entries are not counted in our favour; an
  entry of a type we cannot read is a refusal (fail closed).

The parsing (binary SIDs, ACL and ACE layout from <winnt.h>) and the rule are
pure functions, tested here with byte vectors; :func:`file_security` reads the
descriptor with ``GetNamedSecurityInfoW`` through ctypes and has run only where
the README's "what has been run where" says.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pacd.errors import ConfigError

SYSTEM = "S-1-5-18"
ADMINISTRATORS = "S-1-5-32-544"
#: the user the path belongs to, whoever that is (applies to the owner)
OWNER_RIGHTS = "S-1-3-4"
#: in an inheritable entry: whoever creates the child (in a private directory, us)
CREATOR_OWNER = "S-1-3-0"

# ACE types (winnt.h) that may appear in a file's DACL
ACCESS_ALLOWED = 0x0
ACCESS_DENIED = 0x1
ACCESS_ALLOWED_CALLBACK = 0x9  # a conditional allow: counted as an allow
ACCESS_DENIED_CALLBACK = 0xA
_ALLOW = frozenset({ACCESS_ALLOWED, ACCESS_ALLOWED_CALLBACK})
_DENY = frozenset({ACCESS_DENIED, ACCESS_DENIED_CALLBACK})

# access rights (winnt.h); the file and directory rights share their bits
GENERIC_ALL = 0x10000000
GENERIC_EXECUTE = 0x20000000
GENERIC_WRITE = 0x40000000
GENERIC_READ = 0x80000000
#: what lets another user change the path: data, appends, attributes, deletion,
#: its DACL or owner (FILE_WRITE_DATA/ADD_FILE, FILE_APPEND_DATA/ADD_SUBDIRECTORY,
#: FILE_WRITE_EA, FILE_DELETE_CHILD, FILE_WRITE_ATTRIBUTES, DELETE, WRITE_DAC, WRITE_OWNER)
WRITE_RIGHTS = (0x2 | 0x4 | 0x10 | 0x40 | 0x100 | 0x10000 | 0x40000 | 0x80000
                | GENERIC_WRITE | GENERIC_ALL)
#: what lets another user read or list it, or pass through it
#: (FILE_READ_DATA/LIST_DIRECTORY, FILE_READ_EA, FILE_EXECUTE/TRAVERSE)
READ_RIGHTS = 0x1 | 0x8 | 0x20 | GENERIC_READ | GENERIC_EXECUTE | GENERIC_ALL

_ACL_HEADER = struct.Struct("<BBHHH")  # AclRevision, Sbz1, AclSize, AceCount, Sbz2
_ACE_HEADER = struct.Struct("<BBH")  # AceType, AceFlags, AceSize
_MASK = struct.Struct("<I")


@dataclass(frozen=True)
class Ace:
    type: int
    flags: int
    mask: int
    sid: str | None  # None for a type whose layout we do not read


@dataclass(frozen=True)
class Security:
    owner: str
    dacl: list[Ace] | None  # None: a NULL DACL (everyone may do everything)


def parse_sid(data: bytes) -> tuple[str, int]:
    """The string form of the binary SID at the start of ``data``, and its length."""
    if len(data) < 8:
        raise ValueError("truncated SID")
    revision, count = data[0], data[1]
    if revision != 1 or count > 15:
        raise ValueError(f"not a SID (revision {revision}, {count} sub-authorities)")
    size = 8 + 4 * count
    if len(data) < size:
        raise ValueError("truncated SID")
    authority = int.from_bytes(data[2:8], "big")
    # as ConvertSidToStringSidW writes it: decimal below 2^32, else hex
    text = f"S-1-{authority}" if authority < 1 << 32 else f"S-1-0x{authority:012X}"
    subs = struct.unpack_from(f"<{count}I", data, 8)
    return text + "".join(f"-{sub}" for sub in subs), size


def parse_acl(data: bytes) -> list[Ace]:
    """The entries of the binary ACL ``data`` (an ACL header, then its ACEs)."""
    if len(data) < _ACL_HEADER.size:
        raise ValueError("truncated ACL")
    revision, _, size, count, _ = _ACL_HEADER.unpack_from(data)
    if revision not in (2, 4) or size > len(data):
        raise ValueError(f"not an ACL (revision {revision}, size {size} of {len(data)})")
    aces: list[Ace] = []
    offset = _ACL_HEADER.size
    for _ in range(count):
        if offset + _ACE_HEADER.size > size:
            raise ValueError("truncated ACE")
        kind, flags, ace_size = _ACE_HEADER.unpack_from(data, offset)
        if ace_size < _ACE_HEADER.size + _MASK.size or offset + ace_size > size:
            raise ValueError(f"bad ACE size {ace_size}")
        body = data[offset + _ACE_HEADER.size:offset + ace_size]
        (mask,) = _MASK.unpack_from(body)
        sid = parse_sid(body[_MASK.size:])[0] if kind in _ALLOW | _DENY else None
        aces.append(Ace(kind, flags, mask, sid))
        offset += ace_size
    return aces


def forbidden_rights(open_bits: int) -> int:
    """The Windows rights others must not have where POSIX forbids ``open_bits``
    (group/other mode bits): writing for 0o022, reading and entering for 0o055."""
    forbidden = 0
    if open_bits & 0o022:
        forbidden |= WRITE_RIGHTS
    if open_bits & 0o055:
        forbidden |= READ_RIGHTS
    return forbidden


def problem(security: Security, me: str, forbidden: int) -> str | None:
    """Why a path with ``security`` is not private to the user ``me``, or None."""
    if security.owner != me:
        return f"belongs to {security.owner}, not to you ({me})"
    if security.dacl is None:
        return "has no access list (everyone may use it)"
    trusted = {me, OWNER_RIGHTS, CREATOR_OWNER, SYSTEM, ADMINISTRATORS}
    for ace in security.dacl:
        if ace.type in _DENY:
            continue
        if ace.type not in _ALLOW or ace.sid is None:
            return f"has an access entry of type {ace.type:#x} pacd cannot judge"
        if ace.sid not in trusted and ace.mask & forbidden:
            return f"grants {ace.sid} access {ace.mask:#010x}"
    return None


def _no_security(path: Path) -> Security:
    raise ConfigError(f"Windows security descriptors exist only on Windows (not for {path})")


file_security: Callable[[Path], Security] = _no_security


if sys.platform == "win32":
    import ctypes
    from ctypes import wintypes

    _advapi32 = ctypes.WinDLL("advapi32", use_last_error=True)
    _kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    _SE_FILE_OBJECT = 1
    _OWNER_SECURITY_INFORMATION = 0x1
    _DACL_SECURITY_INFORMATION = 0x4

    def _file_security(path: Path) -> Security:
        owner = ctypes.c_void_p()
        dacl = ctypes.c_void_p()
        descriptor = ctypes.c_void_p()
        status = _advapi32.GetNamedSecurityInfoW(
            wintypes.LPCWSTR(str(path)), _SE_FILE_OBJECT,
            _OWNER_SECURITY_INFORMATION | _DACL_SECURITY_INFORMATION,
            ctypes.byref(owner), None, ctypes.byref(dacl), None, ctypes.byref(descriptor))
        if status != 0:
            raise ctypes.WinError(status)
        try:
            if not owner.value:
                raise ConfigError(f"{path} has no owner")
            head = ctypes.string_at(owner.value, 2)
            owner_sid = parse_sid(ctypes.string_at(owner.value, 8 + 4 * head[1]))[0]
            if not dacl.value:
                return Security(owner_sid, None)
            acl_size = _ACL_HEADER.unpack(ctypes.string_at(dacl.value, _ACL_HEADER.size))[2]
            return Security(owner_sid, parse_acl(ctypes.string_at(dacl.value, acl_size)))
        finally:
            _kernel32.LocalFree(descriptor)

    file_security = _file_security
