"""What a route is: method, path, level, audit action and class, message types, handler.

The server registers exactly these and the OpenAPI document is generated from
exactly these, so "served" and "documented" are one list. Each resource module
(:mod:`pacd.api.resources`) declares its routes next to its handlers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from pacd.api.decisions import RequestDecision
from pacd.api.peercred import PeerCred, submitting_process
from pacd.errors import PacdError
from pacd.messages import RawBody

LEVELS = ("basic", "enhanced", "biometric", "carbonProof")
#: an entry fsynced before the answer, or one in the log's file before the answer
#: and fsynced by the next group commit (reads of metadata; API.md "Durability classes")
DURABLE = "durable"
WRITTEN = "written"
AUDIT_CLASSES = (DURABLE, WRITTEN)


@dataclass(frozen=True)
class Principal:
    """What the caller proved: always the owner's uid, plus a token's level if any."""

    level: str
    token_id: str | None = None
    scope: str | None = None
    expires_at: float | None = None


@dataclass
class Call:
    request: web.Request
    params: Mapping[str, str]
    body: Any
    query: Any
    principal: Principal
    #: this request's decision: entries written through it are the request's own,
    #: and the wrapper writes a generic one only if none was
    decision: RequestDecision
    #: the connected process as the kernel reported it (SO_PEERCRED / LOCAL_PEERCRED)
    peer: PeerCred | None = None

    def process(self) -> dict[str, Any] | None:
        """The submitting process (``{"pid", "exe"}``) for an approval it asks for."""
        return submitting_process(self.peer)


@dataclass(frozen=True)
class Reply:
    """A handler result with a status other than the route's default."""

    body: Any
    status: int


@dataclass(frozen=True)
class Json:
    """Already-encoded JSON bytes (hot paths precompute their answer)."""

    data: bytes


Handler = Callable[[Call], Awaitable[Any]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    operation: str
    summary: str
    handler: Handler
    level: str = "basic"
    request: type | RawBody | None = None
    query: type | None = None
    response: type | RawBody | None = None
    status: int = 200
    errors: tuple[type[PacdError], ...] = ()
    #: the handler answers with its own StreamResponse of JSON lines
    stream: bool = False
    extra_statuses: dict[int, str] = field(default_factory=dict)
    #: the audit action of this route's decision entry (default: the operation)
    action: str = ""
    #: False only for the documented exemptions (liveness and metadata)
    audited: bool = True
    #: the durability class of the wrapper's allow entry: DURABLE or WRITTEN
    audit: str = DURABLE
    #: the largest request body this route reads; None: the daemon's ``max_body_bytes``,
    #: or ``max_tokenless_body_bytes`` for a route reachable without a token (basic)
    max_body_bytes: int | None = None
    #: a path parameter's pattern, where the handler refuses other spellings (OpenAPI)
    path_patterns: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"route {self.operation}: unknown level {self.level!r}")
        if self.audit not in AUDIT_CLASSES:
            raise ValueError(f"route {self.operation}: unknown audit class {self.audit!r}")
        if not self.action:
            object.__setattr__(self, "action", self.operation)
