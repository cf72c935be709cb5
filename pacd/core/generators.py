"""Documents generated from the model: OpenAPI, the seed's container config,
and a Containerfile for the owner's image.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from pacd.core import fields as f
from pacd.core.models import PersonalAIContainer, PluginAPISchema, SecurityLevel
from pacd.core.plugins import plugin_conflicts
from pacd.errors import SpecError

OPENAPI_VERSION = "3.0.3"
DEFAULT_BASE_IMAGE = "alpine:3.19"
CONTAINER_USER = "1000:1000"
LABEL_PERSONAL_AI = "com.luciverse.personal-ai"
LABEL_CARBON_BASED = "com.luciverse.carbon-based"
# Image labels carry the "personal-ai." prefix on purpose: a container inherits
# its image's labels, and the container labels (com.luciverse.owner-id, ...,
# set by the runtime) must only ever mean "pacd created this container".
LABEL_OWNER_ID = "com.luciverse.personal-ai.owner-id"
LABEL_CONTAINER_ID = "com.luciverse.personal-ai.container-id"
LABEL_AGENT_ID = "com.luciverse.personal-ai.agent-id"
#: where a plugin endpoint is served to agents (the agent socket's plugin route)
PLUGIN_ROUTE = "/v1/plugins/{slug}{path}"

_SAFE_VALUE = re.compile(r"[A-Za-z0-9._:@/+-]{1,512}")


def plugin_route(plugin: PluginAPISchema, path: str) -> str:
    return PLUGIN_ROUTE.format(slug=plugin.slug, path=path)


def generate_openapi_spec(container: PersonalAIContainer,
                          plugins: Sequence[PluginAPISchema]) -> dict[str, Any]:
    """An OpenAPI 3.0 document for the container's plugin endpoints (the seed's shape)."""
    auth: list[dict[str, list[str]]] = [{"carbonBasedAuth": []}]
    clashes = [e for i, p in enumerate(plugins) for e in plugin_conflicts(p, plugins[:i])]
    if clashes:
        # Two plugins would be served at the same route; never let one shadow the other.
        raise SpecError(f"plugins clash: {clashes[0]}", errors=clashes)
    paths: dict[str, dict[str, Any]] = {}
    used_ids: set[str] = set()
    for plugin in plugins:
        for endpoint in plugin.endpoints:
            route = plugin_route(plugin, endpoint.path)
            responses: dict[str, Any] = {"200": {"description": "Success"}}
            if endpoint.requires_auth:
                responses["401"] = {"description": "Unauthorized - Carbon auth required"}
            responses["403"] = {"description": "Forbidden - Insufficient permissions"}
            method = endpoint.method.value.lower()
            # The same plugin listed twice serves each route once: keep its id.
            same = paths.get(route, {}).get(method)
            operation: dict[str, Any] = {
                "operationId": same["operationId"] if same else _operation_id(
                    plugin, endpoint.method.value, endpoint.path, used_ids),
                "summary": f"{plugin.title}: {endpoint.method.value} "
                           f"{endpoint.path}",
                "tags": [plugin.name],
                # An endpoint without auth says so explicitly instead of
                # silently inheriting the global requirement.
                "security": auth if endpoint.requires_auth else [],
                "responses": responses,
            }
            if endpoint.rate_limit is not None:
                responses["429"] = {"description": "Too Many Requests - rate limit exceeded"}
                operation["x-rate-limit"] = endpoint.rate_limit.to_json()
            paths.setdefault(route, {})[method] = operation
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Personal AI Container API",
            "description": "Carbon-based authentication required",
            "version": "1.0.0",
            "x-container-id": container.id,
            "x-owner-id": container.owner_id,
        },
        "components": {
            "securitySchemes": {"carbonBasedAuth": {"type": "http", "scheme": "bearer"}},
        },
        "security": auth,
        "tags": [{"name": p.name, "description": f"plugin {p.id}"} for p in _unique(plugins)],
        "paths": paths,
    }


def _unique(plugins: Sequence[PluginAPISchema]) -> list[PluginAPISchema]:
    seen: set[str] = set()
    out: list[PluginAPISchema] = []
    for plugin in plugins:
        if plugin.name not in seen:
            seen.add(plugin.name)
            out.append(plugin)
    return out


def _operation_id(plugin: PluginAPISchema, method: str, path: str, used: set[str]) -> str:
    """The route as an identifier, unique among ``used`` (which it joins).

    Runs of other characters become one ``_``, so two routes can read the same
    (``/0_`` and ``/0``); OpenAPI requires unique ids, so a later one is numbered.
    """
    base = re.sub(r"[^A-Za-z0-9]+", "_", f"{plugin.slug}_{method.lower()}{path}").strip("_")
    candidate, n = base, 1
    while candidate in used:
        n += 1
        candidate = f"{base}_{n}"
    used.add(candidate)
    return candidate


def generate_container_config(container: PersonalAIContainer,
                              security_level: SecurityLevel = SecurityLevel.biometric,
                              base_image: str = DEFAULT_BASE_IMAGE) -> dict[str, Any]:
    """The seed's container-config JSON, exactly its keys."""
    _check_image(base_image)
    return {
        "base-image": base_image,
        "static-linking": True,
        "env": {
            "CARBON_BASED_AUTH": "required",
            "OWNER_ID": container.owner_id,
            "SECURITY_LEVEL": security_level.value,
        },
        "labels": {LABEL_PERSONAL_AI: "true", LABEL_CARBON_BASED: "true"},
        "user": CONTAINER_USER,
        "read-only-root": True,
        "security-opt": ["no-new-privileges:true"],
    }


def generate_containerfile(container: PersonalAIContainer,
                           base_image: str = DEFAULT_BASE_IMAGE) -> str:
    """A Containerfile for the owner's image. It carries ids, never secrets.

    Every interpolated value is checked against a conservative character set
    and quoted, so no field can smuggle an extra instruction into the file.
    """
    _check_image(base_image)
    for what, value in (("container.id", container.id), ("container.owner_id",
                                                          container.owner_id)):
        if not _SAFE_VALUE.fullmatch(value):
            message = f"{what}: {f.show(value)} contains characters not allowed in an image label"
            raise SpecError(message, errors=[message])
    labels = {
        LABEL_PERSONAL_AI: "true",
        LABEL_CARBON_BASED: "true",
        LABEL_OWNER_ID: container.owner_id,
        LABEL_CONTAINER_ID: container.id,
    }
    label_lines = " \\\n      ".join(f"{key}={json.dumps(value)}" for key, value in labels.items())
    return (
        f"FROM {base_image}\n"
        f"LABEL {label_lines}\n"
        f'ENV CARBON_BASED_AUTH="required" OWNER_ID={json.dumps(container.owner_id)}\n'
        # Numeric user: works without /etc/passwd entries in the base image.
        f"USER {CONTAINER_USER}\n"
    )


def _check_image(base_image: str) -> None:
    if not f.is_image_reference(base_image):
        message = (f"base_image: {f.show(base_image)} is not a container image reference "
                   "(like alpine:3.19)")
        raise SpecError(message, errors=[message])
