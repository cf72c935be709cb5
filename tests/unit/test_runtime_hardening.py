"""The pure mapping from the model to hardened run specs, Podman create bodies and
Kubernetes YAML, and where pacd looks for Podman."""

from __future__ import annotations

import itertools
import uuid
from pathlib import Path

import pytest
import yaml

from pacd.core.models import (
    EXTERNAL_CAPABILITIES,
    AgentDomain,
    Capability,
    IsolationLevel,
    PersonalAIContainer,
    SecurityPolicy,
)
from pacd.errors import InvalidRequest, RuntimeUnavailable
from pacd.runtime.hardening import (
    AGENT_SOCKET_IN_CONTAINER,
    AgentRunSpec,
    BindMount,
    PortPublish,
    TmpfsMount,
    agent_run_spec,
    container_name,
    egress_via_proxy,
    plugin_egress_via_proxy,
    plugin_run_spec,
)
from pacd.runtime.images import owner_image_tag
from pacd.runtime.kube import export_kube
from pacd.runtime.podman import PodmanRuntime, _demux, create_body
from pacd.runtime.podman_url import candidate_podman_urls, resolve_podman_url

SOCK = Path("/run/user/1000/pacd/agents/x/agent.sock")


def container_of(*agents: AgentDomain, policy: SecurityPolicy | None = None
                 ) -> PersonalAIContainer:
    return PersonalAIContainer(id="8c1f3b2a-1111-4d2e-9f00-123456789abc", name="home",
                               owner_id="owner-1", agents=agents, concerns=(),
                               policy=policy or SecurityPolicy.default())


def agent(name: str = "writer", isolation: IsolationLevel = IsolationLevel.strict,
          caps: tuple[Capability, ...] = ()) -> AgentDomain:
    return AgentDomain(id=name, name=name, image="localhost/agent:1", capabilities=caps,
                       isolation=isolation)


def test_strict_agent_spec_has_the_whole_floor() -> None:
    a = agent()
    spec = agent_run_spec(container_of(a), a, "owner-1", SOCK)
    assert spec.name == "pacd-8c1f3b2a1111-writer"
    assert spec.image == "localhost/agent:1"
    assert spec.labels == {
        "com.luciverse.personal-ai": "true",
        "com.luciverse.carbon-based": "true",
        "com.luciverse.owner-id": "owner-1",
        "com.luciverse.container-id": "8c1f3b2a-1111-4d2e-9f00-123456789abc",
        "com.luciverse.agent": "writer",
    }
    assert spec.user == "1000:1000"
    assert spec.read_only_root and spec.no_new_privileges and spec.cap_drop == ("ALL",)
    assert spec.pids_limit > 0 and spec.memory_limit_bytes > 0
    assert [(t.target, set(t.options) >= {"noexec", "nosuid", "nodev"}) for t in spec.tmpfs] == [
        ("/tmp", True)]
    assert spec.network is False and spec.published_ports == ()
    assert spec.mounts == (BindMount(str(SOCK), AGENT_SOCKET_IN_CONTAINER),)
    assert spec.env["PACD_AGENT_SOCKET"] == AGENT_SOCKET_IN_CONTAINER
    assert spec.env["CARBON_BASED_AUTH"] == "required"
    assert spec.env["OWNER_ID"] == "owner-1"
    assert spec.env["SECURITY_LEVEL"] == "biometric"


def test_plugin_spec_has_the_agents_floor_its_own_dir_and_no_agent_label() -> None:
    """A plugin runs with exactly an agent's floor, pinned to the image it is given,
    sees only its own directory, and is never taken for an agent by the reconciler
    (no agent label, a name no agent container can have)."""
    w = agent("writer", IsolationLevel.managed, caps=tuple(EXTERNAL_CAPABILITIES))
    c = container_of(w, policy=SecurityPolicy(allow_external_apis=True,
                                              trusted_domains=("example.org",)))
    digest = "sha256:" + "ab" * 32
    spec = plugin_run_spec(c, w, "owner-1", "e621e1f8-c36c-495a-93fc-0c247a3e6e5f",
                           image=digest)
    floor = agent_run_spec(c, w, "owner-1", SOCK)
    assert spec.image == digest
    for attr in ("user", "read_only_root", "cap_drop", "no_new_privileges", "pids_limit",
                 "memory_limit_bytes", "init", "published_ports"):
        assert getattr(spec, attr) == getattr(floor, attr), attr
    # A plugin requiring no network capability gets no way out, even where the agent
    # it serves may use the egress proxy.
    assert spec.network is False
    assert not {"HTTP_PROXY", "HTTPS_PROXY"} & set(spec.env)
    # Nothing of the host is mounted: its directory is a capped tmpfs in the container.
    assert spec.mounts == ()
    assert spec.tmpfs == (*floor.tmpfs, TmpfsMount("/run/pacd-plugin", 1024 * 1024, (
        "rw", "noexec", "nosuid", "nodev", "mode=1733")))
    assert "size=1048576" in spec.tmpfs[1].mount_options()
    body = create_body(spec, "bridge")
    assert body["netns"] == {"nsmode": "none"}
    assert [m for m in body["mounts"] if m["destination"] == "/run/pacd-plugin"] == [
        {"destination": "/run/pacd-plugin", "type": "tmpfs", "source": "tmpfs",
         "options": ["rw", "noexec", "nosuid", "nodev", "mode=1733", "size=1048576"]}]
    assert spec.env["PACD_PLUGIN_SOCKET"] == "/run/pacd-plugin/plugin.sock"
    assert "com.luciverse.agent" not in spec.labels
    assert spec.labels["com.luciverse.plugin-id"] == "e621e1f8-c36c-495a-93fc-0c247a3e6e5f"
    assert spec.labels["com.luciverse.plugin-agent"] == "writer"
    assert spec.name == "pacd-8c1f3b2a1111.writer.p-e621e1f8c36c"
    assert spec.name != container_name(c.id, "writer")
    with pytest.raises(InvalidRequest):
        plugin_run_spec(c, agent("stranger"), "owner-1", "p", image=digest)


@pytest.mark.parametrize(("isolation", "allow", "agent_caps", "plugin_caps"), list(
    itertools.product(
        IsolationLevel, (False, True),
        ((Capability.textGeneration,), (Capability.networkAccess, Capability.apiCall)),
        ((), (Capability.textGeneration,), (Capability.networkAccess,),
         (Capability.apiCall, Capability.textGeneration), (Capability.webSearch,)))))
def test_a_plugin_gets_the_proxy_only_for_a_network_capability_its_agent_may_use(
        isolation: IsolationLevel, allow: bool, agent_caps: tuple[Capability, ...],
        plugin_caps: tuple[Capability, ...]) -> None:
    w = agent("writer", isolation, caps=agent_caps)
    c = container_of(w, policy=SecurityPolicy.custom(allow_external_apis=allow,
                                                     trusted_domains=["example.org"]))
    spec = plugin_run_spec(c, w, "owner-1", "e621e1f8-c36c-495a-93fc-0c247a3e6e5f",
                           image="sha256:" + "ab" * 32, capabilities=plugin_caps)
    expected = (egress_via_proxy(c, w)
                and bool(set(plugin_caps) & set(agent_caps) & EXTERNAL_CAPABILITIES))
    assert plugin_egress_via_proxy(c, w, plugin_caps) is expected
    proxy_env = {k: v for k, v in spec.env.items() if k.lower().endswith("_proxy")}
    assert proxy_env == ({k: "http://127.0.0.1:3128" for k in (
        "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")} if expected else {})
    # loopback only, whatever the policy: the proxy is the only way out
    assert spec.network is False and spec.published_ports == ()


def test_image_override() -> None:
    a = agent()
    assert agent_run_spec(container_of(a), a, "owner-1", SOCK,
                          "localhost/personal-ai:owner-1").image == "localhost/personal-ai:owner-1"


@pytest.mark.parametrize(("isolation", "allow", "caps"), list(itertools.product(
    IsolationLevel, (False, True),
    ((), (Capability.textGeneration,), (Capability.networkAccess,), (Capability.webSearch,),
     (Capability.apiCall, Capability.dataAnalysis), (Capability.fileAccess,)))))
def test_no_agent_gets_a_route_out_only_the_proxy_when_policy_and_capability_allow(
        isolation: IsolationLevel, allow: bool, caps: tuple[Capability, ...]) -> None:
    a = agent(isolation=isolation, caps=caps)
    policy = SecurityPolicy.custom(allow_external_apis=allow, allowed_network_ports=[8080, 443])
    spec = agent_run_spec(container_of(a, policy=policy), a, "owner-1", SOCK)
    expected = (isolation is not IsolationLevel.strict and allow
                and bool(set(caps) & EXTERNAL_CAPABILITIES))
    assert egress_via_proxy(container_of(a, policy=policy), a) is expected
    # Whatever the policy says: loopback only, nothing published.
    assert spec.network is False and spec.published_ports == ()
    body = create_body(spec, "bridge")
    assert body["netns"] == {"nsmode": "none"}
    assert body["portmappings"] == []
    proxy_env = {k: v for k, v in spec.env.items() if k.lower().endswith("_proxy")}
    assert proxy_env == ({k: "http://127.0.0.1:3128" for k in (
        "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")} if expected else {})


def test_create_body_sets_every_hardening_field_by_its_podman_name() -> None:
    a = agent()
    spec = agent_run_spec(container_of(a), a, "owner-1", SOCK, pids_limit=40,
                          memory_limit_bytes=1 << 27, tmp_bytes=1 << 20)
    body = create_body(spec, "bridge")
    assert body["user"] == "1000:1000"
    assert body["read_only_filesystem"] is True
    assert body["cap_drop"] == ["ALL"]
    assert body["no_new_privileges"] is True
    assert body["privileged"] is False
    assert body["resource_limits"] == {"pids": {"limit": 40},
                                       "memory": {"limit": 1 << 27, "swap": 1 << 27}}
    assert body["netns"] == {"nsmode": "none"}
    # its own PID namespace even where containers.conf says pidns = "host"
    assert body["pidns"] == {"nsmode": "private"}
    assert body["portmappings"] == [] and body["publish_image_ports"] is False
    assert "selinux_opts" not in body
    tmp = next(m for m in body["mounts"] if m["destination"] == "/tmp")
    assert tmp["type"] == "tmpfs"
    assert {"noexec", "nosuid", "nodev", f"size={1 << 20}"} <= set(tmp["options"])
    sock = next(m for m in body["mounts"] if m["destination"] == AGENT_SOCKET_IN_CONTAINER)
    assert (sock["type"], sock["source"]) == ("bind", str(SOCK))
    assert {"rbind", "nosuid", "nodev", "noexec"} <= set(sock["options"])
    assert body["labels"] == dict(spec.labels) and body["env"] == dict(spec.env)


def test_socket_dir_mount_survives_a_recreated_socket() -> None:
    a = agent()
    d = Path("/run/user/1000/pacd/agents/writer")
    spec = agent_run_spec(container_of(a), a, "owner-1", d / "agent.sock", socket_dir=d)
    assert spec.mounts == (BindMount(str(d), "/run/pacd"),)
    with pytest.raises(InvalidRequest):
        agent_run_spec(container_of(a), a, "owner-1", SOCK, socket_dir=d)


def test_refuses_foreign_agent_and_wrong_owner() -> None:
    a = agent()
    with pytest.raises(InvalidRequest):
        agent_run_spec(container_of(a), agent("other"), "owner-1", SOCK)
    with pytest.raises(InvalidRequest):
        agent_run_spec(container_of(a), a, "someone-else", SOCK)


def test_run_spec_invariants() -> None:
    ok = {"name": "pacd-x-writer", "image": "img", "labels": {}, "env": {}, "mounts": ()}
    AgentRunSpec(**ok)  # type: ignore[arg-type]
    bad = [
        {"name": "-bad name"},
        {"image": ""},
        {"published_ports": (PortPublish(8080),)},  # ports without network
        {"network": True, "published_ports": (PortPublish(70000),)},
        {"pids_limit": 0},
        {"env": {"BAD-NAME": "x"}},
        {"mounts": (BindMount("/a", "relative"),)},
        {"stop_timeout": -1},
    ]
    for change in bad:
        with pytest.raises(InvalidRequest):
            AgentRunSpec(**{**ok, **change})  # type: ignore[arg-type]


# --- kube ----------------------------------------------------------------------------


def test_kube_export_pods_and_network_policies() -> None:
    strict = agent("writer")
    scout = agent("scout", IsolationLevel.managed, (Capability.webSearch,))
    c = container_of(strict, scout,
                     policy=SecurityPolicy.custom(allow_external_apis=True,
                                                  allowed_network_ports=[8443]))
    docs = list(yaml.safe_load_all(export_kube(c, "owner-1", lambda n: f"localhost/{n}:1")))
    pods = {d["metadata"]["labels"]["com.luciverse.agent"]: d for d in docs if d["kind"] == "Pod"}
    policies = {d["metadata"]["labels"]["com.luciverse.agent"]: d
                for d in docs if d["kind"] == "NetworkPolicy"}
    assert set(pods) == set(policies) == {"writer", "scout"}
    for name, pod in pods.items():
        assert pod["metadata"]["name"] == f"pacd-8c1f3b2a1111-{name}"
        (ctr,) = pod["spec"]["containers"]
        assert ctr["image"] == f"localhost/{name}:1"
        assert ctr["securityContext"] == {
            "runAsUser": 1000, "runAsGroup": 1000, "runAsNonRoot": True,
            "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
            "privileged": False, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        assert pod["spec"]["hostNetwork"] is False
        assert pod["spec"]["automountServiceAccountToken"] is False
        env = {e["name"]: e["value"] for e in ctr["env"]}
        assert env["CARBON_BASED_AUTH"] == "required"
    # A cluster has no pacd egress proxy: even the agent whose policy allows external
    # APIs gets no ports and a deny-all policy, never unrestricted egress.
    for name in ("writer", "scout"):
        assert "ports" not in pods[name]["spec"]["containers"][0]
        deny = policies[name]["spec"]
        assert deny["policyTypes"] == ["Ingress", "Egress"]
        assert "ingress" not in deny and "egress" not in deny  # no rule ⇒ all denied
        assert deny["podSelector"]["matchLabels"]["com.luciverse.agent"] == name


def test_owner_image_tag() -> None:
    owner = str(uuid.uuid4())
    assert owner_image_tag(owner) == f"localhost/personal-ai:{owner}"
    assert owner_image_tag(owner, "registry.example:5000/me/pai") == (
        f"registry.example:5000/me/pai:{owner}")
    for bad_repo in ("Upper/Case", "a b", "x:y:z"):
        with pytest.raises(InvalidRequest):
            owner_image_tag(owner, bad_repo)
    with pytest.raises(InvalidRequest):
        owner_image_tag("owner/../x")


# --- where Podman is ---------------------------------------------------------------


def test_explicit_url_wins_and_is_the_only_candidate(tmp_path: Path) -> None:
    env = {"PACD_PODMAN_URL": "/srv/podman.sock", "XDG_RUNTIME_DIR": str(tmp_path)}
    assert resolve_podman_url("unix:///ignored.sock", env) == "unix:///srv/podman.sock"
    assert candidate_podman_urls("tcp://127.0.0.1:8888", {}) == ["tcp://127.0.0.1:8888"]
    assert resolve_podman_url("unix:///cfg.sock", {}) == "unix:///cfg.sock"


def test_rootless_socket_before_rootful(tmp_path: Path) -> None:
    env = {"XDG_RUNTIME_DIR": str(tmp_path)}
    rootless = tmp_path / "podman" / "podman.sock"
    assert candidate_podman_urls(None, env) == [f"unix://{rootless}",
                                                "unix:///run/podman/podman.sock"]
    rootless.parent.mkdir()
    rootless.touch()
    assert resolve_podman_url(None, env) == f"unix://{rootless}"


def test_unreachable_podman_says_how_to_start_it(tmp_path: Path) -> None:
    url = f"unix://{tmp_path}/podman.sock"
    with pytest.raises(RuntimeUnavailable) as info:
        PodmanRuntime.connect(url)
    assert "systemctl --user enable --now podman.socket" in info.value.message
    assert f"podman system service --time 0 unix://{tmp_path}/podman.sock" in info.value.message
    assert info.value.code == "runtime_unavailable"


def test_explicit_url_that_does_not_answer_is_not_replaced_by_another(tmp_path: Path) -> None:
    from pacd.runtime.podman import connect_podman

    env = {"PACD_PODMAN_URL": f"unix://{tmp_path}/nothing.sock"}
    with pytest.raises(RuntimeUnavailable) as info:
        connect_podman(None, env)
    assert f"unix://{tmp_path}/nothing.sock" in info.value.message
    assert "/run/podman/podman.sock" not in info.value.message.split("; start")[0]


def test_demux_of_attach_stream() -> None:
    frames = (b"\x01\x00\x00\x00\x00\x00\x00\x03out" + b"\x02\x00\x00\x00\x00\x00\x00\x04err\n"
              + b"\x01\x00\x00\x00\x00\x00\x00\x01!")
    assert _demux(frames) == b"outerr\n!"
    assert _demux(b"plain tty output") == b"plain tty output"
