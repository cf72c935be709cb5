"""`pacd image build` and `pacd export kube` end to end: the CLI, the real daemon, real Podman.

The build's progress must reach the terminal while Podman is still building:
the test reads the CLI's stdout as it is written and compares when each line
arrived with when Podman created the image.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from pacd.core.generators import LABEL_CONTAINER_ID as IMAGE_LABEL_CONTAINER_ID
from pacd.core.generators import LABEL_OWNER_ID as IMAGE_LABEL_OWNER_ID
from pacd.core.generators import LABEL_PERSONAL_AI
from pacd.errors import NotFound, PacdError
from pacd.runtime.hardening import LABEL_AGENT, LABEL_CONTAINER_ID
from pacd.runtime.podman import PodmanRuntime
from pacd.runtime.service import podman_binary
from tests.integration.harness import ROOT
from tests.system.agents_env import (
    Deployment,
    agent_spec,
    make_deployment,
    make_spec,
    short_base,
    wait_until,
)

__all__ = ["make_deployment", "short_base"]

pytestmark = [pytest.mark.system, pytest.mark.podman]

REPOSITORY = "localhost/personal-ai"


def owner_tag(d: Deployment) -> str:
    return f"{REPOSITORY}:{d.owner_id}"


def cli_ready(d: Deployment) -> None:
    """The CLI subprocesses act with the owner's biometric session."""
    assert d.owner.token is not None
    d.daemon.env["PACD_TOKEN"] = d.owner.token


def pair(d: Deployment, image: str) -> str:
    spec = make_spec("pair", [agent_spec("alpha", image, isolation="strict"),
                              agent_spec("beta", image)],
                     [{"name": "notes", "category": "personal", "scope": "local",
                       "agents": ["alpha", "beta"], "cross_container": "isolated"}])
    return str(d.create(spec)["id"])


def spawn_cli(d: Deployment, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "pacd", *args], env=d.daemon.env,
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def stdout_lines(proc: subprocess.Popen[bytes], timeout: float
                 ) -> Iterator[tuple[str, float, bool]]:
    """Yield (line, wall time it was read, was the process still running) as the
    process writes them; fails the test if it takes longer than ``timeout``."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    deadline = time.monotonic() + timeout
    pending = b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                proc.kill()
                raise AssertionError(f"the CLI did not finish within {timeout} s")
            if not sel.select(left):
                continue
            chunk = os.read(fd, 65536)
            now, alive = time.time(), proc.poll() is None
            if not chunk:
                if pending:
                    yield pending.decode(), now, alive
                return
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                yield line.decode(), now, alive


def podman_time(text: str) -> float:
    """Podman's RFC 3339 time with nanoseconds, as a POSIX timestamp."""
    head, _, frac = text.rstrip("Z").partition(".")
    zone = ""
    for sign in ("+", "-"):
        if sign in frac:
            frac, _, rest = frac.partition(sign)
            zone = sign + rest
    stamp = datetime.fromisoformat(head + (zone or "+00:00")).timestamp()
    return stamp + (float("0." + frac) if frac else 0.0)


@contextlib.contextmanager
def removed_after(runtime: PodmanRuntime, service_url: str, d: Deployment) -> Iterator[None]:
    """Remove the owner's image and every layer image its builds left (repeated
    builds leave superseded, untagged images behind), whatever the outcome."""
    podman = podman_binary()
    assert podman is not None  # checked before, not in the cleanup: it must not hide a failure
    remote = [podman, "--url", service_url]
    try:
        yield
    finally:
        with contextlib.suppress(NotFound):
            runtime.remove_image(owner_tag(d), force=True)
        ids = subprocess.run(
            [*remote, "images", "--all", "--quiet", "--no-trunc", "--filter",
             f"label={IMAGE_LABEL_OWNER_ID}={d.owner_id}"],
            capture_output=True, text=True, check=True, timeout=60).stdout.split()
        if ids:
            subprocess.run([*remote, "rmi", "--force", *dict.fromkeys(ids)],
                           capture_output=True, check=False, timeout=120)


def test_image_build_streams_progress_and_tags_the_owner_image(
        make_deployment: Callable[..., Deployment], busybox_image: str,
        podman_runtime: PodmanRuntime, podman_service: str) -> None:
    d = make_deployment()
    cli_ready(d)
    cid = pair(d, busybox_image)
    tag = owner_tag(d)
    assert not podman_runtime.image_exists(tag)
    with removed_after(podman_runtime, podman_service, d):
        proc = spawn_cli(d, "image", "build", cid, "--base", busybox_image)
        lines = list(stdout_lines(proc, timeout=120))
        assert proc.wait(10) == 0, proc.stderr.read() if proc.stderr else ""
        text = [line for line, _, _ in lines]
        assert text[0] == f"building {tag} from {busybox_image}"
        assert any(line.startswith("STEP 1/") and busybox_image in line for line in text)
        assert any(line.startswith("COMMIT") for line in text)
        assert text[-1] == f"built {tag}"
        # Streamed: several lines were on the terminal while the CLI still ran …
        assert sum(alive for _, _, alive in lines) >= 3, lines
        # … and the first step was shown before Podman had created the image.
        info = podman_runtime.inspect_image(tag)
        created = podman_time(str(info["Created"]))
        first_step = next(t for line, t, _ in lines if line.startswith("STEP 1/"))
        assert first_step < created, (first_step, info["Created"])

        labels = info.get("Labels") or info["Config"]["Labels"]
        assert labels[LABEL_PERSONAL_AI] == "true"
        assert labels[IMAGE_LABEL_OWNER_ID] == d.owner_id
        assert labels[IMAGE_LABEL_CONTAINER_ID] == cid
        assert info["Config"]["User"] == "1000:1000"
        assert f"{REPOSITORY}:{d.owner_id}" in (info.get("RepoTags") or [])

        # The start and the result are both in the audit log.
        start = d.audit(action="image.build", target=cid)
        assert [(e["decision"], e["details"]["base_image"]) for e in start] == \
            [("allow", busybox_image)]
        result = d.audit(action="image.build.result", target=cid)
        assert [(e["decision"], e["reason"]) for e in result] == [("allow", f"built {tag}")]

        # --json: one document with the image and the whole log, nothing else on stdout.
        again = d.daemon.cli("image", "build", cid, "--base", busybox_image, "--json",
                             timeout=120)
        assert again.returncode == 0, again.stderr
        doc = json.loads(again.stdout)
        assert doc["image"] == tag
        assert any(line.startswith("STEP 1/") for line in doc["log"])

        # The wire format, as documented: progress lines, then one "done".
        items = list(d.owner.authed().stream("POST", f"/v1/containers/{cid}/image",
                                             {"base_image": busybox_image}, timeout=120))
        assert items[-1] == {"type": "done", "image": tag}
        assert items[:-1] and all(set(i) == {"type", "line"} and i["type"] == "progress"
                                  for i in items[:-1])
        api = d.daemon.client().request("GET", "/v1/openapi.json")
        ok = api["paths"]["/v1/containers/{id}/image"]["post"]["responses"]["200"]
        assert ok["content"]["application/x-ndjson"]["schema"] == \
            {"$ref": "#/components/schemas/ImageBuildLine"}
        assert api["components"]["schemas"]["ImageBuildLine"]["properties"]["type"]["enum"] \
            == ["progress", "done", "error"]


def test_missing_base_image_is_refused_up_front(
        make_deployment: Callable[..., Deployment], busybox_image: str,
        podman_runtime: PodmanRuntime) -> None:
    absent = f"localhost/pacd-test-absent-{uuid.uuid4().hex[:12]}:1"
    d = make_deployment(env={"PACD_BASE_IMAGE": absent})
    cli_ready(d)
    cid = pair(d, busybox_image)
    tag = owner_tag(d)

    # The configured default is used when --base is not given.
    out = d.daemon.cli("image", "build", cid, timeout=60)
    assert out.returncode == NotFound.exit_code, (out.returncode, out.stderr)
    assert f"base image {absent} is not in local Podman storage" in out.stderr
    assert "--base IMAGE" in out.stderr and "podman load" in out.stderr
    assert not any(line.startswith("STEP") for line in out.stdout.splitlines())

    other = f"localhost/pacd-test-absent-{uuid.uuid4().hex[:12]}:2"
    as_json = d.daemon.cli("image", "build", cid, "--base", other, "--json", timeout=60)
    assert as_json.returncode == NotFound.exit_code
    error = json.loads(as_json.stdout)["error"]
    assert error["code"] == "not_found" and other in error["message"]

    bad = d.daemon.cli("image", "build", cid, "--base", "Not An Image!", timeout=60)
    assert bad.returncode == 2, bad.stderr
    assert "base_image" in bad.stderr

    assert not podman_runtime.image_exists(tag)
    assert not podman_runtime.image_exists(absent)  # never pulled
    refused = d.audit(action="image.build", target=cid)
    assert [e["decision"] for e in refused] == ["deny", "deny", "deny"]
    assert refused[0]["details"]["base_image"] == absent
    assert not d.audit(action="image.build.result", target=cid)  # nothing was started


def test_build_survives_a_client_that_leaves(
        make_deployment: Callable[..., Deployment], busybox_image: str,
        podman_runtime: PodmanRuntime, podman_service: str) -> None:
    d = make_deployment()
    cli_ready(d)
    cid = pair(d, busybox_image)
    tag = owner_tag(d)
    with removed_after(podman_runtime, podman_service, d):
        proc = spawn_cli(d, "image", "build", cid, "--base", busybox_image)
        first = next(stdout_lines(proc, timeout=120))
        assert first[0].startswith("building ")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        # The worker ends (it records the outcome last), whether it noticed the
        # departure before Podman finished or not.
        wait_until(lambda: bool(d.audit(action="image.build.result", target=cid)), 60,
                   "the abandoned build's outcome being recorded")
        (result,) = d.audit(action="image.build.result", target=cid)
        assert (result["decision"], result["reason"]) in (
            ("allow", f"built {tag}"),
            ("deny", f"build of {tag} abandoned: the client went away"))
        # The daemon goes on serving, and the next build runs to the end.
        done = d.daemon.cli("image", "build", cid, "--base", busybox_image, "--json",
                            timeout=120)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["image"] == tag
        assert podman_runtime.image_exists(tag)


def test_kube_export_plays_in_podman(make_deployment: Callable[..., Deployment],
                                     busybox_image: str, podman_runtime: PodmanRuntime,
                                     tmp_path: Path) -> None:
    d = make_deployment()
    cli_ready(d)
    cid = pair(d, busybox_image)
    target = tmp_path / "pair.yaml"
    written = d.daemon.cli("export", "kube", cid, "-o", str(target))
    assert written.returncode == 0, written.stderr
    text = target.read_text()
    shown = d.daemon.cli("export", "kube", cid)
    assert shown.returncode == 0 and shown.stdout == text  # stdout by default, same YAML
    docs = list(yaml.safe_load_all(text))
    assert [doc["kind"] for doc in docs] == ["Pod", "Pod", "NetworkPolicy", "NetworkPolicy"]

    pod_ids: list[str] = []
    try:
        pod_ids = podman_runtime.kube_play(text)
        assert len(pod_ids) == 2
        agents = set()
        for pod_id in pod_ids:
            pod = podman_runtime.inspect_pod(pod_id)
            (member,) = [c for c in pod["Containers"] if not c["Name"].endswith("-infra")]
            info = podman_runtime.inspect(member["Id"])
            labels = info["Config"]["Labels"]
            assert labels[LABEL_CONTAINER_ID] == cid
            agents.add(labels[LABEL_AGENT])
            assert info["State"]["Status"] == "running"
            assert info["Config"]["User"] == "1000:1000"
            assert info["HostConfig"]["ReadonlyRootfs"] is True
            code, out = podman_runtime.exec_run(
                member["Id"], ["/bin/busybox", "sh", "-c", "id -u; touch /pwned 2>&1 || true"])
            assert code == 0
            assert out.splitlines()[0] == "1000"
            assert "Read-only file system" in out
        assert agents == {"alpha", "beta"}
    finally:
        with contextlib.suppress(PacdError):
            podman_runtime.kube_down(text)
    for pod_id in pod_ids:
        with pytest.raises(NotFound):
            podman_runtime.inspect_pod(pod_id)

    unwritable = d.daemon.cli("export", "kube", cid, "-o", str(tmp_path / "no" / "x.yaml"))
    assert unwritable.returncode == 2 and "cannot write" in unwritable.stderr
