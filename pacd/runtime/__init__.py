"""The container runtime: hardened Podman containers for agent domains.

``hardening`` maps the model to a run spec (pure), ``podman`` is the only
module that talks to Podman, ``images`` and ``kube`` build images and export
Kubernetes YAML, ``service`` starts a private Podman API service.
"""
