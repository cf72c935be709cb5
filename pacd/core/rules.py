"""The seed's access rules: who may talk to whom, who may read or write what,
and which security level each daemon action needs.

Everything here answers "no" when in doubt: unknown agents, unknown concerns
and self-connections are refused.
"""

from __future__ import annotations

from enum import StrEnum

from pacd.core.models import IsolationLevel, PersonalAIContainer, SecurityLevel, SecurityPolicy


def can_connect(container: PersonalAIContainer, from_agent: str, to_agent: str) -> bool:
    """The seed's ``canConnect``: only the sender's isolation decides.

    strict never connects; managed reaches exactly its allowed connections;
    collaborative reaches its allowed connections and every agent it shares a
    concern domain with.
    """
    if from_agent == to_agent:
        return False
    source = container.agent(from_agent)
    if source is None or container.agent(to_agent) is None:
        return False
    if source.isolation is IsolationLevel.strict:
        return False
    if to_agent in source.allowed_connections:
        return True
    if source.isolation is IsolationLevel.managed:
        return False
    return shares_concern(container, from_agent, to_agent)


def shares_concern(container: PersonalAIContainer, a: str, b: str) -> bool:
    """Both agents are connected to at least one common concern domain."""
    return any(a in c.connected_agents and b in c.connected_agents for c in container.concerns)


def may_read(container: PersonalAIContainer, agent: str, concern: str) -> bool:
    """Only agents connected to the concern domain, with some data access, read it."""
    domain = container.agent(agent)
    target = container.concern(concern)
    if domain is None or target is None:
        return False
    return agent in target.connected_agents and domain.data_access.can_read


def may_write(container: PersonalAIContainer, agent: str, concern: str) -> bool:
    """Only connected agents with readWrite or crossDomain access write."""
    domain = container.agent(agent)
    target = container.concern(concern)
    if domain is None or target is None:
        return False
    return agent in target.connected_agents and domain.data_access.can_write


class Action(StrEnum):
    """Everything the daemon does on the owner's behalf."""

    status = "status"
    list_containers = "list_containers"
    show_container = "show_container"
    read_audit = "read_audit"
    verify_audit = "verify_audit"
    list_approvals = "list_approvals"
    container_config = "container_config"
    container_openapi = "container_openapi"
    export_kube = "export_kube"
    submit_plugin = "submit_plugin"
    list_plugins = "list_plugins"
    uninstall_plugin = "uninstall_plugin"
    deny_approval = "deny_approval"
    start_container = "start_container"
    stop_container = "stop_container"
    read_owner_data = "read_owner_data"
    build_image = "build_image"
    create_container = "create_container"
    delete_container = "delete_container"
    install_plugin = "install_plugin"
    change_policy = "change_policy"
    enroll_credential = "enroll_credential"
    list_credentials = "list_credentials"
    add_credential = "add_credential"
    remove_credential = "remove_credential"
    request_credential_removal = "request_credential_removal"
    link_containers = "link_containers"
    rotate_keys = "rotate_keys"
    export_keys = "export_keys"
    weaken_policy = "weaken_policy"


# DESIGN.md §2. Denying can only make things safer, so it stays at basic.
# Submitting a plugin only queues it (installing is the approval), but every
# queued approval takes the owner's attention: it needs a touch (enhanced), so a
# script of the owner's uid cannot fill the queue on its own.
_REQUIRED: dict[Action, SecurityLevel] = {
    Action.status: SecurityLevel.basic,
    Action.list_containers: SecurityLevel.basic,
    Action.show_container: SecurityLevel.basic,
    Action.read_audit: SecurityLevel.basic,
    Action.verify_audit: SecurityLevel.basic,
    Action.list_approvals: SecurityLevel.basic,
    Action.container_config: SecurityLevel.basic,
    Action.container_openapi: SecurityLevel.basic,
    Action.export_kube: SecurityLevel.basic,
    Action.list_plugins: SecurityLevel.basic,
    Action.deny_approval: SecurityLevel.basic,
    Action.start_container: SecurityLevel.enhanced,
    Action.stop_container: SecurityLevel.enhanced,
    Action.read_owner_data: SecurityLevel.enhanced,
    Action.build_image: SecurityLevel.enhanced,
    Action.submit_plugin: SecurityLevel.enhanced,
    # Uninstalling only takes away (like stopping): a touch, not a fingerprint.
    Action.uninstall_plugin: SecurityLevel.enhanced,
    Action.request_credential_removal: SecurityLevel.enhanced,
    Action.create_container: SecurityLevel.biometric,
    Action.delete_container: SecurityLevel.biometric,
    Action.install_plugin: SecurityLevel.biometric,
    Action.change_policy: SecurityLevel.biometric,
    Action.enroll_credential: SecurityLevel.biometric,
    Action.list_credentials: SecurityLevel.basic,
    # Who the owner is changes only with a signature by one of the owner's keys over
    # the key added or removed: a session alone never does it (DESIGN.md §2).
    Action.add_credential: SecurityLevel.carbonProof,
    Action.remove_credential: SecurityLevel.carbonProof,
    Action.link_containers: SecurityLevel.carbonProof,
    Action.rotate_keys: SecurityLevel.carbonProof,
    Action.export_keys: SecurityLevel.carbonProof,
    Action.weaken_policy: SecurityLevel.carbonProof,
}


def required_level(action: Action) -> SecurityLevel:
    """The least security level that may perform ``action``."""
    return _REQUIRED[action]


def policy_is_weakening(old: SecurityPolicy, new: SecurityPolicy) -> bool:
    """True if ``new`` relaxes any field of ``old``.

    Relaxing means: a protection switched off, a permission switched on, more
    concurrent connections, an added network port or trusted domain, or data
    kept longer (the strict preset keeps it shorter, so longer is looser).
    """
    return bool(
        (old.requires_carbon_based_auth and not new.requires_carbon_based_auth)
        or (old.encryption_required and not new.encryption_required)
        or (old.audit_logging and not new.audit_logging)
        or (new.allow_plugins and not old.allow_plugins)
        or (new.allow_external_apis and not old.allow_external_apis)
        or new.max_concurrent_connections > old.max_concurrent_connections
        or new.data_retention_days > old.data_retention_days
        or not set(new.allowed_network_ports) <= set(old.allowed_network_ports)
        or not set(new.trusted_domains) <= set(old.trusted_domains)
    )


def policy_change_action(old: SecurityPolicy, new: SecurityPolicy) -> Action:
    """Which action replacing ``old`` by ``new`` is: weakening needs carbonProof."""
    return Action.weaken_policy if policy_is_weakening(old, new) else Action.change_policy
