"""System-test fixtures: a real Podman service and offline-built test images.

Imported by name rather than through ``pytest_plugins``, which pytest allows
only in the top-level conftest.
"""

from tests.podman_env import (
    busybox_image,
    plugin_image,
    podman_cleanup,
    podman_runtime,
    podman_service,
    python_image,
    run_label,
)

__all__ = [
    "busybox_image",
    "plugin_image",
    "podman_cleanup",
    "podman_runtime",
    "podman_service",
    "python_image",
    "run_label",
]
