"""The Podman adapter: the only module that talks to Podman.

Synchronous (podman-py over requests); the daemon calls it from worker
threads. Every podman-py / requests failure is translated here, at the
boundary, into pacd's error hierarchy: ``RuntimeUnavailable`` when Podman
cannot be reached, ``NotFound`` for a missing container or image,
``Conflict`` for a name in use, ``RuntimeFailed`` for anything Podman refused.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

import requests
from podman import PodmanClient
from podman.api import create_tar, prepare_containerignore
from podman.errors import APIError, PodmanError

from pacd.errors import Conflict, NotFound, PacdError, RuntimeFailed, RuntimeUnavailable
from pacd.runtime.hardening import PACD_LABELS, AgentRunSpec
from pacd.runtime.podman_url import (
    candidate_podman_urls,
    normalize_url,
    rootless_socket,
    start_hint,
)

DEFAULT_TIMEOUT_S = 60.0

#: container events the daemon reconciles on
CONTAINER_ACTIONS: tuple[str, ...] = ("start", "died", "stop", "remove", "kill", "create")

# Event attributes Podman mixes into the label map; they are not labels.
_EVENT_ATTRIBUTES = frozenset({"name", "image", "containerExitCode", "podId"})


def connect_podman(config_url: str | None, env: Mapping[str, str]) -> PodmanRuntime:
    """The first candidate that answers a ping, or ``RuntimeUnavailable`` saying how to
    start Podman."""
    failures: list[str] = []
    for url in candidate_podman_urls(config_url, env):
        try:
            return PodmanRuntime.connect(url)
        except RuntimeUnavailable as exc:
            failures.append(f"{url}: {exc.message.split('; start')[0]}")
    raise RuntimeUnavailable(
        "Podman is not reachable (" + "; ".join(failures) + "); "
        + start_hint(rootless_socket(env))
    )


# --- results -------------------------------------------------------------------


@dataclass(frozen=True)
class RuntimeContainer:
    name: str
    id: str
    #: Podman's state: created, running, paused, stopped, exited, ...
    state: str
    labels: Mapping[str, str]
    image: str = ""
    exit_code: int | None = None


@dataclass(frozen=True)
class RuntimeEvent:
    #: start, died, stop, remove, kill, create
    action: str
    container_id: str
    name: str
    labels: Mapping[str, str]
    #: seconds since the epoch
    time: float
    exit_code: int | None = None


# --- the Podman create body (pure) -----------------------------------------------


def create_body(spec: AgentRunSpec, network_mode: str) -> dict[str, Any]:
    """The libpod SpecGenerator JSON for a hardened agent container.

    Sent as raw JSON instead of through podman-py's keyword mapping because
    that mapping sends ``security_opt`` as SELinux options and cannot express
    tmpfs mount flags; here every hardening field is set by its real name.
    """
    mounts: list[dict[str, Any]] = [
        {"destination": t.target, "type": "tmpfs", "source": "tmpfs",
         "options": list(t.mount_options())}
        for t in spec.tmpfs
    ]
    mounts += [
        {"destination": m.target, "type": "bind", "source": m.source,
         "options": list(m.mount_options())}
        for m in spec.mounts
    ]
    body: dict[str, Any] = {
        "name": spec.name,
        "image": spec.image,
        "labels": dict(spec.labels),
        "env": dict(spec.env),
        "user": spec.user,
        "read_only_filesystem": spec.read_only_root,
        "cap_drop": list(spec.cap_drop),
        "no_new_privileges": spec.no_new_privileges,
        "privileged": False,
        "resource_limits": {
            "pids": {"limit": spec.pids_limit},
            # swap = limit: the memory limit is not doubled by swap
            "memory": {"limit": spec.memory_limit_bytes, "swap": spec.memory_limit_bytes},
        },
        "mounts": mounts,
        "netns": {"nsmode": network_mode if spec.network else "none"},
        # Always its own PID namespace, whatever containers.conf says: the agent
        # socket tells the container's processes from the host's by it.
        "pidns": {"nsmode": "private"},
        "portmappings": [
            {"container_port": p.container_port, "host_port": p.host_port,
             "host_ip": p.host_ip, "protocol": p.protocol}
            for p in spec.published_ports
        ],
        # Never publish what the image EXPOSEs: only the policy's ports.
        "publish_image_ports": False,
        "init": spec.init,
        "stop_timeout": spec.stop_timeout,
    }
    if spec.command is not None:
        body["command"] = list(spec.command)
    if spec.hostname:
        body["hostname"] = spec.hostname
    return body


# --- the adapter ----------------------------------------------------------------


def _podman_message(response: Any) -> tuple[str, str]:
    try:
        data = response.json()
        return str(data.get("message", "")), str(data.get("cause", ""))
    except ValueError:
        text = str(getattr(response, "text", ""))[:500]
        return text, text


class PodmanRuntime:
    """One Podman API service. Safe to share between threads."""

    def __init__(self, url: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.url = normalize_url(url)
        self.timeout = timeout
        self._client = self._new_client()
        self._rootless: bool | None = None

    @classmethod
    def connect(cls, url: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> PodmanRuntime:
        """An adapter whose service has answered a ping."""
        runtime = cls(url, timeout=timeout)
        try:
            runtime.ping()
        except PacdError:
            runtime.close()
            raise
        return runtime

    def _new_client(self) -> PodmanClient:
        try:
            return PodmanClient(base_url=self.url)
        except (ValueError, PodmanError) as exc:
            raise RuntimeUnavailable(f"invalid Podman URL {self.url!r}: {exc}") from exc

    def close(self) -> None:
        self._client.close()  # type: ignore[no-untyped-call]

    def __enter__(self) -> PodmanRuntime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport ------------------------------------------------------------

    def _unavailable(self, what: str, exc: BaseException) -> RuntimeUnavailable:
        reason = exc.__cause__ or exc
        path = urlparse(self.url).path if self.url.startswith("unix") else None
        return RuntimeUnavailable(
            f"{what}: cannot reach Podman at {self.url} ({type(reason).__name__}); "
            + start_hint(path)
        )

    def _request(
        self,
        method: str,
        path: str,
        what: str,
        *,
        client: PodmanClient | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Any:
        api = (client or self._client).api
        try:
            if timeout is None and not kwargs.get("stream"):
                timeout = self.timeout
            if timeout is not None:
                kwargs["timeout"] = timeout
            response = getattr(api, method)(path, **kwargs)
        except APIError as exc:
            # podman-py wraps every transport failure (requests' OSErrors) as an
            # APIError without a response.
            if exc.response is None:
                raise self._unavailable(what, exc) from exc
            raise RuntimeFailed(f"{what}: {exc}") from exc
        except (requests.RequestException, OSError) as exc:
            raise self._unavailable(what, exc) from exc
        except PodmanError as exc:
            raise RuntimeFailed(f"{what}: {exc}") from exc
        self._raise_for_status(response, what)
        return response

    @staticmethod
    def _raise_for_status(response: Any, what: str) -> None:
        status = int(response.status_code)
        if status < 400:
            return
        message, cause = _podman_message(response)
        text = message or cause or f"HTTP {status}"
        if status == 404 or cause in ("no such container", "image not known", "no such pod"):
            raise NotFound(f"{what}: {text}")
        if status == 409 or "already in use" in cause:
            raise Conflict(f"{what}: {text}")
        raise RuntimeFailed(f"{what}: {text}")

    # -- service --------------------------------------------------------------

    def ping(self) -> str:
        """The Podman version; ``RuntimeUnavailable`` if the service does not answer."""
        self._request("get", "/_ping", "ping", timeout=min(self.timeout, 10.0))
        response = self._request("get", "/version", "version")
        return str(response.json().get("Version", "unknown"))

    def info(self) -> dict[str, Any]:
        data: dict[str, Any] = self._request("get", "/info", "info").json()
        return data

    @property
    def rootless(self) -> bool:
        if self._rootless is None:
            self._rootless = bool(self.info()["host"]["security"]["rootless"])
        return self._rootless

    def network_mode(self) -> str:
        """The private network mode for agents that may use the network. Chosen
        explicitly: an unset mode would follow containers.conf, which could say host."""
        return "slirp4netns" if self.rootless else "bridge"

    # -- containers -------------------------------------------------------------

    def run_agent(self, spec: AgentRunSpec, *, replace: bool = False) -> str:
        """Create and start a hardened agent container; the container id.

        ``replace`` first removes a container of the same name, but only one
        that carries pacd's labels; a foreign container is a ``Conflict``.
        If the start fails the created container is removed again, so a failed
        start leaves nothing behind.
        """
        if replace:
            self._remove_ours(spec.name)
        body = create_body(spec, self.network_mode() if spec.network else "none")
        response = self._request(
            "post", "/containers/create", f"create {spec.name}",
            data=json.dumps(body), headers={"content-type": "application/json"},
        )
        container_id = str(response.json()["Id"])
        try:
            self._request("post", f"/containers/{container_id}/start", f"start {spec.name}")
        except PacdError:
            with contextlib.suppress(PacdError):
                self.remove(container_id, force=True)
            raise
        return container_id

    def _remove_ours(self, name: str) -> None:
        try:
            labels = self.inspect(name).get("Config", {}).get("Labels") or {}
        except NotFound:
            return
        if any(labels.get(k) != v for k, v in PACD_LABELS.items()):
            raise Conflict(f"container name {name!r} is used by a container pacd did not create")
        self.remove(name, force=True, missing_ok=True)

    def stop(self, name_or_id: str, timeout: int = 5) -> None:
        """Stop (SIGTERM, then SIGKILL after ``timeout`` s). Stopping a stopped one is fine."""
        self._request("post", f"/containers/{name_or_id}/stop", f"stop {name_or_id}",
                      params={"timeout": timeout}, timeout=self.timeout + timeout)

    def kill(self, name_or_id: str, signal: str = "SIGKILL") -> None:
        self._request("post", f"/containers/{name_or_id}/kill", f"kill {name_or_id}",
                      params={"signal": signal})

    def remove(self, name_or_id: str, force: bool = True, *, missing_ok: bool = False) -> None:
        """Remove a container; ``force`` kills a running one at once (SIGKILL)."""
        params: dict[str, Any] = {"force": force, "v": True}
        if force:
            params["timeout"] = 0
        try:
            self._request("delete", f"/containers/{name_or_id}", f"remove {name_or_id}",
                          params=params)
        except NotFound:
            if not missing_ok:
                raise

    def inspect(self, name_or_id: str) -> dict[str, Any]:
        """Podman's inspect document for a container; ``NotFound`` if it does not exist."""
        data: dict[str, Any] = self._request(
            "get", f"/containers/{name_or_id}/json", f"inspect {name_or_id}").json()
        return data

    def state(self, name_or_id: str) -> str:
        """``running``, ``exited``, ``created``, ``stopped``, ``paused``, ... or ``missing``."""
        try:
            return str(self.inspect(name_or_id)["State"]["Status"]).lower()
        except NotFound:
            return "missing"

    def init_pid(self, name_or_id: str) -> int | None:
        """The host pid of a running container's first process (its init), else None."""
        try:
            pid = self.inspect(name_or_id).get("State", {}).get("Pid")
        except NotFound:
            return None
        return pid if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 else None

    def list_labelled(self, label_filter: Mapping[str, str] = PACD_LABELS
                      ) -> list[RuntimeContainer]:
        """Every container (running or not) carrying all of these labels."""
        filters = {"label": [f"{k}={v}" for k, v in label_filter.items()]}
        response = self._request("get", "/containers/json", "list containers",
                                 params={"all": True, "filters": json.dumps(filters)})
        out: list[RuntimeContainer] = []
        for item in response.json() or []:
            labels = item.get("Labels") or {}
            # The filter is Podman's; checked again so a Podman that ignored it
            # can never make pacd adopt a foreign container.
            if any(labels.get(k) != v for k, v in label_filter.items()):
                continue
            names = item.get("Names") or [""]
            exit_code = item.get("ExitCode")
            out.append(RuntimeContainer(
                name=str(names[0]), id=str(item["Id"]), state=str(item.get("State", "")).lower(),
                labels=dict(labels), image=str(item.get("Image", "")),
                exit_code=int(exit_code) if isinstance(exit_code, int) else None,
            ))
        return out

    def exec_run(self, name_or_id: str, cmd: Sequence[str], *, user: str | None = None,
                 timeout: float | None = None) -> tuple[int, str]:
        """Run a command in a running container: (exit code, stdout and stderr interleaved)."""
        what = f"exec in {name_or_id}"
        config: dict[str, Any] = {"Cmd": list(cmd), "AttachStdout": True, "AttachStderr": True}
        if user:
            config["User"] = user
        created = self._request("post", f"/containers/{name_or_id}/exec", what,
                                data=json.dumps(config),
                                headers={"content-type": "application/json"})
        exec_id = str(created.json()["Id"])
        started = self._request("post", f"/exec/{exec_id}/start", what,
                                data=json.dumps({"Detach": False, "Tty": False}),
                                headers={"content-type": "application/json"},
                                timeout=timeout or self.timeout)
        output = _demux(bytes(started.content))
        details = self._request("get", f"/exec/{exec_id}/json", what).json()
        exit_code = details.get("ExitCode")
        return (int(exit_code) if isinstance(exit_code, int) else -1,
                output.decode("utf-8", "replace"))

    # -- events -------------------------------------------------------------------

    def events(
        self,
        since: float | None,
        stop: threading.Event,
        *,
        label_filter: Mapping[str, str] = PACD_LABELS,
        actions: Sequence[str] = CONTAINER_ACTIONS,
    ) -> Iterator[RuntimeEvent]:
        """Container events for containers with these labels, until ``stop`` is set.

        Setting ``stop`` ends the iteration promptly even while no event
        arrives (the stream's socket is shut down under the blocked read). If
        Podman ends the stream itself, ``RuntimeUnavailable`` is raised so the
        caller reconnects (with ``since`` = the last event's time) and
        reconciles.
        """
        if stop.is_set():
            return
        params: dict[str, Any] = {
            "stream": True,
            "filters": json.dumps({"type": ["container"], "event": list(actions)}),
        }
        if since is not None:
            params["since"] = str(int(since))
        since_ns = int(since * 1e9) if since is not None else 0
        # A dedicated connection: the stream holds it for as long as it runs.
        client = self._new_client()
        done = threading.Event()
        try:
            response = self._request("get", "/events", "events", client=client,
                                     params=params, stream=True)
            watcher = threading.Thread(
                target=_close_on_stop, args=(response, stop, done),
                name="podman-events-stop", daemon=True,
            )
            watcher.start()
            try:
                for line in response.iter_lines():
                    if stop.is_set():
                        return
                    if not line:
                        continue
                    event = _parse_event(line)
                    if event is None or event.time * 1e9 < since_ns - 1e9:
                        continue
                    if any(event.labels.get(k) != v for k, v in label_filter.items()):
                        continue
                    yield event
            except (requests.RequestException, OSError, ValueError) as exc:
                if stop.is_set():
                    return
                raise self._unavailable("event stream", exc) from exc
            if not stop.is_set():
                raise RuntimeUnavailable("event stream: Podman closed the stream; "
                                         "reconnect and reconcile")
        finally:
            done.set()
            client.close()  # type: ignore[no-untyped-call]

    # -- images -------------------------------------------------------------------

    def image_exists(self, ref: str) -> bool:
        try:
            self._request("get", f"/images/{ref}/exists", f"image {ref}")
        except NotFound:
            return False
        return True

    def inspect_image(self, ref: str) -> dict[str, Any]:
        data: dict[str, Any] = self._request("get", f"/images/{ref}/json",
                                             f"inspect image {ref}").json()
        return data

    def tag_image(self, ref: str, repository: str, tag: str) -> None:
        """``podman tag ref repository:tag``."""
        self._request("post", f"/images/{ref}/tag", f"tag {ref}",
                      params={"repo": repository, "tag": tag})

    def remove_image(self, ref: str, *, force: bool = False) -> None:
        self._request("delete", f"/images/{ref}", f"remove image {ref}",
                      params={"force": force})

    def import_image(self, tarball: IO[bytes], reference: str,
                     changes: Sequence[str] = ()) -> str:
        """``podman import``: an image from a root filesystem tarball; its id."""
        params: dict[str, Any] = {"reference": reference}
        if changes:
            params["changes"] = list(changes)
        response = self._request(
            "post", "/images/import", f"import {reference}", params=params,
            data=tarball, headers={"content-type": "application/x-tar"}, timeout=600.0,
        )
        return str(response.json().get("Id", ""))

    def build_image(self, context_dir: Path, containerfile: str, tag: str
                    ) -> Iterator[str]:
        """Build ``tag`` from ``context_dir``/``containerfile``, yielding progress lines
        as Podman reports them. The base image must be in local storage: the
        pull policy is "never", so a build never reaches a registry."""
        context_dir = Path(context_dir)
        if not (context_dir / containerfile).is_file():
            raise NotFound(f"build: no {containerfile} in {context_dir}")
        tar = create_tar(anchor=str(context_dir),
                         exclude=prepare_containerignore(str(context_dir)))
        params = {"dockerfile": containerfile, "t": tag, "pullpolicy": "never",
                  "pull": False, "rm": True, "layers": True}
        try:
            response = self._request(
                "post", "/build", f"build {tag}", params=params, data=tar,
                headers={"content-type": "application/x-tar"}, stream=True,
            )
            yield from self._build_progress(response, tag)
        finally:
            tar.close()

    def _build_progress(self, response: Any, tag: str) -> Iterator[str]:
        error: str | None = None
        try:
            for raw in response.iter_lines():
                if not raw:
                    continue
                try:
                    item = json.loads(raw)
                except ValueError:
                    yield raw.decode("utf-8", "replace")
                    continue
                if item.get("error"):
                    error = str(item["error"]).strip()
                    continue
                for line in str(item.get("stream", "")).splitlines():
                    if line.strip():
                        yield line.rstrip()
        except (requests.RequestException, OSError) as exc:
            raise self._unavailable(f"build {tag}", exc) from exc
        finally:
            response.close()
        if error is not None:
            raise RuntimeFailed(f"image build failed: {error}")
        if not self.image_exists(tag):
            raise RuntimeFailed(f"image build finished without producing {tag}")

    # -- kube ------------------------------------------------------------------------

    def kube_play(self, yaml_text: str) -> list[str]:
        """``podman kube play``: create and start the YAML's pods; their ids."""
        response = self._request(
            "post", "/play/kube", "kube play", data=yaml_text.encode("utf-8"),
            headers={"content-type": "application/yaml"}, timeout=max(self.timeout, 120.0),
        )
        report = response.json() or {}
        pods = report.get("Pods") or []
        errors = [str(e) for pod in pods for e in (pod.get("ContainerErrors") or [])]
        if errors:
            raise RuntimeFailed("kube play: " + "; ".join(errors))
        return [str(pod["ID"]) for pod in pods]

    def kube_down(self, yaml_text: str) -> list[str]:
        """``podman kube down``: stop and remove the YAML's pods; their ids."""
        response = self._request(
            "delete", "/play/kube", "kube down", data=yaml_text.encode("utf-8"),
            headers={"content-type": "application/yaml"}, timeout=max(self.timeout, 120.0),
        )
        report = response.json() or {}
        removed = report.get("RmReport") or []
        errors = [str(item["Err"]) for item in removed if item.get("Err")]
        if errors:
            raise RuntimeFailed("kube down: " + "; ".join(errors))
        return [str(item.get("Id", "")) for item in removed]

    def inspect_pod(self, name_or_id: str) -> dict[str, Any]:
        data: dict[str, Any] = self._request(
            "get", f"/pods/{name_or_id}/json", f"inspect pod {name_or_id}").json()
        return data


def _parse_event(line: bytes) -> RuntimeEvent | None:
    try:
        item = json.loads(line)
    except ValueError:
        return None
    actor = item.get("Actor") or {}
    attributes: dict[str, str] = {
        str(k): str(v) for k, v in (actor.get("Attributes") or {}).items()
    }
    labels = {k: v for k, v in attributes.items() if k not in _EVENT_ATTRIBUTES}
    exit_code: int | None = None
    if item.get("status") == "died":
        with contextlib.suppress(ValueError):
            exit_code = int(attributes.get("containerExitCode", ""))
    time_ns = item.get("timeNano") or int(item.get("time", 0)) * 1_000_000_000
    return RuntimeEvent(
        action=str(item.get("status") or item.get("Action") or ""),
        container_id=str(item.get("id") or actor.get("ID") or ""),
        name=attributes.get("name", ""),
        labels=labels,
        time=int(time_ns) / 1e9,
        exit_code=exit_code,
    )


def _demux(data: bytes) -> bytes:
    """The payload of Docker's multiplexed attach stream (8-byte frame headers:
    stream id, 3 zero bytes, big-endian length), stdout and stderr in order."""
    out = bytearray()
    pos = 0
    while pos + 8 <= len(data) and data[pos] in (0, 1, 2) and data[pos + 1:pos + 4] == b"\0\0\0":
        size = int.from_bytes(data[pos + 4:pos + 8], "big")
        out += data[pos + 8:pos + 8 + size]
        pos += 8 + size
    if pos < len(data):  # not multiplexed (a TTY stream): keep the rest as it is
        out += data[pos:]
    return bytes(out)


def _close_on_stop(response: Any, stop: threading.Event, done: threading.Event) -> None:
    """Wait for ``stop`` (or the generator's end) and then break the blocked read."""
    while not done.is_set():
        if stop.wait(0.2):
            break
    if done.is_set() and not stop.is_set():
        return
    sock = _response_socket(response)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(Exception):
        response.close()


def _response_socket(response: Any) -> socket.socket | None:
    raw = getattr(response, "raw", None)
    connection = getattr(raw, "_connection", None) or getattr(raw, "connection", None)
    sock = getattr(connection, "sock", None)
    return sock if isinstance(sock, socket.socket) else None
