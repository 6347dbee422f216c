"""Data-path sessions: a keypair per handshake, and the per-packet seal and open.

This is the hot path. It avoids per-packet objects beyond the output buffer: one ``struct``
call builds the whole 28-byte data header, the checksum is one big-int reduction, and the AEAD
works directly on memory views. Packets that do not have the canonical data layout fall back
to the total parser in ``core/wire.py`` (a compatible peer may order options differently).
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable, Iterator
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from core import native as _native
from core import wire
from core.constants import (
    DATA_HEADER_LEN,
    FIXED_HEADER_LEN,
    REJECT_AFTER_MESSAGES,
    TAG_LEN,
    VERSION,
    Flag,
    Option,
    PacketType,
)
from core.errors import CryptoError, ReplayError, WireError
from core.replay import ReplayWindow, Verdict

AEAD = ChaCha20Poly1305 | AESGCM

# ver/type, hlen, oldlen, device, encap, flags, checksum, RECEIVER_INDEX tlv, COUNTER tlv
DATA_HEADER = struct.Struct("!BBHHHHHBBIBBQ")
assert DATA_HEADER.size == DATA_HEADER_LEN
PLAIN_HEADER = wire.FIXED
_HLEN_WORDS = DATA_HEADER_LEN // 4
SEALED_FLAGS = int(Flag.AUTHENTICATED | Flag.ENCRYPTED)
DATA_CONST = _HLEN_WORDS + (Option.RECEIVER_INDEX << 8) + 4 + (Option.COUNTER << 8) + 8
"""The header words that never change, pre-summed for the checksum."""


class UnknownSession(CryptoError):
    """The packet names a session index this end does not have (expired, or never made)."""

    reason = "unknown_session"


def make_aead(cipher: str, key: bytes) -> AEAD:
    """The AEAD for a profile cipher name; AES-128 uses the first 16 bytes of the 32-byte key."""
    if cipher == "chacha20-poly1305":
        return ChaCha20Poly1305(key)
    if cipher == "aes-256-gcm":
        return AESGCM(key)
    if cipher == "aes-128-gcm":
        return AESGCM(key[:16])
    raise CryptoError(
        f"unknown cipher {cipher!r}; choose chacha20-poly1305, aes-256-gcm or aes-128-gcm"
    )


def _checksum(header: bytearray | memoryview) -> int:
    s = int.from_bytes(header, "big") % 0xFFFF
    return ~(s or 0xFFFF) & 0xFFFF  # a header is never all zero, so a 0 residue means 0xFFFF


class Keypair:
    """The two directional keys one handshake produced, with their counters and replay window."""

    __slots__ = (
        "_nonces",
        "_recv",
        "_send",
        "cipher",
        "confirmed",
        "created",
        "device_id",
        "is_initiator",
        "local_index",
        "native",
        "receive_count",
        "remote_index",
        "replay",
        "send_counter",
    )

    def __init__(
        self,
        *,
        cipher: str,
        send_key: bytes,
        recv_key: bytes,
        local_index: int,
        remote_index: int,
        device_id: int,
        is_initiator: bool,
        created: float,
        native: bool | None = None,
    ) -> None:
        self.cipher = cipher
        # None: the core in use; True: the native one (tests); False: the pure-Python one.
        nat = _native.built if native else None if native is False else _native.module
        if native and nat is None:
            raise CryptoError(f"the native core is not available: {_native.why_not}")
        self._send: AEAD | None = None
        self._recv: AEAD | None = None
        self.native: Any = None
        """The native half (keys, send counter, replay window), or None on the pure-Python
        path. With it, the keys live only there, and every seal and open goes through it."""
        if nat is not None:
            if cipher not in ("chacha20-poly1305", "aes-256-gcm", "aes-128-gcm"):
                make_aead(cipher, send_key)  # the same error as the pure-Python path
            self.native = nat.Keypair(cipher, bytes(send_key), bytes(recv_key), device_id,
                                      remote_index)
        else:
            self._send = make_aead(cipher, send_key)
            self._recv = make_aead(cipher, recv_key)
        self.local_index = local_index
        self.remote_index = remote_index
        self.device_id = device_id
        self.is_initiator = is_initiator
        self.created = created
        self.send_counter = 0
        # Several threads seal with one keypair (data, keepalives, handshake replies);
        # next() on itertools.count is atomic under the GIL, so no counter is ever issued
        # twice and no lock sits in the per-packet path.
        # The native half owns the counter when there is one (one atomic add per counter,
        # also when the native sealer takes a whole TSO frame's worth without the GIL).
        self._nonces: Iterator[int] = (self.native if self.native is not None
                                       else itertools.count())
        self.receive_count = 0
        self.replay: ReplayWindow | NativeWindow = (
            NativeWindow(self.native) if self.native is not None else ReplayWindow())
        # The responder may not send with a keypair until the initiator has proven it has it
        # (its first data or keepalive packet), as in WireGuard: this stops a replayed
        # initiation from making the responder encrypt under a key nobody holds.
        self.confirmed = is_initiator

    def __repr__(self) -> str:  # never show keys
        return (f"Keypair(local={self.local_index:#x}, remote={self.remote_index:#x}, "
                f"sent={self.send_counter}, initiator={self.is_initiator})")

    def seal_into(
        self,
        out: bytearray | memoryview,
        offset: int,
        inner: bytes | bytearray | memoryview,
        ptype: int = PacketType.DATA,
        flags: int = 0,
    ) -> int:
        """Write one sealed packet for ``inner`` at ``out[offset:]``; return its length.

        ``out`` must have room for DATA_HEADER_LEN + len(inner) + TAG_LEN bytes.
        """
        counter = next(self._nonces)
        if counter >= REJECT_AFTER_MESSAGES:
            raise CryptoError("session exhausted its nonces; a new handshake is required")
        self.send_counter = counter + 1  # for rekey decisions only; never the nonce source
        n = len(inner)
        end = offset + DATA_HEADER_LEN
        vt = (VERSION << 4) | ptype
        flags |= SEALED_FLAGS
        index = self.remote_index
        # The checksum from the field values directly: each multi-word field contributes its
        # value mod 0xFFFF (2**16 == 1 mod 0xFFFF), so no pass over the packed bytes is needed.
        s = (DATA_CONST + (vt << 8) + n + self.device_id + (counter & 0xFFFF) + flags
             + index + counter) % 0xFFFF
        DATA_HEADER.pack_into(
            out, offset, vt, _HLEN_WORDS, n, self.device_id, counter & 0xFFFF, flags,
            ~(s or 0xFFFF) & 0xFFFF, Option.RECEIVER_INDEX, 4, index, Option.COUNTER, 8, counter,
        )
        if self.native is not None:
            return int(self.native.seal_into(out, offset, inner, vt, flags, counter))
        mv = memoryview(out)
        assert self._send is not None
        self._send.encrypt_into(counter.to_bytes(12, "big"), inner, mv[offset:end],
                                mv[end : end + n + TAG_LEN])
        return DATA_HEADER_LEN + n + TAG_LEN

    def sealing_parts(self) -> tuple[AEAD, Iterator[int], int, int]:
        """(aead, nonce counter, device id, remote index) for a batch sealer that builds the
        data header itself (helper/offload.py, pure-Python path only: a native keypair is
        sealed by the native sealer): it must call ``next()`` on the counter for every
        packet, exactly like :meth:`seal_into`, and advance ``send_counter``."""
        if self._send is None:
            raise CryptoError("a native keypair is sealed by the native core")
        return self._send, self._nonces, self.device_id, self.remote_index

    def seal(self, inner: bytes | bytearray | memoryview, ptype: int = PacketType.DATA,
             flags: int = 0) -> bytearray:
        out = bytearray(DATA_HEADER_LEN + len(inner) + TAG_LEN)
        self.seal_into(out, 0, inner, ptype, flags)
        return out

    def open_sealed(self, header: bytes | memoryview, ciphertext: bytes | memoryview,
                    counter: int) -> bytes:
        """Verify and decrypt; update the replay window only once the tag checked out.

        The window is consulted once, after decryption (as WireGuard does): checking before too
        would save a decryption only for replays, which cost an attacker no more to send than
        forgeries, and it costs a call on every packet.
        """
        if self.native is not None:
            r = self.native.open(header, ciphertext, counter)
            if type(r) is int:
                if r == 1:
                    raise BadTag("authentication tag mismatch (wrong key or tampered packet)")
                raise _replay_error(Verdict.DUPLICATE if r == 2 else Verdict.TOO_OLD)
            inner: bytes = r
        else:
            assert self._recv is not None
            try:
                inner = self._recv.decrypt(counter.to_bytes(12, "big"), ciphertext, header)
            except InvalidTag:
                raise BadTag("authentication tag mismatch (wrong key or tampered packet)") \
                    from None
            verdict = self.replay.update(counter)
            if verdict:
                raise _replay_error(verdict)
        self.receive_count += 1
        self.confirmed = True
        return inner


class NativeWindow:
    """A native keypair's replay window, seen from Python (core/replay.py's interface): the
    same window the native receive path consults, so one keypair never has two."""

    __slots__ = ("_kp",)

    def __init__(self, kp: Any) -> None:
        self._kp = kp

    @property
    def highest(self) -> int:
        return int(self._kp.replay_highest)

    def check(self, counter: int) -> Verdict:
        return Verdict(self._kp.replay_check(counter))

    def update(self, counter: int) -> Verdict:
        return Verdict(self._kp.replay_update(counter))


class BadTag(CryptoError):
    reason = "bad_tag"


class Replayed(ReplayError):
    reason = "replay"


class TooOld(ReplayError):
    reason = "too_old"


class BadHeader(WireError):
    reason = "bad_header"


def _replay_error(verdict: Verdict) -> ReplayError:
    if verdict is Verdict.DUPLICATE:
        return Replayed("duplicate packet counter (replayed packet)")
    if verdict is Verdict.TOO_OLD:
        return TooOld("packet counter is older than the anti-replay window")
    return TooOld("packet counter beyond the session's nonce limit")


def open_data(
    pkt: bytes | bytearray | memoryview,
    lookup: Callable[[int], Keypair | None],
) -> tuple[Keypair, int, int, int, bytes]:
    """Open a sealed DATA/KEEPALIVE/CONTROL packet.

    Returns ``(keypair, ptype, flags, encap_id, inner)``. Raises a subclass of TunsealError with
    a ``reason`` attribute (bad_header, unknown_session, bad_tag, replay, too_old) on any drop.
    """
    mv = memoryview(pkt)
    if (len(mv) >= DATA_HEADER_LEN + TAG_LEN and mv[1] == _HLEN_WORDS
            and mv[12] == Option.RECEIVER_INDEX and mv[13] == 4
            and mv[18] == Option.COUNTER and mv[19] == 8):
        vt, _, n, dev, encap, flags, csum, _, _, index, _, _, counter = DATA_HEADER.unpack_from(mv)
        header = mv[:DATA_HEADER_LEN]
        body = mv[DATA_HEADER_LEN:]
        if vt not in _SEALED_VT:
            raise BadHeader(f"unexpected version/type byte 0x{vt:02x} in a sealed packet")
        if flags & ~_SEALED_ALLOWED or flags & SEALED_FLAGS != SEALED_FLAGS:
            raise BadHeader(f"flags 0x{flags:04x} are not valid for a sealed packet")
        if (DATA_CONST + (vt << 8) + n + dev + encap + flags + csum + index + counter) % 0xFFFF:
            raise BadHeader("header checksum mismatch")
    else:
        try:
            p = wire.parse(mv)
        except WireError as e:
            raise BadHeader(str(e)) from None
        if p.type not in _SEALED_TYPES or p.flags & SEALED_FLAGS != SEALED_FLAGS:
            raise BadHeader(f"{p.type.name} packet with flags 0x{p.flags:04x} is not sealed data")
        if p.flags & ~_SEALED_ALLOWED:  # KEY_PRESENT: refused here as on the fast path
            raise BadHeader(f"flags 0x{p.flags:04x} are not valid for a sealed packet")
        try:
            index = int.from_bytes(p.require(Option.RECEIVER_INDEX), "big")
            counter = int.from_bytes(p.require(Option.COUNTER), "big")
        except WireError as e:
            raise BadHeader(str(e)) from None
        vt, n, encap, flags = mv[0], p.inner_len, p.encap_id, p.flags
        hlen = len(p.header)
        header, body = mv[:hlen], mv[hlen:]
    if len(body) != n + TAG_LEN:
        raise BadHeader(f"OLDPACKETLEN {n} does not match the {len(body)}-byte sealed payload")
    kp = lookup(index)
    if kp is None:
        raise UnknownSession(f"no session with index {index:#010x}")
    inner = kp.open_sealed(header, body, counter)
    return kp, vt & 0xF, flags, encap, inner


_SEALED_TYPES = frozenset((PacketType.DATA, PacketType.KEEPALIVE, PacketType.CONTROL))
_SEALED_ALLOWED = SEALED_FLAGS | int(Flag.CSUM_PARTIAL | Flag.CONTINUATION)
_PLAIN_ALLOWED = int(Flag.CSUM_PARTIAL | Flag.CONTINUATION)
_SEALED_VT = frozenset((VERSION << 4) | t for t in _SEALED_TYPES)


def seal_plain_into(out: bytearray | memoryview, offset: int, inner: bytes | memoryview, *,
                    device_id: int, encap_id: int, ptype: int = PacketType.DATA,
                    flags: int = 0) -> int:
    """`plain` mode: the 12-byte header, checksummed, then the inner packet in the clear."""
    n = len(inner)
    PLAIN_HEADER.pack_into(out, offset, (VERSION << 4) | ptype, FIXED_HEADER_LEN // 4, n,
                           device_id, encap_id & 0xFFFF, flags, 0)
    mv = memoryview(out)
    struct.pack_into("!H", out, offset + 10, _checksum(mv[offset:offset + FIXED_HEADER_LEN]))
    mv[offset + FIXED_HEADER_LEN: offset + FIXED_HEADER_LEN + n] = inner
    return FIXED_HEADER_LEN + n


def open_plain(pkt: bytes | bytearray | memoryview) -> tuple[int, int, int, int, bytes]:
    """Parse a `plain` packet: ``(ptype, device_id, encap_id, flags, inner)``."""
    mv = memoryview(pkt)
    if len(mv) >= FIXED_HEADER_LEN and mv[0] >> 4 == VERSION and mv[1] == FIXED_HEADER_LEN // 4:
        vt, _, n, dev, encap, flags, _ = PLAIN_HEADER.unpack_from(mv)
        if int.from_bytes(mv[:FIXED_HEADER_LEN], "big") % 0xFFFF:
            raise BadHeader("header checksum mismatch")
        if flags & ~_PLAIN_ALLOWED:
            raise BadHeader(f"flags 0x{flags:04x} are not valid for a plain packet")
        if vt & 0xF not in _SEALED_TYPES:
            raise BadHeader(f"packet type {vt & 0xF} is not data in plain mode")
        body = mv[FIXED_HEADER_LEN:]
    else:
        try:
            p = wire.parse(mv)
        except WireError as e:
            raise BadHeader(str(e)) from None
        if p.flags & ~_PLAIN_ALLOWED or p.type not in _SEALED_TYPES:
            raise BadHeader(f"{p.type.name} packet with flags 0x{p.flags:04x} is not plain data")
        vt, n, dev, encap, flags = mv[0], p.inner_len, p.device_id, p.encap_id, p.flags
        body = mv[len(p.header):]
    if len(body) != n:
        raise BadHeader(f"OLDPACKETLEN {n} does not match the {len(body)}-byte payload")
    return vt & 0xF, dev, encap, flags, bytes(body)
