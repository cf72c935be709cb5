"""The owner's image: built with Podman from the generated Containerfile.

Tagged ``<repository>:<owner-id>`` (repository from config, default
``localhost/personal-ai``). No registry is needed or contacted: the base image
must already be in local storage, and the build's pull policy is "never".
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from pacd.core.generators import DEFAULT_BASE_IMAGE, generate_containerfile
from pacd.core.models import PersonalAIContainer
from pacd.errors import InvalidRequest, NotFound

if TYPE_CHECKING:  # podman-py is imported when Podman is first used, not at start-up
    from pacd.runtime.podman import PodmanRuntime

DEFAULT_REPOSITORY = "localhost/personal-ai"
CONTAINERFILE = "Containerfile"

# distribution/reference: a tag is [\w][\w.-]{0,127}; a repository is lowercase.
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_REPOSITORY = re.compile(
    r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*")


def owner_image_tag(owner_id: str, repository: str = DEFAULT_REPOSITORY) -> str:
    """``<repository>:<owner-id>``, validated so it cannot be read as anything else."""
    if not _REPOSITORY.fullmatch(repository):
        raise InvalidRequest(f"image repository {repository!r} is not a valid repository name")
    if not _TAG.fullmatch(owner_id):
        raise InvalidRequest(f"owner id {owner_id!r} cannot be used as an image tag")
    return f"{repository}:{owner_id}"


def build_owner_image(
    runtime: PodmanRuntime,
    container: PersonalAIContainer,
    owner_id: str,
    *,
    repository: str = DEFAULT_REPOSITORY,
    base_image: str = DEFAULT_BASE_IMAGE,
) -> Iterator[str]:
    """Build the owner's image for ``container``, yielding Podman's progress lines.

    The image is ``owner_image_tag(owner_id, repository)`` once the iterator is
    exhausted; a failed build raises ``RuntimeFailed``, a missing base image
    ``NotFound`` (before anything is built).
    """
    if owner_id != container.owner_id:
        raise InvalidRequest(f"container {container.id} does not belong to owner {owner_id}")
    tag = owner_image_tag(owner_id, repository)
    containerfile = generate_containerfile(container, base_image)
    if not runtime.image_exists(base_image):
        raise NotFound(
            f"base image {base_image} is not in local Podman storage; pacd builds without "
            f"registry access. Load it once (`podman pull {base_image}` or `podman load`), "
            "or choose a local base image")
    with tempfile.TemporaryDirectory(prefix="pacd-build-") as tmp:
        context = Path(tmp)
        (context / CONTAINERFILE).write_text(containerfile, encoding="utf-8")
        yield f"building {tag} from {base_image}"
        yield from runtime.build_image(context, CONTAINERFILE, tag)
        yield f"built {tag}"
