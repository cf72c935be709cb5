"""The owner socket's token check as a request meets it: on the event loop when the
state store's read connection is free, in a worker thread when it is not."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp.test_utils import make_mocked_request

from pacd.api.access import OwnerAccess
from pacd.api.services import Services
from pacd.config import load_config
from pacd.core.models import SecurityLevel
from pacd.daemon import build_services
from pacd.errors import TokenRevoked

T = TypeVar("T")


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    passphrase = tmp_path / "passphrase"
    passphrase.write_text("owner access passphrase\n")
    passphrase.chmod(0o600)
    config = load_config({"PACD_HOME": str(tmp_path / "home"),
                          "PACD_SOCKET": str(tmp_path / "run" / "pacd.sock"),
                          "PACD_CONFIG": str(tmp_path / "absent.toml"),
                          "PACD_KEYSTORE": "passphrase",
                          "PACD_PASSPHRASE_FILE": str(passphrase)})
    built = build_services(config)
    built.owners.create_owner("Ada", built.clock.wall())
    try:
        yield built
    finally:
        built.audit.close()
        built.store.close()


def _request(token: str) -> object:
    return make_mocked_request("GET", "/v1/sessions/current",
                               headers={"Authorization": f"Bearer {token}"})


def test_a_token_is_checked_while_another_thread_holds_the_read_connection(
        services: Services) -> None:
    access = OwnerAccess(services)
    issued = services.tokens.issue(SecurityLevel.enhanced)
    inside, release = threading.Event(), threading.Event()

    def reader() -> None:  # another request's check, in a worker thread
        with services.store.read():
            inside.set()
            release.wait(30)

    async def main() -> str | None:
        task = asyncio.create_task(access.require(
            _request(issued.token), SecurityLevel.enhanced, "current_session"))  # type: ignore[arg-type]
        # One turn of the loop: the task runs up to its first suspension, which is
        # the hand-off to a worker thread (the connection is busy), not a refusal.
        await asyncio.sleep(0)
        assert not task.done()
        release.set()
        return (await asyncio.wait_for(task, 30)).token_id

    holder = threading.Thread(target=reader)
    holder.start()
    try:
        assert inside.wait(10)
        assert asyncio.run(main()) == issued.token_id
    finally:
        release.set()
        holder.join()
    # With the connection free it is answered on the loop: no worker thread is asked.
    assert asyncio.run(_without_threads(access.require(
        _request(issued.token), SecurityLevel.enhanced, "current_session"))  # type: ignore[arg-type]
    ).token_id == issued.token_id


class _NoThreads(ThreadPoolExecutor):
    """The loop's executor, refusing work: shows a check never left the loop."""

    def submit(self, *args: Any, **kwargs: Any) -> Future[Any]:
        raise AssertionError("the token check was handed to a worker thread")


async def _without_threads(awaitable: Awaitable[T]) -> T:
    asyncio.get_running_loop().set_default_executor(_NoThreads())
    return await awaitable


def test_a_revoked_token_is_refused_on_the_loop_with_the_level_it_needed(
        services: Services) -> None:
    access = OwnerAccess(services)
    issued = services.tokens.issue(SecurityLevel.biometric)
    services.tokens.revoke(issued.token_id)
    with pytest.raises(TokenRevoked) as refused:
        asyncio.run(_without_threads(access.require(
            _request(issued.token), SecurityLevel.enhanced, "current_session")))  # type: ignore[arg-type]
    assert refused.value.to_wire()["error"]["required_level"] == "enhanced"
