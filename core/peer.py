"""The protocol state of one peer: its keypairs, its handshake, and when to rekey.

Pure logic with an injected clock: it never touches a socket. The helper's engine feeds it
packets and timer ticks and sends what it returns; tests drive two of them back to back.

Keypairs rotate as in WireGuard: ``current`` seals outgoing packets, ``previous`` still opens
packets that were in flight during a rekey, and ``next`` is a keypair this end answered a
handshake for but the initiator has not used yet (it becomes current when its first packet
arrives). Nothing is dropped across a rekey.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from core import handshake
from core.constants import (
    COOKIE_SECRET_LIFETIME,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    ROTATING_REKEY_AFTER_MESSAGES,
    ROTATING_REKEY_AFTER_TIME,
    Mode,
)
from core.errors import HandshakeError
from core.handshake import Identity, Initiator, Suite
from core.probe import PathState
from core.session import Keypair
from core.timers import PeerTimers

log = logging.getLogger(__name__)

Address = tuple[str, int] | tuple[str, int, int, int]
"""A peer's outer address as the socket module gives it: (host, port) for IPv4, with flow info
and scope ID for IPv6. helper/transport.py sends to and receives from these."""

MAX_STAGED = 256
"""Packets held while a handshake is under way; the oldest are dropped beyond this."""


@dataclass(frozen=True, slots=True)
class RekeyPolicy:
    after_time: float
    after_messages: int
    reject_after_time: float | None
    """None: a session never expires by age (``psk`` mode without rotation)."""

    @classmethod
    def for_mode(cls, mode: str, *, rotate_seconds: float | None = None,
                 rotate_messages: int | None = None) -> RekeyPolicy:
        if mode == Mode.EPHEMERAL:
            return cls(REKEY_AFTER_TIME, REKEY_AFTER_MESSAGES, REJECT_AFTER_TIME)
        if mode == Mode.ROTATING:
            t = rotate_seconds or ROTATING_REKEY_AFTER_TIME
            # A rotating session is refused once it is 1.5 rekey periods old, so a peer that
            # stopped rekeying is noticed rather than trusted forever.
            return cls(t, rotate_messages or ROTATING_REKEY_AFTER_MESSAGES, t * 1.5)
        if mode == Mode.PSK:
            return cls(float("inf"), REKEY_AFTER_MESSAGES, None)
        raise HandshakeError(f"mode {str(mode)!r} has no sessions to rekey")


class IndexTable:
    """Session indices chosen by this end, mapping to their keypair and peer.

    Random 32-bit values: an index reveals nothing and a stale packet for a forgotten session
    very likely names no live one.
    """

    def __init__(self) -> None:
        self._table: dict[int, tuple[Keypair | None, Peer | None]] = {}

    def allocate(self, peer: Peer | None) -> int:
        for _ in range(64):
            index = int.from_bytes(os.urandom(4), "big")
            if index and index not in self._table:
                self._table[index] = (None, peer)
                return index
        raise HandshakeError("could not allocate a free session index")

    def bind(self, index: int, keypair: Keypair, peer: Peer) -> None:
        self._table[index] = (keypair, peer)

    def release(self, index: int) -> None:
        self._table.pop(index, None)

    def keypair(self, index: int) -> Keypair | None:
        entry = self._table.get(index)
        return entry[0] if entry else None

    def peer(self, index: int) -> Peer | None:
        entry = self._table.get(index)
        return entry[1] if entry else None

    def __len__(self) -> int:
        return len(self._table)


@dataclass(slots=True)
class PeerStats:
    rx_bytes: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    tx_packets: int = 0
    handshakes: int = 0
    last_handshake: float | None = None


class Peer(PeerTimers):
    """One remote end of a tunnel in a handshaking mode (psk, rotating, ephemeral). Its
    timestamps and timer decisions are core/timers.py's."""

    def __init__(self, name: str, suite: Suite, ident: Identity, *, device_id: int,
                 indices: IndexTable, clock: Callable[[], float], policy: RekeyPolicy,
                 keepalive: float = 0.0, initiates: bool = True, origin: bytes | None = None,
                 last_timestamp: bytes = b"",
                 on_timestamp: Callable[[bytes], None] | None = None):
        super().__init__()
        self.name = name
        self.suite = suite
        self.ident = ident
        self.device_id = device_id
        self.policy = policy
        self.keepalive = keepalive
        self.initiates = initiates
        """False for a listening end that has no endpoint for this peer until it is contacted."""
        self.stats = PeerStats()
        self.current: Keypair | None = None
        self.previous: Keypair | None = None
        self.next: Keypair | None = None
        self.pending: Initiator | None = None
        self.origin = origin
        """This end's origin ID, carried by its psk-mode initiations (PROTOCOL.md 8.2)."""
        self.last_timestamp = last_timestamp
        """The newest initiation timestamp accepted from this peer: what a replayed initiation
        must beat. Seeded from the helper's persisted memory, so a restart does not reset it."""
        self.on_timestamp = on_timestamp
        """Told each newly accepted timestamp, to persist it."""
        self.cookie: bytes | None = None
        self.cookie_time = 0.0
        self.staged: deque[bytes] = deque(maxlen=MAX_STAGED)
        self.endpoint: Address | None = None
        """Where to send: the outer address of the last authenticated packet (roaming)."""
        self.path: PathState | None = None
        """Soft state about the path to this peer (RTT, loss, MTU), kept by the engine."""
        self._indices = indices
        self._clock = clock

    def __repr__(self) -> str:
        return f"Peer({self.name!r}, {self.suite.mode})"

    # --- handshake -------------------------------------------------------------------------

    def begin_handshake(self) -> bytes:
        """A fresh initiation packet (also used for retries: each retry is a new attempt)."""
        now = self._clock()
        if self.pending is not None:
            self._indices.release(self.pending.local_index)
        index = self._indices.allocate(self)
        fresh = self.cookie and now - self.cookie_time < COOKIE_SECRET_LIFETIME
        cookie = self.cookie if fresh else None
        self.pending = Initiator(self.suite, self.ident, device_id=self.device_id,
                                 local_index=index, now=_wallclock(), cookie=cookie,
                                 origin=self.origin)
        self.on_initiation_sent(now)
        return self.pending.packet

    def consume_response(self, packet: bytes) -> Keypair:
        if self.pending is None:
            raise HandshakeError("handshake response without an initiation in flight")
        done = self.pending.consume_response(packet)
        if Mode(self.suite.mode).uses_static_keys and done.remote_static != self.ident.peer_public:
            raise HandshakeError("response came from a different static key")
        kp = self._install(done)
        self.pending = None
        self.on_handshake_complete()
        return kp

    def consume_cookie(self, packet: bytes) -> None:
        if self.pending is None:
            raise HandshakeError("cookie reply without an initiation in flight")
        key = self.ident.cookie_key_for(self.ident.peer_public)
        self.cookie = handshake.open_cookie_reply(packet, key, self.pending)
        self.cookie_time = self._clock()

    def accept_response(self, resp: handshake.Responded) -> bytes:
        """Adopt the keypair of a handshake this end answered; return the response to send.

        The caller (the Responder) already matched the initiation to this peer; here the
        initiation's timestamp must be newer than any seen, which defeats replayed initiations.
        """
        if resp.timestamp <= self.last_timestamp:
            self._indices.release(resp.completed.local_index)
            raise HandshakeError("replayed handshake initiation (timestamp not newer)")
        self.last_timestamp = resp.timestamp
        if self.on_timestamp is not None:
            self.on_timestamp(resp.timestamp)
        self._install(resp.completed)
        self.on_response_sent(self._clock())
        return resp.packet

    def _install(self, done: handshake.Completed) -> Keypair:
        now = self._clock()
        kp = Keypair(cipher=self.suite.cipher, send_key=done.send_key, recv_key=done.recv_key,
                     local_index=done.local_index, remote_index=done.remote_index,
                     device_id=self.device_id, is_initiator=done.is_initiator, created=now)
        self._indices.bind(done.local_index, kp, self)
        if done.is_initiator:
            self._rotate_in(kp)
        else:
            if self.next is not None:
                self._indices.release(self.next.local_index)
            self.next = kp
        self.stats.handshakes += 1
        self.stats.last_handshake = _wallclock()
        return kp

    def _rotate_in(self, kp: Keypair) -> None:
        if self.previous is not None:
            self._indices.release(self.previous.local_index)
        self.previous, self.current = self.current, kp
        if self.next is kp:
            self.next = None

    def received_with(self, kp: Keypair, *, data: bool = False) -> None:
        """Called after a packet opened with ``kp`` (``data``: a DATA packet): confirms a
        responder's next keypair."""
        self.on_authenticated_received(self._clock(), data=data)
        if kp is self.next:
            self._rotate_in(kp)

    # --- sending ---------------------------------------------------------------------------

    def sending_keypair(self) -> Keypair | None:
        """The keypair to seal with now, or None (stage the packet and start a handshake)."""
        kp = self.current
        if kp is None or not kp.confirmed:
            return None
        if self.expired(kp):
            return None
        return kp

    def forget_all(self) -> None:
        for kp in (self.previous, self.current, self.next):
            if kp is not None:
                self._indices.release(kp.local_index)
        if self.pending is not None:
            self._indices.release(self.pending.local_index)
        self.previous = self.current = self.next = None
        self.pending = None
        self.staged.clear()

    @property
    def state(self) -> str:
        if self.sending_keypair() is not None:
            return "up"
        if self.pending is not None:
            return "handshaking"
        return "connecting" if self.initiates else "waiting"


def _wallclock() -> float:
    # TAI64N timestamps must grow across restarts, so they come from the wall clock, never
    # from the (monotonic, per-boot) engine clock.
    import time

    return time.time()
