"""What every agent resource shares: the agent it serves, its limits, and how it decides."""

from __future__ import annotations

import abc
import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from pacd.agents.inbox import Doorbell, Inbox
from pacd.api.route import Call, Route
from pacd.audit import AuditLog
from pacd.core.models import AgentDomain, PersonalAIContainer
from pacd.core.rules import may_read, may_write
from pacd.errors import InvalidRequest, MalformedRequest, PacdError, PayloadTooLarge
from pacd.plugins.calls import PluginCalls
from pacd.vault import SealedData

MAX_VALUE_BYTES = 1024 * 1024
MAX_MESSAGE_BYTES = 64 * 1024
MAX_KEY_BYTES = 512
BODY_TIMEOUT_S = 30.0

# Keys are opaque to pacd but must be printable: no control characters (they end
# up in audit entries and error messages) and a bounded length.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class AgentIdentity:
    container_id: str
    container_name: str
    owner_id: str
    agent: str

    @property
    def actor(self) -> str:
        return f"agent:{self.container_id}/{self.agent}"


@dataclass(frozen=True)
class AgentContext:
    """The daemon parts every agent socket uses."""

    data: SealedData
    audit: AuditLog
    inbox: Inbox
    doorbell: Doorbell
    clock: Callable[[], float] = time.time
    #: how calls reach plugins (None: no plugin runs, every call is 404)
    plugins: PluginCalls | None = None


class AgentResource(abc.ABC):
    """One resource of one agent's socket: who is asking is fixed when it is made."""

    def __init__(self, ctx: AgentContext, identity: AgentIdentity,
                 container: PersonalAIContainer, member: AgentDomain) -> None:
        self.ctx = ctx
        self.me = identity
        self.container = container
        self.agent = member

    @abc.abstractmethod
    def routes(self) -> list[Route]:
        """This resource's routes, each naming one of its handlers."""

    # What the socket's caller may do: the agent's own rules. A plugin's socket to
    # the daemon serves the same resources with narrower hooks (see
    # pacd.plugins.daemon_socket).

    @property
    def who(self) -> str:
        """Who this socket serves, for messages."""
        return f"agent {self.me.agent!r}"

    def may_read(self, concern: str) -> bool:
        return may_read(self.container, self.me.agent, concern)

    def may_write(self, concern: str) -> bool:
        return may_write(self.container, self.me.agent, concern)

    @staticmethod
    async def decide(call: Call, action: str, target: str, allowed: bool,  # noqa: PLR0917 - one parameter per entry part
                     reason: str, details: dict[str, Any] | None = None) -> None:
        """Record the request's decision; raises AuditError (503) if it cannot be recorded."""
        await call.decision.append_async(call.decision.actor, action, target,
                                         "allow" if allowed else "deny", reason, details)

    async def refuse(self, call: Call, action: str, target: str, error: PacdError,
                     details: dict[str, Any] | None = None) -> PacdError:
        """Record a refusal and hand back the error to raise."""
        await self.decide(call, action, target, False, error.message,
                          {"code": error.code, **(details or {})})
        return error

    async def read_body(self, call: Call, action: str, target: str, limit: int) -> bytes:
        request = call.request
        declared = request.content_length
        if declared is not None and declared > limit:
            raise await self.refuse(call, action, target, PayloadTooLarge(
                f"the body is {declared} bytes; at most {limit} are accepted"))
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(BODY_TIMEOUT_S):
                while chunk := await request.content.read(65536):
                    size += len(chunk)
                    if size > limit:
                        raise await self.refuse(call, action, target, PayloadTooLarge(
                            f"the body is larger than {limit} bytes"))
                    chunks.append(chunk)
        except TimeoutError:
            raise await self.refuse(call, action, target, MalformedRequest(
                f"the body did not arrive within {BODY_TIMEOUT_S:g} s")) from None
        raw = b"".join(chunks)
        return raw


def name_problem(what: str, value: str) -> str | None:
    # The usual name, short printable ASCII, passes without the encode and the regex.
    if len(value) <= MAX_KEY_BYTES and value.isascii() and value.isprintable() and value:
        return None
    if not value:
        return f"{what} must not be empty"
    if len(value.encode("utf-8")) > MAX_KEY_BYTES:
        return f"{what} is longer than {MAX_KEY_BYTES} bytes"
    if _CONTROL.search(value):
        return f"{what} must not contain control characters"
    return None


def float_param(request: web.Request, name: str, default: float, lo: float, hi: float) -> float:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be a number of seconds, got {raw[:40]!r}") from None
    if not lo <= value <= hi:
        raise InvalidRequest(f"{name} must be between {lo:g} and {hi:g}, got {value:g}")
    return value
