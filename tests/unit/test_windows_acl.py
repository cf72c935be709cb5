"""Privacy of a path on Windows read from its owner SID and DACL: the binary parsing
against byte vectors (well-known SIDs as <winnt.h> and Microsoft's documentation
lay them out), the rule against the DACLs a path may carry, and the seam in
pacd.private_file choosing it for win32.

``GetNamedSecurityInfoW`` itself (pacd.windows_acl.file_security) runs only on
Windows: whether a real PACD_HOME under %LOCALAPPDATA% passes, and a shared one
is refused, is for a Windows machine (README, "what has been run where").
"""

from __future__ import annotations

import os
import struct
import sys
from pathlib import Path

import pytest

from pacd import windows_acl as acl
from pacd.client import Client
from pacd.config import load_config
from pacd.errors import ConfigError
from pacd.private_file import refuse_unless_ours
from pacd.windows_acl import Ace, Security

ME = "S-1-5-21-1004336348-1177238915-682003330-1001"
ME_BYTES = bytes.fromhex("0105000000000005" "15000000dcf4dc3b833d2b46828ba628e9030000")
OTHER = "S-1-5-21-1004336348-1177238915-682003330-1002"
EVERYONE, USERS = "S-1-1-0", "S-1-5-32-545"
FILE_ALL_ACCESS = 0x001F01FF
FILE_GENERIC_READ_EXECUTE = 0x001200A9
#: judged here with POSIX stat results, or where no descriptor can be read
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX uid/mode, or no DACL")
OI_CI = 0x03  # OBJECT_INHERIT | CONTAINER_INHERIT
INHERIT_ONLY = 0x08


@pytest.mark.parametrize(("hexed", "sid"), [
    ("010100000000000512000000", "S-1-5-18"),  # LocalSystem
    ("01020000000000052000000020020000", "S-1-5-32-544"),  # BUILTIN\Administrators
    ("010100000000000100000000", "S-1-1-0"),  # Everyone
    ("010100000000000300000000", "S-1-3-0"),  # CREATOR OWNER
    ("010100010000000000000000", "S-1-0x000100000000-0"),  # authority >= 2^32: hex
])
def test_binary_sids_read_as_their_string_form(hexed: str, sid: str) -> None:
    assert acl.parse_sid(bytes.fromhex(hexed) + b"trailing") == (sid, len(hexed) // 2)


def test_a_user_sid_with_five_sub_authorities() -> None:
    assert acl.parse_sid(ME_BYTES) == (ME, 28)


@pytest.mark.parametrize("hexed", [
    "0101000000000005120000",  # truncated sub-authority
    "02010000000000051200000000",  # revision 2 does not exist
    "0110000000000005",  # 16 sub-authorities: more than a SID may have
    "0101",
])
def test_what_is_not_a_sid_is_refused(hexed: str) -> None:
    with pytest.raises(ValueError):
        acl.parse_sid(bytes.fromhex(hexed))


def test_an_acl_with_one_entry_for_system() -> None:
    # ACL rev 2, size 28, one ACE; ACCESS_ALLOWED, no flags, size 20, FILE_ALL_ACCESS, S-1-5-18
    data = bytes.fromhex("02001c0001000000" "00001400ff011f00010100000000000512000000")
    assert acl.parse_acl(data) == [Ace(acl.ACCESS_ALLOWED, 0, FILE_ALL_ACCESS, "S-1-5-18")]


def _ace(kind: int, flags: int, mask: int, sid: bytes, tail: bytes = b"") -> bytes:
    body = struct.pack("<I", mask) + sid + tail
    return struct.pack("<BBH", kind, flags, 4 + len(body)) + body


def _acl(*aces: bytes) -> bytes:
    body = b"".join(aces)
    return struct.pack("<BBHHH", 2, 0, 8 + len(body), len(aces), 0) + body


def test_entries_of_each_kind_are_read_in_order() -> None:
    everyone = bytes.fromhex("010100000000000100000000")
    data = _acl(_ace(acl.ACCESS_DENIED, 0, 0x2, everyone),
                _ace(acl.ACCESS_ALLOWED, OI_CI, FILE_ALL_ACCESS, ME_BYTES),
                _ace(acl.ACCESS_ALLOWED_CALLBACK, 0, 0x2, everyone, b"artx\x00\x00\x00\x00"),
                _ace(0x5, 0, 0x2, b"\x00" * 40))  # an object ACE: layout not read
    assert acl.parse_acl(data) == [
        Ace(acl.ACCESS_DENIED, 0, 0x2, EVERYONE),
        Ace(acl.ACCESS_ALLOWED, OI_CI, FILE_ALL_ACCESS, ME),
        Ace(acl.ACCESS_ALLOWED_CALLBACK, 0, 0x2, EVERYONE),
        Ace(0x5, 0, 0x2, None),
    ]


@pytest.mark.parametrize("data", [
    _acl(_ace(0, 0, 1, ME_BYTES))[:-4],  # shorter than its header says
    struct.pack("<BBHHH", 2, 0, 8, 1, 0),  # one ACE announced, none there
    struct.pack("<BBHHH", 7, 0, 8, 0, 0),  # no such revision
    struct.pack("<BBHHH", 2, 0, 12, 1, 0) + struct.pack("<BBH", 0, 0, 2),  # ACE size < header
])
def test_a_malformed_acl_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        acl.parse_acl(data)


# --- the rule ---------------------------------------------------------------------

#: what a directory under %LOCALAPPDATA% inherits: SYSTEM, Administrators, the user
PROFILE = [Ace(0, OI_CI, FILE_ALL_ACCESS, "S-1-5-18"),
           Ace(0, OI_CI, FILE_ALL_ACCESS, "S-1-5-32-544"),
           Ace(0, OI_CI, FILE_ALL_ACCESS, ME)]
DIRECTORY = acl.forbidden_rights(0o077)
CONFIG_FILE = acl.forbidden_rights(0o022)


def test_a_path_in_the_users_profile_is_private() -> None:
    assert acl.problem(Security(ME, PROFILE), ME, DIRECTORY) is None


def test_a_path_owned_by_another_user_is_refused() -> None:
    found = acl.problem(Security(OTHER, PROFILE), ME, DIRECTORY)
    assert found is not None and OTHER in found


def test_a_null_dacl_lets_everyone_in_and_is_refused() -> None:
    assert acl.problem(Security(ME, None), ME, CONFIG_FILE) is not None


def test_everyone_reading_is_refused_for_a_directory_but_not_for_a_config_file() -> None:
    security = Security(ME, [*PROFILE, Ace(0, 0, FILE_GENERIC_READ_EXECUTE, EVERYONE)])
    found = acl.problem(security, ME, DIRECTORY)
    assert found is not None and EVERYONE in found
    assert acl.problem(security, ME, CONFIG_FILE) is None


@pytest.mark.parametrize("mask", [0x2, 0x4, 0x40000, 0x80000, 0x10000, acl.GENERIC_WRITE,
                                  acl.GENERIC_ALL])
def test_any_write_right_for_other_users_is_refused_for_a_config_file(mask: int) -> None:
    security = Security(ME, [*PROFILE, Ace(0, 0, mask, USERS)])
    found = acl.problem(security, ME, CONFIG_FILE)
    assert found is not None and USERS in found


def test_an_inheritable_grant_to_others_is_refused_for_a_directory() -> None:
    """What pacd creates there later would be theirs to read."""
    security = Security(ME, [*PROFILE, Ace(0, OI_CI | INHERIT_ONLY, acl.GENERIC_ALL, USERS)])
    assert acl.problem(security, ME, DIRECTORY) is not None


def test_creator_owner_in_an_inheritable_entry_is_the_creator() -> None:
    security = Security(ME, [*PROFILE, Ace(0, OI_CI | INHERIT_ONLY, acl.GENERIC_ALL, "S-1-3-0")])
    assert acl.problem(security, ME, DIRECTORY) is None


def test_a_conditional_grant_counts_as_a_grant() -> None:
    security = Security(ME, [*PROFILE, Ace(acl.ACCESS_ALLOWED_CALLBACK, 0, 0x2, EVERYONE)])
    assert acl.problem(security, ME, CONFIG_FILE) is not None


def test_a_deny_entry_is_not_counted_in_our_favour_nor_against() -> None:
    assert acl.problem(Security(ME, [Ace(acl.ACCESS_DENIED, 0, 0x2, EVERYONE), *PROFILE,
                                     Ace(0, 0, 0x2, EVERYONE)]), ME, CONFIG_FILE) is not None
    assert acl.problem(Security(ME, [Ace(acl.ACCESS_DENIED, 0, FILE_ALL_ACCESS, EVERYONE),
                                     *PROFILE]), ME, DIRECTORY) is None


def test_an_entry_pacd_cannot_judge_is_refused() -> None:
    assert acl.problem(Security(ME, [*PROFILE, Ace(0x5, 0, 0, None)]), ME, DIRECTORY) is not None


def test_posix_bits_map_to_write_and_read_rights() -> None:
    assert acl.forbidden_rights(0o022) == acl.WRITE_RIGHTS
    assert acl.forbidden_rights(0o077) == acl.WRITE_RIGHTS | acl.READ_RIGHTS
    assert acl.forbidden_rights(0) == 0


# --- the seam in pacd.private_file --------------------------------------------------


def test_win32_judges_the_dacl_not_the_mode_bits(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("")
    os.chmod(path, 0o666)  # what os.stat shows on Windows says nothing: not looked at
    st = os.stat(path)
    refuse_unless_ours(path, st, "config file", "use another", open_bits=0o022, mode=0o600,
                       platform="win32", security=lambda p: Security(ME, PROFILE),
                       user_sid=lambda: ME)
    shared = Security(ME, [*PROFILE, Ace(0, 0, 0x2, USERS)])
    with pytest.raises(ConfigError) as refused:
        refuse_unless_ours(path, st, "config file", "use another", open_bits=0o022,
                           mode=0o600, platform="win32", security=lambda p: shared,
                           user_sid=lambda: ME)
    assert str(path) in refused.value.message and USERS in refused.value.message
    assert "use another" in refused.value.message


@posix_only
def test_win32_fails_closed_where_no_descriptor_can_be_read(tmp_path: Path) -> None:
    """Where no descriptor can be read (here) nothing is taken as private."""
    with pytest.raises(ConfigError):
        refuse_unless_ours(tmp_path, os.stat(tmp_path), "PACD_HOME", "", open_bits=0o077,
                           mode=0o700, platform="win32", user_sid=lambda: ME)


@posix_only
def test_posix_still_judges_uid_and_mode_bits(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    with pytest.raises(ConfigError) as refused:
        refuse_unless_ours(tmp_path, os.stat(tmp_path), "PACD_HOME", "x", open_bits=0o077,
                           mode=0o700, platform="linux")
    assert "chmod 700" in refused.value.message
    os.chmod(tmp_path, 0o700)
    refuse_unless_ours(tmp_path, os.stat(tmp_path), "PACD_HOME", "x", open_bits=0o077,
                       mode=0o700, platform="linux")


# --- the client's token cache, judged through the same seam ---------------------------


def _client(tmp_path: Path, platform: str) -> Client:
    run = tmp_path / "run"
    run.mkdir(mode=0o700, exist_ok=True)
    config = load_config({"PACD_HOME": str(tmp_path / "home"),
                          "PACD_SOCKET": str(run / "pacd.sock")})
    return Client(config, use_token_cache=True, platform=platform)


TOKEN = {"token": "t", "level": "basic", "expires_at": "2999-01-01T00:00:00Z"}


@posix_only
def test_a_token_cache_others_can_read_is_not_trusted_on_posix(tmp_path: Path) -> None:
    client = _client(tmp_path, "linux")
    client.save_token(TOKEN)
    assert client.cached_token() == TOKEN
    os.chmod(client.token_path, 0o640)
    assert client.cached_token() is None


@posix_only
def test_a_token_cache_whose_dacl_cannot_be_read_is_not_trusted_on_windows(
        tmp_path: Path) -> None:
    client = _client(tmp_path, "win32")
    client.save_token(TOKEN)  # 0600 here, yet only its DACL may vouch for it on Windows
    assert client.cached_token() is None
