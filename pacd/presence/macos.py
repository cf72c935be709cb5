"""Touch ID on macOS: a Secure Enclave key that only signs after a fingerprint.

Enrolment creates a P-256 key inside the Secure Enclave with the access control
``PrivateKeyUsage | BiometryCurrentSet``: the private key never leaves the
chip, and every signature needs a fingerprint currently enrolled on this Mac
(enrolling a new finger invalidates the key, so someone who learns the login
password cannot add their own). pacd stores only the public key, as a
``platform`` credential, and verifies each signature with ``cryptography``
like any other credential.

The pyobjc modules (``Security``, ``LocalAuthentication``) are the OS
boundary; they are passed in so the code path can be exercised off macOS.
"""

from __future__ import annotations

import hashlib
import sys
import threading
from typing import Any

from pacd.core.models import SecurityLevel
from pacd.errors import (
    CeremonyCancelled,
    CeremonyTimeout,
    PresenceFailed,
    PresenceRequired,
    PresenceUnavailable,
)
from pacd.presence.clock import Clock
from pacd.presence.evidence import VerifiedPresence
from pacd.presence.owner import Credential, OwnerRegistry
from pacd.presence.verifiers import Availability

KEY_TAG = b"org.pacd.presence.touchid"
#: what is actually signed: a fixed prefix, so the key signs nothing but pacd challenges
SIGNED_PREFIX = b"pacd touchid presence v1\x00"
NO_AAGUID = b"\x00" * 16
# LAError codes (LocalAuthentication/LAError.h)
_LA_USER_CANCEL = -2
_LA_SYSTEM_CANCEL = -4
_LA_APP_CANCEL = -9
_LA_BIOMETRY_NOT_AVAILABLE = -6
_LA_BIOMETRY_NOT_ENROLLED = -7


def signed_message(challenge: bytes) -> bytes:
    return SIGNED_PREFIX + challenge


def credential_id_for(public_key_x963: bytes) -> bytes:
    return b"touchid:" + hashlib.sha256(public_key_x963).digest()[:16]


def _load_pyobjc() -> tuple[Any, Any]:
    if sys.platform != "darwin":
        raise PresenceUnavailable("Touch ID: not macOS")
    try:
        import LocalAuthentication
        import Security
    except ImportError as exc:
        raise PresenceUnavailable(
            "Touch ID: pyobjc is not installed (pip install pyobjc-framework-Security"
            " pyobjc-framework-LocalAuthentication)"
        ) from exc
    return Security, LocalAuthentication


class SecureEnclaveKey:
    """The owner's Touch ID key in the Secure Enclave (the OS side)."""

    def __init__(self, security: Any = None, local_auth: Any = None, tag: bytes = KEY_TAG) -> None:
        if security is None or local_auth is None:
            security, local_auth = _load_pyobjc()
        self.sec = security
        self.la = local_auth
        self.tag = tag

    def biometry_available(self) -> tuple[bool, str]:
        context = self.la.LAContext.alloc().init()
        ok, error = context.canEvaluatePolicy_error_(
            self.la.LAPolicyDeviceOwnerAuthenticationWithBiometrics, None
        )
        if ok:
            return True, "Touch ID ready"
        code = error.code() if error is not None else 0
        if code == _LA_BIOMETRY_NOT_ENROLLED:
            return False, "Touch ID: no fingerprint enrolled (System Settings > Touch ID)"
        if code == _LA_BIOMETRY_NOT_AVAILABLE:
            return False, "Touch ID: no biometric sensor on this Mac"
        return False, f"Touch ID unavailable (LAError {code})"

    def create(self) -> bytes:
        """Create the key; returns its public key (X9.63 uncompressed point)."""
        access, error = self.sec.SecAccessControlCreateWithFlags(
            None,
            self.sec.kSecAttrAccessibleWhenUnlockedThisDeviceOnly,
            self.sec.kSecAccessControlPrivateKeyUsage
            | self.sec.kSecAccessControlBiometryCurrentSet,
            None,
        )
        if access is None:
            raise PresenceUnavailable(f"Touch ID: cannot create access control ({_code(error)})")
        attributes = {
            self.sec.kSecAttrKeyType: self.sec.kSecAttrKeyTypeECSECPrimeRandom,
            self.sec.kSecAttrKeySizeInBits: 256,
            self.sec.kSecAttrTokenID: self.sec.kSecAttrTokenIDSecureEnclave,
            self.sec.kSecPrivateKeyAttrs: {
                self.sec.kSecAttrIsPermanent: True,
                self.sec.kSecAttrApplicationTag: self.tag,
                self.sec.kSecAttrAccessControl: access,
            },
        }
        key, error = self.sec.SecKeyCreateRandomKey(attributes, None)
        if key is None:
            raise PresenceUnavailable(
                f"Touch ID: the Secure Enclave refused to create a key ({_code(error)})"
            )
        return self._public_bytes(key)

    def sign(self, message: bytes, reason: str, timeout_s: float) -> bytes:
        """Ask for a fingerprint and sign ``message`` (ECDSA P-256 / SHA-256, DER)."""
        context = self.la.LAContext.alloc().init()
        context.setLocalizedReason_(reason)
        key = self._private_key(context)
        outcome: dict[str, Any] = {}

        def run() -> None:
            outcome["result"] = self.sec.SecKeyCreateSignature(
                key, self.sec.kSecKeyAlgorithmECDSASignatureMessageX962SHA256, message, None
            )

        worker = threading.Thread(target=run, name="touchid-sign", daemon=True)
        worker.start()
        worker.join(timeout_s)
        if worker.is_alive():
            context.invalidate()  # dismisses the system prompt; the call then fails
            worker.join(5)
            raise CeremonyTimeout("Touch ID was not used in time")
        signature, error = outcome["result"]
        if signature is None:
            code = _code(error)
            if code in (_LA_USER_CANCEL, _LA_SYSTEM_CANCEL, _LA_APP_CANCEL):
                raise CeremonyCancelled("Touch ID was cancelled")
            raise PresenceFailed(f"Touch ID did not verify you (error {code})")
        return bytes(signature)

    def public_key(self) -> bytes | None:
        context = self.la.LAContext.alloc().init()
        context.setInteractionNotAllowed_(True)
        try:
            key = self._private_key(context)
        except PresenceUnavailable:
            return None
        return self._public_bytes(key)

    def _private_key(self, context: Any) -> Any:
        query = {
            self.sec.kSecClass: self.sec.kSecClassKey,
            self.sec.kSecAttrApplicationTag: self.tag,
            self.sec.kSecAttrKeyType: self.sec.kSecAttrKeyTypeECSECPrimeRandom,
            self.sec.kSecReturnRef: True,
            self.sec.kSecUseAuthenticationContext: context,
        }
        status, key = self.sec.SecItemCopyMatching(query, None)
        if status != 0 or key is None:
            raise PresenceUnavailable("Touch ID: no pacd key in the Secure Enclave; enrol first")
        return key

    def _public_bytes(self, key: Any) -> bytes:
        public = self.sec.SecKeyCopyPublicKey(key)
        data, error = self.sec.SecKeyCopyExternalRepresentation(public, None)
        if data is None:
            raise PresenceUnavailable(f"Touch ID: cannot read the public key ({_code(error)})")
        return bytes(data)


def cose_from_x963(public_key_x963: bytes) -> bytes:
    # python-fido2 and cryptography's EC: loaded by a Touch ID enrolment, not at start
    from cryptography.hazmat.primitives.asymmetric import ec
    from fido2 import cbor
    from fido2.cose import ES256

    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), public_key_x963)
    cose: Any = ES256.from_cryptography_key(public)  # type: ignore[no-untyped-call]
    return cbor.encode(dict(cose))


def verify_platform_signature(credential: Credential, challenge: bytes, signature: bytes) -> None:
    """Daemon side: the enrolled public key signed this challenge (raises PresenceFailed)."""
    if credential.kind != "platform":
        raise PresenceFailed("not a platform credential")
    from cryptography.exceptions import InvalidSignature

    try:
        credential.cose_key().verify(signed_message(challenge), signature)
    except (InvalidSignature, ValueError) as exc:
        raise PresenceFailed("Touch ID signature did not verify") from exc


class TouchIdVerifier:
    name = "touchid"

    def __init__(
        self, owners: OwnerRegistry, clock: Clock, key: SecureEnclaveKey | None = None
    ) -> None:
        self.owners = owners
        self.clock = clock
        self._key = key

    @property
    def key(self) -> SecureEnclaveKey:
        if self._key is None:
            self._key = SecureEnclaveKey()
        return self._key

    @classmethod
    def probe(cls, key: SecureEnclaveKey | None = None) -> Availability:
        """Whether Touch ID can be used on this machine at all."""
        try:
            ok, reason = (key or SecureEnclaveKey()).biometry_available()
        except PresenceUnavailable as exc:
            return Availability(False, exc.message, cls.name)
        return Availability(ok, reason, cls.name)

    def availability(self) -> Availability:
        found = self.probe(self._key)
        if not found.available:
            return found
        if self._enrolled() is None:
            return Availability(
                False, "Touch ID ready but not enrolled: run pacd enroll", self.name
            )
        return found

    def enroll(self, label: str) -> Credential:
        """Enrol this Mac's key as the owner's first credential.

        Any later key is added only by a ``credential.add`` approval signed by an
        enrolled one (see :mod:`pacd.api.resources.owner`), never directly here.
        """
        if self.owners.has_credentials():
            raise PresenceRequired(
                "a key is already enrolled: another one is added only by an approval "
                "signed by an enrolled key (carbonProof)",
                required_level=SecurityLevel.carbonProof.value)
        public = self.key.create()
        return self.owners.add_credential(
            Credential(
                credential_id=credential_id_for(public),
                public_key=cose_from_x963(public),
                sign_count=0,
                aaguid=NO_AAGUID,
                uv_capable=True,
                label=label,
                created_at=self.clock.wall(),
                kind="platform",
            )
        )

    def verify(self, challenge: bytes, timeout_s: float) -> VerifiedPresence:
        public = self.key.public_key()
        if public is None:
            raise PresenceUnavailable("Touch ID: no pacd key in the Secure Enclave; enrol first")
        credential = self.owners.find_credential(credential_id_for(public))
        if credential is None:
            raise PresenceUnavailable("Touch ID key is not enrolled with pacd: run pacd enroll")
        signature = self.key.sign(signed_message(challenge), "confirm it is you", timeout_s)
        verify_platform_signature(credential, challenge, signature)
        return VerifiedPresence(
            level=SecurityLevel.biometric,
            credential_id=credential.credential_id,
            user_present=True,
            user_verified=True,
            method="touchid",
            challenge=challenge,
        )

    def _enrolled(self) -> Credential | None:
        public = self.key.public_key()
        return None if public is None else self.owners.find_credential(credential_id_for(public))


def _code(error: Any) -> int:
    try:
        return int(error.code()) if error is not None else 0
    except (AttributeError, TypeError, ValueError):
        return 0
