"""Kubernetes YAML for a container: the path for owners who outgrow one machine.

One Pod per agent domain (agents must not share a network namespace, so never
two agents in one Pod) with the same hardening as on Podman, plus one
NetworkPolicy per agent that denies what its isolation denies. Pure: the
caller writes the text where it wants.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pacd.core.models import PersonalAIContainer
from pacd.errors import InvalidRequest
from pacd.runtime.hardening import (
    AGENT_SOCKET_IN_CONTAINER,
    CONTAINER_TMP,
    DEFAULT_MEMORY_BYTES,
    DEFAULT_TMP_BYTES,
    agent_labels,
    container_name,
    seed_env,
)

UID = 1000
GID = 1000


def _mebibytes(n: int) -> str:
    return f"{max(1, n // (1024 * 1024))}Mi"


def _security_context() -> dict[str, Any]:
    return {
        "runAsUser": UID,
        "runAsGroup": GID,
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def agent_pod(container: PersonalAIContainer, agent_name: str, owner_id: str,
              image: str) -> dict[str, Any]:
    agent = container.agent(agent_name)
    if agent is None:
        raise InvalidRequest(f"no agent {agent_name!r} in container {container.id}")
    name = container_name(container.id, agent.name)
    env = {**seed_env(container, owner_id), "PACD_AGENT_SOCKET": AGENT_SOCKET_IN_CONTAINER,
           "PACD_AGENT": agent.name, "PACD_CONTAINER_ID": container.id}
    spec_container: dict[str, Any] = {
        # Podman names it <pod>-<container>: pacd-<id>-<agent>-agent.
        "name": "agent",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "env": [{"name": k, "value": v} for k, v in env.items()],
        "securityContext": _security_context(),
        "resources": {"limits": {"memory": _mebibytes(DEFAULT_MEMORY_BYTES)}},
        "volumeMounts": [{"name": "tmp", "mountPath": CONTAINER_TMP}],
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": agent_labels(container, agent, owner_id)},
        "spec": {
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "hostNetwork": False,
            "hostPID": False,
            "hostIPC": False,
            "restartPolicy": "Never",
            "securityContext": {
                "runAsUser": UID,
                "runAsGroup": GID,
                "runAsNonRoot": True,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [spec_container],
            "volumes": [{"name": "tmp",
                         "emptyDir": {"medium": "Memory",
                                      "sizeLimit": _mebibytes(DEFAULT_TMP_BYTES)}}],
        },
    }


def agent_network_policy(container: PersonalAIContainer, agent_name: str,
                         owner_id: str) -> dict[str, Any]:
    """Deny-all, for every agent. Agent-to-agent traffic goes through pacd, never pod
    to pod, and the way out that pacd grants (its egress proxy, limited to the
    policy's trusted_domains) does not exist in a cluster: opening the pod's
    network there would give unrestricted egress instead."""
    agent = container.agent(agent_name)
    if agent is None:
        raise InvalidRequest(f"no agent {agent_name!r} in container {container.id}")
    labels = agent_labels(container, agent, owner_id)
    spec: dict[str, Any] = {
        "podSelector": {"matchLabels": labels},
        "policyTypes": ["Ingress", "Egress"],
    }
    # No ingress/egress rules listed ⇒ everything of that direction is denied.
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": container_name(container.id, agent.name), "labels": labels},
        "spec": spec,
    }


def export_kube(container: PersonalAIContainer, owner_id: str,
                image_for_agent: Callable[[str], str] | None = None,
                *, network_policies: bool = True) -> str:
    """Multi-document Kubernetes YAML: a Pod per agent, then a NetworkPolicy per agent.

    ``image_for_agent(agent_name)`` picks each agent's image (default: the
    agent's own). ``podman kube play`` accepts the whole document and ignores
    the NetworkPolicy kind.
    """
    docs: list[dict[str, Any]] = []
    for agent in container.agents:
        image = image_for_agent(agent.name) if image_for_agent else agent.image
        docs.append(agent_pod(container, agent.name, owner_id, image))
    if network_policies:
        docs.extend(agent_network_policy(container, a.name, owner_id)
                    for a in container.agents)
    import yaml  # lazy: only an export needs it, so the daemon does not hold it from start

    return yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False)
