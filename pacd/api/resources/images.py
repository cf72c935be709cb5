"""Images: build the owner's image for a container, streaming progress as JSON lines."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable, Generator
from typing import Any

from aiohttp import web

from pacd import messages
from pacd.api.ndjson import open_stream, queue_source, relay
from pacd.api.resources.common import in_thread, runtime_of
from pacd.api.route import Call, Route
from pacd.api.services import Services
from pacd.core.rules import Action, required_level
from pacd.errors import InvalidRequest, NotFound, PacdError, RuntimeFailed, RuntimeUnavailable

log = logging.getLogger("pacd.api")


class ImageRoutes:
    def __init__(self, services: Services) -> None:
        self.services = services

    def routes(self) -> list[Route]:
        return [
            Route("POST", "/v1/containers/{id}/image", "build_image",
                  "build the owner's image from a local base image, streaming progress as "
                  "JSON lines (ImageBuildLine) that end with done or error", self.build_image,
                  level=required_level(Action.build_image).value,
                  request=messages.ImageBuildRequest, response=messages.ImageBuildLine,
                  stream=True,
                  # its body names one image (255 characters at most): no more is read
                  max_body_bytes=4 * 1024,
                  errors=(NotFound, RuntimeUnavailable, RuntimeFailed, InvalidRequest),
                  action="image.build"),
        ]

    async def build_image(self, call: Call) -> web.StreamResponse:
        """Stream the build as JSON lines (``messages.ImageBuildLine``) while it runs.

        Refusals (unknown container, no Podman, a base image not in local
        storage) are plain HTTP errors; once the stream has begun, the outcome
        is its last line. The blocking build runs on a thread of its own that
        hands lines to the loop; when the client goes away the thread stops at
        Podman's next line (closing the build connection), so it lives at most
        as long as the build.
        """
        body: messages.ImageBuildRequest = call.body
        request = call.request
        record = await in_thread(self.services.registry.get, call.params["id"])
        base = body.base_image or self.services.config.base_image
        details = {"base_image": base, "token_id": call.principal.token_id}
        try:
            tag, lines = await in_thread(runtime_of(self.services).build_image, record, base)
        except PacdError as exc:
            await call.decision.record("image.build", record.id, "deny", exc.message,
                                       {**details, "code": exc.code})
            raise
        await call.decision.record("image.build", record.id, "allow",
                                   f"building {tag} from {base}", {**details, "image": tag})

        resp = await open_stream(request)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        stop = threading.Event()

        def send(item: dict[str, Any] | None) -> None:
            data = None if item is None else json.dumps(item).encode() + b"\n"
            try:
                loop.call_soon_threadsafe(queue.put_nowait, data)
            except RuntimeError:  # the loop is closed: the daemon is stopping
                stop.set()

        worker = threading.Thread(
            target=self._run_build, args=(record.id, tag, lines),
            kwargs={"stop": stop, "send": send, "details": details,
                    "actor": call.decision.actor},
            name=f"pacd-image-build-{record.id[:8]}", daemon=True)
        worker.start()
        try:
            # A client that does not read is dropped; the build stops with it.
            return await relay(request, resp, queue_source(queue))
        finally:
            stop.set()

    def _run_build(self, container_id: str, tag: str, lines: Generator[str, None, None], *,
                   stop: threading.Event, send: Callable[[dict[str, Any] | None], None],
                   details: dict[str, Any], actor: str) -> None:
        """Drain the build on a worker thread; audit and send its outcome."""
        error: PacdError | None = None
        try:
            try:
                for line in lines:
                    if stop.is_set():
                        break
                    send({"type": "progress", "line": line})
            finally:
                lines.close()  # an abandoned build lets go of its Podman connection
        except PacdError as exc:
            error = exc
        except Exception:
            log.exception("image build %s failed", tag)
            error = RuntimeFailed(f"the build of {tag} failed unexpectedly (see the daemon log)")
        if error is not None:
            decision, reason = "deny", f"build of {tag} failed: {error.message}"
        elif stop.is_set():
            decision, reason = "deny", f"build of {tag} abandoned: the client went away"
        else:
            decision, reason = "allow", f"built {tag}"
        try:
            # The log itself, not the request's decision: that was the "image.build"
            # entry; this outcome may come after the client has left.
            self.services.audit.append(actor, "image.build.result", container_id, decision,
                                       reason, {**details, "image": tag,
                                                **({"code": error.code} if error is not None
                                                   else {})})
        except PacdError as exc:
            error = error or exc  # an unrecorded success is not reported as one
        send({"type": "done", "image": tag} if error is None
             else {"type": "error", "error": error.to_wire()["error"]})
        send(None)
