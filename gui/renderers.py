"""What an approval asks, as rows of (label, value), one renderer per approval kind.

Each renderer reads the **canonical payload** — the JSON whose SHA-256 is the
challenge the key signs — and nothing the daemon wrote about it (its
``summary`` is never shown as the request). A kind registers its renderer with
:func:`renders`; a kind with none gets :func:`render_generic`, which lists
every field of the body, so a new kind is still shown in full.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

Row = tuple[str, str]
Renderer = Callable[[dict[str, Any]], list[Row]]

RENDERERS: dict[str, Renderer] = {}


def renders(kind: str) -> Callable[[Renderer], Renderer]:
    def register(fn: Renderer) -> Renderer:
        RENDERERS[kind] = fn
        return fn
    return register


def render(payload: dict[str, Any]) -> tuple[str, list[Row]]:
    """The title and rows for ``payload``: by its kind's renderer, else generically."""
    kind = str(payload.get("kind", "?"))
    body = payload.get("body")
    body = body if isinstance(body, dict) else {}
    renderer = RENDERERS.get(kind, render_generic)
    return TITLES.get(kind, f"Approve {kind}?"), renderer(body)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def render_generic(body: dict[str, Any]) -> list[Row]:
    return [(str(key), _text(value)) for key, value in sorted(body.items())]


TITLES = {
    "plugin.install": "Install a plugin?",
    "credential.add": "Add a presence credential?",
    "credential.remove": "Remove a presence credential?",
    "audit.reanchor": "Re-anchor the audit log?",
}


def _hardware(body: dict[str, Any]) -> str:
    software = body.get("software")
    if software is None:
        return "not known"
    return "software (not secure)" if software else "hardware"


@renders("plugin.install")
def render_plugin(body: dict[str, Any]) -> list[Row]:
    schema = body.get("schema")
    schema = schema if isinstance(schema, dict) else {}
    rows: list[Row] = [
        ("plugin", _text(schema.get("name", "?"))),
        ("version", _text(schema.get("version", "?"))),
        ("image", _text(schema.get("image") or "none (runs in the agent's container)")),
        ("for agent", _text(body.get("agent", "?"))),
        ("in container", f"{_text(body.get('container_name', '?'))} "
                         f"({_text(body.get('container_id', '?'))})"),
    ]
    capabilities = schema.get("required_capabilities") or []
    if not capabilities:
        rows.append(("capability", "none"))
    for capability in capabilities if isinstance(capabilities, list) else [capabilities]:
        rows.append(("capability", _text(capability)))
    endpoints = schema.get("endpoints") or []
    for endpoint in endpoints if isinstance(endpoints, list) else [endpoints]:
        if not isinstance(endpoint, dict):
            rows.append(("endpoint", _text(endpoint)))
            continue
        limit = endpoint.get("rate_limit")
        rate = (f"{_text(limit.get('requests_per_minute', '?'))}/min, burst "
                f"{_text(limit.get('burst_size', '?'))}" if isinstance(limit, dict)
                else "no rate limit")
        auth = "auth required" if endpoint.get("requires_auth") else "no auth"
        rows.append(("endpoint", f"{_text(endpoint.get('method', '?'))} "
                                 f"{_text(endpoint.get('path', '?'))} ({rate}; {auth})"))
    security = schema.get("security_requirements")
    security = security if isinstance(security, dict) else {}
    rows.append(("data access", _text(security.get("max_data_access", "not stated"))))
    isolated = security.get("domain_isolation")
    rows.append(("network", "isolated to its domain" if isolated is True
                 else "not isolated" if isolated is False else "not stated"))
    rows.append(("encrypted transport", _text(security.get("encrypted_transport",
                                                           "not stated"))))
    return rows


@renders("credential.add")
def render_credential_add(body: dict[str, Any]) -> list[Row]:
    return [("label", _text(body.get("label", "?"))),
            ("authenticator (AAGUID)", _text(body.get("aaguid", "?"))),
            ("software or hardware", _hardware(body)),
            ("user verification", _text(body.get("user_verifying", "not stated"))),
            ("credential id", _text(body.get("credential_id", "?")))]


@renders("credential.remove")
def render_credential_remove(body: dict[str, Any]) -> list[Row]:
    return render_credential_add(body)


@renders("audit.reanchor")
def render_reanchor(body: dict[str, Any]) -> list[Row]:
    found = body.get("found")
    rows: list[Row] = [("log head entry", _text(body.get("head_seq", "?"))),
                       ("head MAC", _text(body.get("head_mac", "?")))]
    if isinstance(found, dict):
        rows += [(f"found: {key}", _text(value)) for key, value in sorted(found.items())]
    else:
        rows.append(("found", _text(found)))
    return rows
