"""The published OpenAPI document is exactly what the daemon serves."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from openapi_spec_validator import validate

from pacd.api.owner_routes import OwnerApi
from pacd.api.server import OwnerServer
from pacd.config import load_config
from pacd.daemon import build_services
from pacd.errors import PacdError
from tests.integration.harness import DaemonProcess


def test_document_is_valid_and_lists_every_served_route(daemon: DaemonProcess) -> None:
    doc = daemon.client().request("GET", "/v1/openapi.json")
    validate(doc)
    documented = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    assert ("GET", "/v1/events") in documented and ("POST", "/v1/approvals/{id}/approve") in \
        documented
    # Every documented route is really served: none answers "no such route".
    for method, path in sorted(documented):
        concrete = re.sub(r"{[^}]+}", "nonexistent", path)
        if path == "/v1/events":
            continue  # a never-ending stream; served-ness checked below
        try:
            daemon.client().request(method, concrete, {} if method == "POST" else None)
        except PacdError as exc:  # any answer but "no such route" proves the route exists
            assert not (exc.code == "not_found" and "no such route" in exc.message), \
                (method, path, exc.message)
            assert exc.code != "method_not_allowed", (method, path)


def test_served_routes_equal_documented_routes(real_keychain: str, tmp_path: Path) -> None:
    env = {"PACD_HOME": str(tmp_path / "home"), "PACD_SOCKET": str(tmp_path / "s" / "p.sock"),
           "PACD_CONFIG": str(tmp_path / "none.toml")}
    services = build_services(load_config(env))
    try:
        api = OwnerApi(services)
        server = OwnerServer(api.routes, api.authorize, services.audit, max_connections=4,
                             max_body_bytes=1024, header_timeout_s=1.0)
        served = {(r.method, r.resource.canonical) for r in server.app.router.routes()
                  if r.resource is not None and r.method != "HEAD"}
        doc = json.loads(api._openapi.data)
        documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
        assert served == documented
        assert len(served) == len(api.routes) >= 25
    finally:
        services.audit.close()
        services.store.close()


@pytest.mark.parametrize("route", ["/v1/status", "/v1/openapi.json"])
def test_basic_routes_need_no_token(daemon: DaemonProcess, route: str) -> None:
    assert daemon.client().request("GET", route)
