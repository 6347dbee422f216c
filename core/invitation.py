"""One-time invitations to an office gateway: the text an admin hands a user (docs/GATEWAY.md).

``tunseal peer invite NAME`` prints ``tunseal1:`` followed by the base64url (no padding) of a
compact, versioned record: the gateway's static public key and endpoint, the address the laptop
will get, an invitation ID, a 16-byte single-use secret and the expiry, closed by a 4-byte
checksum so a character lost in copying is reported as damage, not as a refusal. The layout is
docs/PROTOCOL.md section 17.1.

The secret never leaves the laptop in any form an eavesdropper could reuse: it seeds an Ed25519
key pair, the laptop signs its enrolment with the private half, and the gateway keeps only the
public half (:func:`verify_key`), so even a copy of the gateway's whole state cannot forge an
enrolment.
"""

from __future__ import annotations

import base64
import os
import struct
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from core.errors import TunsealError

__all__ = [
    "ID_LEN",
    "PREFIX",
    "SECRET_LEN",
    "Invitation",
    "InvitationError",
    "decode",
    "encode",
    "sign",
    "verify",
    "verify_key",
]

PREFIX: Final = "tunseal1:"
VERSION: Final = 1
"""The first byte of the record; a reader refuses any other (the format may grow fields)."""
KEY_LEN: Final = 32
ID_LEN: Final = 8
"""Invitation IDs are random: they name an invitation in the gateway's store, nothing more."""
SECRET_LEN: Final = 16
"""128 bits: as hard to guess as a key, and short enough for a QR code and a chat message."""
CHECK_LEN: Final = 4
MAX_TEXT: Final = 1024
MAX_FIELD: Final = 255
_FIXED = struct.Struct("!B32s8s16sIH")
_LABEL_SIGNING = b"tunseal invitation signing key v1"


class InvitationError(TunsealError):
    """An invitation text that cannot be used as it is: not one, damaged, or unsupported."""


@dataclass(frozen=True, slots=True)
class Invitation:
    gateway_public: bytes
    invitation_id: bytes
    secret: bytes
    expires: int
    """Unix seconds (UTC), by the gateway's clock."""
    host: str
    port: int
    gateway: str
    """The gateway's name: the profile the laptop creates is called so by default."""
    address: str
    """The laptop's tunnel address (CIDR), as the gateway will assign it."""

    def __repr__(self) -> str:
        return (f"Invitation(gateway={self.gateway!r}, id={self.invitation_id.hex()}, "
                f"address={self.address!r}, secret=<secret>)")

    @property
    def endpoint(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def id_text(self) -> str:
        return self.invitation_id.hex()


def new_secret() -> bytes:
    return os.urandom(SECRET_LEN)


def new_id() -> bytes:
    return os.urandom(ID_LEN)


def _checksum(body: bytes) -> bytes:
    h = hashes.Hash(hashes.BLAKE2s(32))
    h.update(body)
    return h.finalize()[:CHECK_LEN]


def _text_field(what: str, value: str) -> bytes:
    raw = value.encode("utf-8")
    if not raw or len(raw) > MAX_FIELD:
        raise InvitationError(f"invitation {what} must be 1-{MAX_FIELD} bytes of UTF-8")
    return bytes([len(raw)]) + raw


def encode(inv: Invitation) -> str:
    """The invitation as text: ``tunseal1:`` + base64url of the record."""
    if len(inv.gateway_public) != KEY_LEN or len(inv.invitation_id) != ID_LEN \
            or len(inv.secret) != SECRET_LEN:
        raise InvitationError("invitation key, ID or secret has the wrong length")
    if not 0 <= inv.expires < 1 << 32 or not 1 <= inv.port <= 65535:
        raise InvitationError("invitation expiry or port out of range")
    body = _FIXED.pack(VERSION, inv.gateway_public, inv.invitation_id, inv.secret, inv.expires,
                       inv.port)
    body += _text_field("host", inv.host) + _text_field("gateway name", inv.gateway) \
        + _text_field("address", inv.address)
    raw = body + _checksum(body)
    return PREFIX + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode(text: str) -> Invitation:
    """Parse an invitation text (whitespace anywhere is ignored: terminals wrap long lines).
    Raises InvitationError with what is wrong and what to do."""
    compact = "".join(text.split())
    if len(compact) > MAX_TEXT:
        raise InvitationError(f"this is longer than any invitation ({MAX_TEXT} characters at "
                              "most): paste only the line starting with 'tunseal1:'")
    if not compact.lower().startswith(PREFIX):
        raise InvitationError("this is not a Tunseal invitation: one starts with 'tunseal1:' "
                              "(ask the gateway's admin for 'tunseal peer invite NAME')")
    payload = compact[len(PREFIX):]
    try:
        raw = base64.b64decode(payload + "=" * (-len(payload) % 4), altchars=b"-_",
                               validate=True)
    except ValueError:
        raw = b""
    if base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=") != payload:
        # Characters an invitation never has, or spare bits set in the last one.
        raise InvitationError("the invitation is damaged: it holds characters an invitation "
                              "never has; copy it again, whole")
    if len(raw) < _FIXED.size + 3 + CHECK_LEN:
        raise InvitationError("the invitation is cut short; copy it again, whole")
    body, check = raw[:-CHECK_LEN], raw[-CHECK_LEN:]
    if _checksum(body) != check:
        raise InvitationError("the invitation is damaged (its checksum does not match): a "
                              "character was changed or lost; copy it again, whole")
    if body[0] != VERSION:
        raise InvitationError(f"this invitation has format version {body[0]}, which this "
                              "Tunseal does not know; update Tunseal")
    _, public, inv_id, secret, expires, port = _FIXED.unpack_from(body)
    fields: list[str] = []
    off = _FIXED.size
    for what in ("host", "gateway name", "address"):
        if off >= len(body) or off + 1 + body[off] > len(body) or body[off] == 0:
            raise InvitationError(f"the invitation's {what} is cut short or empty")
        try:
            fields.append(body[off + 1:off + 1 + body[off]].decode("utf-8"))
        except UnicodeDecodeError:
            raise InvitationError(f"the invitation's {what} is not UTF-8") from None
        off += 1 + body[off]
    if off != len(body):
        raise InvitationError("the invitation has bytes after its last field")
    if port == 0:
        raise InvitationError("the invitation names port 0")
    return Invitation(public, inv_id, secret, expires, fields[0], port, fields[1], fields[2])


def _signing_key(secret: bytes) -> Ed25519PrivateKey:
    h = hashes.Hash(hashes.BLAKE2s(32))
    h.update(_LABEL_SIGNING)
    h.update(secret)
    return Ed25519PrivateKey.from_private_bytes(h.finalize())


def verify_key(secret: bytes) -> bytes:
    """The public half of the invitation's signing key: what the gateway keeps to verify an
    enrolment. Not secret; it cannot sign."""
    return _signing_key(secret).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def sign(secret: bytes, message: bytes) -> bytes:
    """A 64-byte Ed25519 signature proving knowledge of ``secret``."""
    return _signing_key(secret).sign(message)


def verify(verify_key_raw: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(verify_key_raw).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def parse_duration(text: str) -> int:
    """'90s', '30m', '24h', '7d' (or bare seconds) -> seconds; at least 1 s, at most 30 days."""
    t = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    scale = units.get(t[-1:], 0)
    number = t[:-1] if scale else t
    if not number.isdigit():
        raise InvitationError(f"{text!r} is not a duration: use e.g. 90s, 30m, 24h or 7d")
    seconds = int(number) * (scale or 1)
    if not 1 <= seconds <= 30 * 86400:
        raise InvitationError("an invitation expires after 1 s to 30 days")
    return seconds
