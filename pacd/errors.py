"""The one error hierarchy of pacd.

Every error carries the stable wire ``code`` the HTTP API returns, the HTTP
``status`` it maps to, and the ``exit_code`` the CLI exits with, so the daemon,
the client and the CLI never translate errors by hand. Messages are for humans
and never contain secrets.
"""

from __future__ import annotations

from typing import Any, ClassVar


class PacdError(Exception):
    """Base of every error pacd raises on purpose."""

    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500
    exit_code: ClassVar[int] = 1

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        #: extra JSON members placed next to code/message on the wire
        self.extra: dict[str, Any] = extra

    def to_wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        body.update(self.extra)
        return {"error": body}


# --- request / input ------------------------------------------------------


#: reasons an error list carries at most; the rest are counted ("and N more")
MAX_REASONS = 50


def capped_reasons(errors: list[str], omitted: int = 0) -> list[str]:
    """The first :data:`MAX_REASONS` reasons, plus ``"and N more"`` for the rest.

    Hostile input can have any number of problems: the answer (and its audit
    entry) must not grow with it. ``omitted`` counts reasons already dropped.
    """
    kept = errors[:MAX_REASONS]
    more = omitted + len(errors) - len(kept)
    return [*kept, f"and {more} more"] if more > 0 else list(kept)


class InvalidRequest(PacdError):
    """Bad input. ``errors`` lists the problems (capped) when there are several.

    ``omitted`` counts problems the caller found but did not keep.
    """

    code = "invalid_request"
    status = 422
    exit_code = 2

    def __init__(self, message: str, errors: list[str] | None = None, omitted: int = 0,
                 **extra: Any) -> None:
        shown = capped_reasons(list(errors or []), omitted)
        if shown:
            extra["errors"] = shown
        super().__init__(message, **extra)
        #: what the wire carries: the kept reasons, then "and N more" if any were dropped
        self.errors: list[str] = shown
        #: the kept reasons alone, and how many more there were
        self.reasons: list[str] = list(errors or [])[:MAX_REASONS]
        self.omitted: int = omitted + max(0, len(errors or []) - MAX_REASONS)


class SpecError(InvalidRequest):
    """A ContainerSpec (or other document) is malformed; every message names its path."""


class PluginRejected(InvalidRequest):
    """A plugin schema failed validation against the policy; ``errors`` has every reason."""


class MalformedRequest(InvalidRequest):
    """The request could not be read at all (bad JSON, wrong content)."""

    status = 400


class PayloadTooLarge(InvalidRequest):
    """A request body is larger than the daemon accepts."""

    code = "payload_too_large"
    status = 413


class NotFound(PacdError):
    code = "not_found"
    status = 404
    exit_code = 4


class MethodNotAllowed(PacdError):
    code = "method_not_allowed"
    status = 405
    exit_code = 2


class Conflict(PacdError):
    code = "conflict"
    status = 409
    exit_code = 5


class Busy(PacdError):
    code = "busy"
    status = 503
    exit_code = 6


class TooMany(PacdError):
    """A count limit (containers, agents, pending approvals, quota) would be passed."""

    code = "too_many"
    status = 429
    exit_code = 6


class QuotaExceeded(PacdError):
    """A write would take a container or concern past its storage quota."""

    code = "quota_exceeded"
    status = 507
    exit_code = 6


class RateLimited(PacdError):
    code = "rate_limited"
    status = 429
    exit_code = 6


# --- authentication / authorisation --------------------------------------


class Unauthorized(PacdError):
    code = "unauthorized"
    status = 401
    exit_code = 3


class TokenExpired(Unauthorized):
    code = "token_expired"


class TokenRevoked(Unauthorized):
    code = "token_revoked"


class PresenceRequired(PacdError):
    """The action needs a higher security level than the caller proved."""

    code = "presence_required"
    status = 403
    exit_code = 3

    def __init__(self, message: str, required_level: str, **extra: Any) -> None:
        super().__init__(message, required_level=required_level, **extra)
        self.required_level = required_level


class Forbidden(PacdError):
    """Policy says no."""

    code = "forbidden"
    status = 403
    exit_code = 3


class PresenceFailed(Forbidden):
    """A presence proof (assertion, biometric) was checked and refused."""

    code = "presence_failed"


class ClonedAuthenticator(PresenceFailed):
    """The sign counter did not move forward: the authenticator may be cloned."""

    code = "possible_cloned_authenticator"


class SoftwareAuthenticatorRefused(Forbidden):
    """A software authenticator's credential, while config does not allow them."""

    code = "software_authenticator_refused"


class PeerRefused(Forbidden):
    code = "peer_refused"


# --- presence ceremony (client side) -------------------------------------


class CeremonyError(PacdError):
    code = "ceremony_failed"
    status = 400
    exit_code = 7


class NoAuthenticator(CeremonyError):
    code = "no_authenticator"


class PinInvalid(CeremonyError):
    code = "pin_invalid"


class PinBlocked(CeremonyError):
    code = "pin_blocked"


class CeremonyCancelled(CeremonyError):
    code = "cancelled"


class CeremonyTimeout(CeremonyError):
    code = "timeout"


class PresenceUnavailable(CeremonyError):
    """A presence method (fprintd, Touch ID, Windows Hello) cannot be used here."""

    code = "presence_unavailable"


class PresenceMethodUnavailable(PresenceUnavailable):
    """A presence method the daemon runs itself (fprintd) cannot be used right now:
    not installed, its reader busy or gone. The daemon cannot serve the request
    at the moment; the request itself is not wrong (503, not the client's 400)."""

    status = 503


# --- storage, keys, integrity --------------------------------------------


class KeychainError(PacdError):
    code = "keychain_error"
    status = 503
    exit_code = 8


class KeychainUnavailable(KeychainError):
    """No secure keychain backend; pacd refuses to fall back to plaintext."""

    code = "keychain_unavailable"


class KeychainLocked(KeychainError):
    """The keychain is locked or the unlock prompt was dismissed."""

    code = "keychain_locked"


class IntegrityError(PacdError):
    """A sealed value or record failed authentication. Deliberately opaque."""

    code = "integrity_error"
    status = 500
    exit_code = 9

    def __init__(self, message: str = "sealed data failed authentication") -> None:
        super().__init__(message)


class PayloadMismatch(Conflict):
    """An approval's stored payload no longer hashes to the challenge the owner signs:
    the state was edited behind the daemon's back. Nothing is executed."""

    code = "payload_mismatch"


class AuditError(PacdError):
    """The audit log could not record an entry durably; the action must fail."""

    code = "audit_unavailable"
    status = 503
    exit_code = 9


class UncoveredEntry(AuditError):
    """The entry is durable in the log, but the keychain checkpoint that was to cover
    it before the answer could not be written: the caller undoes its action and
    records that it did (the entry stays, so it must be followed by its undoing)."""

    def __init__(self, message: str, entry_seq: int) -> None:
        super().__init__(message)
        self.entry_seq = entry_seq


class AuditUntrusted(PacdError):
    """The audit log cannot vouch for itself (checkpoint missing, behind, or failing).

    Everything above *basic* is refused until the owner re-anchors the log
    (``POST /v1/audit/reanchor``, a carbonProof approval) or, for failing
    checkpoint writes, until a write succeeds again. Unlike AuditError the log
    still records, so the refusal itself is an audit entry.
    """

    code = "audit_untrusted"
    status = 503
    exit_code = 9


class RuntimeUnavailable(PacdError):
    """Podman (or another container runtime) cannot be reached."""

    code = "runtime_unavailable"
    status = 503
    exit_code = 10


class RuntimeFailed(PacdError):
    code = "runtime_failed"
    status = 502
    exit_code = 10


class PluginUnavailable(PacdError):
    """A running plugin did not answer (its socket refused or dropped the call)."""

    code = "plugin_unavailable"
    status = 502
    exit_code = 10


class PluginTimeout(PluginUnavailable):
    """A plugin did not answer within the daemon's time limit."""

    code = "plugin_timeout"
    status = 504


class DaemonUnavailable(PacdError):
    """Client side: the daemon is not running or not reachable."""

    code = "daemon_unavailable"
    status = 503
    exit_code = 11


class ConfigError(PacdError):
    code = "config_error"
    status = 500
    exit_code = 12


ALL_ERRORS: tuple[type[PacdError], ...] = (
    PacdError, InvalidRequest, SpecError, PluginRejected, MalformedRequest, PayloadTooLarge,
    NotFound, MethodNotAllowed, Conflict, Busy,
    RateLimited, TooMany, QuotaExceeded,
    Unauthorized, TokenExpired, TokenRevoked, PresenceRequired, Forbidden,
    PresenceFailed, ClonedAuthenticator, PeerRefused, CeremonyError, NoAuthenticator,
    PinInvalid, PinBlocked, CeremonyCancelled, CeremonyTimeout, PresenceUnavailable,
    PresenceMethodUnavailable,
    KeychainError, KeychainUnavailable, KeychainLocked, IntegrityError, AuditError,
    RuntimeUnavailable, RuntimeFailed, PluginUnavailable, PluginTimeout, DaemonUnavailable,
    ConfigError,
    PayloadMismatch,
    AuditUntrusted,
    SoftwareAuthenticatorRefused,
)


def error_for_code(code: str) -> type[PacdError]:
    """The class for a wire code (client side), falling back to the base class."""
    for cls in ALL_ERRORS:
        if cls.code == code:
            return cls
    return PacdError
