"""Tunseal handshake messages: initiation, response and cookie reply, around Noise.

``ephemeral`` mode runs Noise IK (IKpsk2 when the profile also has a pre-shared key): both ends
prove their static keys and contribute ephemeral keys. ``psk`` and ``rotating`` run Noise NNpsk0:
both ends contribute fresh ephemeral keys and the pre-shared key authenticates them, so a restart
never reuses a session key or a nonce. NNpsk0 alone cannot tell the two ends apart (both hold the
same psk), so an initiation also names its sender's origin ID (the ORIGIN option, mixed into the
prologue): a responder refuses its own, and an initiation sent back to where it came from never
completes. Every handshake packet carries MAC1 (keyed by something
only legitimate peers know: the responder's public key or the PSK) so a responder discards junk
before any Diffie-Hellman, and MAC2 (keyed by a cookie) which a responder under load demands.
docs/PROTOCOL.md describes the same thing byte by byte.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from core import noise, wire
from core.constants import (
    COOKIE_LEN,
    COOKIE_NONCE_LEN,
    COOKIE_SECRET_LIFETIME,
    HANDSHAKE_LOAD_THRESHOLD,
    HANDSHAKE_RATE_PER_SOURCE,
    KEY_LEN,
    LABEL_COOKIE,
    LABEL_MAC1,
    MAC_LEN,
    MODES,
    NOISE_PROLOGUE,
    ORIGIN_LEN,
    REKEY_TIMEOUT,
    TAG_LEN,
    TIMESTAMP_LEN,
    Cipher,
    Flag,
    Mode,
    Option,
    PacketType,
)
from core.errors import CryptoError, HandshakeError, WireError

Clock = Callable[[], float]
_HANDSHAKE_FLAGS = int(Flag.AUTHENTICATED | Flag.KEY_PRESENT)
_TAI64_BASE = 1 << 62


def blake2s(*parts: bytes) -> bytes:
    h = hashlib.blake2s()
    for p in parts:
        h.update(p)
    return h.digest()


def mac(key: bytes, data: bytes) -> bytes:
    """The 128-bit handshake MAC: HMAC-BLAKE2s truncated to 16 bytes."""
    return noise.hmac_blake2s(key, data)[:MAC_LEN]


def tai64n(now: float) -> bytes:
    """TAI64N label of a wall-clock time: strictly increasing timestamps defeat replayed inits."""
    sec = int(now)
    return struct.pack("!QI", _TAI64_BASE + sec, int((now - sec) * 1e9))


@dataclass(frozen=True, slots=True)
class Suite:
    """What both ends must agree on; mixed into the Noise prologue so a mismatch fails cleanly."""

    mode: str
    cipher: str
    has_psk: bool

    @property
    def pattern(self) -> str:
        return _pattern(self.mode, self.has_psk)

    @property
    def noise_cipher(self) -> str:
        return "ChaChaPoly" if self.cipher == Cipher.CHACHA20_POLY1305 else "AESGCM"

    @property
    def prologue(self) -> bytes:
        """The prologue both ends agree on before any message (without the origin, below)."""
        return _prologue(self.cipher)

    @property
    def uses_origin(self) -> bool:
        """NNpsk0 initiations carry the initiator's origin ID (IK ones need none: the two
        static keys already tell the ends apart)."""
        return self.pattern == "NNpsk0"

    def prologue_for(self, origin: bytes | None) -> bytes:
        """The Noise prologue of one handshake: for NNpsk0 it ends with the initiator's origin
        ID, so the session keys depend on which end initiated, and a changed ORIGIN option
        makes message 1 fail to decrypt."""
        if not self.uses_origin:
            return self.prologue
        return self.prologue + b"|" + check_origin(origin)


# A suite's properties are asked for several times per handshake: worked out once per value.
@functools.lru_cache(maxsize=64)
def _pattern(mode: str, has_psk: bool) -> str:
    pattern = Mode(mode).pattern(has_psk) if mode in MODES else ""
    if not pattern:
        raise HandshakeError(f"mode {str(mode)!r} has no handshake")
    return pattern


@functools.lru_cache(maxsize=16)
def _prologue(cipher: str) -> bytes:
    return NOISE_PROLOGUE + b"|" + cipher.encode()


def check_origin(origin: bytes | None) -> bytes:
    if origin is None or len(origin) != ORIGIN_LEN:
        raise HandshakeError(f"an origin ID must be {ORIGIN_LEN} bytes")
    return bytes(origin)


def new_origin() -> bytes:
    """A fresh origin ID (an Endpoint keeps one for good; PROTOCOL.md section 8.2)."""
    return os.urandom(ORIGIN_LEN)


@dataclass(frozen=True, slots=True)
class Identity:
    """The long-term secrets one end uses with one peer. Never logged, never sent."""

    static_private: bytes | None = None
    peer_public: bytes | None = None
    psk: bytes | None = None

    def __repr__(self) -> str:
        return "Identity(<secret>)"

    def mac1_key_for(self, receiver_public: bytes | None) -> bytes:
        """MAC1 key for a message *to* the end whose public key is ``receiver_public``."""
        if receiver_public is not None:
            return blake2s(LABEL_MAC1, receiver_public)
        if self.psk is None:
            raise HandshakeError("neither a public key nor a pre-shared key to key MAC1 with")
        return blake2s(LABEL_MAC1, self.psk)

    def cookie_key_for(self, responder_public: bytes | None) -> bytes:
        if responder_public is not None:
            return blake2s(LABEL_COOKIE, responder_public)
        if self.psk is None:
            raise HandshakeError("neither a public key nor a pre-shared key to key cookies with")
        return blake2s(LABEL_COOKIE, self.psk)

    @property
    def own_public(self) -> bytes | None:
        return noise.public_key(self.static_private) if self.static_private else None

    @property
    def fingerprint(self) -> bytes:
        """16 bytes naming the peer's credentials (its public key and psk) without revealing
        them: replay memory kept for a peer is void once its credentials change."""
        return blake2s(b"tunseal peer credentials", self.peer_public or b"",
                       self.psk or b"")[:16]


@dataclass(frozen=True, slots=True)
class Completed:
    """Keys a finished handshake produced for the data path."""

    send_key: bytes
    recv_key: bytes
    local_index: int
    remote_index: int
    is_initiator: bool
    remote_static: bytes | None


def _build(ptype: PacketType, *, device_id: int, options: list[tuple[int, bytes]],
           payload: bytes, mac1_key: bytes, cookie: bytes | None) -> tuple[bytes, bytes]:
    """Encode a handshake packet and fill MAC1 and MAC2. Returns (packet, mac1)."""
    opts = [*options, (Option.MAC1, bytes(MAC_LEN)), (Option.MAC2, bytes(MAC_LEN))]
    header = bytearray(wire.encode_header(
        ptype, inner_len=len(payload), device_id=device_id, encap_id=0,
        flags=_HANDSHAKE_FLAGS, options=opts,
    ))
    header[10:12] = b"\0\0"
    o1 = wire.option_offset(header, Option.MAC1)
    o2 = wire.option_offset(header, Option.MAC2)
    assert o1 is not None and o2 is not None
    m1 = mac(mac1_key, bytes(header) + payload)
    header[o1:o1 + MAC_LEN] = m1
    if cookie is not None:
        header[o2:o2 + MAC_LEN] = mac(cookie, bytes(header) + payload)
    struct.pack_into("!H", header, 10, wire.internet_checksum(header))
    return bytes(header) + payload, m1


def _mac_inputs(p: wire.Packet) -> tuple[bytes, bytes, bytes, bytes]:
    """(mac1 input, mac2 input, mac1, mac2) of a parsed handshake packet."""
    header = bytearray(p.header)
    o1 = wire.option_offset(header, Option.MAC1)
    o2 = wire.option_offset(header, Option.MAC2)
    if o1 is None or o2 is None:
        raise HandshakeError(f"{p.type.name} packet lacks MAC1/MAC2")
    m1, m2 = bytes(header[o1:o1 + MAC_LEN]), bytes(header[o2:o2 + MAC_LEN])
    header[10:12] = b"\0\0"
    header[o2:o2 + MAC_LEN] = bytes(MAC_LEN)
    in2 = bytes(header) + p.payload
    header[o1:o1 + MAC_LEN] = bytes(MAC_LEN)
    in1 = bytes(header) + p.payload
    return in1, in2, m1, m2


def parse_handshake(packet: bytes, expected: PacketType) -> wire.Packet:
    """The structural checks of PROTOCOL.md 7.4, before any key is used: the header (3.5),
    Flags 0xA000, payload = OLDPACKETLEN, MAC1 and MAC2 present. Raises WireError (a header
    drop, ``bad_header``), never HandshakeError: nothing here depends on a key."""
    try:
        p = wire.parse(packet)
    except WireError as e:
        raise WireError(f"malformed {expected.name}: {e}") from None
    if p.type != expected:
        raise WireError(f"expected {expected.name}, got {p.type.name}")
    if p.flags != _HANDSHAKE_FLAGS:
        raise WireError(f"{p.type.name} with flags 0x{p.flags:04x}; handshakes carry 0xa000")
    if len(p.payload) != p.inner_len:
        raise WireError("handshake payload length does not match OLDPACKETLEN")
    if p.option(Option.MAC1) is None or p.option(Option.MAC2) is None:
        raise WireError(f"{p.type.name} packet lacks MAC1/MAC2")
    return p


def verify_mac1(p: wire.Packet, key: bytes) -> bytes:
    """Check MAC1 (cheap, before any DH); return it (a cookie reply is bound to it)."""
    in1, _, m1, _ = _mac_inputs(p)
    if not hmac.compare_digest(mac(key, in1), m1):
        raise HandshakeError("MAC1 mismatch: not from a peer that knows our public key / PSK")
    return m1


def mac2_valid(p: wire.Packet, cookie: bytes) -> bool:
    _, in2, _, m2 = _mac_inputs(p)
    return hmac.compare_digest(mac(cookie, in2), m2)


class Initiator:
    """One handshake attempt from the initiating side."""

    def __init__(self, suite: Suite, ident: Identity, *, device_id: int, local_index: int,
                 now: float, cookie: bytes | None = None, ephemeral: bytes | None = None,
                 origin: bytes | None = None):
        """``origin``: this end's origin ID (NNpsk0 only). An Endpoint passes the one it keeps
        for good; None draws a fresh one, which suits a one-off handshake only."""
        self.suite = suite
        self.local_index = local_index
        self.started = now
        self._ident = ident
        options: list[tuple[int, bytes]] = [(Option.SENDER_INDEX, local_index.to_bytes(4, "big"))]
        self.origin: bytes | None = None
        if suite.uses_origin:
            self.origin = check_origin(origin) if origin is not None else new_origin()
            options.append((Option.ORIGIN, self.origin))
        self._hs = noise.HandshakeState(
            suite.pattern, True, cipher=suite.noise_cipher, hash_name="BLAKE2s",
            prologue=suite.prologue_for(self.origin), s=ident.static_private,
            rs=ident.peer_public,
            psk=ident.psk if suite.has_psk or suite.pattern == "NNpsk0" else None, e=ephemeral,
        )
        message = self._hs.write_message(tai64n(now))
        self.packet, self.mac1 = _build(
            PacketType.HANDSHAKE_INIT, device_id=device_id, options=options,
            payload=message, mac1_key=ident.mac1_key_for(ident.peer_public), cookie=cookie,
        )

    def __repr__(self) -> str:
        return f"Initiator(index={self.local_index:#x})"

    def consume_response(self, packet: bytes) -> Completed:
        p = parse_handshake(packet, PacketType.HANDSHAKE_RESP)
        verify_mac1(p, self._ident.mac1_key_for(self._ident.own_public))
        if int.from_bytes(p.require(Option.RECEIVER_INDEX), "big") != self.local_index:
            raise HandshakeError("response is for another handshake attempt")
        remote_index = int.from_bytes(p.require(Option.SENDER_INDEX), "big")
        payload = self._hs.read_message(p.payload)
        if payload:
            raise HandshakeError("unexpected payload in handshake response")
        k1, k2 = self._hs.split_keys()
        return Completed(k1, k2, self.local_index, remote_index, True, self._hs.remote_static)


@dataclass(frozen=True, slots=True)
class Initiation:
    """A handshake initiation that passed MAC1 (and MAC2 if demanded), not yet decrypted."""

    packet: wire.Packet
    sender_index: int
    mac1: bytes
    origin: bytes | None
    """The ORIGIN option (the initiator's origin ID), None if absent."""


def verify_initiation(p: wire.Packet, mac1_key: bytes) -> Initiation:
    """An initiation that passed :func:`parse_handshake`, once its MAC1 verifies (raises
    HandshakeError otherwise; WireError if SENDER_INDEX is missing)."""
    m1 = verify_mac1(p, mac1_key)
    return Initiation(p, int.from_bytes(p.require(Option.SENDER_INDEX), "big"), m1,
                      p.option(Option.ORIGIN))


def read_initiation(packet: bytes, mac1_key: bytes) -> Initiation:
    return verify_initiation(parse_handshake(packet, PacketType.HANDSHAKE_INIT), mac1_key)


@dataclass(frozen=True, slots=True)
class Responded:
    completed: Completed
    packet: bytes
    timestamp: bytes


def respond(init: Initiation, suite: Suite, ident_for: Callable[[bytes | None], Identity], *,
            own_static: bytes | None, device_id: int, local_index: int,
            ephemeral: bytes | None = None) -> Responded:
    """Run the responder's side of the handshake (this is where the DH cost is paid).

    ``ident_for`` maps the initiator's static public key (IK; None for NNpsk0) to the identity
    this end keeps for that peer; it raises HandshakeError for an unknown key. For IKpsk2 the
    peer's psk is only needed for message 2, so one listening key serves many peers.
    """
    nn = suite.pattern == "NNpsk0"
    if nn and init.origin is None:
        raise HandshakeError("psk-mode initiation without the initiator's ORIGIN option")
    found: list[Identity] = []

    def known(initiator_public: bytes) -> None:
        # IK: the initiator's key is looked up as soon as message 1 reveals it, before the
        # "ss" DH: a key no peer has costs one DH, not two.
        found.append(ident_for(initiator_public))

    hs = noise.HandshakeState(
        suite.pattern, False, cipher=suite.noise_cipher, hash_name="BLAKE2s",
        prologue=suite.prologue_for(init.origin), s=None if nn else own_static,
        psk=ident_for(None).psk if nn else None, e=ephemeral, defer_psk=suite.has_psk and not nn,
        on_remote_static=None if nn else known,
    )
    timestamp = hs.read_message(init.packet.payload)
    if len(timestamp) != TIMESTAMP_LEN:
        raise HandshakeError("initiation payload is not a 12-byte TAI64N timestamp")
    initiator_public = hs.remote_static
    ident = found[-1] if found else ident_for(initiator_public)
    if suite.has_psk and not nn:
        if ident.psk is None:
            raise HandshakeError("this peer has no pre-shared key but the suite needs one")
        hs.set_psk(ident.psk)
    message = hs.write_message(b"")
    packet, _ = _build(
        PacketType.HANDSHAKE_RESP, device_id=device_id,
        options=[(Option.SENDER_INDEX, local_index.to_bytes(4, "big")),
                 (Option.RECEIVER_INDEX, init.sender_index.to_bytes(4, "big"))],
        payload=message, mac1_key=ident.mac1_key_for(initiator_public), cookie=None,
    )
    k1, k2 = hs.split_keys()
    done = Completed(k2, k1, local_index, init.sender_index, False, initiator_public)
    return Responded(done, packet, timestamp)


class CookieGenerator:
    """The responder's side of the cookie mechanism (WireGuard §5.4.7, with Tunseal framing)."""

    def __init__(self, cookie_key: bytes, clock: Clock = time.monotonic):
        self._clock = clock
        self._aead = ChaCha20Poly1305(cookie_key)
        self._secret = os.urandom(KEY_LEN)
        self._secret_born = clock()

    def cookie_for(self, source: bytes) -> bytes:
        now = self._clock()
        if now - self._secret_born > COOKIE_SECRET_LIFETIME:
            self._secret, self._secret_born = os.urandom(KEY_LEN), now
        return mac(self._secret, source)

    def mac2_ok(self, init: Initiation, source: bytes) -> bool:
        return mac2_valid(init.packet, self.cookie_for(source))

    def reply(self, init: Initiation, source: bytes, *, device_id: int) -> bytes:
        nonce = os.urandom(COOKIE_NONCE_LEN)
        sealed = self._aead.encrypt(nonce, self.cookie_for(source), init.mac1)
        payload = nonce + sealed
        header = wire.encode_header(
            PacketType.COOKIE, inner_len=len(payload), device_id=device_id, encap_id=0,
            flags=int(Flag.ENCRYPTED),
            options=[(Option.RECEIVER_INDEX, init.sender_index.to_bytes(4, "big"))],
        )
        return header + payload


def open_cookie_reply(packet: bytes, cookie_key: bytes, initiator: Initiator) -> bytes:
    """The initiator's side: decrypt a cookie reply to its last initiation."""
    try:
        p = wire.parse(packet)
    except WireError as e:
        raise HandshakeError(f"malformed cookie reply: {e}") from None
    if p.type != PacketType.COOKIE:
        raise HandshakeError(f"expected COOKIE, got {p.type.name}")
    if int.from_bytes(p.require(Option.RECEIVER_INDEX), "big") != initiator.local_index:
        raise HandshakeError("cookie reply is for another handshake attempt")
    if len(p.payload) != COOKIE_NONCE_LEN + COOKIE_LEN + TAG_LEN:
        raise HandshakeError("cookie reply has the wrong length")
    nonce, sealed = p.payload[:COOKIE_NONCE_LEN], p.payload[COOKIE_NONCE_LEN:]
    try:
        return ChaCha20Poly1305(cookie_key).decrypt(nonce, sealed, initiator.mac1)
    except InvalidTag:
        raise CryptoError("cookie reply failed authentication") from None


class FloodGuard:
    """Decides, before any DH, whether an initiation may be processed now.

    Two bounded measures: a token bucket per source address (at most ``max_sources`` tracked,
    least recently seen evicted first) and a global one-second counter that, above
    HANDSHAKE_LOAD_THRESHOLD, marks the responder as under load (initiations then need a valid
    MAC2, i.e. a cookie proving the source address is real).
    """

    def __init__(self, clock: Clock = time.monotonic, *, rate: float = HANDSHAKE_RATE_PER_SOURCE,
                 load_threshold: int = HANDSHAKE_LOAD_THRESHOLD, max_sources: int = 4096):
        self._clock = clock
        self._rate = rate
        self._burst = max(1.0, rate)
        self._threshold = load_threshold
        self._max = max_sources
        self._buckets: OrderedDict[bytes, tuple[float, float]] = OrderedDict()
        self._window_start = clock()
        self._count = 0

    def under_load(self) -> bool:
        now = self._clock()
        if now - self._window_start >= 1.0:
            self._window_start, self._count = now, 0
        return self._count >= self._threshold

    def note(self) -> None:
        """Count an initiation towards the load measure without charging its source (one
        that is answered with a cookie: a spoofed flood must not drain a real client's
        allowance, as WireGuard charges only initiations with a valid cookie)."""
        self.under_load()
        self._count += 1

    def admit(self, source: bytes) -> bool:
        """Count one initiation from ``source``; False if that source is over its rate."""
        now = self._clock()
        self.under_load()
        self._count += 1
        tokens, last = self._buckets.pop(source, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        ok = tokens >= 1.0
        self._buckets[source] = (tokens - 1.0 if ok else tokens, now)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return ok

    @property
    def tracked_sources(self) -> int:
        return len(self._buckets)


def retry_due(started: float, now: float) -> bool:
    """An unanswered initiation is retried after REKEY_TIMEOUT (WireGuard's schedule)."""
    return now - started >= REKEY_TIMEOUT
