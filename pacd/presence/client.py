"""The presence ceremony on the owner's side (CLI and tray).

Takes the options the daemon handed out, talks to the authenticator through
python-fido2 and returns WebAuthn JSON (``dict(response)``) for the daemon to
verify. On Linux/macOS that is CTAP over USB HID; on Windows the system
WebAuthn API (``WindowsClient``), which also reaches Windows Hello and is the
only way to reach USB keys there without administrator rights.

Library errors are translated here into pacd's ceremony errors so the CLI and
the tray can tell the person what to do.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping
from typing import Any, Protocol

from fido2.client import (
    ClientError,
    DefaultClientDataCollector,
    Fido2Client,
    PinRequiredError,
    UserInteraction,
    WebAuthnClient,
)
from fido2.ctap import CtapDevice, CtapError
from fido2.webauthn import PublicKeyCredentialCreationOptions, PublicKeyCredentialRequestOptions

from pacd.errors import (
    CeremonyCancelled,
    CeremonyError,
    CeremonyTimeout,
    InvalidRequest,
    NoAuthenticator,
    PinBlocked,
    PinInvalid,
)
from pacd.presence.usb_keys import UDEV_HINT, hidraw_diagnosis, list_authenticators

__all__ = [
    "UDEV_HINT",
    "RetriesInteraction",
    "UserInteraction",
    "authenticate",
    "find_authenticator",
    "list_authenticators",
    "pin_retries",
    "register",
    "windows_client_available",
]

ERR = CtapError.ERR


class _ClientFactory(Protocol):
    def __call__(self, origin: str, interaction: UserInteraction) -> WebAuthnClient: ...


def find_authenticator() -> CtapDevice:
    devices = list_authenticators()
    if not devices:
        reason = hidraw_diagnosis() if sys.platform.startswith("linux") else "plug one in"
        raise NoAuthenticator(f"no FIDO2 security key found: {reason}")
    return devices[0]


def windows_client_available() -> bool:
    if sys.platform != "win32":
        return False
    try:
        from fido2.client.windows import WindowsClient
    except (ImportError, OSError, AttributeError):
        return False
    return bool(WindowsClient.is_available())


class RetriesInteraction(UserInteraction):
    """A ``UserInteraction`` that wants to say how many PIN tries the key has left.

    :func:`authenticate` and :func:`register` ask the key (CTAP2 ``getPinRetries``)
    right before each PIN prompt and call :meth:`request_pin_with_retries`
    instead of ``request_pin``; ``retries`` is None when the key would not say.
    A key whose PIN is already blocked is not asked for a PIN at all: the
    ceremony ends with :class:`~pacd.errors.PinBlocked`.
    """

    def request_pin_with_retries(self, permissions: Any, rd_id: str | None,
                                 retries: int | None) -> str | None:
        return None


def pin_retries(device: CtapDevice) -> int | None:
    """The key's PIN tries left before it blocks (CTAP2 ``getPinRetries``), or None if
    it cannot tell (no CTAP2, no PIN support, a transport error)."""
    from fido2.ctap2.base import Ctap2
    from fido2.ctap2.pin import ClientPin

    try:
        ctap2 = Ctap2(device)
        if not ClientPin.is_supported(ctap2.info):  # type: ignore[no-untyped-call]
            return None
        return int(ClientPin(ctap2).get_pin_retries()[0])
    except (CtapError, OSError, ValueError, KeyError):
        return None


class _AskingRetries(UserInteraction):
    """Passes python-fido2's prompts on, adding the retries count to PIN prompts."""

    def __init__(self, inner: RetriesInteraction, device: CtapDevice) -> None:
        self.inner = inner
        self.device = device

    def prompt_up(self) -> None:
        self.inner.prompt_up()

    def request_uv(self, permissions: Any, rd_id: str | None) -> bool:
        return bool(self.inner.request_uv(permissions, rd_id))

    def request_pin(self, permissions: Any, rd_id: str | None) -> str | None:
        retries = pin_retries(self.device)
        if retries == 0:
            raise PinBlocked(
                "the security key's PIN is blocked after too many wrong tries;"
                " it must be reset (this erases its credentials)"
            )
        return self.inner.request_pin_with_retries(permissions, rd_id, retries)


def _default_client(
    origin: str, interaction: UserInteraction, device: CtapDevice | None
) -> WebAuthnClient:
    collector = DefaultClientDataCollector(origin)
    if device is None and windows_client_available():
        from fido2.client.windows import WindowsClient

        client: WebAuthnClient = WindowsClient(collector)
        return client
    key = device or find_authenticator()
    if isinstance(interaction, RetriesInteraction):
        interaction = _AskingRetries(interaction, key)
    return Fido2Client(key, collector, user_interaction=interaction)


def register(  # noqa: PLR0917 - the agreed call shape
    options: Mapping[str, Any],
    origin: str,
    interaction: UserInteraction,
    device: CtapDevice | None = None,
    timeout_s: float = 60,
    cancel: threading.Event | None = None,
    client: WebAuthnClient | None = None,
) -> dict[str, Any]:
    """Create a credential; returns RegistrationResponseJSON.

    ``options`` is the ``publicKey`` member the daemon returned (the whole
    begin response is accepted too). ``cancel``, when set by the caller, aborts
    the ceremony; on timeout this function sets it too.
    """
    parsed = _creation_options(options)
    webauthn = client or _default_client(origin, interaction, device)
    response = _run(lambda ev: webauthn.make_credential(parsed, event=ev), timeout_s, cancel,
                    registering=True)
    return dict(response)


def authenticate(  # noqa: PLR0917 - the agreed call shape
    options: Mapping[str, Any],
    origin: str,
    interaction: UserInteraction,
    device: CtapDevice | None = None,
    timeout_s: float = 60,
    cancel: threading.Event | None = None,
    client: WebAuthnClient | None = None,
) -> dict[str, Any]:
    """Sign the daemon's challenge; returns AuthenticationResponseJSON."""
    parsed = _request_options(options)
    webauthn = client or _default_client(origin, interaction, device)
    selection = _run(lambda ev: webauthn.get_assertion(parsed, event=ev), timeout_s, cancel,
                     registering=False)
    return dict(selection.get_response(0))


# --- internals ---------------------------------------------------------------


def _unwrap(options: Mapping[str, Any]) -> Mapping[str, Any]:
    if not isinstance(options, Mapping):
        raise InvalidRequest("WebAuthn options must be a JSON object")
    inner = options.get("publicKey", options)
    if not isinstance(inner, Mapping):
        raise InvalidRequest("publicKey must be a JSON object")
    # The caller's timeout governs (python-fido2 would otherwise start its own
    # timer on the same event and a timeout would look like a cancel).
    return {k: v for k, v in inner.items() if k != "timeout"}


def _creation_options(options: Mapping[str, Any]) -> PublicKeyCredentialCreationOptions:
    try:
        return PublicKeyCredentialCreationOptions.from_dict(_unwrap(options))
    except InvalidRequest:
        raise
    except Exception as exc:
        raise InvalidRequest("malformed WebAuthn creation options from the daemon") from exc


def _request_options(options: Mapping[str, Any]) -> PublicKeyCredentialRequestOptions:
    try:
        return PublicKeyCredentialRequestOptions.from_dict(_unwrap(options))
    except InvalidRequest:
        raise
    except Exception as exc:
        raise InvalidRequest("malformed WebAuthn request options from the daemon") from exc


def _run(
    ceremony: Any, timeout_s: float, cancel: threading.Event | None, *, registering: bool
) -> Any:
    if timeout_s <= 0:
        raise InvalidRequest("timeout must be positive")
    event = cancel if cancel is not None else threading.Event()
    timed_out = threading.Event()

    def expire() -> None:
        timed_out.set()
        event.set()

    timer = threading.Timer(timeout_s, expire)
    timer.daemon = True
    cancelled_before = event.is_set()
    timer.start()
    try:
        if cancelled_before:
            raise CeremonyCancelled("cancelled")
        return ceremony(event)
    except ClientError as exc:
        raise _translate(exc, timed_out.is_set(), event.is_set(), registering) from exc
    except CtapError as exc:
        wrapped = ClientError(ClientError.ERR.OTHER_ERROR, exc)  # type: ignore[no-untyped-call]
        raise _translate(wrapped, timed_out.is_set(), event.is_set(), registering) from exc
    except OSError as exc:
        raise NoAuthenticator(f"lost the connection to the security key: {exc}") from exc
    finally:
        timer.cancel()


def _translate(
    exc: ClientError, timed_out: bool, cancelled: bool, registering: bool
) -> CeremonyError:
    cause = exc.cause
    code = cause.code if isinstance(cause, CtapError) else None
    if timed_out:
        return CeremonyTimeout("the security key was not touched in time")
    if cancelled or code == ERR.KEEPALIVE_CANCEL:
        return CeremonyCancelled("cancelled")
    if isinstance(exc, PinRequiredError):
        return CeremonyCancelled("no PIN was entered")
    if code == ERR.PIN_INVALID:
        return PinInvalid("wrong PIN for the security key")
    if code in (ERR.PIN_BLOCKED,):
        return PinBlocked(
            "the security key's PIN is blocked after too many wrong tries;"
            " it must be reset (this erases its credentials)"
        )
    if code == ERR.PIN_AUTH_BLOCKED:
        return PinBlocked(
            "too many wrong PINs in a row: unplug and replug the security key, then try again"
        )
    if code in (ERR.USER_ACTION_TIMEOUT, ERR.ACTION_TIMEOUT) or (
        code is None and exc.code == ClientError.ERR.TIMEOUT
    ):
        return CeremonyTimeout("the security key was not touched in time")
    if code in (ERR.UV_BLOCKED, ERR.UV_INVALID):
        return CeremonyError("the key could not verify you (fingerprint not recognised)")
    if code == ERR.PIN_NOT_SET or exc.code == ClientError.ERR.CONFIGURATION_UNSUPPORTED:
        return CeremonyError(
            "this key cannot verify you: set a PIN or enrol a fingerprint on it first"
        )
    if code == ERR.CREDENTIAL_EXCLUDED or (
        registering and exc.code == ClientError.ERR.DEVICE_INELIGIBLE
    ):
        return CeremonyError("this security key is already enrolled")
    if code == ERR.NO_CREDENTIALS or exc.code == ClientError.ERR.DEVICE_INELIGIBLE:
        return CeremonyError("this security key is not enrolled with pacd")
    if code is None and exc.code == ClientError.ERR.BAD_REQUEST:
        return CeremonyError("the daemon's RP id does not match the origin it reported")
    detail = str(code) if code is not None else exc.code.name
    return CeremonyError(f"the security key refused the request ({detail})")
