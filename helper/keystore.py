"""Secret keys in the system keyring: X25519 private keys and pre-shared keys, 32 bytes each.

Each key is one keyring item: service :data:`SERVICE`, username the ref a profile's ``[keys]``
table names (``"office.private"``), value the key in base64. Only an encrypted backend is
accepted, and only once its collection is unlocked: :class:`KeyStore` checks both when it is
created and raises :class:`KeyringUnavailable` rather than fall back to a file. On a server with
no desktop the helper gets its Secret Service from ``helper/keyring-session.sh``
(docs/KEYRING.md).

Nothing here logs a key or puts one in an error message; refs are not secret and are shown.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import time
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import keyring
from jeepney.wrappers import DBusErrorResponse
from keyring.backend import KeyringBackend
from keyring.backends.chainer import ChainerBackend
from keyring.errors import KeyringError, KeyringLocked, NoKeyringError, PasswordDeleteError
from secretstorage.exceptions import (
    ItemNotFoundException,
    LockedException,
    SecretStorageException,
)

from core.constants import KEY_LEN
from core.errors import TunsealError

__all__ = ["SERVICE", "KeyInvalid", "KeyStore", "KeyringUnavailable"]

log = logging.getLogger(__name__)

SERVICE = "tunseal"
"""The keyring service of every Tunseal item; ``secret-tool search service tunseal`` lists them
(run inside the helper's D-Bus session)."""

ENCRYPTED_BACKENDS = frozenset(
    {
        "keyring.backends.SecretService.Keyring",  # Secret Service over D-Bus (gnome-keyring)
        "keyring.backends.libsecret.Keyring",  # the same service, through libsecret
        "keyring.backends.kwallet.DBusKeyring",  # KWallet 5
        "keyring.backends.kwallet.DBusKeyringKWallet4",
    }
)
"""Backends known to keep secrets encrypted at rest. Anything else (fail, null, keyrings.alt's
files, a third-party backend) is refused: an allow-list, so an unknown store fails closed."""

_REF_RE = re.compile(r"[A-Za-z0-9._/:-]{1,128}")  # the rule core.profile applies to [keys] refs
_NO_SERVICE = frozenset({"keyring.backends.fail.Keyring", "keyring.backends.null.Keyring"})
_PROBE_REF = "(unlock probe)"  # never a valid ref, so the probe cannot read a real key

# What keyring, secretstorage and jeepney raise when the service is absent, locked or gone.
_SERVICE_ERRORS = (KeyringError, SecretStorageException, DBusErrorResponse, OSError)

_HOW = (
    "Tunseal keeps keys only in an encrypted Secret Service: install gnome-keyring, dbus and "
    "the secretstorage Python package (installers/dev-deps.sh), and run the helper through "
    "helper/keyring-session.sh, which starts an unlocked gnome-keyring-daemon (docs/KEYRING.md)."
)
_UNLOCK = (
    "Start the helper through helper/keyring-session.sh with the keyring's password file "
    "(/etc/tunseal/keyring.pass), or unlock it in the helper's D-Bus session with "
    "'gnome-keyring-daemon --unlock --components=secrets < /etc/tunseal/keyring.pass'. "
    "A keyring created with another password stays locked (docs/KEYRING.md)."
)

_P = ParamSpec("_P")
_T = TypeVar("_T")


class KeyringUnavailable(TunsealError):
    """No usable encrypted keyring: no Secret Service, a plaintext backend, a locked collection,
    or the service failed mid-call. The message says what to install, start or unlock."""


class KeyInvalid(TunsealError, ValueError):
    """A ref or key is malformed, or a stored item does not hold a base64 32-byte key."""


class KeyStore:
    """The helper's keys, in the keyring backend that was current when it was created."""

    def __init__(self, service: str = SERVICE) -> None:
        self._service = service
        self._backend = _encrypted_backend()
        # A read opens the collection; on a locked one keyring raises KeyringLocked at once.
        _call(self._backend.get_password, service, _PROBE_REF)
        log.info("keys are kept in %s, service %r", _qualname(self._backend), service)

    def __repr__(self) -> str:
        return f"KeyStore(service={self._service!r}, backend={_qualname(self._backend)!r})"

    def get(self, ref: str) -> bytes | None:
        """The key stored under ``ref``, or None if there is none."""
        _check_ref(ref)
        text = _call(self._backend.get_password, self._service, ref)
        if text is None:
            return None
        return self._decode(ref, text)

    def put(self, ref: str, secret: bytes) -> None:
        """Store ``secret`` (exactly 32 bytes) under ``ref``, replacing any previous key."""
        _check_ref(ref)
        if not isinstance(secret, bytes) or len(secret) != KEY_LEN:
            shown = f"{len(secret)} bytes" if isinstance(secret, bytes) else type(secret).__name__
            raise KeyInvalid(f"key {ref!r}: a key is exactly {KEY_LEN} bytes, not {shown}")
        value = base64.b64encode(secret).decode("ascii")
        _call(self._backend.set_password, self._service, ref, value)
        log.info("stored key %r", ref)

    def delete(self, ref: str) -> None:
        """Remove the key stored under ``ref``; a missing key is not an error."""
        _check_ref(ref)

        def attempt() -> bool:
            try:
                self._backend.delete_password(self._service, ref)
            except (PasswordDeleteError, ItemNotFoundException):
                # keyring's "no such item", or the item went away between keyring's search and
                # its delete (seen under concurrent churn): either way not deleted by us
                return False
            return True

        if not _call(attempt):  # other Secret Service failures are retried, as for get/put
            if self.get(ref) is not None:  # make sure "no such item" is what it meant
                raise KeyringUnavailable(f"key {ref!r} could not be deleted. {_HOW}")
            return
        log.info("deleted key %r", ref)

    def _decode(self, ref: str, text: str) -> bytes:
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != KEY_LEN:
            raise KeyInvalid(
                f"keyring item {ref!r} (service {self._service!r}) does not hold a base64 "
                f"{KEY_LEN}-byte key; store the key again, or remove the item with "
                f"'secret-tool clear service {self._service} username {ref}'"
            )
        return raw


_RETRY_DELAYS = (0.05, 0.15, 0.4, 1.0, 2.0)
"""gnome-keyring sometimes answers 'the default collection does not exist' for a moment while
other clients add and delete items (seen about once in 600 calls under concurrent churn), and a
daemon that exits mid-call ("Message recipient disconnected") is back, activated by the bus,
within a second or two: a bounded retry (3.6 s in all) rides both out. A locked collection is
not retried: that one is final."""


def _call(fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """``fn(*args, **kwargs)``, with keyring, D-Bus and socket errors as KeyringUnavailable."""
    for delay in (*_RETRY_DELAYS, None):
        try:
            return fn(*args, **kwargs)
        except _SERVICE_ERRORS as e:
            if delay is None or isinstance(e, KeyringLocked | LockedException | NoKeyringError):
                raise _unavailable(e) from e
            log.debug("keyring call failed (%s); retrying in %.2f s", type(e).__name__, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _encrypted_backend() -> KeyringBackend:
    """keyring's current backend, if it (or every backend it chains) is in ENCRYPTED_BACKENDS."""
    try:
        backend = keyring.get_keyring()
    except (RuntimeError, ImportError) as e:  # PYTHON_KEYRING_BACKEND/keyringrc.cfg not viable
        raise KeyringUnavailable(
            f"the configured keyring backend cannot be used: {e}. {_HOW}"
        ) from e
    chained = list(backend.backends) if isinstance(backend, ChainerBackend) else [backend]
    names = [_qualname(b) for b in chained]
    if not chained or not _NO_SERVICE.isdisjoint(names):
        raise KeyringUnavailable(
            f"no Secret Service is reachable (keyring fell back to {_qualname(backend)}). {_HOW}"
        )
    refused = [name for name in names if name not in ENCRYPTED_BACKENDS]
    if refused:
        raise KeyringUnavailable(
            f"keyring backend {', '.join(refused)} is not an encrypted store Tunseal accepts; "
            "unset PYTHON_KEYRING_BACKEND, drop 'default-keyring' from keyringrc.cfg, or "
            f"uninstall keyrings.alt. {_HOW}"
        )
    return backend


def _unavailable(e: BaseException) -> KeyringUnavailable:
    if isinstance(e, KeyringLocked | LockedException):
        return KeyringUnavailable(
            f"the keyring collection is locked, so keys cannot be read. {_UNLOCK}"
        )
    if isinstance(e, NoKeyringError):
        return KeyringUnavailable(f"no keyring backend is available. {_HOW}")
    return KeyringUnavailable(
        f"the Secret Service failed ({type(e).__name__}: {e}); is gnome-keyring-daemon running "
        f"on the helper's D-Bus session? {_HOW}"
    )


def _check_ref(ref: str) -> None:
    if not isinstance(ref, str) or not _REF_RE.fullmatch(ref):
        shown = repr(ref[:60]) if isinstance(ref, str) else type(ref).__name__
        raise KeyInvalid(
            f"{shown} is not a key ref; use 1-128 letters, digits, '.', '_', '/', ':' or '-'"
        )


def _qualname(obj: object) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"
