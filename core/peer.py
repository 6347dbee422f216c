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
from dataclasses import dataclass, field

from core import handshake
from core.constants import (
    COOKIE_SECRET_LIFETIME,
    KEEPALIVE_TIMEOUT,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_ATTEMPT_TIME,
    REKEY_TIMEOUT,
    ROTATING_REKEY_AFTER_MESSAGES,
    ROTATING_REKEY_AFTER_TIME,
    Mode,
)
from core.errors import HandshakeError
from core.handshake import Identity, Initiator, Suite
from core.probe import PathState
from core.session import Keypair

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
    drops: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1


class Peer:
    """One remote end of a tunnel in a handshaking mode (psk, rotating, ephemeral)."""

    def __init__(self, name: str, suite: Suite, ident: Identity, *, device_id: int,
                 indices: IndexTable, clock: Callable[[], float], policy: RekeyPolicy,
                 keepalive: float = 0.0, initiates: bool = True, origin: bytes | None = None,
                 last_timestamp: bytes = b"",
                 on_timestamp: Callable[[bytes], None] | None = None):
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
        self.last_sent = 0.0
        self.last_received = 0.0
        self.last_data = 0.0
        """Last DATA packet either way: what makes a tunnel "active" (keepalives and probes
        do not, or two idle ends would keep each other awake forever)."""
        self.last_data_received = 0.0
        self.owes_keepalive = False
        """Data arrived and nothing went back since: a passive keepalive is due after
        KEEPALIVE_TIMEOUT, so the sender knows the session still works (WireGuard's rule)."""
        self.last_initiation = 0.0
        """When the latest initiation went out: the retry timer runs from it, not from
        ``last_sent``, which data packets on the old session keep moving."""
        self.attempt_started: float | None = None
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
        if self.attempt_started is None:
            self.attempt_started = now
        self.last_sent = self.last_initiation = now
        return self.pending.packet

    def consume_response(self, packet: bytes) -> Keypair:
        if self.pending is None:
            raise HandshakeError("handshake response without an initiation in flight")
        done = self.pending.consume_response(packet)
        if Mode(self.suite.mode).uses_static_keys and done.remote_static != self.ident.peer_public:
            raise HandshakeError("response came from a different static key")
        kp = self._install(done)
        self.pending = None
        self.attempt_started = None
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
        self.last_sent = self._clock()
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

    def received_with(self, kp: Keypair) -> None:
        """Called after a packet opened with ``kp``: confirms a responder's next keypair."""
        self.last_received = self._clock()
        if kp is self.next:
            self._rotate_in(kp)

    # --- sending ---------------------------------------------------------------------------

    def sending_keypair(self) -> Keypair | None:
        """The keypair to seal with now, or None (stage the packet and start a handshake)."""
        kp = self.current
        if kp is None or not kp.confirmed:
            return None
        if self._expired(kp):
            return None
        return kp

    def _expired(self, kp: Keypair) -> bool:
        limit = self.policy.reject_after_time
        age = self._clock() - kp.created
        return (limit is not None and age >= limit) or kp.send_counter >= REJECT_AFTER_MESSAGES

    def wants_rekey(self) -> bool:
        """Time or message count says this end should start a new handshake."""
        if self.pending is not None or not self.initiates:
            return False
        kp = self.current
        if kp is None:
            # No session: a handshake starts when there is something to send (Endpoint.seal),
            # never from the timer alone, so a peer that gave up stays quiet until needed.
            return False
        age = self._clock() - kp.created
        if kp.send_counter >= self.policy.after_messages:
            return True
        # The initiator of the current keypair rekeys on time; the responder waits a little
        # longer so both ends do not start a handshake at the same moment.
        slack = 0.0 if kp.is_initiator else KEEPALIVE_TIMEOUT + REKEY_TIMEOUT
        return age >= self.policy.after_time + slack

    def handshake_due(self) -> bytes | None:
        """Timer work: a retry or a rekey initiation, or None. Call about once a second."""
        now = self._clock()
        if self.pending is not None:
            if self.attempt_started is not None and now - self.attempt_started > REKEY_ATTEMPT_TIME:
                log.info("peer %s: giving up handshaking after %.0f s", self.name,
                         now - self.attempt_started)
                self._indices.release(self.pending.local_index)
                self.pending, self.attempt_started = None, None
                self.staged.clear()
                return None
            if handshake.retry_due(self.last_initiation, now):
                return self.begin_handshake()
            return None
        if self.initiates and (self.wants_rekey() or self._silent_peer(now)):
            return self.begin_handshake()
        return None

    def _silent_peer(self, now: float) -> bool:
        """We sent data but heard nothing for KEEPALIVE + REKEY_TIMEOUT: the peer may have lost
        our session (restarted); a new handshake recovers without waiting for expiry."""
        if self.current is None:
            return False
        return (self.last_sent - self.last_received > KEEPALIVE_TIMEOUT + REKEY_TIMEOUT
                and now - self.last_received > KEEPALIVE_TIMEOUT + REKEY_TIMEOUT)

    def keepalive_due(self) -> bool:
        now = self._clock()
        kp = self.current
        if kp is None or not kp.confirmed:
            return False
        if self.keepalive and now - self.last_sent >= self.keepalive:
            return True
        # The keepalive that confirms a new session (Endpoint._receive_resp) may be lost, and an
        # idle initiator sends nothing else: the responder would hold a session it may not send
        # with until we have data. Repeat it while nothing came back with the session, every
        # REKEY_TIMEOUT, twice at most (the responder need not answer: a keepalive alone never
        # causes one).
        if (kp.is_initiator and kp.receive_count == 0 and now - self.last_sent >= REKEY_TIMEOUT
                and now - kp.created < 2.5 * REKEY_TIMEOUT):
            return True
        # Passive keepalive: we received data (not a keepalive: that would ping-pong forever)
        # but have sent nothing back for a while.
        return self.owes_keepalive and now - self.last_data_received >= KEEPALIVE_TIMEOUT

    def note_sent(self) -> None:
        self.last_sent = self._clock()
        self.owes_keepalive = False

    def expire(self) -> None:
        """Forget every keypair that may no longer be used (called from the timer)."""
        for attr in ("previous", "current", "next"):
            kp = getattr(self, attr)
            if kp is not None and self._expired(kp):
                self._indices.release(kp.local_index)
                setattr(self, attr, None)

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
