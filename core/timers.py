"""Every protocol timer of a peer, in one place (as wireguard-go's ``device/timers.go``).

The endpoint and the data path tell a peer what happened through the ``on_*`` hooks below (a
packet went out, data went out, an authenticated packet arrived, an initiation was sent, a
handshake completed); the hooks are the only code that moves a peer's timestamps. The
decisions that read them (is a keepalive due, a rekey, a retry; has the peer gone silent;
which keypairs expired) are the methods beside them. helper/timers.py is the thread that asks
these questions every TICK; path probes keep their own schedule in core/probe.py (PathState).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from core.constants import (
    KEEPALIVE_TIMEOUT,
    REJECT_AFTER_MESSAGES,
    REKEY_ATTEMPT_TIME,
    REKEY_TIMEOUT,
)
from core.handshake import retry_due

if TYPE_CHECKING:
    from core.handshake import Initiator
    from core.peer import IndexTable, RekeyPolicy
    from core.session import Keypair

log = logging.getLogger(__name__)


class Timestamps:
    """What every peer, plain or sealed, records as packets come and go."""

    def __init__(self) -> None:
        self.last_sent = 0.0
        self.last_received = 0.0
        self.last_data = 0.0
        """Last DATA packet either way: what makes a tunnel "active" (keepalives and probes
        do not, or two idle ends would keep each other awake forever)."""
        self.last_data_received = 0.0
        self.owes_keepalive = False
        """Data arrived and nothing went back since: a passive keepalive is due after
        KEEPALIVE_TIMEOUT, so the sender knows the session still works (WireGuard's rule)."""

    def on_packet_sent(self, now: float) -> None:
        """Any sealed or plain packet went to the peer (it answers whatever data it sent)."""
        self.last_sent = now
        self.owes_keepalive = False

    def on_data_sent(self, now: float) -> None:
        """A DATA packet (or a batch of them) went to the peer."""
        self.last_sent = self.last_data = now
        self.owes_keepalive = False

    def on_data_queued(self, now: float) -> None:
        """There is data for the peer, sent or staged until a session is up."""
        self.last_data = now

    def on_authenticated_received(self, now: float, *, data: bool) -> None:
        """A packet from the peer opened (or a plain one from its DeviceID arrived); ``data``:
        it carried DATA, not a keepalive or a CONTROL message."""
        self.last_received = now
        if data:
            self.last_data = self.last_data_received = now
            self.owes_keepalive = True


class PeerTimers(Timestamps):
    """The handshake schedule of a sealed peer (core/peer.py's Peer): retries, rekeys,
    keepalives and expiry, decided from the timestamps its hooks keep."""

    if TYPE_CHECKING:  # what the decisions read of the Peer they are part of
        name: str
        keepalive: float
        initiates: bool
        policy: RekeyPolicy
        current: Keypair | None
        previous: Keypair | None
        next: Keypair | None
        pending: Initiator | None
        staged: deque[bytes]
        _clock: Callable[[], float]
        _indices: IndexTable

        def begin_handshake(self) -> bytes: ...

    def __init__(self) -> None:
        super().__init__()
        self.last_initiation = 0.0
        """When the latest initiation went out: the retry timer runs from it, not from
        ``last_sent``, which data packets on the old session keep moving."""
        self.attempt_started: float | None = None

    # --- events ------------------------------------------------------------------------------

    def on_initiation_sent(self, now: float) -> None:
        if self.attempt_started is None:
            self.attempt_started = now
        self.last_sent = self.last_initiation = now

    def on_handshake_complete(self) -> None:
        """Our initiation was answered: the attempt is over."""
        self.attempt_started = None

    def on_response_sent(self, now: float) -> None:
        """We answered the peer's initiation."""
        self.last_sent = now

    def on_response_received(self, now: float) -> None:
        self.last_received = now

    # --- decisions ---------------------------------------------------------------------------

    def expired(self, kp: Keypair) -> bool:
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
            if retry_due(self.last_initiation, now):
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

    def expire(self) -> None:
        """Forget every keypair that may no longer be used (called from the timer)."""
        for attr in ("previous", "current", "next"):
            kp = getattr(self, attr)
            if kp is not None and self.expired(kp):
                self._indices.release(kp.local_index)
                setattr(self, attr, None)
