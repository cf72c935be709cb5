"""Typed request and response bodies of the owner socket.

The daemon decodes every request with :func:`decode`, encodes every response
with :func:`encode`, and builds its OpenAPI document with :func:`schema_for`
over the very same classes, so the published contract and the code cannot
drift. The client and the tray import this module too (it has no daemon
dependencies).

Decoding is strict: unknown members, missing members and wrong types are all
reported at once, each naming its path (``body.credential``), and raised as one
:class:`~pacd.errors.InvalidRequest`.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar, Union

from pacd.core.fields import text_problem
from pacd.errors import InvalidRequest

T = TypeVar("T")

Level = Literal["basic", "enhanced", "biometric", "carbonProof"]
SessionLevel = Literal["enhanced", "biometric"]
#: presence methods the daemon runs itself (config ``platform_presence``)
PlatformMethod = Literal["fprintd", "touchid"]
ApprovalState = Literal["pending", "approved", "denied", "expired", "failed"]


def _meta(description: str = "", **rules: Any) -> dict[str, Any]:
    out: dict[str, Any] = dict(rules)
    if description:
        out["description"] = description
    return out


#: ``text``: shown to the owner, so no control or invisible characters (fields.text_problem)
NAME = _meta("a short human name", min_length=1, max_length=200, text=True)
WEBAUTHN = _meta("WebAuthn JSON as python-fido2 2.x produces it (base64url members)")


@dataclass(frozen=True)
class RawBody:
    """A body that is a JSON object checked by another parser (e.g. ContainerSpec)."""

    name: str
    schema: dict[str, Any]


# --- requests ---------------------------------------------------------------


@dataclass(frozen=True)
class OwnerCreate:
    name: str = field(metadata=NAME)


@dataclass(frozen=True)
class CredentialBegin:
    label: str | None = field(default=None, metadata=_meta("label for the credential",
                                                           min_length=1, max_length=200,
                                                           text=True))


@dataclass(frozen=True)
class CredentialComplete:
    credential: dict[str, Any] = field(metadata=WEBAUTHN)
    registration_id: str | None = field(
        default=None,
        metadata=_meta("required: the registration_id the begin call returned (a complete "
                       "without it is refused with 400)", min_length=1, max_length=200),
    )


@dataclass(frozen=True)
class SessionBegin:
    level: SessionLevel


@dataclass(frozen=True)
class SessionComplete:
    session_id: str = field(metadata=_meta(min_length=1, max_length=200))
    credential: dict[str, Any] = field(metadata=WEBAUTHN)


@dataclass(frozen=True)
class PlatformSession:
    """Open a session with a presence method the daemon runs itself: the person
    uses the machine's own reader (fprintd, or Touch ID on a Mac). A session is
    biometric at most: a carbonProof is one action's own assertion."""

    method: PlatformMethod
    level: SessionLevel = "biometric"


@dataclass(frozen=True)
class PluginSubmit:
    agent: str = field(metadata=NAME)
    schema: dict[str, Any] = field(metadata=_meta("a PluginAPISchema"))
    image: str | None = field(default=None, metadata=_meta(
        "the plugin's image, already in local Podman storage (never pulled); without it "
        "the plugin is approved but never runs", min_length=1, max_length=512))


@dataclass(frozen=True)
class Approve:
    credential: dict[str, Any] = field(metadata=WEBAUTHN)


@dataclass(frozen=True)
class Deny:
    reason: str | None = field(default=None, metadata=_meta(max_length=500))


@dataclass(frozen=True)
class AuditQuery:
    after: int = field(default=0, metadata=_meta("entries with seq greater than this",
                                                 minimum=0, maximum=2**63 - 1))
    limit: int = field(default=100, metadata=_meta(minimum=1, maximum=1000))
    cursor: str = field(default="", metadata=_meta(
        "the next_cursor of the previous page (overrides after)", max_length=18,
        pattern=r"^[0-9]*$"))


@dataclass(frozen=True)
class ApprovalQuery:
    cursor: str = field(default="", metadata=_meta(
        "the next_cursor of the previous page", max_length=128,
        pattern=r"^([0-9]+\.[0-9]+(e[+-]?[0-9]+)?_[0-9a-f]{32})?$"))
    limit: int = field(default=200, metadata=_meta(minimum=1, maximum=1000))


CONTAINER_SPEC = RawBody(
    "ContainerSpec",
    {
        "type": "object",
        "description": "see API.md; unknown members are errors",
        "required": ["name", "agents"],
        "properties": {
            "name": {"type": "string"},
            "policy": {"oneOf": [{"type": "string", "enum": ["default", "strict"]},
                                 {"type": "object"}]},
            "agents": {"type": "array", "items": {"type": "object"}},
            "concerns": {"type": "array", "items": {"type": "object"}},
        },
    },
)
JSON_OBJECT = RawBody("JsonObject", {"type": "object"})

# --- responses --------------------------------------------------------------


@dataclass(frozen=True)
class OwnerView:
    id: str
    name: str
    created_at: str
    credentials: int


@dataclass(frozen=True)
class PresenceMethodView:
    name: str
    available: bool
    detail: str


@dataclass(frozen=True)
class DemoAuthenticatorView:
    """pacd's software (demo) authenticator as the daemon treats it."""

    allowed: bool = field(metadata=_meta(
        "allow_software_authenticator is set: its credentials may be enrolled and used"))
    enrolled: int = field(metadata=_meta("how many of the owner's credentials are its"))


@dataclass(frozen=True)
class PodmanStatusView:
    """The Podman service as the daemon sees it."""

    connected: bool = field(metadata=_meta("the daemon is following this Podman service"))
    url: str | None = field(metadata=_meta(
        "the service it follows (or is configured for); null: the first of the default "
        "candidates that answers"))
    detail: str = field(metadata=_meta("why it is not connected, or what it follows"))


@dataclass(frozen=True)
class IntegrityFailureView:
    """A state row that does not carry the MAC the daemon gives every row it writes."""

    table: str
    key: str


@dataclass(frozen=True)
class OrphanView:
    """A Podman container with pacd's labels and this owner's id that pacd does not
    know (reported, never adopted)."""

    podman_id: str
    name: str
    state: str
    container_id: str
    agent: str


@dataclass(frozen=True)
class AuditUntrustedView:
    """What the keychain checkpoint could not account for at start-up."""

    first_bad_seq: int
    found: str


@dataclass(frozen=True)
class AuditCheckpointErrorView:
    """The last failed checkpoint write and how many failed in a row."""

    message: str
    count: int


@dataclass(frozen=True)
class AuditHealthView:
    """Whether the audit log vouches for itself; false refuses everything above basic."""

    trusted: bool
    head_seq: int
    checkpoint_seq: int | None
    checkpoint_age_s: float | None
    untrusted: AuditUntrustedView | None = None
    checkpoint_error: AuditCheckpointErrorView | None = None


@dataclass(frozen=True)
class StatusView:
    version: str
    owner: OwnerView | None
    pending_approvals: int
    keychain_backend: str
    presence_methods: list[PresenceMethodView]
    podman_url: str | None
    socket: str
    pid: int
    started_at: str
    orphans: list[OrphanView] = field(default_factory=list)
    #: state rows that failed their MAC in this run (treated as absent, never repaired)
    integrity_failures: list[IntegrityFailureView] = field(default_factory=list)
    audit: AuditHealthView | None = None
    #: agents' message long polls waiting right now, by "<container id>/<agent>"
    waiting_polls: dict[str, int] = field(default_factory=dict)
    fprintd_bus_address: str | None = field(default=None, metadata=_meta(
        "the D-Bus address fprintd is reached on when it is not the system bus "
        "(whatever answers there can open biometric sessions); null: the system bus"))
    demo_authenticator: DemoAuthenticatorView = field(
        default_factory=lambda: DemoAuthenticatorView(allowed=False, enrolled=0))
    #: "keychain" or "passphrase": which secret store keychain_backend names
    keystore: str = "keychain"
    #: null while no container runtime is wired in
    podman: PodmanStatusView | None = None


@dataclass(frozen=True)
class CredentialOptions:
    publicKey: dict[str, Any]  # WebAuthn member name
    origin: str
    registration_id: str


@dataclass(frozen=True)
class CredentialView:
    credential_id: str
    label: str
    user_verifying: bool


@dataclass(frozen=True)
class CredentialEntry:
    """An enrolled presence credential as the owner sees it."""

    credential_id: str = field(metadata=_meta("hex; the {id} of DELETE /v1/owner/credentials"))
    label: str
    kind: str = field(metadata=_meta("fido2 (a security key) or platform (built-in)"))
    aaguid: str = field(metadata=_meta("the authenticator model as the key states it (UUID)"))
    user_verifying: bool
    created_at: str
    last_used_at: str | None = field(metadata=_meta("when it last signed; null: never"))
    software: bool = field(
        metadata=_meta("pacd's software (demo) authenticator, by the AAGUID the key states; "
                       "false is no proof of hardware"))


@dataclass(frozen=True)
class CredentialList:
    credentials: list[CredentialEntry]


@dataclass(frozen=True)
class SessionOptions:
    session_id: str
    publicKey: dict[str, Any]  # WebAuthn member name
    origin: str


@dataclass(frozen=True)
class SessionToken:
    token: str
    level: Level
    expires_at: str


@dataclass(frozen=True)
class SessionView:
    """The session the presented token belongs to."""

    token_id: str
    level: Level
    scope: str
    expires_at: str


@dataclass(frozen=True)
class AgentView:
    name: str
    image: str
    capabilities: list[str]
    data_access: str
    isolation: str
    connections: list[str]
    state: str


@dataclass(frozen=True)
class PluginView:
    id: str
    name: str
    version: str
    agent: str
    state: str
    approval_id: str
    approved_at: str


@dataclass(frozen=True)
class StorageView:
    """Sealed data a container holds, against its quotas (bytes)."""

    used_bytes: int
    quota_bytes: int
    concern_quota_bytes: int
    concerns: dict[str, int]


@dataclass(frozen=True)
class ContainerView:
    id: str
    name: str
    owner_id: str
    created_at: str
    state: str
    spec: dict[str, Any]
    agents: list[AgentView]
    plugins: list[PluginView]
    storage: StorageView | None = None


@dataclass(frozen=True)
class PluginStateView:
    """An approved or pending plugin and whether it runs."""

    id: str
    name: str
    version: str
    agent: str
    #: pending, approved, running, stopped, refused or failed
    state: str
    #: why it is not running ("" when it runs)
    reason: str
    image: str
    image_digest: str
    approval_id: str


@dataclass(frozen=True)
class PluginStateList:
    plugins: list[PluginStateView]


@dataclass(frozen=True)
class PluginRemoved:
    container_id: str
    plugin_id: str
    agents: list[str]
    removed: bool


@dataclass(frozen=True)
class ContainerList:
    containers: list[ContainerView]


@dataclass(frozen=True)
class Deleted:
    id: str
    deleted: bool


@dataclass(frozen=True)
class ImageBuilt:
    image: str
    log: list[str]


@dataclass(frozen=True)
class ImageBuildRequest:
    base_image: str | None = field(
        default=None,
        metadata=_meta("the FROM image; must be in local Podman storage (never pulled); "
                       "defaults to base_image in the daemon's config",
                       min_length=1, max_length=255),
    )


@dataclass(frozen=True)
class ImageBuildLine:
    """One JSON line of an image build: progress lines, then one done or error line."""

    # {"type": "progress", "line"} as Podman reports them, then exactly one
    # {"type": "done", "image"} or {"type": "error", "error": {"code", "message"}};
    # a stream that ends without either was cut off.
    type: Literal["progress", "done", "error"]
    line: str | None = None
    image: str | None = None
    error: dict[str, Any] | None = None


@dataclass(frozen=True)
class KubeExport:
    yaml: str


@dataclass(frozen=True)
class ApprovalAccepted:
    approval_id: str
    required_level: Level
    expires_at: str


@dataclass(frozen=True)
class ApprovalView:
    id: str
    kind: str
    state: ApprovalState
    required_level: Level
    summary: str
    requester: str
    created_at: str
    expires_at: str
    resolved_at: str | None
    reason: str | None
    requester_pid: int | None = field(metadata=_meta(
        "the submitting process's pid (SO_PEERCRED at submission); null when not known"))
    requester_exe: str | None = field(metadata=_meta(
        "that process's executable (/proc/PID/exe at submission); null when not known"))


@dataclass(frozen=True)
class ApprovalList:
    approvals: list[ApprovalView]
    next_cursor: str | None = field(default=None, metadata=_meta(
        "pass as ?cursor= for the next (older) page; null on the last page"))


@dataclass(frozen=True)
class ApprovalDetail(ApprovalView):
    payload: dict[str, Any]
    challenge: str = field(metadata=_meta("base64url SHA-256 of the canonical payload"))
    publicKey: dict[str, Any] | None = field(
        metadata=_meta("request options over the challenge; null when nothing is enrolled")
    )
    origin: str


@dataclass(frozen=True)
class ApprovalResolved:
    id: str
    state: ApprovalState
    result: dict[str, Any] | None


@dataclass(frozen=True)
class AuditEntryView:
    seq: int
    time: str
    actor: str
    action: str
    target: str
    decision: Literal["allow", "deny", "info"]
    reason: str
    details: dict[str, Any]


@dataclass(frozen=True)
class AuditPage:
    entries: list[AuditEntryView]
    next_cursor: str | None = field(default=None, metadata=_meta(
        "pass as ?cursor= for the next page; null when this page was not full"))


@dataclass(frozen=True)
class AuditVerify:
    ok: bool
    entries: int
    first_bad_seq: int | None
    problem: str


@dataclass(frozen=True)
class Event:
    """One line of ``GET /v1/events``; other members depend on ``type``."""

    open_object: ClassVar[bool] = True

    type: str
    time: str


EVENT_TYPES = (
    "subscribed", "approval.created", "approval.resolved", "approval.expired", "container.state",
    "audit.appended", "daemon.stopping", "overflow",
)

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "errors": {"type": "array", "items": {"type": "string"}},
                "required_level": {"type": "string"},
            },
        }
    },
}


# --- decoding ---------------------------------------------------------------

_JSON_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _fields(cls: type) -> list[tuple[dataclasses.Field[Any], Any]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls)]


def _is_optional(tp: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return True, args[0]
    return False, tp


def _check_rules(value: Any, rules: dict[str, Any], path: str, errors: list[str]) -> None:
    if isinstance(value, str):
        if "min_length" in rules and len(value) < rules["min_length"]:
            errors.append(f"{path}: must not be shorter than {rules['min_length']}")
        if "max_length" in rules and len(value) > rules["max_length"]:
            errors.append(f"{path}: must not be longer than {rules['max_length']}")
        if "pattern" in rules and not re.fullmatch(rules["pattern"], value):
            errors.append(f"{path}: must match {rules['pattern']}")
        problem = text_problem(value) if rules.get("text") else None
        if problem is not None:
            errors.append(f"{path}: {problem}")
    if isinstance(value, int) and not isinstance(value, bool):
        if "minimum" in rules and value < rules["minimum"]:
            errors.append(f"{path}: must be at least {rules['minimum']}")
        if "maximum" in rules and value > rules["maximum"]:
            errors.append(f"{path}: must be at most {rules['maximum']}")


def _decode_value(tp: Any, value: Any, path: str, errors: list[str],
                  rules: dict[str, Any]) -> Any:
    optional, inner = _is_optional(tp)
    if value is None:
        if optional or tp is Any:
            return None
        errors.append(f"{path}: must not be null")
        return None
    tp = inner
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed or not isinstance(value, str):
            errors.append(f"{path}: must be one of {', '.join(map(str, allowed))}")
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _decode_object(tp, value, path, errors)
    if origin is list:
        if not isinstance(value, list):
            errors.append(f"{path}: expected an array")
            return []
        (item,) = typing.get_args(tp)
        return [_decode_value(item, v, f"{path}[{i}]", errors, {}) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            errors.append(f"{path}: expected an object")
            return {}
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            errors.append(f"{path}: expected a number")
        return value
    if tp in _JSON_NAMES:
        if isinstance(value, bool) is not (tp is bool) or not isinstance(value, tp):
            errors.append(f"{path}: expected {_JSON_NAMES[tp]}")
            return value
        _check_rules(value, rules, path, errors)
        return value
    raise TypeError(f"unsupported message type {tp!r}")  # a programming error


def _decode_object(cls: type[T], value: Any, path: str, errors: list[str]) -> T:
    if not isinstance(value, dict):
        errors.append(f"{path}: expected an object")
        return None  # type: ignore[return-value]
    known = _fields(cls)
    names = {f.name for f, _ in known}
    for key in value:
        if key not in names:
            errors.append(f"{path}.{key}: unknown field")
    kwargs: dict[str, Any] = {}
    for f, tp in known:
        if f.name in value:
            kwargs[f.name] = _decode_value(tp, value[f.name], f"{path}.{f.name}", errors,
                                           dict(f.metadata))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            errors.append(f"{path}.{f.name}: required")
    if errors:
        return None  # type: ignore[return-value]
    return cls(**kwargs)


def decode(cls: type[T], value: Any, path: str = "body") -> T:
    """Decode a parsed JSON value into ``cls``, or raise InvalidRequest with every error."""
    errors: list[str] = []
    result = _decode_object(cls, value, path, errors)
    if errors:
        raise InvalidRequest(f"invalid {path}: " + "; ".join(errors[:5]), errors=errors)
    return result


def decode_query(cls: type[T], query: typing.Mapping[str, str]) -> T:
    """Decode URL query parameters (strings) into ``cls``; integers are parsed."""
    hints = dict((f.name, tp) for f, tp in _fields(cls))
    converted: dict[str, Any] = {}
    errors: list[str] = []
    for key, raw in query.items():
        tp = _is_optional(hints.get(key, str))[1]
        if tp is int:
            try:
                converted[key] = int(raw)
            except ValueError:
                errors.append(f"query.{key}: expected an integer")
        else:
            converted[key] = raw
    if errors:
        raise InvalidRequest("invalid query: " + "; ".join(errors), errors=errors)
    return decode(cls, converted, "query")


#: values :func:`encode` hands back as they are, by exact type (the common case first)
_PLAIN: frozenset[type] = frozenset({str, int, float, bool, type(None)})
#: a message class's field names, looked up once per class instead of once per answer
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def encode(obj: Any) -> Any:
    """A message (or list/dict of messages) as plain JSON data."""
    cls = type(obj)
    if cls in _PLAIN:
        return obj
    names = _FIELD_NAMES.get(cls)
    if names is None and dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        names = _FIELD_NAMES.setdefault(cls, tuple(f.name for f in dataclasses.fields(obj)))
    if names is not None:
        return {name: encode(getattr(obj, name)) for name in names}
    if isinstance(obj, list | tuple):
        return [encode(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): encode(v) for k, v in obj.items()}
    return obj


# --- JSON schema (OpenAPI 3.0 dialect) --------------------------------------


def _schema_value(tp: Any, components: dict[str, Any], rules: dict[str, Any]) -> dict[str, Any]:
    optional, tp = _is_optional(tp)
    origin = typing.get_origin(tp)
    out: dict[str, Any]
    if tp is Any:
        out = {}
    elif origin is Literal:
        out = {"type": "string", "enum": list(typing.get_args(tp))}
    elif dataclasses.is_dataclass(tp) and isinstance(tp, type):
        ref = schema_for(tp, components)
        out = {"allOf": [ref]} if optional or rules.get("description") else ref
    elif origin is list:
        out = {"type": "array", "items": _schema_value(typing.get_args(tp)[0], components, {})}
    elif origin is dict:
        out = {"type": "object"}
    elif tp in _JSON_NAMES:
        out = {"type": _JSON_NAMES[tp]}
    else:
        raise TypeError(f"unsupported message type {tp!r}")
    translate = {"min_length": "minLength", "max_length": "maxLength", "pattern": "pattern",
                 "minimum": "minimum", "maximum": "maximum", "description": "description"}
    for key, value in rules.items():
        if key in translate:
            out[translate[key]] = value
    if optional:
        out["nullable"] = True
    return out


def schema_for(cls: type | RawBody, components: dict[str, Any]) -> dict[str, Any]:
    """Register ``cls`` (and what it references) in ``components``; return its ``$ref``."""
    if isinstance(cls, RawBody):
        components.setdefault(cls.name, cls.schema)
        return {"$ref": f"#/components/schemas/{cls.name}"}
    name = cls.__name__
    if name not in components:
        components[name] = {}  # placeholder first: breaks reference cycles
        props: dict[str, Any] = {}
        required: list[str] = []
        for f, tp in _fields(cls):
            props[f.name] = _schema_value(tp, components, dict(f.metadata))
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                required.append(f.name)
        body: dict[str, Any] = {"type": "object", "properties": props,
                                "additionalProperties": bool(getattr(cls, "open_object",
                                                                     False))}
        if required:
            body["required"] = required
        if cls.__doc__ and not cls.__doc__.startswith(name + "("):
            body["description"] = cls.__doc__.strip()
        components[name] = body
    return {"$ref": f"#/components/schemas/{name}"}


def query_parameters(cls: type) -> list[dict[str, Any]]:
    """OpenAPI ``parameters`` for a query message."""
    params = []
    for f, tp in _fields(cls):
        params.append({"name": f.name, "in": "query",
                       "required": f.default is dataclasses.MISSING,
                       "schema": _schema_value(tp, {}, dict(f.metadata))})
    return params
