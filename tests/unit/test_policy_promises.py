"""Policy fields pacd cannot honour when false are refused, never silently ignored."""

from __future__ import annotations

import pytest

from pacd.core.models import SecurityPolicy
from pacd.core.spec import parse_container_spec
from pacd.errors import SpecError


def _spec(policy: dict[str, object]) -> dict[str, object]:
    return {"name": "home", "policy": policy,
            "agents": [{"name": "writer", "image": "localhost/agent:latest"}]}


@pytest.mark.parametrize(("field", "why"), [
    ("audit_logging", "pacd always audits"),
    ("auditLogging", "pacd always audits"),
    ("encryption_required", "pacd always encrypts"),
    ("encryptionRequired", "pacd always encrypts"),
    ("requires_carbon_based_auth", "requires carbon-based authentication"),
    ("requiresCarbonBasedAuth", "requires carbon-based authentication"),
])
def test_a_policy_cannot_switch_off_what_pacd_always_does(field: str, why: str) -> None:
    with pytest.raises(SpecError) as refused:
        parse_container_spec(_spec({"allow_plugins": True, field: False}))
    [error] = refused.value.errors
    assert error.startswith(f"policy.{field}: must be true: "), error
    assert why in error
    # true (what pacd does anyway) is accepted
    assert parse_container_spec(_spec({field: True})).policy == SecurityPolicy.default()


def test_no_policy_object_with_a_switched_off_promise_can_be_built() -> None:
    for field in ("audit_logging", "encryption_required", "requires_carbon_based_auth"):
        with pytest.raises(SpecError, match=f"policy.{field}: must be true"):
            SecurityPolicy(**{field: False})
        with pytest.raises(SpecError, match=f"policy.{field}: must be true"):
            SecurityPolicy.custom(**{field: False})
