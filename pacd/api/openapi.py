"""The daemon's OpenAPI 3.0 document, generated from its route table and message types."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from pacd.api.route import Route
from pacd.errors import PacdError, PresenceRequired, Unauthorized
from pacd.messages import ERROR_SCHEMA, query_parameters, schema_for

_PARAM = re.compile(r"{([^}]+)}")


def _errors_for(route: Route) -> list[type[PacdError]]:
    errors = list(route.errors)
    if route.level != "basic":
        errors += [Unauthorized, PresenceRequired]
    return errors


def build_openapi(routes: Iterable[Route], version: str) -> dict[str, Any]:
    components: dict[str, Any] = {"Error": ERROR_SCHEMA}
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        op: dict[str, Any] = {
            "operationId": route.operation,
            "summary": route.summary,
            "x-pacd-level": route.level,
            # Whether each request is an audit entry (false only for the documented
            # exemptions), and the action generic entries of this route carry.
            "x-pacd-audited": route.audited,
            "x-pacd-audit-action": route.action,
            # When its entry is durable: fsynced before the answer, or written before
            # it and fsynced by the next group commit (API.md "Durability classes").
            "x-pacd-audit": route.audit,
        }
        params = [
            {"name": name, "in": "path", "required": True,
             "schema": {"type": "string"} | (
                 {"pattern": route.path_patterns[name]} if name in route.path_patterns else {})}
            for name in _PARAM.findall(route.path)
        ]
        if route.query is not None:
            params += query_parameters(route.query)
        if params:
            op["parameters"] = params
        if route.request is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": schema_for(route.request,
                                                                      components)}},
            }
        ok: dict[str, Any] = {"description": "success"}
        if route.stream:
            ok["content"] = {"application/x-ndjson": {"schema": schema_for(
                route.response, components) if route.response else {"type": "object"}}}
        elif route.response is not None:
            ok["content"] = {"application/json": {"schema": schema_for(route.response,
                                                                       components)}}
        responses: dict[str, Any] = {str(route.status): ok}
        for status, text in route.extra_statuses.items():
            responses[str(status)] = {"description": text}
        by_status: dict[int, list[str]] = {}
        for err in _errors_for(route):
            by_status.setdefault(err.status, []).append(err.code)
        # Every route can meet these: a malformed request, a foreign peer or a
        # browser, a limit; routes that take input can find it invalid or too big.
        by_status.setdefault(400, []).append("invalid_request")
        by_status.setdefault(403, []).extend(["peer_refused", "forbidden"])
        by_status.setdefault(503, []).append("busy")
        if route.request is not None or route.query is not None or "{" in route.path:
            by_status.setdefault(422, []).append("invalid_request")
        if route.request is not None:
            by_status.setdefault(408, []).append("request_timeout")
            by_status.setdefault(413, []).append("payload_too_large")
        for status, codes in sorted(by_status.items()):
            responses.setdefault(str(status), {
                "description": "error: " + ", ".join(sorted(set(codes))),
                "content": {"application/json": {"schema": {"$ref":
                                                            "#/components/schemas/Error"}}},
            })
        op["responses"] = responses
        if route.level != "basic":
            op["security"] = [{"bearer": []}]
        paths.setdefault(route.path, {})[route.method.lower()] = op
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "pacd owner socket",
            "version": version,
            "description": "HTTP/1.1 + JSON over the owner's Unix socket. Errors are "
                           "{\"error\": {\"code\", \"message\"}}. Levels: x-pacd-level.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
