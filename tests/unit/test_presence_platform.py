"""Touch ID and Windows Hello code paths, exercised at the OS boundary.

macOS: pyobjc's ``Security`` and ``LocalAuthentication`` modules are replaced
by fakes that keep the key in process and sign with ``cryptography``; the
signature is then verified by pacd exactly as on a Mac. Windows: the WebAuthn
client (webauthn.dll) is replaced by python-fido2's own client talking to the
software authenticator, so the relying-party side is the real one.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fido2.client import DefaultClientDataCollector, Fido2Client, WebAuthnClient

from pacd.core.canonical import digest
from pacd.core.models import SecurityLevel
from pacd.errors import (
    CeremonyCancelled,
    CeremonyTimeout,
    PresenceFailed,
    PresenceRequired,
    PresenceUnavailable,
)
from pacd.presence.clock import SettableClock
from pacd.presence.levels import level_for
from pacd.presence.macos import (
    SecureEnclaveKey,
    TouchIdVerifier,
    signed_message,
    verify_platform_signature,
)
from pacd.presence.owner import OwnerRegistry
from pacd.presence.rp import RelyingParty
from pacd.presence.windows import WindowsHelloVerifier, windows_hello_availability
from pacd.store import Store
from tests.softauthn import SoftAuthenticator

# --- fakes of the pyobjc modules (the OS boundary) ---------------------------


class _Err:
    def __init__(self, code: int) -> None:
        self._code = code

    def code(self) -> int:
        return self._code


class _Context:
    def __init__(self, la: FakeLocalAuthentication) -> None:
        self.la = la
        self.reason = ""
        self.invalidated = threading.Event()
        self.interaction_not_allowed = False

    def init(self) -> _Context:
        return self

    def canEvaluatePolicy_error_(self, policy: int, err: None) -> tuple[bool, _Err | None]:
        assert policy == FakeLocalAuthentication.LAPolicyDeviceOwnerAuthenticationWithBiometrics
        if self.la.enrolled_fingers:
            return True, None
        return False, _Err(-7)

    def setLocalizedReason_(self, reason: str) -> None:
        self.reason = reason
        self.la.reasons.append(reason)

    def setInteractionNotAllowed_(self, value: bool) -> None:
        self.interaction_not_allowed = value

    def invalidate(self) -> None:
        self.invalidated.set()


class FakeLocalAuthentication:
    LAPolicyDeviceOwnerAuthenticationWithBiometrics = 1

    def __init__(self) -> None:
        self.enrolled_fingers = True
        self.reasons: list[str] = []
        la = self

        class LAContext:
            @staticmethod
            def alloc() -> _Context:
                return _Context(la)

        self.LAContext = LAContext


class _Key:
    def __init__(self, private: ec.EllipticCurvePrivateKey, context: Any = None) -> None:
        self.private = private
        self.context = context


class FakeSecurity:
    kSecAttrAccessibleWhenUnlockedThisDeviceOnly = "WhenUnlockedThisDeviceOnly"
    kSecAccessControlPrivateKeyUsage = 1 << 30
    kSecAccessControlBiometryCurrentSet = 1 << 3
    kSecAttrKeyType = "type"
    kSecAttrKeyTypeECSECPrimeRandom = "ec"
    kSecAttrKeySizeInBits = "bits"
    kSecAttrTokenID = "token"
    kSecAttrTokenIDSecureEnclave = "secure-enclave"
    kSecPrivateKeyAttrs = "private"
    kSecAttrIsPermanent = "permanent"
    kSecAttrApplicationTag = "tag"
    kSecAttrAccessControl = "access"
    kSecClass = "class"
    kSecClassKey = "key"
    kSecReturnRef = "ref"
    kSecUseAuthenticationContext = "context"
    kSecKeyAlgorithmECDSASignatureMessageX962SHA256 = "ecdsa-message-x962-sha256"

    def __init__(self) -> None:
        self.keys: dict[bytes, ec.EllipticCurvePrivateKey] = {}
        self.finger = "match"  # match | wrong | cancel | hang
        self.created_with: dict[str, Any] = {}

    def SecAccessControlCreateWithFlags(self, alloc: None, protection: str, flags: int,
                                        err: None) -> tuple[Any, None]:
        return {"protection": protection, "flags": flags}, None

    def SecKeyCreateRandomKey(self, attrs: dict[str, Any], err: None) -> tuple[Any, Any]:
        self.created_with = attrs
        if attrs[self.kSecAttrTokenID] != self.kSecAttrTokenIDSecureEnclave:
            return None, _Err(-50)
        private = ec.generate_private_key(ec.SECP256R1())
        self.keys[attrs[self.kSecPrivateKeyAttrs][self.kSecAttrApplicationTag]] = private
        return _Key(private), None

    def SecItemCopyMatching(self, query: dict[str, Any], err: None) -> tuple[int, Any]:
        private = self.keys.get(query[self.kSecAttrApplicationTag])
        if private is None:
            return -25300, None  # errSecItemNotFound
        return 0, _Key(private, query.get(self.kSecUseAuthenticationContext))

    def SecKeyCopyPublicKey(self, key: _Key) -> ec.EllipticCurvePublicKey:
        return key.private.public_key()

    def SecKeyCopyExternalRepresentation(self, public: ec.EllipticCurvePublicKey,
                                         err: None) -> tuple[bytes, None]:
        return public.public_bytes(serialization.Encoding.X962,
                                   serialization.PublicFormat.UncompressedPoint), None

    def SecKeyCreateSignature(self, key: _Key, alg: str, data: bytes,
                              err: None) -> tuple[bytes | None, _Err | None]:
        assert alg == self.kSecKeyAlgorithmECDSASignatureMessageX962SHA256
        if self.finger == "hang":
            key.context.invalidated.wait(10)
            return None, _Err(-9)  # LAErrorAppCancel
        if self.finger == "cancel":
            return None, _Err(-2)
        if self.finger == "wrong":
            return None, _Err(-1)
        return key.private.sign(data, ec.ECDSA(hashes.SHA256())), None


@pytest.fixture
def owners(tmp_path: Path) -> OwnerRegistry:
    registry = OwnerRegistry(Store(tmp_path / "state.sqlite3"))
    registry.create_owner("Ada", 1.0)
    return registry


@pytest.fixture
def mac() -> tuple[FakeSecurity, FakeLocalAuthentication]:
    return FakeSecurity(), FakeLocalAuthentication()


def _touchid(owners: OwnerRegistry, mac: tuple[FakeSecurity, FakeLocalAuthentication]
             ) -> TouchIdVerifier:
    return TouchIdVerifier(owners, SettableClock(), SecureEnclaveKey(*mac))


def test_touchid_enrol_and_verify(owners: OwnerRegistry,
                                  mac: tuple[FakeSecurity, FakeLocalAuthentication]) -> None:
    verifier = _touchid(owners, mac)
    assert not verifier.availability().available  # ready but not enrolled
    cred = verifier.enroll("this Mac")
    sec = mac[0]
    private_attrs = sec.created_with[sec.kSecPrivateKeyAttrs]
    flags = private_attrs[sec.kSecAttrAccessControl]["flags"]
    assert flags & sec.kSecAccessControlBiometryCurrentSet
    assert flags & sec.kSecAccessControlPrivateKeyUsage
    assert cred.kind == "platform" and cred.uv_capable
    assert verifier.availability().available

    challenge = digest({"action": "create_container", "nonce": "1"})
    verified = verifier.verify(challenge, timeout_s=5)
    assert verified.level == SecurityLevel.biometric
    assert verified.method == "touchid" and verified.challenge == challenge
    assert level_for(verified) == SecurityLevel.biometric
    assert mac[1].reasons == ["confirm it is you"]


def test_touchid_cannot_enrol_a_key_beside_an_enrolled_one(
        owners: OwnerRegistry, mac: tuple[FakeSecurity, FakeLocalAuthentication]) -> None:
    _touchid(owners, mac).enroll("this Mac")
    other: tuple[FakeSecurity, FakeLocalAuthentication] = (FakeSecurity(),
                                                            FakeLocalAuthentication())
    with pytest.raises(PresenceRequired) as refused:
        _touchid(owners, other).enroll("another Mac")
    assert refused.value.extra["required_level"] == "carbonProof"
    assert [c.label for c in owners.list_credentials()] == ["this Mac"]
    assert other[0].keys == {}  # no Secure Enclave key was even made


def test_touchid_signature_checked_by_daemon(owners: OwnerRegistry,
                                             mac: tuple[FakeSecurity, FakeLocalAuthentication]
                                             ) -> None:
    verifier = _touchid(owners, mac)
    cred = verifier.enroll("this Mac")
    challenge = b"\x11" * 32
    key = next(iter(mac[0].keys.values()))
    good = key.sign(signed_message(challenge), ec.ECDSA(hashes.SHA256()))
    verify_platform_signature(cred, challenge, good)
    with pytest.raises(PresenceFailed):
        verify_platform_signature(cred, b"\x12" * 32, good)
    raw = key.sign(challenge, ec.ECDSA(hashes.SHA256()))  # no domain prefix
    with pytest.raises(PresenceFailed):
        verify_platform_signature(cred, challenge, raw)
    intruder = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(PresenceFailed):
        verify_platform_signature(
            cred, challenge, intruder.sign(signed_message(challenge), ec.ECDSA(hashes.SHA256())))


@pytest.mark.parametrize(("finger", "error"), [
    ("cancel", CeremonyCancelled), ("wrong", PresenceFailed), ("hang", CeremonyTimeout)])
def test_touchid_failures(owners: OwnerRegistry,
                          mac: tuple[FakeSecurity, FakeLocalAuthentication],
                          finger: str, error: type[Exception]) -> None:
    verifier = _touchid(owners, mac)
    verifier.enroll("this Mac")
    mac[0].finger = finger
    with pytest.raises(error):
        verifier.verify(b"\x13" * 32, timeout_s=0.3)


def test_touchid_without_enrolled_fingers(owners: OwnerRegistry,
                                          mac: tuple[FakeSecurity, FakeLocalAuthentication]
                                          ) -> None:
    mac[1].enrolled_fingers = False
    found = TouchIdVerifier.probe(SecureEnclaveKey(*mac))
    assert not found.available and "no fingerprint enrolled" in found.reason
    with pytest.raises(PresenceUnavailable, match="enrol"):
        _touchid(owners, mac).verify(b"\x14" * 32, 1)


@pytest.mark.skipif(sys.platform == "darwin", reason="checks the off-macOS answer")
def test_touchid_off_macos_says_why() -> None:
    found = TouchIdVerifier.probe()
    assert (found.available, found.reason, found.name) == (False, "Touch ID: not macOS", "touchid")


# --- Windows Hello ------------------------------------------------------------


def test_windows_hello_enrol_and_verify_through_the_relying_party(
        owners: OwnerRegistry, tmp_path: Path) -> None:
    clock = SettableClock()
    rp = RelyingParty(owners.store, owners, "pacd.localhost", "https://pacd.localhost", clock)
    hello = SoftAuthenticator()  # stands in for the platform authenticator

    def factory(origin: str) -> WebAuthnClient:
        return Fido2Client(hello, DefaultClientDataCollector(origin))

    verifier = WindowsHelloVerifier(rp, client_factory=factory)
    cred = verifier.enroll("Windows Hello")
    assert cred.kind == "platform" and cred.uv_capable
    challenge = digest({"action": "install_plugin", "nonce": "7"})
    verified = verifier.verify(challenge, timeout_s=5)
    assert verified.level == SecurityLevel.biometric and verified.user_verified
    assert verified.method == "windows-hello"
    with pytest.raises(PresenceFailed, match="already signed"):
        verifier.verify(challenge, timeout_s=5)
    hello.report_uv = False
    with pytest.raises(PresenceFailed):
        verifier.verify(digest({"action": "install_plugin", "nonce": "8"}), timeout_s=5)


@pytest.mark.skipif(sys.platform == "win32", reason="checks the off-Windows answer")
def test_windows_hello_off_windows_says_why() -> None:
    found = windows_hello_availability()
    assert (found.available, found.reason) == (False, "Windows Hello: not Windows")
