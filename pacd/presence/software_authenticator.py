"""A software CTAP2 authenticator: a real ``fido2.ctap.CtapDevice`` in this process.

Two users. The tests: the machine running them has no security key, so this is
the one fake at the FIDO2 boundary. And a person trying pacd on a machine
without a key: ``pacd enroll --demo`` enrols it as the **demo authenticator**
(:mod:`pacd.presence.demo_authenticator` keeps its private keys sealed by the
vault), which the daemon accepts only when ``allow_software_authenticator`` is
set in config.toml. It is not secure: its keys are as safe as the keychain of
the user who runs it, and nothing is touched to use them.

It speaks CTAP2 CBOR exactly as a USB key does over CTAPHID, so python-fido2's
real ``Fido2Client`` (PIN protocol negotiation, silent ``up=False``
pre-flights, keep-alives, cancel) runs unchanged against it and pacd's relying
party verifies what it produces like any other key.

It states its model as :data:`~pacd.presence.attestation.SOFTWARE_AUTHENTICATOR_AAGUID`
unless told otherwise; that AAGUID is how the daemon tells its credentials
apart (``software``). The tests give it another AAGUID when it stands in for a
hardware key.

What a test can switch:

- ``uv_builtin``: the key has built-in user verification (a fingerprint key);
  ``pin``: a client PIN is set (``None``: no PIN configured);
- ``report_up`` / ``report_uv``: whether the UP / UV flags are written into the
  signed authenticator data (a broken or lying authenticator);
- ``counter`` (read/write) and ``freeze_counter``: roll the signature counter
  back or stop it, as a cloned key would;
- ``presence``: ``"auto"`` (touched at once), ``"manual"`` (waits for
  :attr:`touch` to be set by the test) or ``"never"`` (waits until
  ``touch_timeout_s`` and answers USER_ACTION_TIMEOUT); cancel via the
  ``event`` python-fido2 passes answers KEEPALIVE_CANCEL;
- ``attestation``: ``"none"`` or ``"packed"`` (self attestation).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fido2 import cbor
from fido2.cose import ES256
from fido2.ctap import STATUS, CtapDevice, CtapError
from fido2.ctap2.pin import PinProtocol, PinProtocolV1, PinProtocolV2
from fido2.hid import CAPABILITY, CTAPHID
from fido2.utils import bytes2int, int2bytes
from fido2.webauthn import AttestedCredentialData, AuthenticatorData

from pacd.presence.attestation import SOFTWARE_AUTHENTICATOR_AAGUID

__all__ = ["SOFTWARE_AUTHENTICATOR_AAGUID", "CallLog", "SoftAuthenticator", "SoftCredential"]

ERR = CtapError.ERR

PIN_RETRIES = 8
#: version of the state :meth:`SoftAuthenticator.export_state` writes
_STATE_VERSION = 1


class _Refused(Exception):
    def __init__(self, code: ERR) -> None:
        super().__init__(code.name)
        self.code = code


@dataclass
class SoftCredential:
    credential_id: bytes
    rp_id: str
    private_key: ec.EllipticCurvePrivateKey
    user: Mapping[str, Any]
    resident: bool


@dataclass
class CallLog:
    """What the authenticator was asked to do (tests assert on it)."""

    commands: list[int] = field(default_factory=list)
    preflights: int = 0
    touches: int = 0


class SoftAuthenticator(CtapDevice):
    def __init__(
        self,
        *,
        uv_builtin: bool = True,
        pin: str | None = None,
        attestation: str = "none",
        presence: str = "auto",
        touch_timeout_s: float = 30.0,
        aaguid: bytes = SOFTWARE_AUTHENTICATOR_AAGUID,
    ) -> None:
        if attestation not in ("none", "packed"):
            raise ValueError("attestation must be 'none' or 'packed'")
        if presence not in ("auto", "manual", "never"):
            raise ValueError("presence must be 'auto', 'manual' or 'never'")
        if len(aaguid) != 16:
            raise ValueError("an AAGUID is 16 bytes")
        self.aaguid = aaguid
        self.uv_builtin = uv_builtin
        self.pin = pin
        self.attestation = attestation
        self.presence = presence
        self.touch_timeout_s = touch_timeout_s
        self.touch = threading.Event()
        self.report_up = True
        self.report_uv = True
        self.uv_fails = False
        self.counter = 0
        self.freeze_counter = False
        self.pin_retries = PIN_RETRIES
        self.credentials: dict[bytes, SoftCredential] = {}
        self.log = CallLog()
        self._key_agreement = ec.generate_private_key(ec.SECP256R1())
        self._pin_token: bytes | None = None

    # --- keeping its keys across processes ---------------------------------

    def export_state(self) -> bytes:
        """Its credentials (with their private keys) and counter, as CBOR: secret.

        Whoever keeps this must seal it (the demo authenticator's store does,
        with the vault); the PIN and test switches are not part of it.
        """
        return bytes(cbor.encode({
            "v": _STATE_VERSION,
            "aaguid": self.aaguid,
            "counter": self.counter,
            "credentials": [
                {"id": c.credential_id, "rp_id": c.rp_id, "user": dict(c.user),
                 "resident": c.resident,
                 "key": c.private_key.private_bytes(
                     serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                     serialization.NoEncryption())}
                for c in self.credentials.values()],
        }))

    @classmethod
    def from_state(cls, state: bytes, **options: Any) -> SoftAuthenticator:
        """An authenticator holding what :meth:`export_state` wrote (``ValueError``
        when it is not such a state)."""
        try:
            data = cbor.decode(state)
            if not isinstance(data, Mapping) or data.get("v") != _STATE_VERSION:
                raise ValueError("not a software authenticator state of this version")
            auth = cls(aaguid=bytes(data["aaguid"]), **options)
            auth.counter = int(data["counter"])
            for item in data["credentials"]:
                key = serialization.load_der_private_key(bytes(item["key"]), password=None)
                if not isinstance(key, ec.EllipticCurvePrivateKey):
                    raise ValueError("a credential key is not an EC key")
                credential_id = bytes(item["id"])
                auth.credentials[credential_id] = SoftCredential(
                    credential_id, str(item["rp_id"]), key, dict(item["user"]),
                    bool(item["resident"]))
        except (KeyError, TypeError, IndexError) as exc:
            raise ValueError(f"not a software authenticator state: {exc}") from exc
        return auth

    # --- CtapDevice -----------------------------------------------------

    @property
    def capabilities(self) -> int:
        return int(CAPABILITY.CBOR)

    @classmethod
    def list_devices(cls) -> Iterator[SoftAuthenticator]:
        return iter(())

    def call(
        self,
        cmd: int,
        data: bytes = b"",
        event: threading.Event | None = None,
        on_keepalive: Callable[[STATUS], None] | None = None,
    ) -> bytes:
        if cmd != CTAPHID.CBOR:
            return bytes([ERR.INVALID_COMMAND])
        if not data:
            return bytes([ERR.INVALID_LENGTH])
        command, payload = data[0], data[1:]
        self.log.commands.append(command)
        try:
            params = cbor.decode(payload) if payload else {}
            if not isinstance(params, Mapping):
                raise _Refused(ERR.CBOR_UNEXPECTED_TYPE)
            handler = {
                0x01: self._make_credential,
                0x02: self._get_assertion,
                0x04: self._get_info,
                0x06: self._client_pin,
                0x0B: self._selection,
            }.get(command)
            if handler is None:
                raise _Refused(ERR.INVALID_COMMAND)
            result = handler(params, event, on_keepalive)
        except _Refused as refused:
            return bytes([refused.code])
        return b"\x00" + (cbor.encode(result) if result else b"")

    # --- commands -------------------------------------------------------

    def info_options(self) -> dict[str, bool]:
        options = {"rk": True, "up": True, "plat": False}
        if self.uv_builtin:
            options["uv"] = True
        options["clientPin"] = self.pin is not None
        return options

    def _get_info(self, params: Mapping[int, Any], *_: Any) -> dict[int, Any]:
        return {
            1: ["U2F_V2", "FIDO_2_0", "FIDO_2_1"],
            2: [],
            3: self.aaguid,
            4: self.info_options(),
            5: 2048,
            6: [2, 1],
            7: 8,
            8: 128,
            9: ["usb"],
            10: [{"alg": -7, "type": "public-key"}],
        }

    def _make_credential(
        self,
        params: Mapping[int, Any],
        event: threading.Event | None,
        on_keepalive: Callable[[STATUS], None] | None,
    ) -> dict[int, Any]:
        client_data_hash = _require(params, 1, bytes)
        rp = _require(params, 2, Mapping)
        user = _require(params, 3, Mapping)
        key_params = _require(params, 4, list)
        options = params.get(7) or {}
        if options.get("up") is False:
            raise _Refused(ERR.INVALID_OPTION)
        if not any(p.get("alg") == -7 and p.get("type") == "public-key" for p in key_params):
            raise _Refused(ERR.UNSUPPORTED_ALGORITHM)
        rp_id = str(rp["id"])
        uv = self._user_verification(params, client_data_hash, options, pin_param_key=8)
        if self.pin is not None and not uv:
            # A key with a PIN set refuses to register without it (CTAP 2.1).
            raise _Refused(ERR.PUAT_REQUIRED)
        excluded = any(
            c.get("id") in self.credentials and self.credentials[c["id"]].rp_id == rp_id
            for c in params.get(5) or []
        )
        self._wait_for_touch(event, on_keepalive)
        if excluded:
            raise _Refused(ERR.CREDENTIAL_EXCLUDED)

        key = ec.generate_private_key(ec.SECP256R1())
        credential_id = os.urandom(32)
        self.credentials[credential_id] = SoftCredential(
            credential_id, rp_id, key, dict(user), bool(options.get("rk"))
        )
        attested = AttestedCredentialData.create(
            self.aaguid, credential_id, ES256.from_cryptography_key(key.public_key())  # type: ignore[no-untyped-call]
        )
        auth_data = AuthenticatorData.create(
            hashlib.sha256(rp_id.encode()).digest(),
            self._flags(up=True, uv=uv) | AuthenticatorData.FLAG.AT,
            self._next_counter(),
            attested,
        )
        if self.attestation == "packed":
            signature = key.sign(auth_data + client_data_hash, ec.ECDSA(hashes.SHA256()))
            return {1: "packed", 2: auth_data, 3: {"alg": -7, "sig": signature}}
        return {1: "none", 2: auth_data, 3: {}}

    def _get_assertion(
        self,
        params: Mapping[int, Any],
        event: threading.Event | None,
        on_keepalive: Callable[[STATUS], None] | None,
    ) -> dict[int, Any]:
        rp_id = str(_require(params, 1, str))
        client_data_hash = _require(params, 2, bytes)
        allow_list = params.get(3)
        options = params.get(5) or {}
        up = options.get("up", True)
        if not up:
            self.log.preflights += 1
        uv = self._user_verification(params, client_data_hash, options, pin_param_key=6)
        if allow_list:
            matches = [
                self.credentials[c["id"]]
                for c in allow_list
                if c.get("id") in self.credentials and self.credentials[c["id"]].rp_id == rp_id
            ]
        else:
            matches = [c for c in self.credentials.values() if c.rp_id == rp_id and c.resident]
        if up:
            self._wait_for_touch(event, on_keepalive)
        if not matches:
            raise _Refused(ERR.NO_CREDENTIALS)
        cred = matches[0]
        auth_data = AuthenticatorData.create(
            hashlib.sha256(rp_id.encode()).digest(),
            self._flags(up=bool(up), uv=uv),
            self._next_counter(),
        )
        signature = cred.private_key.sign(auth_data + client_data_hash, ec.ECDSA(hashes.SHA256()))
        response: dict[int, Any] = {
            1: {"id": cred.credential_id, "type": "public-key"},
            2: auth_data,
            3: signature,
        }
        if cred.resident:
            response[4] = {"id": cred.user["id"]}
        return response

    def _selection(
        self,
        params: Mapping[int, Any],
        event: threading.Event | None,
        on_keepalive: Callable[[STATUS], None] | None,
    ) -> dict[int, Any]:
        self._wait_for_touch(event, on_keepalive)
        return {}

    def _client_pin(self, params: Mapping[int, Any], *_: Any) -> dict[int, Any]:
        protocol = _protocol(params.get(1))
        sub = _require(params, 2, int)
        if sub == 0x01:  # getPINRetries
            return {3: self.pin_retries}
        if sub == 0x02:  # getKeyAgreement
            numbers = self._key_agreement.public_key().public_numbers()
            return {1: {1: 2, 3: -25, -1: 1, -2: int2bytes(numbers.x, 32),
                        -3: int2bytes(numbers.y, 32)}}
        if sub in (0x05, 0x09):  # getPinToken (legacy) / ...UsingPinWithPermissions
            if self.pin is None:
                raise _Refused(ERR.PIN_NOT_SET)
            if self.pin_retries <= 0:
                raise _Refused(ERR.PIN_BLOCKED)
            shared = self._shared_secret(protocol, _require(params, 3, Mapping))
            pin_hash = protocol.decrypt(shared, _require(params, 6, bytes))
            expected = hashlib.sha256(self.pin.encode()).digest()[:16]
            if not hmac.compare_digest(pin_hash, expected):
                self.pin_retries -= 1
                # A wrong PIN invalidates the key agreement (CTAP 2.1 §6.5.5.5).
                self._key_agreement = ec.generate_private_key(ec.SECP256R1())
                raise _Refused(ERR.PIN_BLOCKED if self.pin_retries <= 0 else ERR.PIN_INVALID)
            self.pin_retries = PIN_RETRIES
            self._pin_token = os.urandom(32)
            return {2: protocol.encrypt(shared, self._pin_token)}
        raise _Refused(ERR.INVALID_SUBCOMMAND)

    # --- helpers --------------------------------------------------------

    def _shared_secret(self, protocol: PinProtocol, peer: Mapping[int, Any]) -> bytes:
        public = ec.EllipticCurvePublicNumbers(
            bytes2int(peer[-2]), bytes2int(peer[-3]), ec.SECP256R1()
        ).public_key()
        z = self._key_agreement.exchange(ec.ECDH(), public)
        kdf: Callable[[bytes], bytes] = protocol.kdf  # type: ignore[attr-defined]
        return kdf(z)

    def _user_verification(
        self,
        params: Mapping[int, Any],
        client_data_hash: bytes,
        options: Mapping[str, Any],
        pin_param_key: int,
    ) -> bool:
        pin_param = params.get(pin_param_key)
        if pin_param is not None:
            if len(pin_param) == 0:
                # Zero-length pinUvAuthParam: the platform probes for a PIN.
                raise _Refused(ERR.PIN_INVALID if self.pin is not None else ERR.PIN_NOT_SET)
            protocol = _protocol(params.get(pin_param_key + 1))
            if self._pin_token is None:
                raise _Refused(ERR.PIN_AUTH_INVALID)
            expected = protocol.authenticate(self._pin_token, client_data_hash)
            if not hmac.compare_digest(bytes(pin_param), expected):
                raise _Refused(ERR.PIN_AUTH_INVALID)
            return True
        if options.get("uv"):
            if not self.uv_builtin:
                raise _Refused(ERR.INVALID_OPTION)
            if self.uv_fails:
                raise _Refused(ERR.UV_INVALID)
            return True
        return False

    def _wait_for_touch(
        self,
        event: threading.Event | None,
        on_keepalive: Callable[[STATUS], None] | None,
    ) -> None:
        if on_keepalive is not None:
            on_keepalive(STATUS.UPNEEDED)
        if self.presence == "auto":
            self.log.touches += 1
            return
        waited = 0.0
        while waited < self.touch_timeout_s:
            if event is not None and event.is_set():
                raise _Refused(ERR.KEEPALIVE_CANCEL)
            if self.presence == "manual" and self.touch.is_set():
                self.touch.clear()
                self.log.touches += 1
                return
            self.touch.wait(0.01)
            waited += 0.01
        raise _Refused(ERR.USER_ACTION_TIMEOUT)

    def _flags(self, *, up: bool, uv: bool) -> AuthenticatorData.FLAG:
        flags = AuthenticatorData.FLAG(0)
        if up and self.report_up:
            flags |= AuthenticatorData.FLAG.UP
        if uv and self.report_uv:
            flags |= AuthenticatorData.FLAG.UV
        return flags

    def _next_counter(self) -> int:
        if not self.freeze_counter:
            self.counter += 1
        return self.counter


def _protocol(version: Any) -> PinProtocol:
    if version == 1:
        return PinProtocolV1()
    if version == 2:
        return PinProtocolV2()
    raise _Refused(ERR.INVALID_PARAMETER)


def _require(params: Mapping[int, Any], key: int, kind: type) -> Any:
    if key not in params:
        raise _Refused(ERR.MISSING_PARAMETER)
    value = params[key]
    if not isinstance(value, kind):
        raise _Refused(ERR.CBOR_UNEXPECTED_TYPE)
    return value
