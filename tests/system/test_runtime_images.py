"""The owner's image is built with the real Podman, offline, with streamed progress."""

from __future__ import annotations

import contextlib
import uuid

import pytest

from pacd.core.models import AgentDomain, PersonalAIContainer, SecurityPolicy
from pacd.errors import NotFound, RuntimeFailed
from pacd.runtime.images import build_owner_image, owner_image_tag
from pacd.runtime.podman import PodmanRuntime

pytestmark = [pytest.mark.system, pytest.mark.podman]

REPOSITORY = "localhost/pacd-test-owner"


def make_container() -> PersonalAIContainer:
    return PersonalAIContainer(
        id=str(uuid.uuid4()), name="home", owner_id=str(uuid.uuid4()),
        agents=(AgentDomain(id="a", name="writer", image="unused"),), concerns=(),
        policy=SecurityPolicy.default())


def test_owner_image_builds_offline_with_streamed_progress(
        podman_runtime: PodmanRuntime, busybox_image: str) -> None:
    container = make_container()
    tag = owner_image_tag(container.owner_id, REPOSITORY)
    assert tag == f"{REPOSITORY}:{container.owner_id}"
    assert not podman_runtime.image_exists(tag)
    lines: list[str] = []
    existed_at_first_step: bool | None = None
    try:
        for line in build_owner_image(podman_runtime, container, container.owner_id,
                                      repository=REPOSITORY, base_image=busybox_image):
            if existed_at_first_step is None and line.startswith("STEP 1/"):
                # Streaming, not collected: the first step arrives before the image exists.
                existed_at_first_step = podman_runtime.image_exists(tag)
            lines.append(line)
        assert existed_at_first_step is False
        assert any(line.startswith("STEP 1/") and busybox_image in line for line in lines)
        assert any("COMMIT" in line for line in lines)
        assert lines[-1] == f"built {tag}"
        info = podman_runtime.inspect_image(tag)
        labels = info.get("Labels") or info["Config"]["Labels"]
        assert labels["com.luciverse.personal-ai"] == "true"
        assert container.owner_id in labels.values()
        assert info["Config"]["User"] == "1000:1000"
    finally:
        with contextlib.suppress(NotFound):
            podman_runtime.remove_image(tag, force=True)


def test_build_never_pulls_a_missing_base(podman_runtime: PodmanRuntime) -> None:
    container = make_container()
    base = "registry.invalid/pacd/never-pulled:1"
    with pytest.raises(NotFound) as info:
        list(build_owner_image(podman_runtime, container, container.owner_id,
                               repository=REPOSITORY, base_image=base))
    assert "not in local Podman storage" in info.value.message
    assert not podman_runtime.image_exists(owner_image_tag(container.owner_id, REPOSITORY))


def test_build_failure_is_runtime_failed(podman_runtime: PodmanRuntime, tmp_path) -> None:
    # The adapter itself: a Containerfile whose base is absent fails in Podman
    # (pull policy never), and the error says why.
    (tmp_path / "Containerfile").write_text("FROM registry.invalid/pacd/absent:1\n")
    tag = "localhost/pacd-test-fail:1"
    with pytest.raises(RuntimeFailed) as info:
        list(podman_runtime.build_image(tmp_path, "Containerfile", tag))
    assert "registry.invalid/pacd/absent:1" in info.value.message
    assert not podman_runtime.image_exists(tag)
