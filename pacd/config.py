"""Configuration: defaults < config.toml < ``PACD_*`` environment.

Paths follow API.md: ``PACD_HOME`` (state), ``PACD_SOCKET`` (owner socket),
``PACD_PODMAN_URL`` and ``PACD_CONFIG``. Unknown keys in config.toml are an
error, like everywhere else in pacd: a typo must not silently keep a default.

Settings that could weaken security are checked, not trusted: config.toml
must be the owner's and not writable by others (whoever can edit it chooses
them), every lifetime and limit must lie in its range (a start-up error names
the key), and ``fprintd_bus_address`` — a bus that answers "match" mints
biometric sessions — is read only from the file: ``PACD_FPRINTD_BUS`` in the
environment is refused, since anything that can set a process's environment
could point it at a bus of its own.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from pacd.errors import ConfigError
from pacd.private_file import check_private_config

APP = "pacd"
#: presence methods the daemon itself can run (the owner enables each explicitly)
PLATFORM_PRESENCE_METHODS = ("fprintd", "touchid")


def _default_home() -> Path:
    return Path(platformdirs.user_data_dir(APP, appauthor=False))


def _default_socket() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / APP / "pacd.sock"
    # No XDG runtime dir (e.g. a root shell without a login session): use a
    # per-user directory under the state dir rather than /tmp.
    return _default_home() / "run" / "pacd.sock"


def _default_config_path() -> Path:
    return Path(platformdirs.user_config_dir(APP, appauthor=False)) / "config.toml"


@dataclass(frozen=True)
class Config:
    home: Path = field(default_factory=_default_home)
    socket: Path = field(default_factory=_default_socket)
    podman_url: str | None = None
    config_path: Path = field(default_factory=_default_config_path)
    #: "keychain" (the OS keychain via keyring) or "passphrase" (scrypt file, explicit only)
    keystore: str = "keychain"
    #: file holding the passphrase for the passphrase keystore (never the passphrase itself)
    passphrase_file: Path | None = None
    keychain_timeout_s: float = 10.0
    token_lifetime_s: int = 3600
    approval_ttl_s: int = 600
    carbon_proof_max_age_s: int = 120
    challenge_ttl_s: int = 120
    rp_id: str = "pacd.localhost"
    image_repository: str = "localhost/personal-ai"
    #: the FROM of the owner's image; must already be in local Podman storage (never pulled)
    base_image: str = "localhost/pacd-base:latest"
    max_body_bytes: int = 16 * 1024 * 1024
    #: the body cap of routes reachable without a token (level basic)
    max_tokenless_body_bytes: int = 64 * 1024
    #: count limits: what one owner can make the daemon hold (429 too_many past them)
    max_containers: int = 64
    max_agents_per_container: int = 16
    max_pending_approvals: int = 64
    max_pending_approvals_per_kind: int = 32
    #: storage quotas of sealed data (507 quota_exceeded past them)
    quota_per_container_bytes: int = 256 * 1024 * 1024
    quota_per_concern_bytes: int = 128 * 1024 * 1024
    header_timeout_s: float = 10.0
    max_connections: int = 10
    #: let the egress proxy connect to loopback addresses (a trusted name resolving to
    #: 127.0.0.1 or ::1). Off: loopback is the owner's own machine. For test daemons
    #: whose test servers run on loopback; config.toml only, never the environment.
    egress_allow_loopback: bool = False
    #: how often the retention task purges data older than each container's
    #: policy.data_retention_days (it also runs once at start-up)
    retention_interval_s: float = 3600.0
    #: presence methods the daemon runs itself that may open sessions
    #: (``POST /v1/sessions/platform``); none unless the owner lists them
    platform_presence: tuple[str, ...] = ()
    #: D-Bus address fprintd is reached on; None: the system bus
    fprintd_bus_address: str | None = None
    #: how long the daemon waits for a finger on the reader
    platform_presence_timeout_s: float = 30.0
    #: attestation policy for new keys: "none" (any key) or "direct" (an attestation
    #: statement that verifies, naming an AAGUID in allowed_aaguids). File only: an
    #: environment variable must not be able to loosen who may become the owner.
    attestation: str = "none"
    allowed_aaguids: tuple[str, ...] = ()
    #: accept credentials of pacd's software (demo) authenticator, which is not secure
    #: (its keys sit in the user's keychain and need no touch). File only, like
    #: attestation; ``make run`` sets it in its development config.
    allow_software_authenticator: bool = False

    @property
    def origin(self) -> str:
        return f"https://{self.rp_id}"

    @property
    def state_db(self) -> Path:
        return self.home / "state.sqlite3"

    @property
    def audit_db(self) -> Path:
        return self.home / "audit.sqlite3"

    @property
    def agent_socket_dir(self) -> Path:
        return self.socket.parent / "agents"


_ENV = {
    "PACD_HOME": "home",
    "PACD_SOCKET": "socket",
    "PACD_PODMAN_URL": "podman_url",
    "PACD_CONFIG": "config_path",
    "PACD_KEYSTORE": "keystore",
    "PACD_PASSPHRASE_FILE": "passphrase_file",
    "PACD_TOKEN_LIFETIME": "token_lifetime_s",
    "PACD_APPROVAL_TTL": "approval_ttl_s",
    "PACD_RP_ID": "rp_id",
    "PACD_IMAGE_REPOSITORY": "image_repository",
    "PACD_RETENTION_INTERVAL": "retention_interval_s",
    "PACD_BASE_IMAGE": "base_image",
    "PACD_PLATFORM_PRESENCE": "platform_presence",
}
#: environment variables refused outright: their setting is read from config.toml only
_FILE_ONLY = {
    "PACD_FPRINTD_BUS": ("fprintd_bus_address", "a bus that answers 'match' opens biometric "
                                                "sessions"),
    "PACD_EGRESS_ALLOW_LOOPBACK": ("egress_allow_loopback", "it lets agents reach the "
                                                            "owner's own machine"),
}
#: settings that no longer exist, and why; naming one is an error, not a silent no-op
_REMOVED = {
    "unrestricted_egress": "networked agents now reach the outside only through pacd's "
                           "egress proxy, limited to the policy's trusted_domains on its "
                           "allowed_network_ports; there is no unrestricted egress",
}

#: (smallest, largest) allowed value of each lifetime and limit; None: no upper bound.
#: Tokens live at most an hour and approvals at most a day, as the threat model assumes.
_RANGES: dict[str, tuple[float, float | None]] = {
    "token_lifetime_s": (1, 3600),
    "approval_ttl_s": (1, 86400),
    "carbon_proof_max_age_s": (1, 3600),
    "challenge_ttl_s": (1, 3600),
    "keychain_timeout_s": (0.001, None),
    "max_body_bytes": (1, None),
    "header_timeout_s": (0.001, None),
    "max_connections": (1, None),
    "retention_interval_s": (0.001, None),
    "platform_presence_timeout_s": (0.001, None),
    "max_tokenless_body_bytes": (1, None),
    "max_containers": (1, None),
    "max_agents_per_container": (1, None),
    # at least 1: an audit-untrusted daemon must always be able to queue its re-anchor
    "max_pending_approvals": (1, None),
    "max_pending_approvals_per_kind": (1, None),
    "quota_per_container_bytes": (1, None),
    "quota_per_concern_bytes": (1, None),
}

_FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def _coerce(name: str, value: Any) -> Any:
    f = _FIELDS[name]
    kind = str(f.type)
    try:
        if kind == "tuple[str, ...]":
            # A TOML array, or a comma-separated list from the environment.
            items = value.split(",") if isinstance(value, str) else value
            if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
                raise ValueError(value)
            return tuple(i.strip() for i in items if i.strip())
        if "Path" in kind:
            return None if value in (None, "") else Path(str(value)).expanduser()
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "0", "false", "no"):
                return value.lower() in ("1", "true", "yes")
            raise ValueError(value)
        if kind.startswith("str"):
            if value is None or isinstance(value, str):
                return value
            raise ValueError(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config: {name} must be {kind}, got {value!r}") from exc
    return value


def load_config(env: Mapping[str, str] | None = None) -> Config:
    """Build the effective configuration from defaults, the file and the environment."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    #: where each value came from, for messages
    source: dict[str, str] = {}
    config_path = Path(env["PACD_CONFIG"]).expanduser() if env.get("PACD_CONFIG") else None
    path = config_path or _default_config_path()
    if path.exists():
        check_private_config(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config: cannot read {path}: {exc}") from exc
        for key, value in data.items():
            if key in _REMOVED:
                raise ConfigError(f"config: {key} (in {path}) was removed: {_REMOVED[key]}")
            if key not in _FIELDS or key == "config_path":
                raise ConfigError(f"config: unknown key {key!r} in {path}")
            values[key] = _coerce(key, value)
            source[key] = f"{key} (in {path})"
    for var, (name, why) in _FILE_ONLY.items():
        if env.get(var):
            raise ConfigError(
                f"config: {var} is not read from the environment ({why}): unset it and "
                f"set {name} in {path}"
            )
    for name, why in _REMOVED.items():
        var = f"PACD_{name.upper()}"
        if env.get(var):
            raise ConfigError(f"config: {var} was removed: {why}")
    for var, name in _ENV.items():
        if env.get(var):
            values[name] = _coerce(name, env[var])
            source[name] = f"{name} (from {var})"
    if "socket" not in values:
        # The default socket follows the environment given, not the process's own.
        if env.get("XDG_RUNTIME_DIR"):
            values["socket"] = Path(env["XDG_RUNTIME_DIR"]) / APP / "pacd.sock"
        else:
            values["socket"] = values.get("home", _default_home()) / "run" / "pacd.sock"
    cfg = Config(**values)
    if cfg.keystore not in ("keychain", "passphrase"):
        raise ConfigError(
            f"config: keystore must be 'keychain' or 'passphrase', got {cfg.keystore!r}"
        )
    for name, (low, high) in _RANGES.items():
        value = getattr(cfg, name)
        where = source.get(name, name)
        if not math.isfinite(value) or value < low:
            raise ConfigError(f"config: {where} must be positive, got {value!r}")
        if high is not None and value > high:
            raise ConfigError(f"config: {where} must be at most {high:g}, got {value!r}")
    unknown = [m for m in cfg.platform_presence if m not in PLATFORM_PRESENCE_METHODS]
    if unknown:
        raise ConfigError(
            f"config: platform_presence: unknown method(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(PLATFORM_PRESENCE_METHODS)}"
        )
    _check_attestation(cfg)
    if cfg.keystore == "passphrase" and cfg.passphrase_file is None:
        raise ConfigError(
            "config: keystore 'passphrase' needs passphrase_file (PACD_PASSPHRASE_FILE)"
        )
    return cfg


def _check_attestation(cfg: Config) -> None:
    if cfg.attestation not in ("none", "direct"):
        raise ConfigError(
            f"config: attestation must be 'none' or 'direct', got {cfg.attestation!r}")
    for aaguid in cfg.allowed_aaguids:
        try:
            uuid.UUID(aaguid)
        except ValueError:
            raise ConfigError(
                f"config: allowed_aaguids: {aaguid!r} is not an AAGUID (a UUID such as "
                "'cb69481e-8ff7-4039-93ec-0a2729a154a8')") from None
    if cfg.attestation == "direct" and not cfg.allowed_aaguids:
        raise ConfigError(
            "config: attestation 'direct' needs allowed_aaguids (the authenticator models "
            "that may be enrolled); with none listed no key could ever be enrolled")
    if cfg.attestation == "none" and cfg.allowed_aaguids:
        raise ConfigError(
            "config: allowed_aaguids is only checked with attestation = 'direct'; "
            "set that too, or remove the list")
