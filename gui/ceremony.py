"""The presence ceremony for one approval, run off the GUI thread.

A :class:`CeremonyWorker` lives on its own ``QThread``: it checks (again) that
the challenge is the payload's digest, asks the key to sign — telling the
panel to say "touch your key", or asking it for the PIN — and posts the
assertion. Cancel sets the ceremony's cancel event, which the key and
python-fido2 honour; a timeout does the same. Each way it can fail ends in one
sentence the owner can act on.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any

from fido2.client import UserInteraction, WebAuthnClient
from PySide6.QtCore import QObject, Qt, QThread, Signal, Slot

from gui.signals import emit
from pacd.client import Client, approval_challenge_matches
from pacd.errors import PacdError
from pacd.presence.client import RetriesInteraction

#: (options, origin, interaction, cancel, timeout_s) -> AuthenticationResponseJSON
Authenticator = Callable[[Mapping[str, Any], str, UserInteraction, threading.Event, float],
                         dict[str, Any]]
CEREMONY_TIMEOUT_S = 60.0
MISMATCH = ("the challenge the daemon asks you to sign is not the digest of the payload it "
            "shows; not signed")

#: one sentence per way a ceremony fails, by error code
SENTENCES = {
    "no_authenticator": "No security key was found: plug one in and try again.",
    "pin_invalid": "Wrong PIN for the security key; nothing was approved.",
    "pin_blocked": "The security key's PIN is blocked after too many wrong tries: the key "
                   "must be reset (which erases its credentials) before it can approve "
                   "anything; nothing was approved.",
    "pin_auth_blocked": "Too many wrong PINs in a row: unplug the security key, plug it back "
                        "in and try again; nothing was approved.",
    "timeout": "The security key was not touched in time; nothing was approved.",
    "cancelled": "Cancelled; nothing was approved.",
    "presence_failed": "The daemon did not accept this key's signature (is the key enrolled "
                       "with pacd?); nothing was approved.",
    "possible_cloned_authenticator": "The key's signature counter went backwards (a cloned "
                                     "key?); nothing was approved and the daemon raised an "
                                     "alarm.",
    "payload_mismatch": "The daemon's stored request no longer matches its challenge; nothing "
                        "was approved.",
}


def pin_prompt(device_name: str, retries: int | None) -> str:
    """The PIN prompt with the tries the key itself reports left (``getPinRetries``)."""
    if retries is None:
        left = "the key does not say how many tries are left"
    elif retries == 1:
        left = "1 try left: one more wrong PIN blocks the key"
    else:
        left = f"{retries} tries left before the key blocks its PIN"
    return f"Enter the PIN of your {device_name} ({left}):"


def failure_sentence(exc: PacdError) -> str:
    if exc.code == "pin_blocked" and "replug" in exc.message:
        return SENTENCES["pin_auth_blocked"]
    if exc.code == "ceremony_failed" and "not enrolled" in exc.message:
        return "This security key is not enrolled with pacd; nothing was approved."
    return SENTENCES.get(exc.code, f"Not approved: {exc.message}")


def device_authenticate(options: Mapping[str, Any], origin: str, interaction: UserInteraction,
                        cancel: threading.Event, timeout_s: float) -> dict[str, Any]:
    """The real ceremony: the first USB/NFC key (or Windows Hello where it is the client)."""
    from pacd.presence.client import authenticate

    return authenticate(options, origin, interaction, timeout_s=timeout_s, cancel=cancel)


def window_authenticator(window_handle: int | None, *, platform: str = sys.platform,
                         windows_client: Callable[..., WebAuthnClient] | None = None
                         ) -> Authenticator:
    """The ceremony for a dialog's window.

    On Windows: the system WebAuthn API (Windows Hello and USB keys) with the
    dialog's window handle, so its prompt is the dialog's and not that of whatever
    window has the focus (python-fido2 would take the foreground window).
    ``windows_client`` stands in for python-fido2's ``WindowsClient`` off Windows.
    Elsewhere: the first USB key (:func:`device_authenticate`).
    """
    if platform != "win32":
        return device_authenticate

    def run(options: Mapping[str, Any], origin: str, interaction: UserInteraction,
            cancel: threading.Event, timeout_s: float) -> dict[str, Any]:
        from fido2.client import DefaultClientDataCollector

        from pacd.presence.client import authenticate

        factory = windows_client
        if factory is None:
            from fido2.client.windows import WindowsClient

            factory = WindowsClient
        client = factory(DefaultClientDataCollector(origin), handle=window_handle)
        return authenticate(options, origin, interaction, timeout_s=timeout_s, cancel=cancel,
                            client=client)

    return run


class CeremonyWorker(QObject):
    """Signs and posts one approval. Lives on a QThread; talk to it through its slots."""

    #: what the panel should say now ("Touch your security key", ...)
    prompt = Signal(str)
    #: the key asks for its PIN; the panel answers with :meth:`provide_pin`
    pin_needed = Signal(str)
    #: "" when approved, else the sentence saying why not
    finished = Signal(str)

    def __init__(self, client: Client, detail: dict[str, Any], authenticator: Authenticator,
                 timeout_s: float = CEREMONY_TIMEOUT_S, device_name: str = "security key"
                 ) -> None:
        super().__init__()
        self.client = client
        self.detail = detail
        self.authenticator = authenticator
        self.timeout_s = timeout_s
        self.device_name = device_name
        self.cancel_event = threading.Event()
        self._pin: str | None = None
        self._pin_given = threading.Event()

    def cancel(self) -> None:
        """Callable from any thread: ends the ceremony as "cancelled"."""
        self.cancel_event.set()
        self._pin = None
        self._pin_given.set()

    def provide_pin(self, pin: str | None) -> None:
        self._pin = pin or None
        self._pin_given.set()

    def _ask_pin(self, retries: int | None = None) -> str | None:
        self._pin_given.clear()
        emit(self.pin_needed, pin_prompt(self.device_name, retries))
        while not self._pin_given.wait(0.1):
            if self.cancel_event.is_set():
                return None
        return None if self.cancel_event.is_set() else self._pin

    # --- what differs between ceremonies (approval here, session below) ---------

    def _refusal(self) -> str:
        """Why this ceremony must not even start ("" to go ahead)."""
        return "" if approval_challenge_matches(self.detail) else MISMATCH

    def _options(self) -> tuple[dict[str, Any], str]:
        return self.detail["publicKey"], str(self.detail["origin"])

    def _submit(self, credential: dict[str, Any]) -> None:
        self.client.request("POST", f"/v1/approvals/{self.detail['id']}/approve",
                            {"credential": credential})

    @Slot()
    def run(self) -> None:
        refusal = self._refusal()
        if refusal:
            emit(self.finished, refusal)
            return
        worker = self

        class Interaction(RetriesInteraction):
            def prompt_up(self) -> None:
                emit(worker.prompt, f"Touch your {worker.device_name} now.")

            def request_pin(self, permissions: Any, rd_id: str | None) -> str | None:
                return worker._ask_pin()  # a client that cannot ask the key its retries

            def request_pin_with_retries(self, permissions: Any, rd_id: str | None,
                                         retries: int | None) -> str | None:
                return worker._ask_pin(retries)

            def request_uv(self, permissions: Any, rd_id: str | None) -> bool:
                emit(worker.prompt, f"Verify yourself on your {worker.device_name} "
                                   "(fingerprint or PIN on the key).")
                return True

        emit(self.prompt, f"Touch your {self.device_name} when it blinks.")
        try:
            options, origin = self._options()
            credential = self.authenticator(options, origin, Interaction(), self.cancel_event,
                                            self.timeout_s)
            if self.cancel_event.is_set():
                emit(self.finished, SENTENCES["cancelled"])
                return
            self._submit(credential)
        except PacdError as exc:
            emit(self.finished, failure_sentence(exc))
            return
        except Exception as exc:  # a broken key or driver must not take the tray down
            emit(self.finished, f"Not approved: the key could not be used ({exc!r}).")
            return
        emit(self.finished, "")


class SessionWorker(CeremonyWorker):
    """Earns a session token at ``level`` (``/v1/sessions/begin`` and ``complete``) for an
    action the owner asked the tray to do, e.g. start a container; ``token`` once done."""

    def __init__(self, client: Client, level: str, authenticator: Authenticator,
                 timeout_s: float = CEREMONY_TIMEOUT_S, device_name: str = "security key"
                 ) -> None:
        super().__init__(client, {}, authenticator, timeout_s, device_name)
        self.level = level
        self.session_id = ""
        self.token: dict[str, Any] | None = None

    def _refusal(self) -> str:
        return ""

    def _options(self) -> tuple[dict[str, Any], str]:
        begin = self.client.request("POST", "/v1/sessions/begin", {"level": self.level},
                                    auth=False)
        self.session_id = str(begin["session_id"])
        return begin["publicKey"], str(begin["origin"])

    def _submit(self, credential: dict[str, Any]) -> None:
        self.token = self.client.request(
            "POST", "/v1/sessions/complete",
            {"session_id": self.session_id, "credential": credential}, auth=False)


class FingerprintSessionWorker(CeremonyWorker):
    """Earns a session at ``level`` from the daemon's own fingerprint check (fprintd,
    ``POST /v1/sessions/platform``): the daemon asks the reader; nothing is signed here."""

    #: the ``platform_presence`` method the daemon runs for this worker
    method = "fprintd"
    prompt_text = "Touch the fingerprint reader."

    def __init__(self, client: Client, level: str) -> None:
        super().__init__(client, {}, _no_key)
        self.level = level
        self.token: dict[str, Any] | None = None

    def sentences(self) -> dict[str, str]:
        return FINGERPRINT_SENTENCES

    @Slot()
    def run(self) -> None:
        emit(self.prompt, self.prompt_text)
        try:
            self.token = self.client.request(
                "POST", "/v1/sessions/platform", {"method": self.method, "level": self.level},
                auth=False)
        except PacdError as exc:
            sentence = self.sentences().get(exc.code, f"Not confirmed: {exc.message}")
            emit(self.finished, sentence)
            return
        emit(self.finished, "")


class TouchIdSessionWorker(FingerprintSessionWorker):
    """The same with Touch ID on a Mac: the daemon asks the Secure Enclave key to
    sign, macOS shows its own prompt; nothing is signed by the tray."""

    method = "touchid"
    prompt_text = "Confirm with Touch ID."

    def sentences(self) -> dict[str, str]:
        return TOUCHID_SENTENCES


FINGERPRINT_SENTENCES = {
    "presence_failed": "The fingerprint was not recognised (or no finger in time); "
                       "nothing was done.",
    "presence_unavailable": "The fingerprint reader cannot be used now (busy, missing, or "
                            "fprintd not running); nothing was done.",
    "forbidden": "The daemon does not accept the fingerprint reader for sessions; "
                 "nothing was done.",
}

TOUCHID_SENTENCES = {
    "presence_failed": "Touch ID did not confirm it is you (cancelled, not recognised, or "
                       "not used in time); nothing was done.",
    "presence_unavailable": "Touch ID cannot be used now (not a Mac with Touch ID, or no "
                            "pacd key enrolled on it); nothing was done.",
    "forbidden": "The daemon does not accept Touch ID for sessions; nothing was done.",
}


def _no_key(*_: Any) -> dict[str, Any]:
    raise AssertionError("a fingerprint session signs nothing")


#: ceremonies whose thread has not ended yet (see run_on_thread)
_RUNNING: set[tuple[QThread, CeremonyWorker]] = set()


class _Reaper(QObject):
    """Lives on the GUI thread: drops a ceremony's thread and worker once it has ended.
    (A lambda on ``finished`` would run on the ending thread itself.)"""

    @Slot()
    def reap(self) -> None:
        for thread, worker in list(_RUNNING):
            if thread is self.sender():
                thread.wait()  # ``finished`` comes from the thread just before it ends
                _RUNNING.discard((thread, worker))


_REAPER: _Reaper | None = None


def wait_for_ceremonies(timeout_ms: int = 5000) -> bool:
    """At exit, once the dialogs have cancelled theirs: wait for every ceremony thread
    to end (a QThread destroyed while it runs aborts the process). False if one still
    runs after ``timeout_ms``."""
    return all(thread.wait(timeout_ms) for thread, _worker in list(_RUNNING))


def run_on_thread(worker: CeremonyWorker) -> QThread:
    """Start ``worker.run`` on a thread of its own and return the thread.

    The thread is nobody's child: a dialog dropped while its ceremony runs (the
    daemon went away, the tray closed) must not destroy a running QThread, which
    aborts the process. :data:`_RUNNING` holds both until the thread has ended.
    """
    global _REAPER  # noqa: PLW0603 - one per process, made on the GUI thread
    if _REAPER is None:
        _REAPER = _Reaper()
    thread = QThread()
    worker.moveToThread(thread)
    thread.started.connect(worker.run)
    worker.finished.connect(thread.quit)
    _RUNNING.add((thread, worker))
    thread.finished.connect(_REAPER.reap, Qt.ConnectionType.QueuedConnection)
    thread.start()
    return thread
