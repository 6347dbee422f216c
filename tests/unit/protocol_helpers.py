"""Builders shared by the core protocol tests: raw headers, keypairs, and two Endpoints wired
back to back on a fake clock.

Everything here builds real objects (real Endpoints, real keys, real AEADs); the only stand-in
is the clock, which the protocol takes as a parameter precisely so tests can drive time.
"""

from __future__ import annotations

import itertools
import os
import struct
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from core import noise, wire
from core.constants import FIXED_HEADER_LEN, VERSION, Option, PacketType
from core.endpoint import AnyPeer, Endpoint, Inbound
from core.handshake import Identity
from core.peer import RekeyPolicy
from core.responder import ANY_DEVICE
from core.session import Keypair

HANDSHAKE_MODES = ("psk", "rotating", "ephemeral")
SOURCE_A = bytes([10, 0, 0, 1, 0xCA, 0xFE])
SOURCE_B = bytes([10, 0, 0, 2, 0xCA, 0xFE])
"""Packed outer addresses the two ends' packets appear to come from."""


class FakeClock:
    """The protocol's injected clock, moved by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# --- raw headers -------------------------------------------------------------------------------


def raw_header(ptype: int = PacketType.DATA, *, options: bytes = b"", inner_len: int = 0,
               device_id: int = 0, encap_id: int = 0, flags: int = 0,
               version: int = VERSION, hlen_words: int | None = None) -> bytes:
    """A header with arbitrary (possibly invalid) fields and ``options`` bytes verbatim, with a
    correct checksum: for the cases :func:`wire.encode_header` refuses to build."""
    if hlen_words is None:
        hlen_words = (FIXED_HEADER_LEN + len(options)) // 4
    hdr = bytearray(wire.FIXED.pack((version << 4) | ptype, hlen_words, inner_len, device_id,
                                    encap_id, flags, 0) + options)
    struct.pack_into("!H", hdr, 10, wire.internet_checksum(hdr))
    return bytes(hdr)


def fix_checksum(packet: bytes | bytearray) -> bytes:
    """Recompute the header checksum of ``packet`` (whatever HLEN says, within the buffer)."""
    buf = bytearray(packet)
    if len(buf) < FIXED_HEADER_LEN:
        return bytes(buf)
    hlen = max(FIXED_HEADER_LEN, min(buf[1] * 4, len(buf) - len(buf) % 2))
    buf[10:12] = b"\0\0"
    struct.pack_into("!H", buf, 10, wire.internet_checksum(buf[:hlen]))
    return bytes(buf)


def ones_complement_sum(data: bytes) -> int:
    """RFC 1071 section 4.1, word by word with end-around carry: the reference the fast
    big-integer implementation is compared with."""
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        while total > 0xFFFF:
            total = (total & 0xFFFF) + (total >> 16)
    return total


# --- mutation fuzzing ------------------------------------------------------------------------


@dataclass(frozen=True)
class Mutation:
    """One edit of a packet: flip a bit, overwrite a byte, truncate, extend, insert or delete.
    ``pos`` wraps around the packet's length, so any drawn value applies to any packet."""

    kind: str
    pos: int
    value: int
    data: bytes

    def apply(self, buf: bytearray) -> None:
        n = max(len(buf), 1)
        pos = self.pos % n
        if self.kind == "flip" and buf:
            buf[pos] ^= 1 << (self.value % 8)
        elif self.kind == "set" and buf:
            buf[pos] = self.value
        elif self.kind == "truncate":
            del buf[pos:]
        elif self.kind == "extend":
            buf += self.data
        elif self.kind == "insert":
            buf[pos:pos] = self.data
        elif self.kind == "delete":
            del buf[pos:pos + 1 + self.value % 8]


mutations = st.lists(st.builds(
    Mutation, kind=st.sampled_from(["flip", "set", "truncate", "extend", "insert", "delete"]),
    pos=st.integers(0, 4095), value=st.integers(0, 255), data=st.binary(min_size=1, max_size=40),
), min_size=1, max_size=4)


def mutate(packet: bytes, ops: list[Mutation], *, repair_checksum: bool = False) -> bytes:
    """``packet`` after ``ops``; with ``repair_checksum`` the header checksum is recomputed so
    the mutation gets past the checksum to the code behind it."""
    buf = bytearray(packet)
    for op in ops:
        op.apply(buf)
    return fix_checksum(buf) if repair_checksum else bytes(buf)


# --- keypairs ----------------------------------------------------------------------------------


def keypair_pair(cipher: str, *, device_id: int = 7, created: float = 0.0) -> tuple[
        Keypair, Keypair, bytes, bytes]:
    """(sender, receiver, sender->receiver key, receiver->sender key) as a handshake leaves
    them: the sender's send key is the receiver's receive key, and each names the other's
    index as its remote index."""
    k1, k2 = os.urandom(32), os.urandom(32)
    i1, i2 = 0x11111111, 0x22222222
    sender = Keypair(cipher=cipher, send_key=k1, recv_key=k2, local_index=i1, remote_index=i2,
                     device_id=device_id, is_initiator=True, created=created)
    receiver = Keypair(cipher=cipher, send_key=k2, recv_key=k1, local_index=i2, remote_index=i1,
                       device_id=device_id, is_initiator=False, created=created)
    return sender, receiver, k1, k2


def start_counter_at(kp: Keypair, counter: int) -> None:
    """Make ``kp`` seal its next packet with nonce ``counter``.

    Tests need counters near 2**64 without sealing 2**64 packets, and Keypair has no public way
    to start elsewhere, so this reaches in: ``send_counter`` (what rekey decisions read) and,
    where the nonces come from a separate thread-safe counter, that counter too.
    """
    kp.send_counter = counter
    if kp.native is not None:  # the native half owns the counter
        kp.native.set_next_counter(counter)
    elif hasattr(kp, "_nonces"):
        kp._nonces = itertools.count(counter)  # type: ignore[attr-defined]


def lookup_of(*keypairs: Keypair) -> Callable[[int], Keypair | None]:
    table = {kp.local_index: kp for kp in keypairs}
    return table.get


def sealed_body(packet: bytes | bytearray) -> bytes:
    """Ciphertext and tag of a sealed packet (everything after the header HLEN declares)."""
    return bytes(packet[packet[1] * 4:])


def keystream(packet: bytes | bytearray, inner: bytes) -> bytes:
    """Ciphertext XOR plaintext: the AEAD keystream the packet's (key, nonce) produced. Two
    packets with equal keystreams were sealed under a reused key and nonce."""
    ct = sealed_body(packet)[: len(inner)]
    return bytes(x ^ y for x, y in zip(ct, inner, strict=True))


def counter_of(packet: bytes | bytearray) -> int:
    return int.from_bytes(wire.parse(packet).require(Option.COUNTER), "big")


def ptype_of(packet: bytes | bytearray) -> int:
    return packet[0] & 0x0F


def is_handshake(packet: bytes | bytearray) -> bool:
    return ptype_of(packet) in (PacketType.HANDSHAKE_INIT, PacketType.HANDSHAKE_RESP,
                                PacketType.COOKIE)


# --- two Endpoints back to back ----------------------------------------------------------------


@dataclass
class Keys:
    static_a: bytes | None
    static_b: bytes | None
    psk: bytes | None

    def identity_for_a(self) -> Identity:
        return Identity(self.static_a, _public(self.static_b), self.psk)

    def identity_for_b(self) -> Identity:
        return Identity(self.static_b, _public(self.static_a), self.psk)


def _public(private: bytes | None) -> bytes | None:
    return noise.public_key(private) if private is not None else None


def make_keys(mode: str, *, psk: bool = True) -> Keys:
    statics = mode == "ephemeral"
    return Keys(
        static_a=noise.generate_private_key() if statics else None,
        static_b=noise.generate_private_key() if statics else None,
        psk=os.urandom(32) if psk or mode in ("psk", "rotating") else None,
    )


def make_endpoint(mode: str, cipher: str, keys: Keys, clock: FakeClock, *, side: str,
                  policy: RekeyPolicy | None = None, keepalive: float = 0.0,
                  any_device: bool = False) -> tuple[Endpoint, AnyPeer]:
    """One end: ``side`` "a" initiates (a client), "b" listens (a server). ``any_device``
    registers the peer under ANY_DEVICE, as the helper does for a tunnel made from a profile
    (the far end's DeviceID unknown)."""
    is_a = side == "a"
    ep = Endpoint(mode, cipher, device_id=1 if is_a else 2,
                  static_private=keys.static_a if is_a else keys.static_b,
                  has_psk=keys.psk is not None, clock=clock)
    ident = keys.identity_for_a() if is_a else keys.identity_for_b()
    remote = ANY_DEVICE if any_device else 2 if is_a else 1
    peer = ep.add_peer("b" if is_a else "a", ident, remote_device_id=remote,
                       initiates=is_a, keepalive=keepalive, policy=policy)
    return ep, peer


@dataclass
class Pair:
    """Endpoint ``a`` (initiates) and ``b`` (listens), a lossless in-order wire between them
    unless a ``lose`` predicate says otherwise, and everything each end delivered to its TUN."""

    mode: str
    cipher: str
    keys: Keys
    clock: FakeClock
    a: Endpoint
    b: Endpoint
    pa: Any
    pb: Any
    """The peers a and b hold for each other: a Peer, or a PlainPeer in plain mode."""
    got: dict[str, list[bytes]] = field(default_factory=lambda: {"a": [], "b": []})
    wire_log: list[tuple[str, bytes]] = field(default_factory=list)
    """Every packet put on the wire, as (sending side, packet), lost ones included."""

    def name(self, ep: Endpoint) -> str:
        return "a" if ep is self.a else "b"

    def deliver(self, src: Endpoint, packets: Iterable[bytes], *,
                lose: Callable[[bytes], bool] | None = None) -> list[Inbound]:
        """Put ``packets`` from ``src`` on the wire and run replies back and forth until the
        wire is quiet. Returns every Inbound either end produced, in order."""
        queue = deque((src, p) for p in packets)
        results: list[Inbound] = []
        while queue:
            s, pkt = queue.popleft()
            self.wire_log.append((self.name(s), pkt))
            if lose is not None and lose(pkt):
                continue
            d = self.b if s is self.a else self.a
            r = d.receive(pkt, SOURCE_A if s is self.a else SOURCE_B)
            results.append(r)
            if r.inner is not None:
                self.got[self.name(d)].append(r.inner)
            queue.extend((d, x) for x in r.replies)
        return results

    def a_to_b(self, inner: bytes, *, flags: int = 0,
               lose: Callable[[bytes], bool] | None = None) -> list[Inbound]:
        return self.deliver(self.a, self.a.seal(self.pa, inner, flags=flags), lose=lose)

    def b_to_a(self, inner: bytes, *, flags: int = 0,
               lose: Callable[[bytes], bool] | None = None) -> list[Inbound]:
        return self.deliver(self.b, self.b.seal(self.pb, inner, flags=flags), lose=lose)

    def tick(self, *, lose: Callable[[bytes], bool] | None = None) -> None:
        """One timer round on both ends, delivering what it sends."""
        for ep in (self.a, self.b):
            for _, pkt in ep.tick():
                self.deliver(ep, [pkt], lose=lose)

    def restart(self, side: str, *, policy: RekeyPolicy | None = None) -> None:
        """Replace one end by a fresh Endpoint with the same long-term keys (a reboot)."""
        ep, peer = make_endpoint(self.mode, self.cipher, self.keys, self.clock, side=side,
                                 policy=policy)
        if side == "a":
            self.a, self.pa = ep, peer
        else:
            self.b, self.pb = ep, peer

    def established(self) -> bool:
        return self.pa.sending_keypair() is not None and self.pb.sending_keypair() is not None


def make_pair(mode: str, cipher: str = "chacha20-poly1305", *, psk: bool = True,
              policy: RekeyPolicy | None = None, keepalive: float = 0.0,
              any_device: bool = False) -> Pair:
    keys = make_keys(mode, psk=psk)
    clock = FakeClock()
    a, pa = make_endpoint(mode, cipher, keys, clock, side="a", policy=policy,
                          keepalive=keepalive, any_device=any_device)
    b, pb = make_endpoint(mode, cipher, keys, clock, side="b", policy=policy,
                          any_device=any_device)
    return Pair(mode, cipher, keys, clock, a, b, pa, pb)


def establish(pair: Pair) -> None:
    """Run one handshake (a initiates) and one packet each way so both ends are confirmed."""
    pair.a_to_b(b"hello b")
    pair.b_to_a(b"hello a")
    assert pair.got["b"][-1] == b"hello b" and pair.got["a"][-1] == b"hello a"


def payload(i: int) -> bytes:
    """A distinct, variable-length inner packet for message number ``i``."""
    return i.to_bytes(4, "big") + bytes([i & 0xFF]) * (i % 97)
