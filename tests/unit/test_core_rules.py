from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pacd.core.models import (
    AgentDomain,
    ConcernCategory,
    ConcernDomain,
    DataAccessLevel,
    IsolationLevel,
    PersonalAIContainer,
    SecurityLevel,
    SecurityPolicy,
)
from pacd.core.rules import (
    Action,
    can_connect,
    may_read,
    may_write,
    policy_change_action,
    policy_is_weakening,
    required_level,
    shares_concern,
)

NAMES = ["a", "b", "c", "d", "e"]


def agent(name: str, isolation: IsolationLevel, allowed: tuple[str, ...] = (),
          access: DataAccessLevel = DataAccessLevel.readOnly) -> AgentDomain:
    return AgentDomain(f"id-{name}", name, "localhost/agent:1", (), allowed, access, isolation)


def concern(name: str, members: tuple[str, ...]) -> ConcernDomain:
    return ConcernDomain(f"id-{name}", name, ConcernCategory.personal, connected_agents=members)


def container(agents: list[AgentDomain], concerns: list[ConcernDomain]) -> PersonalAIContainer:
    return PersonalAIContainer("c", "home", "o", tuple(agents), tuple(concerns))


@st.composite
def containers(draw: st.DrawFn) -> PersonalAIContainer:
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, unique=True))
    agents = [
        agent(
            n,
            draw(st.sampled_from(list(IsolationLevel))),
            tuple(draw(st.lists(st.sampled_from(NAMES), unique=True))),
            draw(st.sampled_from(list(DataAccessLevel))),
        )
        for n in names
    ]
    concerns = [
        concern(f"k{i}", tuple(draw(st.lists(st.sampled_from(NAMES), unique=True))))
        for i in range(draw(st.integers(0, 3)))
    ]
    return container(agents, concerns)


# --- can_connect -------------------------------------------------------------


def test_can_connect_branches() -> None:
    c = container(
        [agent("s", IsolationLevel.strict, ("m",)),
         agent("m", IsolationLevel.managed, ("s",)),
         agent("k", IsolationLevel.collaborative, ("s",)),
         agent("x", IsolationLevel.collaborative)],
        [concern("shared", ("k", "m", "x"))],
    )
    assert not can_connect(c, "s", "m")            # strict never, even when listed
    assert can_connect(c, "m", "s")                # managed: allow-list
    assert not can_connect(c, "m", "k")            # managed ignores shared concerns
    assert can_connect(c, "k", "s")                # collaborative: allow-list
    assert can_connect(c, "k", "m")                # collaborative: shared concern
    assert can_connect(c, "x", "k")
    assert not can_connect(c, "x", "s")            # neither listed nor sharing
    assert not can_connect(c, "k", "k")            # never to itself
    assert not can_connect(c, "ghost", "s")        # unknown sender
    assert not can_connect(c, "k", "ghost")        # unknown receiver


def _with_sender(c: PersonalAIContainer, data: st.DataObject,
                 isolation: IsolationLevel) -> tuple[PersonalAIContainer, str]:
    """``c`` with one of its agents (drawn) switched to ``isolation``."""
    index = data.draw(st.integers(0, len(c.agents) - 1))
    agents = list(c.agents)
    agents[index] = dataclasses.replace(agents[index], isolation=isolation)
    return dataclasses.replace(c, agents=tuple(agents)), agents[index].name


@given(containers(), st.data())
def test_strict_never_connects(c: PersonalAIContainer, data: st.DataObject) -> None:
    c, a = _with_sender(c, data, IsolationLevel.strict)
    for b in NAMES:
        assert not can_connect(c, a, b)


@given(containers(), st.data())
def test_managed_connects_exactly_to_its_allow_list(c: PersonalAIContainer,
                                                   data: st.DataObject) -> None:
    c, a = _with_sender(c, data, IsolationLevel.managed)
    source = c.agent(a)
    assert source is not None
    reached = {b for b in NAMES if can_connect(c, a, b)}
    assert reached == {b for b in source.allowed_connections
                       if b != a and c.agent(b) is not None}


@given(containers(), st.data())
def test_collaborative_is_allow_list_or_shared_concern(c: PersonalAIContainer,
                                                      data: st.DataObject) -> None:
    c, a = _with_sender(c, data, IsolationLevel.collaborative)
    source = c.agent(a)
    assert source is not None
    for b in NAMES:
        if b == a or c.agent(b) is None:
            assert not can_connect(c, a, b)
            continue
        listed = b in source.allowed_connections
        sharing = shares_concern(c, a, b)
        assert can_connect(c, a, b) == (listed or sharing)
        if listed:
            assert can_connect(c, a, b)  # ⊇ allow-list
        target = c.agent(b)
        assert target is not None
        if sharing and target.isolation is IsolationLevel.collaborative:
            assert can_connect(c, b, a)  # sharing a concern works both ways


@given(containers(), st.sampled_from(NAMES), st.sampled_from(NAMES))
def test_only_known_distinct_agents_connect(c: PersonalAIContainer, a: str, b: str) -> None:
    if can_connect(c, a, b):
        assert a != b and c.agent(a) is not None and c.agent(b) is not None


# --- data access -------------------------------------------------------------


@pytest.mark.parametrize(("access", "read", "write"), [
    (DataAccessLevel.none, False, False),
    (DataAccessLevel.readOnly, True, False),
    (DataAccessLevel.readWrite, True, True),
    (DataAccessLevel.crossDomain, True, True),
])
def test_data_access_levels(access: DataAccessLevel, read: bool, write: bool) -> None:
    c = container([agent("a", IsolationLevel.strict, access=access),
                   agent("b", IsolationLevel.strict, access=access)],
                  [concern("k", ("a",))])
    assert may_read(c, "a", "k") is read
    assert may_write(c, "a", "k") is write
    # not connected: nothing, whatever the level (crossDomain included)
    assert not may_read(c, "b", "k")
    assert not may_write(c, "b", "k")
    # unknown names: nothing
    assert not may_read(c, "a", "nope") and not may_write(c, "a", "nope")
    assert not may_read(c, "ghost", "k") and not may_write(c, "ghost", "k")


@given(containers(), st.sampled_from(NAMES), st.sampled_from(["k0", "k1", "k2", "zz"]))
def test_may_write_implies_may_read(c: PersonalAIContainer, a: str, k: str) -> None:
    if may_write(c, a, k):
        assert may_read(c, a, k)
    if may_read(c, a, k):
        target = c.concern(k)
        assert target is not None and a in target.connected_agents


# --- levels ------------------------------------------------------------------


def test_required_levels_follow_the_design_table() -> None:
    expected = {
        SecurityLevel.basic: {"status", "list_containers", "show_container", "read_audit",
                              "verify_audit", "list_approvals", "container_config",
                              "container_openapi", "export_kube", "deny_approval",
                              "list_credentials", "list_plugins"},
        SecurityLevel.enhanced: {"start_container", "stop_container", "read_owner_data",
                                 "build_image", "submit_plugin", "request_credential_removal",
                                 "uninstall_plugin"},
        SecurityLevel.biometric: {"create_container", "delete_container", "install_plugin",
                                  "change_policy", "enroll_credential"},
        SecurityLevel.carbonProof: {"link_containers", "rotate_keys", "export_keys",
                                    "weaken_policy", "add_credential", "remove_credential"},
    }
    for level, actions in expected.items():
        assert {a.value for a in Action if required_level(a) is level} == actions
    assert not SecurityLevel.basic.satisfies(required_level(Action.create_container))


def _policy_fields() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({
        "max_concurrent_connections": st.integers(1, 20),
        "allowed_network_ports": st.lists(st.sampled_from([80, 443, 8080, 8443]),
                                           unique=True).map(tuple),
        "data_retention_days": st.integers(1, 120),
        "allow_plugins": st.booleans(),
        "allow_external_apis": st.booleans(),
        "trusted_domains": st.lists(st.sampled_from(["a.org", "b.org", "c.org"]),
                                    unique=True).map(tuple),
    })


policies = _policy_fields().map(lambda kw: SecurityPolicy(**kw))


def test_policy_weakening_field_by_field() -> None:
    base = SecurityPolicy.strict()
    looser: dict[str, Any] = {
        "max_concurrent_connections": 5,
        "allowed_network_ports": (443,),
        "data_retention_days": 31,
        "allow_plugins": True,
        "allow_external_apis": True,
        "trusted_domains": ("x.org",),
    }
    for name, value in looser.items():
        new = dataclasses.replace(base, **{name: value})
        assert policy_is_weakening(base, new), name
        assert not policy_is_weakening(new, base), name
        assert policy_change_action(base, new) is Action.weaken_policy
        assert policy_change_action(new, base) is Action.change_policy
    assert not policy_is_weakening(base, base)
    assert policy_is_weakening(SecurityPolicy.strict(), SecurityPolicy.default())
    assert not policy_is_weakening(SecurityPolicy.default(), SecurityPolicy.strict())


@given(policies, policies)
def test_required_level_is_monotone_for_weakening(old: SecurityPolicy,
                                                  new: SecurityPolicy) -> None:
    level = required_level(policy_change_action(old, new))
    assert level.satisfies(SecurityLevel.biometric)  # any change needs at least biometric
    if policy_is_weakening(old, new):
        assert level is SecurityLevel.carbonProof
    # tightening is never weakening: the component-wise stricter of the two
    tight = SecurityPolicy(
        max_concurrent_connections=min(old.max_concurrent_connections,
                                       new.max_concurrent_connections),
        allowed_network_ports=tuple(p for p in old.allowed_network_ports
                                    if p in new.allowed_network_ports),
        data_retention_days=min(old.data_retention_days, new.data_retention_days),
        allow_plugins=old.allow_plugins and new.allow_plugins,
        allow_external_apis=old.allow_external_apis and new.allow_external_apis,
        trusted_domains=tuple(d for d in old.trusted_domains if d in new.trusted_domains),
    )
    assert not policy_is_weakening(old, tight)
    # and a change that is weakening against tight stays weakening against anything tighter
    if policy_is_weakening(new, old):
        assert policy_is_weakening(tight, old)
