"""Where pacd keeps its few root secrets: the OS keychain, or an explicit passphrase file.

Two stores implement :class:`SecretStore`:

- :class:`KeyringSecretStore` talks to the OS keychain through python ``keyring``.
  It refuses every backend that would keep secrets in the clear or drop them
  (``fail``, ``null``, ``keyrings.alt`` files, anything below the priority
  keyring itself calls "recommended"), because a silent fallback would turn
  "sealed at rest" into "readable by any process of this user".
- :class:`PassphraseSecretStore` is the one documented headless option: a file
  sealed with AES-GCM under an scrypt-derived key. It is only used when the
  configuration asks for it; nothing falls back to it.

Keychain calls go to another process over D-Bus (or a platform API) and may
pop up an unlock prompt, so every call runs in its own daemon thread with a
timeout: a stuck keychain becomes :class:`~pacd.errors.KeychainLocked` instead
of a hung daemon. Daemon threads (not an executor) so a call that never
returns cannot keep the interpreter from exiting.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hashlib
import importlib
import json
import os
import stat
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from pacd.core.canonical import canonical_json
from pacd.errors import ConfigError, KeychainError, KeychainLocked, KeychainUnavailable
from pacd.private_file import write_private

if TYPE_CHECKING:
    from pacd.config import Config

T = TypeVar("T")

#: keyring documents priority >= 1 as "recommended"; below that it is a last resort
_MIN_PRIORITY = 1.0
#: backend modules that never protect a secret (they drop it, fail, or write a file)
_REFUSED_MODULES = ("keyring.backends.fail", "keyring.backends.null", "keyrings.alt")

_FIX_HINT = (
    "pacd keeps its master key only in a real OS keychain. Start and unlock a Secret "
    "Service keychain (on Linux: install and unlock gnome-keyring, e.g. "
    "`gnome-keyring-daemon --unlock --components=secrets` in your session), or choose "
    "the explicit passphrase keystore (keystore = \"passphrase\" with passphrase_file "
    "in config.toml, or PACD_KEYSTORE=passphrase and PACD_PASSPHRASE_FILE)."
)


@runtime_checkable
class SecretStore(Protocol):
    """A small synchronous name → bytes store for root secrets.

    Async callers wrap calls in ``asyncio.to_thread``: implementations may block
    (D-Bus round trips, scrypt, fsync).
    """

    @property
    def backend_name(self) -> str: ...

    def get(self, name: str) -> bytes | None: ...

    def set(self, name: str, value: bytes) -> None: ...

    def delete(self, name: str) -> None: ...


def namespace_for_home(home: Path) -> str:
    """The keychain namespace of one ``PACD_HOME``; two homes never share secrets."""
    real = os.path.realpath(home)
    return "pacd:" + hashlib.sha256(real.encode("utf-8")).hexdigest()[:16]


def _run_with_timeout(fn: Callable[[], T], timeout_s: float, what: str,
                      on_timeout: Callable[[], None] | None = None) -> T:
    """Run ``fn`` in a daemon thread; give up after ``timeout_s`` with KeychainLocked
    (calling ``on_timeout`` first, when given)."""
    outcome: list[Any] = []
    done = threading.Event()

    def worker() -> None:
        try:
            outcome.append((True, fn()))
        except BaseException as exc:
            outcome.append((False, exc))
        finally:
            done.set()

    threading.Thread(target=worker, name="pacd-keychain", daemon=True).start()
    if not done.wait(timeout_s):
        if on_timeout is not None:
            on_timeout()
        raise KeychainLocked(
            f"the keychain did not answer {what} within {timeout_s:g} s; it may be locked "
            "or waiting for an unlock prompt nobody can see. Unlock it and retry."
        )
    ok, value = outcome[0]
    if ok:
        return value  # type: ignore[no-any-return]
    raise value


def _translate(exc: BaseException, what: str) -> KeychainError:
    """Map keyring / secretstorage / D-Bus failures onto pacd's keychain errors."""
    if isinstance(exc, KeychainError):
        return exc
    module = type(exc).__module__ or ""
    name = type(exc).__name__
    detail = f"{name}: {exc}" if str(exc) else name
    if name == "SecretServiceNotAvailableException":
        return KeychainUnavailable(f"keychain {what} failed: {detail}. {_FIX_HINT}")
    locked_names = {
        "KeyringLocked",
        "InitError",
        "LockedException",
        "PromptDismissedException",
        "DBusErrorResponse",
    }
    if name in locked_names or module.startswith(("jeepney", "secretstorage", "dbus")):
        return KeychainLocked(
            f"keychain {what} failed ({detail}); the keychain is locked or its unlock "
            "prompt was dismissed. Unlock it and retry."
        )
    return KeychainError(f"keychain {what} failed: {detail}")


def _backend_label(backend: Any) -> str:
    cls = type(backend)
    return f"{cls.__module__}.{cls.__name__}"


def _refusal(backend: Any) -> str | None:
    """Why ``backend`` must not hold pacd's secrets, or None when it may."""
    module = type(backend).__module__ or ""
    label = _backend_label(backend)
    if module.startswith(_REFUSED_MODULES):
        return f"keyring chose {label}, which does not keep secrets in a protected keychain"
    try:
        priority = float(type(backend).priority)
    except Exception as exc:
        return f"keyring backend {label} is not usable here ({exc})"
    if priority < _MIN_PRIORITY:
        return f"keyring chose {label} with priority {priority:g}, below the recommended 1"
    return None


def select_backend(candidate: Any) -> Any:
    """The backend pacd will use given keyring's choice, or KeychainUnavailable.

    A chainer is unwrapped to its best acceptable member: letting the chainer
    decide per call could write to a plaintext member when the keychain hiccups.
    """
    module = type(candidate).__module__ or ""
    if module.startswith("keyring.backends.chainer"):
        members = list(getattr(candidate, "backends", []) or [])
        reasons = []
        for member in members:
            why = _refusal(member)
            if why is None:
                return member
            reasons.append(why)
        found = "; ".join(reasons) if reasons else "keyring found no backend at all"
        raise KeychainUnavailable(f"no secure keychain: {found}. {_FIX_HINT}")
    why = _refusal(candidate)
    if why is not None:
        raise KeychainUnavailable(f"no secure keychain: {why}. {_FIX_HINT}")
    return candidate


#: keyring's own backends for the keychains of each platform; any other platform is
#: taken for a freedesktop one (the Secret Service directly or through libsecret,
#: KWallet where dbus-python is installed). On each, keyring's discovery finds these
#: same ones viable, plus any third-party plugin, which therefore needs an explicit
#: configuration here.
_NATIVE_BACKENDS = {
    "darwin": ("keyring.backends.macOS.Keyring",),
    "win32": ("keyring.backends.Windows.WinVaultKeyring",),
}
_FREEDESKTOP_BACKENDS = (
    "keyring.backends.SecretService.Keyring",
    "keyring.backends.libsecret.Keyring",
    "keyring.backends.kwallet.DBusKeyring",
    "keyring.backends.kwallet.DBusKeyringKWallet4",
)


def _native_backend() -> Any:
    """The most preferred viable backend of this platform's keychains (keyring's rule:
    highest priority wins), or KeychainUnavailable saying why each is unusable."""
    reasons: list[str] = []
    best: tuple[float, Any] | None = None
    for name in _NATIVE_BACKENDS.get(sys.platform, _FREEDESKTOP_BACKENDS):
        module_name, _, class_name = name.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
            # keyring's viability test: a backend that cannot work here raises.
            priority = float(cls.priority)
        except Exception as exc:
            reasons.append(f"{name} is not usable here ({type(exc).__name__}: {exc})")
            continue
        if best is None or priority > best[0]:
            best = (priority, cls)
    if best is None:
        raise KeychainUnavailable(f"no secure keychain: {'; '.join(reasons)}. {_FIX_HINT}")
    return best[1]()


@functools.cache
def keyring_backend() -> Any:
    """The keyring backend pacd uses for this machine's keychain, vetted by
    :func:`select_backend` (KeychainUnavailable when none may be used).

    An explicit keyring configuration (``PYTHON_KEYRING_BACKEND``, keyring's
    ``keyringrc.cfg``) is used as keyring itself uses it. Otherwise the choice is
    among keyring's backends for this platform, instead of keyring's discovery:
    that imports every installed backend through an entry-point scan (on Linux
    its macOS backend runs ldconfig and gcc looking for a Security framework),
    60-90 ms of a daemon start. A third-party backend therefore needs the
    explicit configuration. Vetted here rather than by the caller so that the
    vetting's own round trip (a backend's priority asks D-Bus whether its
    service is there, 15-30 ms) runs in start_backend_discovery's thread too.
    Cached: one answer per process; a failure is not cached, so the store asks
    again and reports it.
    """
    import keyring.core

    configured = keyring.core.load_env() or keyring.core.load_config()
    return select_backend(configured if configured is not None else _native_backend())


class _Discovery:
    """The keychain's backend chosen ahead of need (start_backend_discovery)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._discover,
                                                name="pacd-keychain-discovery", daemon=True)
                self._thread.start()

    @staticmethod
    def _discover() -> None:
        with contextlib.suppress(Exception):  # asked again, and reported, by the store
            keyring_backend()

    def wait(self) -> None:
        """Until a started discovery has finished (at once when none was started)."""
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join()


_DISCOVERY = _Discovery()


def start_backend_discovery() -> None:
    """Choose the keychain's backend in a background thread, now.

    The choice imports keyring and its backend and asks D-Bus whether the
    keychain is there, twice (choosing, then vetting: tens of milliseconds); the
    daemon starts this before importing its own modules so the two overlap.
    Only a vetted choice is kept (:func:`keyring_backend`):
    :class:`KeyringSecretStore` waits for it and takes it, and a refused or
    failed choice is simply made again there, where its error is reported.
    """
    _DISCOVERY.start()


class _Turn:
    """One keychain call's place in :class:`_Turns`."""

    __slots__ = ("given_up",)

    def __init__(self) -> None:
        self.given_up = False


class _Turns:
    """This process's keychain calls, one at a time.

    gnome-keyring answers "no such object" now and then when calls of its clients
    overlap: a read during another thread's replace of another item failed about
    once in 3,000 calls with three threads, and none in 6,000 made one at a time
    (the audit checkpoint's writes run beside requests' reads). Its default
    collection can vanish the same way; keyring then asks to create one (a prompt
    on a desktop, "prompt dismissed" without one), which is not retried here.

    A call whose caller gave up (its timeout) gives its turn away at once, so a
    call that never returns (an unlock prompt nobody answers) does not shut every
    later one out until the daemon restarts: overlapping with a call that is as
    good as dead is the lesser harm. A call given up before its turn came is
    never made: its caller was told it failed.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._holder: _Turn | None = None

    def take(self, turn: _Turn, deadline: float) -> bool:
        """Wait for ``turn`` to come; False if given up or past ``deadline`` first."""
        with self._cond:
            while self._holder is not None and not turn.given_up:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            if turn.given_up or time.monotonic() >= deadline:
                return False
            self._holder = turn
            return True

    def end(self, turn: _Turn) -> None:
        with self._cond:
            if self._holder is turn:
                self._holder = None
                self._cond.notify_all()

    def give_up(self, turn: _Turn) -> None:
        """The caller of ``turn`` timed out: not made if not begun, and not waited for."""
        with self._cond:
            turn.given_up = True
            if self._holder is turn:
                self._holder = None
            self._cond.notify_all()


_TURNS = _Turns()
#: a call that meets a vanished object (ItemNotFoundException), as an overlap with
#: another process's call can still make it, is made again, up to this many times
#: in all: each is a whole search-then-act (get, create with replace, delete of
#: what a search finds), so asking again cannot turn an answer into another.
_VANISHED_ATTEMPTS = 3


def _vanished(exc: Exception) -> bool:
    return (type(exc).__name__ == "ItemNotFoundException"
            and (type(exc).__module__ or "").startswith("secretstorage"))


class KeyringSecretStore:
    """Secrets in the OS keychain, namespaced per ``PACD_HOME``.

    ``backend`` is for callers that already hold a keyring backend instance (it
    is vetted by :func:`select_backend`); by default :func:`keyring_backend`
    chooses, vetted the same way.
    """

    def __init__(self, namespace: str, timeout_s: float = 10.0, backend: Any = None) -> None:
        if not namespace:
            raise ValueError("keychain namespace must not be empty")
        self.namespace = namespace
        self.timeout_s = timeout_s

        def choose() -> Any:
            # Bounded like the rest: this runs under _run_with_timeout.
            _DISCOVERY.wait()
            return select_backend(backend) if backend is not None else keyring_backend()

        try:
            self._backend = _run_with_timeout(choose, timeout_s, "backend discovery")
        except KeychainError:
            raise
        except Exception as exc:
            raise _translate(exc, "backend discovery") from exc

    @property
    def backend_name(self) -> str:
        return _backend_label(self._backend)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        turn = _Turn()
        # One deadline for both: a call whose turn comes after its caller gave up
        # must not be made (the caller has reported it failed).
        deadline = time.monotonic() + self.timeout_s

        def one_at_a_time() -> T:
            if not _TURNS.take(turn, deadline):
                raise KeychainLocked(
                    f"an earlier keychain call did not finish in time; {what} was not tried")
            try:
                for _ in range(_VANISHED_ATTEMPTS - 1):
                    try:
                        return fn()
                    except Exception as exc:
                        if not _vanished(exc):
                            raise
                return fn()
            finally:
                _TURNS.end(turn)

        try:
            return _run_with_timeout(one_at_a_time, self.timeout_s, what,
                                     on_timeout=lambda: _TURNS.give_up(turn))
        except KeychainError:
            raise
        except Exception as exc:
            raise _translate(exc, what) from exc

    def get(self, name: str) -> bytes | None:
        text = self._call("read", lambda: self._backend.get_password(self.namespace, name))
        if text is None:
            return None
        try:
            return base64.b64decode(str(text).encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError) as exc:
            raise KeychainError(
                f"keychain entry {name!r} of {self.namespace} is not in pacd's format"
            ) from exc

    def set(self, name: str, value: bytes) -> None:
        text = base64.b64encode(value).decode("ascii")
        self._call("write", lambda: self._backend.set_password(self.namespace, name, text))

    def delete(self, name: str) -> None:
        """Remove ``name``; removing an absent entry is not an error."""
        from keyring.errors import PasswordDeleteError

        def remove() -> None:
            with contextlib.suppress(PasswordDeleteError):
                self._backend.delete_password(self.namespace, name)

        self._call("delete", remove)


# --- passphrase keystore ----------------------------------------------------

_SCRYPT_N = 2**15
_SCRYPT_R = 8
_SCRYPT_P = 1
_FORMAT = "pacd-passphrase-keystore"


def _scrypt(passphrase: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase)


class PassphraseSecretStore:
    """Secrets in one file sealed with AES-256-GCM under scrypt(passphrase).

    The header (format, KDF parameters, salt) is the AAD, so weakening the KDF
    parameters in the file makes it fail to open rather than easier to attack.
    Writes are atomic and go only where meant: an exclusive ``O_EXCL|O_NOFOLLOW``
    temporary file of an unguessable name, fsync, rename, fsync of the directory
    (:func:`pacd.private_file.write_private`, as the client's token cache).
    """

    def __init__(self, path: Path, passphrase: bytes) -> None:
        if not passphrase:
            raise ConfigError("the passphrase keystore needs a non-empty passphrase")
        self.path = Path(path)
        self._lock = threading.Lock()
        self._secrets: dict[str, bytes] = {}
        if self.path.exists():
            self._header, self._key = self._load(passphrase)
        else:
            self._header = {
                "format": _FORMAT,
                "version": 1,
                "kdf": {
                    "name": "scrypt",
                    "n": _SCRYPT_N,
                    "r": _SCRYPT_R,
                    "p": _SCRYPT_P,
                    "salt": base64.b64encode(os.urandom(16)).decode("ascii"),
                },
            }
            self._key = _scrypt(passphrase, base64.b64decode(self._header["kdf"]["salt"]),
                                _SCRYPT_N, _SCRYPT_R, _SCRYPT_P)

    @property
    def backend_name(self) -> str:
        return f"passphrase file {self.path}"

    def _load(self, passphrase: bytes) -> tuple[dict[str, Any], bytes]:
        damaged = KeychainError(f"passphrase keystore {self.path} is damaged or not a keystore")
        try:
            doc = json.loads(self.path.read_bytes())
        except OSError as exc:
            raise KeychainError(f"cannot read passphrase keystore {self.path}: {exc}") from exc
        except ValueError as exc:
            raise damaged from exc
        try:
            header = doc["header"]
            kdf = header["kdf"]
            if header["format"] != _FORMAT or header["version"] != 1 or kdf["name"] != "scrypt":
                raise damaged
            n, r, p = int(kdf["n"]), int(kdf["r"]), int(kdf["p"])
            if n < _SCRYPT_N or r < _SCRYPT_R or p < _SCRYPT_P:
                raise damaged
            salt = base64.b64decode(kdf["salt"], validate=True)
            nonce = base64.b64decode(doc["nonce"], validate=True)
            sealed = base64.b64decode(doc["ciphertext"], validate=True)
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise damaged from exc
        key = _scrypt(passphrase, salt, n, r, p)
        try:
            plain = AESGCM(key).decrypt(nonce, sealed, canonical_json(header))
        except InvalidTag:
            raise KeychainLocked(
                f"passphrase keystore {self.path}: wrong passphrase (or the file was altered)"
            ) from None
        entries = json.loads(plain)
        self._secrets = {k: base64.b64decode(v) for k, v in entries.items()}
        return header, key

    def _save(self) -> None:
        nonce = os.urandom(12)
        plain = canonical_json(
            {k: base64.b64encode(v).decode("ascii") for k, v in self._secrets.items()}
        )
        sealed = AESGCM(self._key).encrypt(nonce, plain, canonical_json(self._header))
        doc = canonical_json({
            "header": self._header,
            "nonce": base64.b64encode(nonce).decode("ascii"),
            "ciphertext": base64.b64encode(sealed).decode("ascii"),
        })
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            write_private(self.path, doc, sync_dir=True)
        except OSError as exc:
            raise KeychainError(f"cannot write passphrase keystore {self.path}: {exc}") from exc

    def get(self, name: str) -> bytes | None:
        with self._lock:
            return self._secrets.get(name)

    def set(self, name: str, value: bytes) -> None:
        with self._lock:
            previous = self._secrets.get(name)
            self._secrets[name] = bytes(value)
            try:
                self._save()
            except BaseException:
                if previous is None:
                    self._secrets.pop(name, None)
                else:
                    self._secrets[name] = previous
                raise

    def delete(self, name: str) -> None:
        with self._lock:
            previous = self._secrets.pop(name, None)
            if previous is None:
                return
            try:
                self._save()
            except BaseException:
                self._secrets[name] = previous
                raise


def _read_passphrase(path: Path) -> bytes:
    try:
        info = path.stat()
    except OSError as exc:
        raise ConfigError(f"cannot read passphrase_file {path}: {exc}") from exc
    if info.st_mode & 0o077:
        raise ConfigError(
            f"passphrase_file {path} is readable by other users (mode "
            f"{stat.S_IMODE(info.st_mode):o}); run `chmod 600 {path}`"
        )
    passphrase = path.read_bytes().rstrip(b"\r\n")
    if not passphrase:
        raise ConfigError(f"passphrase_file {path} is empty")
    return passphrase


def open_secret_store(config: Config) -> SecretStore:
    """The secret store the configuration names; never a silent fallback."""
    if config.keystore == "keychain":
        return KeyringSecretStore(namespace_for_home(config.home), config.keychain_timeout_s)
    if config.keystore == "passphrase":
        if config.passphrase_file is None:
            raise ConfigError("keystore 'passphrase' needs passphrase_file (PACD_PASSPHRASE_FILE)")
        return PassphraseSecretStore(
            config.home / "keystore.sealed", _read_passphrase(config.passphrase_file)
        )
    raise ConfigError(f"keystore must be 'keychain' or 'passphrase', got {config.keystore!r}")
