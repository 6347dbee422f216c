"""One tunnel end's protocol machinery without I/O: peers, sessions, handshakes, dispatch.

The helper's engine owns sockets and TUN devices and asks an Endpoint what to do with each
packet; tests run two Endpoints back to back in one process. The helper's data path
(helper/datapath.py) opens sealed data itself, finding the keypair through
:attr:`Endpoint.indices`, and comes here for everything else.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from core import handshake, session, wire
from core.constants import FIXED_HEADER_LEN, Mode, Option, PacketType
from core.errors import CryptoError, HandshakeError, ReplayError, TunsealError, WireError
from core.handshake import Identity, Suite
from core.peer import Address, IndexTable, Peer, PeerStats, RekeyPolicy
from core.probe import PathState
from core.responder import ANY_DEVICE, Refused, Responder
from core.timers import Timestamps

if TYPE_CHECKING:
    from core.enrol import EnrolGate


class HandshakeMemory(Protocol):
    """What an end keeps across restarts to defeat replayed and reflected initiations: its
    origin ID and, per peer, the newest initiation timestamp it accepted (the helper's is
    helper/handshakestate.py; without one an Endpoint remembers only while it lives)."""

    @property
    def origin(self) -> bytes: ...

    def newest(self, peer: str, credential: bytes) -> bytes:
        """The newest timestamp accepted from ``peer`` while it had ``credential``, or b""."""
        ...

    def accepted(self, peer: str, credential: bytes, timestamp: bytes) -> None: ...


class PlainPeer(Timestamps):
    """A peer in `plain` mode: no keys, no handshake; known by its DeviceID."""

    def __init__(self, name: str, *, device_id: int, remote_device_id: int):
        super().__init__()
        self.name = name
        self.device_id = device_id
        self.remote_device_id = remote_device_id
        self.stats = PeerStats()
        self.endpoint: Address | None = None
        self.encap = 0
        self.path: PathState | None = None

    @property
    def state(self) -> str:
        return "up"


AnyPeer = Peer | PlainPeer


@dataclass(slots=True)
class Inbound:
    """What one received packet amounts to."""

    peer: AnyPeer | None = None
    inner: bytes | None = None
    """An inner packet for the TUN device (None for handshakes, keepalives, drops)."""
    ptype: int = 0
    flags: int = 0
    encap_id: int = 0
    control: bytes | None = None
    """The payload of a CONTROL packet (probe, probe reply, ICMP relay) for the engine."""
    replies: list[bytes] = field(default_factory=list)
    """Packets to send back to the packet's source."""
    roam: bool = False
    """The packet proves the peer sends from its source address now (a sealed packet that
    opened, or any plain packet): the peer's endpoint may move there. Never set for handshake
    packets: an initiation can be a replay, and one alone must not redirect a tunnel."""
    drop: str | None = None
    """Why the packet was dropped (the drop counter's name), or None."""
    detail: str = ""


class Endpoint:
    def __init__(self, mode: str, cipher: str, *, device_id: int,
                 static_private: bytes | None = None, has_psk: bool = False,
                 clock: Callable[[], float] = time.monotonic,
                 memory: HandshakeMemory | None = None):
        self.mode = mode
        self.cipher = cipher
        self.device_id = device_id
        self.clock = clock
        self.indices = IndexTable()
        self.peers: list[AnyPeer] = []
        self.drops: dict[str, int] = {}
        self.suite: Suite | None = None
        self.responder: Responder | None = None
        self._plain_by_device: dict[int, PlainPeer] = {}
        self.enrolment: EnrolGate | None = None
        """A gateway that takes enrolments (core/enrol.py) sets this; otherwise ENROL packets
        are dropped like any packet of no use here."""
        self.memory = memory
        self.origin = memory.origin if memory is not None else handshake.new_origin()
        """This end's origin ID: its initiations carry it, its responder refuses it."""
        if mode != Mode.PLAIN:
            self.suite = Suite(mode, cipher, has_psk or Mode(mode).needs_psk)
            self.responder = Responder(self.suite, own_static=static_private,
                                       device_id=device_id, indices=self.indices, clock=clock,
                                       origin=self.origin)

    def add_peer(self, name: str, ident: Identity, *, remote_device_id: int, initiates: bool,
                 keepalive: float = 0.0, policy: RekeyPolicy | None = None) -> AnyPeer:
        p: AnyPeer
        if self.suite is None:
            p = PlainPeer(name, device_id=self.device_id, remote_device_id=remote_device_id)
            self._plain_by_device[remote_device_id] = p
        else:
            assert self.responder is not None
            memory, credential = self.memory, ident.fingerprint
            p = Peer(name, self.suite, ident, device_id=self.device_id, indices=self.indices,
                     clock=self.clock, policy=policy or RekeyPolicy.for_mode(self.mode),
                     keepalive=keepalive, initiates=initiates, origin=self.origin,
                     last_timestamp=memory.newest(name, credential) if memory else b"",
                     on_timestamp=(lambda ts: memory.accepted(name, credential, ts))
                     if memory else None)
            self.responder.add(p, remote_device_id)
        self.peers.append(p)
        return p

    def remove_peer(self, p: AnyPeer) -> None:
        if isinstance(p, Peer):
            assert self.responder is not None
            self.responder.remove(p)
            p.forget_all()
        else:
            self._plain_by_device.pop(p.remote_device_id, None)
        self.peers.remove(p)

    def plain_peer(self, device_id: int) -> PlainPeer | None:
        """The `plain` peer a packet with this DeviceID comes from (the data path's fast
        receive uses it; a 1:1 tunnel's peer answers to any DeviceID)."""
        return self._plain_by_device.get(device_id) or self._plain_by_device.get(ANY_DEVICE)

    def count(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1

    # --- outbound --------------------------------------------------------------------------

    def seal(self, p: AnyPeer, inner: bytes, ptype: int = PacketType.DATA,
             flags: int = 0) -> list[bytes]:
        """Packets to send to ``p`` for ``inner``: the sealed packet, or a handshake initiation
        (the inner packet is staged until the session is up), or nothing."""
        if isinstance(p, PlainPeer):
            out = bytearray(FIXED_HEADER_LEN + len(inner))
            session.seal_plain_into(out, 0, inner, device_id=p.device_id, encap_id=p.encap,
                                    ptype=ptype, flags=flags)
            p.encap = (p.encap + 1) & 0xFFFF
            if ptype == PacketType.DATA:
                p.on_data_sent(self.clock())
            else:
                p.on_packet_sent(self.clock())
            return [bytes(out)]
        kp = p.sending_keypair()
        if ptype == PacketType.DATA:
            p.on_data_queued(self.clock())
        if kp is not None:
            p.on_packet_sent(self.clock())
            packets = [bytes(kp.seal(inner, ptype, flags))]
            if p.wants_rekey():
                packets.append(p.begin_handshake())
            return packets
        if ptype == PacketType.DATA:
            p.staged.append(inner)
        if p.pending is None and p.initiates:
            return [p.begin_handshake()]
        return []

    def tick(self) -> list[tuple[AnyPeer, bytes]]:
        """Timer work for every peer: retries, rekeys, keepalives, expiry."""
        out: list[tuple[AnyPeer, bytes]] = []
        for p in self.peers:
            if not isinstance(p, Peer):
                continue
            p.expire()
            init = p.handshake_due()
            if init is not None:
                out.append((p, init))
            elif p.keepalive_due():
                out.extend((p, pkt) for pkt in self.seal(p, b"", PacketType.KEEPALIVE))
        return out

    # --- inbound ---------------------------------------------------------------------------

    def receive(self, pkt: bytes, source: bytes = b"") -> Inbound:
        """Handle one packet from the outer network. Never raises for bad input."""
        if len(pkt) < FIXED_HEADER_LEN:
            return self._drop("bad_header", "runt packet")
        ptype = pkt[0] & 0x0F
        try:
            if self.suite is None:
                return self._receive_plain(pkt)
            if ptype in (PacketType.DATA, PacketType.KEEPALIVE, PacketType.CONTROL):
                return self._receive_sealed(pkt)
            if ptype == PacketType.HANDSHAKE_INIT:
                return self._receive_init(pkt, source)
            if ptype == PacketType.HANDSHAKE_RESP:
                return self._receive_resp(pkt)
            if ptype == PacketType.COOKIE:
                return self._receive_cookie(pkt)
            if ptype in (PacketType.ENROL, PacketType.ENROL_REPLY):
                return self._receive_enrol(pkt, ptype, source)
            return self._drop("bad_header", f"unknown packet type {ptype}")
        except Refused as e:
            return self._drop(e.reason, str(e))
        except (WireError, CryptoError, ReplayError, HandshakeError) as e:
            return self._drop(getattr(e, "reason", _default_reason(e)), str(e))

    def _drop(self, reason: str, detail: str) -> Inbound:
        self.count(reason)
        return Inbound(drop=reason, detail=detail)

    def _receive_plain(self, pkt: bytes) -> Inbound:
        ptype, dev, encap, flags, inner = session.open_plain(pkt)
        p = self.plain_peer(dev)
        if p is None:
            return self._drop("unknown_peer", f"plain packet from unknown device ID {dev}")
        p.on_authenticated_received(self.clock(), data=ptype == PacketType.DATA)
        p.stats.rx_packets += 1
        p.stats.rx_bytes += len(inner)
        return Inbound(peer=p, inner=inner if ptype == PacketType.DATA else None, ptype=ptype,
                       flags=flags, encap_id=encap,
                       control=inner if ptype == PacketType.CONTROL else None, roam=True)

    def _receive_sealed(self, pkt: bytes) -> Inbound:
        kp, ptype, flags, encap, inner = session.open_data(pkt, self.indices.keypair)
        p = self.indices.peer(kp.local_index)
        assert isinstance(p, Peer)
        was_next = kp is p.next
        p.received_with(kp, data=ptype == PacketType.DATA)
        p.stats.rx_packets += 1
        p.stats.rx_bytes += len(inner)
        result = Inbound(peer=p, inner=inner if ptype == PacketType.DATA else None, ptype=ptype,
                         flags=flags, encap_id=encap,
                         control=inner if ptype == PacketType.CONTROL else None, roam=True)
        if was_next:
            result.replies.extend(self._flush_staged(p))
        return result

    def _flush_staged(self, p: Peer) -> list[bytes]:
        kp = p.sending_keypair()
        if kp is None:
            return []
        out = [bytes(kp.seal(inner)) for inner in p.staged]
        p.staged.clear()
        if out:
            p.on_packet_sent(self.clock())
        return out

    def _receive_init(self, pkt: bytes, source: bytes) -> Inbound:
        assert self.responder is not None
        reply = self.responder.handle(pkt, source)
        if reply.peer is None:
            self.count("cookie_sent")
        return Inbound(peer=reply.peer, replies=[reply.packet])

    def _receive_resp(self, pkt: bytes) -> Inbound:
        handshake.parse_handshake(pkt, PacketType.HANDSHAKE_RESP)  # the header first
        p = self._peer_for_option_index(pkt)
        kp = p.consume_response(pkt)
        p.on_response_received(self.clock())
        replies = self._flush_staged(p)
        if not replies:
            # Confirm the new session at once so the responder can use it (WireGuard does the
            # same with an empty keepalive).
            replies = [bytes(kp.seal(b"", PacketType.KEEPALIVE))]
            p.on_packet_sent(self.clock())
        return Inbound(peer=p, replies=replies)

    def _receive_cookie(self, pkt: bytes) -> Inbound:
        p = self._peer_for_option_index(pkt)
        p.consume_cookie(pkt)
        # A cookie reply is not authenticated by the peer's keys (anyone who saw our
        # initiation could forge one): it must not move the peer's endpoint, so no peer here.
        return Inbound()

    def _receive_enrol(self, pkt: bytes, ptype: int, source: bytes) -> Inbound:
        if self.enrolment is None or ptype != PacketType.ENROL:
            return self._drop("bad_header", "enrolment packet at an end that takes none")
        outcome = self.enrolment.handle(pkt, source)  # Refused: a counted drop
        if outcome.refused is not None:
            self.count("enrol_refused")
        return Inbound(replies=[outcome.reply] if outcome.reply is not None else [])

    def _peer_for_option_index(self, pkt: bytes) -> Peer:
        parsed = wire.parse(pkt)
        index = int.from_bytes(parsed.require(Option.RECEIVER_INDEX), "big")
        p = self.indices.peer(index)
        if p is None or p.pending is None or p.pending.local_index != index:
            raise session.UnknownSession(f"no handshake in flight with index {index:#010x}")
        return p


def _default_reason(e: TunsealError) -> str:
    if isinstance(e, WireError):
        return "bad_header"
    if isinstance(e, ReplayError):
        return "replay"
    if isinstance(e, CryptoError):
        return "bad_tag"
    return "handshake_failed"

