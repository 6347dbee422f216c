"""Enrolment: a laptop registers its own new public key with a gateway, by an invitation.

Two packet types on the tunnel's own port (docs/PROTOCOL.md section 17): ENROL (TYPE 7) from
the laptop, ENROL_REPLY (TYPE 8) from the gateway. They run Noise IK with the laptop's freshly
generated static key and the gateway's static key from the invitation, under a prologue of
their own (so neither message is ever a valid tunnel handshake): the gateway is authenticated by
``es``, the laptop proves it holds its private key by ``ss``, and the request carries an
Ed25519 signature made with the key the invitation's secret seeds, which the gateway checks
against the public half it kept. The reply is the second IK message, so a refusal is as
authenticated as an acceptance: nobody on the path can make a laptop believe its invitation was
refused. Neither side ever sends the laptop's private key or the invitation's secret.

No I/O here: :class:`Attempt` is the laptop's side of one try, :class:`EnrolGate` the gateway's
receive path, which asks a :class:`Registrar` (helper/enrolment.py) for the verdict.
"""

from __future__ import annotations

import hmac
import ipaddress
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Final, Protocol

from core import invitation as invitation_format
from core import noise
from core.constants import LABEL_MAC1, TAG_LEN, TIMESTAMP_LEN, Option, PacketType
from core.errors import CryptoError, HandshakeError, WireError
from core.handshake import FloodGuard, _build, blake2s, parse_handshake, tai64n, verify_mac1
from core.invitation import Invitation
from core.responder import Refused

__all__ = [
    "PROLOGUE",
    "REQUEST_PAYLOAD_LEN",
    "Accepted",
    "Attempt",
    "Code",
    "EnrolGate",
    "Enrolment",
    "Registrar",
    "Verdict",
]

PROLOGUE: Final = b"Tunseal v1|enrol"
"""Mixed into both enrolment messages: unlike any tunnel handshake's prologue, so an ENROL is
never a valid initiation nor the other way round, whatever the type nibble says."""
PATTERN: Final = "IK"
NOISE_CIPHER: Final = "ChaChaPoly"
"""Fixed, whatever the gateway's data cipher: the laptop does not know that one yet."""
SIGNATURE_LEN: Final = 64
REQUEST_PAYLOAD_LEN: Final = TIMESTAMP_LEN + invitation_format.ID_LEN + SIGNATURE_LEN
"""Message 1 plaintext: TAI64N (12) || invitation ID (8) || Ed25519 signature (64) = 84."""
REQUEST_MESSAGE_LEN: Final = 32 + (32 + TAG_LEN) + (REQUEST_PAYLOAD_LEN + TAG_LEN)
"""Noise message 1: e (32) || encrypted s (48) || encrypted payload (100) = 180 bytes."""
MAX_REPLY_PAYLOAD: Final = 1024
"""An ENROL_REPLY's plaintext is at most this long (it fits one datagram on any path)."""
_SIGNED_LABEL = b"Tunseal v1 enrol request"


class Code(IntEnum):
    """The first byte of an ENROL_REPLY's plaintext."""

    ACCEPTED = 0
    UNKNOWN = 1
    EXPIRED = 2
    USED = 3
    BAD_SECRET = 4
    REPLAY = 5
    FAILED = 6


REFUSALS: Final[dict[Code, str]] = {
    Code.UNKNOWN: "the gateway knows no such invitation (it was never issued there, or its "
                  "admin withdrew it); ask for a new one",
    Code.EXPIRED: "the invitation has expired; ask the gateway's admin for a new one",
    Code.USED: "the invitation was already used by another device; an invitation is good "
               "for one device only: ask for a new one",
    Code.BAD_SECRET: "the invitation was altered: its secret does not match the one the "
                     "gateway issued; ask for a new one and copy it unchanged",
    Code.REPLAY: "the gateway already accepted a newer enrolment for this invitation (a "
                 "replayed message, or this machine's clock went back)",
    Code.FAILED: "the gateway could not register this device",
}
"""What the laptop tells its user for each refusal."""


class Tlv(IntEnum):
    """Fields of an ACCEPTED reply's body: type (1), length (1), value. Repeatable ones are
    lists in order; a type with the top bit set that a reader does not know rejects the reply,
    others are skipped (as header options, PROTOCOL.md 3.3)."""

    ADDRESS = 0x01
    ROUTE = 0x02
    DNS = 0x03
    CIPHER = 0x04
    TRANSPORT = 0x05
    MTU = 0x06
    DEVICE_ID = 0x07
    KEEPALIVE = 0x08
    PEER_NAME = 0x09


_TEXT_TLVS = {Tlv.ADDRESS, Tlv.ROUTE, Tlv.DNS, Tlv.CIPHER, Tlv.TRANSPORT, Tlv.PEER_NAME}
_U16 = struct.Struct("!H")


@dataclass(frozen=True, slots=True)
class Accepted:
    """What the gateway tells an accepted laptop: everything its profile needs beyond the
    invitation (which has the gateway's key and endpoint)."""

    peer_name: str
    addresses: tuple[str, ...]
    routes: tuple[str, ...]
    dns: tuple[str, ...] = ()
    cipher: str = "aes-256-gcm"
    transport: str = "udp"
    mtu: int = 1408
    device_id: int = 0
    keepalive: int = 25

    def encode(self) -> bytes:
        out = bytearray()

        def put(t: Tlv, value: bytes) -> None:
            if len(value) > 255:
                raise WireError(f"enrolment field {t.name} is longer than 255 bytes")
            out.extend((t, len(value)))
            out.extend(value)

        put(Tlv.PEER_NAME, self.peer_name.encode())
        for t, values in ((Tlv.ADDRESS, self.addresses), (Tlv.ROUTE, self.routes),
                          (Tlv.DNS, self.dns)):
            for v in values:
                put(t, v.encode())
        put(Tlv.CIPHER, self.cipher.encode())
        put(Tlv.TRANSPORT, self.transport.encode())
        put(Tlv.MTU, _U16.pack(self.mtu))
        put(Tlv.DEVICE_ID, _U16.pack(self.device_id))
        put(Tlv.KEEPALIVE, _U16.pack(self.keepalive))
        return bytes(out)

    @classmethod
    def decode(cls, body: bytes) -> Accepted:
        lists: dict[Tlv, list[str]] = {t: [] for t in _TEXT_TLVS}
        numbers: dict[Tlv, int] = {}
        i = 0
        while i < len(body):
            if i + 2 > len(body) or i + 2 + body[i + 1] > len(body):
                raise WireError("enrolment reply: truncated field")
            t, value = body[i], body[i + 2:i + 2 + body[i + 1]]
            i += 2 + len(value)
            if t not in Tlv.__members__.values():
                if t & 0x80:
                    raise WireError(f"enrolment reply: unknown critical field 0x{t:02x}")
                continue
            kind = Tlv(t)
            if kind in _TEXT_TLVS:
                try:
                    lists[kind].append(value.decode("utf-8"))
                except UnicodeDecodeError:
                    raise WireError(f"enrolment reply: {kind.name} is not UTF-8") from None
            else:
                if len(value) != 2 or kind in numbers:
                    raise WireError(f"enrolment reply: bad {kind.name} field")
                numbers[kind] = _U16.unpack(value)[0]
        for kind in (Tlv.PEER_NAME, Tlv.CIPHER, Tlv.TRANSPORT):
            if len(lists[kind]) != 1:
                raise WireError(f"enrolment reply: needs exactly one {kind.name}")
        if not lists[Tlv.ADDRESS]:
            raise WireError("enrolment reply: no ADDRESS")
        for text in (*lists[Tlv.ADDRESS], *lists[Tlv.ROUTE]):
            try:
                ipaddress.ip_interface(text)
            except ValueError:
                raise WireError(f"enrolment reply: {text!r} is not a network") from None
        for kind in (Tlv.MTU, Tlv.DEVICE_ID, Tlv.KEEPALIVE):
            if kind not in numbers:
                raise WireError(f"enrolment reply: no {kind.name}")
        return cls(peer_name=lists[Tlv.PEER_NAME][0], addresses=tuple(lists[Tlv.ADDRESS]),
                   routes=tuple(lists[Tlv.ROUTE]), dns=tuple(lists[Tlv.DNS]),
                   cipher=lists[Tlv.CIPHER][0], transport=lists[Tlv.TRANSPORT][0],
                   mtu=numbers[Tlv.MTU], device_id=numbers[Tlv.DEVICE_ID],
                   keepalive=numbers[Tlv.KEEPALIVE])


@dataclass(frozen=True, slots=True)
class Verdict:
    code: Code
    accepted: Accepted | None = None
    detail: str = ""
    """For refusals: a short reason (at most 255 bytes of UTF-8, no secret), shown as is."""

    def encode(self) -> bytes:
        if self.code == Code.ACCEPTED:
            if self.accepted is None:
                raise WireError("an ACCEPTED verdict needs the laptop's settings")
            body = self.accepted.encode()
        else:
            body = self.detail.encode("utf-8")[:255]
        out = bytes([self.code]) + body
        if len(out) > MAX_REPLY_PAYLOAD:
            raise WireError("enrolment reply is too long")
        return out

    @classmethod
    def decode(cls, plain: bytes) -> Verdict:
        if not plain:
            raise WireError("enrolment reply: empty")
        try:
            code = Code(plain[0])
        except ValueError:
            raise WireError(f"enrolment reply: unknown code {plain[0]}") from None
        if code == Code.ACCEPTED:
            return cls(code, Accepted.decode(plain[1:]))
        if len(plain) > 256:
            raise WireError("enrolment reply: refusal detail longer than 255 bytes")
        return cls(code, detail=plain[1:].decode("utf-8", errors="replace"))

    @property
    def message(self) -> str:
        """The refusal in words, for the laptop's user."""
        if self.code == Code.ACCEPTED:
            return "accepted"
        text = REFUSALS[self.code]
        return f"{text}: {self.detail}" if self.detail else text


def signed_message(gateway_public: bytes, laptop_public: bytes, ephemeral_public: bytes,
                   timestamp: bytes, invitation_id: bytes) -> bytes:
    """What the invitation's key signs: binds the proof to this gateway, this laptop key and
    this very message (its ephemeral key and timestamp), so it cannot be moved elsewhere."""
    return (_SIGNED_LABEL + gateway_public + laptop_public + ephemeral_public + timestamp
            + invitation_id)


def _mac1_key(receiver_public: bytes) -> bytes:
    return blake2s(LABEL_MAC1, receiver_public)


# --- the laptop's side ----------------------------------------------------------------------


class Attempt:
    """One ENROL sent by the laptop, and the reading of its answer."""

    def __init__(self, inv: Invitation, static_private: bytes, *, local_index: int, now: float,
                 ephemeral: bytes | None = None):
        self.local_index = local_index
        self._static_public = noise.public_key(static_private)
        self._gateway = inv.gateway_public
        # The signature covers the ephemeral key, so it is drawn here rather than by Noise.
        ephemeral = ephemeral if ephemeral is not None else noise.generate_private_key()
        e_public = noise.public_key(ephemeral)
        self._hs = noise.HandshakeState(PATTERN, True, cipher=NOISE_CIPHER, prologue=PROLOGUE,
                                        s=static_private, rs=inv.gateway_public, e=ephemeral)
        timestamp = tai64n(now)
        signature = invitation_format.sign(inv.secret, signed_message(
            inv.gateway_public, self._static_public, e_public, timestamp, inv.invitation_id))
        message = self._hs.write_message(timestamp + inv.invitation_id + signature)
        self.packet, _ = _build(
            PacketType.ENROL, device_id=0,
            options=[(Option.SENDER_INDEX, local_index.to_bytes(4, "big"))],
            payload=message, mac1_key=_mac1_key(inv.gateway_public), cookie=None)

    def __repr__(self) -> str:
        return f"Attempt(index={self.local_index:#x})"

    def read_reply(self, packet: bytes) -> Verdict:
        """The gateway's verdict; raises WireError/HandshakeError/CryptoError for anything that
        is not an authentic answer to this attempt (the caller keeps waiting)."""
        p = parse_handshake(packet, PacketType.ENROL_REPLY)
        if int.from_bytes(p.require(Option.RECEIVER_INDEX), "big") != self.local_index:
            raise HandshakeError("enrolment reply for another attempt")
        verify_mac1(p, _mac1_key(self._static_public))
        plain = self._hs.read_message(p.payload)
        return Verdict.decode(plain)


def reply_index(packet: bytes) -> int | None:
    """RECEIVER_INDEX of what looks like an ENROL_REPLY (to pick the attempt), else None."""
    try:
        p = parse_handshake(packet, PacketType.ENROL_REPLY)
        return int.from_bytes(p.require(Option.RECEIVER_INDEX), "big")
    except WireError:
        return None


# --- the gateway's side ---------------------------------------------------------------------


@dataclass(slots=True)
class Enrolment:
    """An ENROL that passed MAC1, the rate limit and Noise: the laptop's static key is proven
    (``ss``); whether it holds the invitation's secret is :meth:`proves` against the key the
    gateway kept. :meth:`answer` makes the ENROL_REPLY, once."""

    invitation_id: bytes
    public_key: bytes
    timestamp: bytes
    source: bytes
    _signed: bytes = field(repr=False)
    _signature: bytes = field(repr=False)
    _hs: noise.HandshakeState = field(repr=False)
    _sender_index: int = 0
    _answered: bool = False

    def proves(self, verify_key: bytes) -> bool:
        return invitation_format.verify(verify_key, self._signature, self._signed)

    def answer(self, verdict: Verdict) -> bytes:
        if self._answered:
            raise HandshakeError("this enrolment was already answered")
        self._answered = True
        message = self._hs.write_message(verdict.encode())
        packet, _ = _build(
            PacketType.ENROL_REPLY, device_id=0,
            options=[(Option.RECEIVER_INDEX, self._sender_index.to_bytes(4, "big"))],
            payload=message, mac1_key=_mac1_key(self.public_key), cookie=None)
        return packet


class Registrar(Protocol):
    def decide(self, enrolment: Enrolment) -> Verdict | None:
        """The verdict now, or None: the registrar answers later itself (registering a peer
        takes file and routing work that has no place in the receive loop)."""
        ...


@dataclass(frozen=True, slots=True)
class Outcome:
    reply: bytes | None
    refused: Code | None = None


class EnrolGate:
    """The gateway's receive path for ENROL packets: cheap checks first, as for initiations
    (PROTOCOL.md 13): structure, MAC1 (keyed by the gateway's public key), the per-source rate,
    then Noise (two DHs), then the registrar."""

    def __init__(self, static_private: bytes, registrar: Registrar, *,
                 guard: FloodGuard | None = None):
        self._static = static_private
        self.public = noise.public_key(static_private)
        self._mac1 = _mac1_key(self.public)
        self._registrar = registrar
        self.guard = guard or FloodGuard(rate=5.0)

    def handle(self, packet: bytes, source: bytes, *, ephemeral: bytes | None = None
               ) -> Outcome:
        """Raises Refused (a counted drop, nothing sent) or returns what to send back.
        ``ephemeral``: the reply's ephemeral private key (worked examples only)."""
        try:
            p = parse_handshake(packet, PacketType.ENROL)
            index = int.from_bytes(p.require(Option.SENDER_INDEX), "big")
        except WireError as e:
            raise Refused(f"malformed enrolment: {e}", "enrol_malformed") from None
        if len(p.payload) != REQUEST_MESSAGE_LEN:
            raise Refused(f"enrolment message of {len(p.payload)} bytes, not "
                          f"{REQUEST_MESSAGE_LEN}", "enrol_malformed")
        try:
            verify_mac1(p, self._mac1)
        except HandshakeError as e:
            raise Refused(str(e), "enrol_mac") from None
        if self.guard.under_load():  # no cookie round trip for ENROL: nothing while flooded
            self.guard.note()
            raise Refused("enrolments arrive faster than the gateway takes them",
                          "enrol_rate")
        if not self.guard.admit(source):
            raise Refused("enrolment rate limit for this source exceeded", "enrol_rate")
        hs = noise.HandshakeState(PATTERN, False, cipher=NOISE_CIPHER, prologue=PROLOGUE,
                                  s=self._static, e=ephemeral)
        try:
            plain = hs.read_message(p.payload)
        except (HandshakeError, CryptoError) as e:
            raise Refused(f"enrolment did not decrypt: {e}", "enrol_failed") from None
        if len(plain) != REQUEST_PAYLOAD_LEN:
            raise Refused("enrolment payload has the wrong length", "enrol_failed")
        laptop = hs.remote_static
        assert laptop is not None
        if hmac.compare_digest(laptop, self.public):
            raise Refused("enrolment with the gateway's own key", "enrol_failed")
        timestamp = plain[:TIMESTAMP_LEN]
        inv_id = plain[TIMESTAMP_LEN:TIMESTAMP_LEN + invitation_format.ID_LEN]
        signature = plain[TIMESTAMP_LEN + invitation_format.ID_LEN:]
        enrolment = Enrolment(
            invitation_id=inv_id, public_key=laptop, timestamp=timestamp, source=source,
            _signed=signed_message(self.public, laptop, p.payload[:32], timestamp, inv_id),
            _signature=signature, _hs=hs, _sender_index=index)
        verdict = self._registrar.decide(enrolment)
        if verdict is None:
            return Outcome(None)
        return Outcome(enrolment.answer(verdict),
                       None if verdict.code == Code.ACCEPTED else verdict.code)
