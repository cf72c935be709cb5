"""Kubernetes export round-trips through the real ``podman kube play``."""

from __future__ import annotations

import subprocess
import uuid

import pytest
import yaml

from pacd.core.models import (
    AgentDomain,
    Capability,
    IsolationLevel,
    PersonalAIContainer,
    SecurityPolicy,
)
from pacd.errors import NotFound
from pacd.runtime.hardening import LABEL_AGENT, LABEL_CONTAINER_ID, PACD_LABELS
from pacd.runtime.kube import export_kube
from pacd.runtime.podman import PodmanRuntime
from pacd.runtime.service import podman_binary

pytestmark = [pytest.mark.system, pytest.mark.podman]


def test_kube_export_plays_in_podman_with_the_security_context(
        podman_runtime: PodmanRuntime, busybox_image: str) -> None:
    container = PersonalAIContainer(
        id=str(uuid.uuid4()), name="home", owner_id=str(uuid.uuid4()),
        agents=(
            AgentDomain(id="a", name="writer", image="unused"),
            AgentDomain(id="b", name="scout", image="unused",
                        capabilities=(Capability.webSearch,),
                        isolation=IsolationLevel.managed),
        ),
        concerns=(), policy=SecurityPolicy.custom(allow_external_apis=True))
    text = export_kube(container, container.owner_id, lambda _agent: busybox_image)
    kinds = [doc["kind"] for doc in yaml.safe_load_all(text)]
    assert kinds == ["Pod", "Pod", "NetworkPolicy", "NetworkPolicy"]

    # Every pod the YAML names is removed in the end, however far kube play got: a
    # play that failed half-way leaves pods it never gave an id for.
    pod_names = [doc["metadata"]["name"] for doc in yaml.safe_load_all(text)
                 if doc["kind"] == "Pod"]
    try:
        pod_ids = podman_runtime.kube_play(text)
        assert len(pod_ids) == 2
        seen_agents = set()
        for pod_id in pod_ids:
            pod = podman_runtime.inspect_pod(pod_id)
            agents = [c for c in pod["Containers"] if not c["Name"].endswith("-infra")]
            assert len(agents) == 1, "one agent per pod: agents never share a network namespace"
            info = podman_runtime.inspect(agents[0]["Id"])
            labels = info["Config"]["Labels"]
            assert {k: labels[k] for k in PACD_LABELS} == dict(PACD_LABELS)
            assert labels[LABEL_CONTAINER_ID] == container.id
            seen_agents.add(labels[LABEL_AGENT])
            host = info["HostConfig"]
            assert info["Config"]["User"] == "1000:1000"
            assert host["ReadonlyRootfs"] is True
            assert any(o.startswith("no-new-privileges") for o in host["SecurityOpt"])
            assert host["CapAdd"] in ([], None) and "CAP_SYS_CHROOT" in host["CapDrop"]
            assert host["Privileged"] is False
            assert info["State"]["Status"] == "running"
            code, out = podman_runtime.exec_run(
                agents[0]["Id"], ["/bin/busybox", "sh", "-c",
                                  "id -u; grep -E '^(CapEff|NoNewPrivs):' /proc/self/status;"
                                  " touch /pwned 2>&1 || true"])
            assert code == 0
            assert out.splitlines()[0] == "1000"
            assert "CapEff:\t0000000000000000" in out and "NoNewPrivs:\t1" in out
            assert "Read-only file system" in out
        assert seen_agents == {"writer", "scout"}
        # kube down removes what kube play made
        assert sorted(podman_runtime.kube_down(text)) == sorted(pod_ids)
        for pod_id in pod_ids:
            with pytest.raises(NotFound):
                podman_runtime.inspect_pod(pod_id)
    finally:
        remove_pods(pod_names)
    for name in pod_names:
        with pytest.raises(NotFound):
            podman_runtime.inspect_pod(name)


def remove_pods(names: list[str]) -> None:
    """``podman pod rm --force`` by name; a pod that is not there is no error."""
    podman = podman_binary()
    assert podman is not None
    done = subprocess.run([podman, "pod", "rm", "--force", "--ignore", *names],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
