"""CONTROL messages and the per-peer soft state they feed (RFC 2003 §4's "soft state").

A CONTROL packet is sealed like data (or sent in the clear in `plain` mode); its payload starts
with a one-byte :class:`~core.constants.ControlKind`:

- PROBE: ``kind | probe id (u32) | sender's send time (u64, ns) | padding``. The padding makes a
  probe as large as the path MTU being tested.
- PROBE_REPLY: ``kind | probe id | send time echoed | probed inner size (u16)``.
- ICMP_RELAY: ``kind | ICMP message for the far end to deliver to its inner sender``.

:class:`PathState` turns probe round trips into RTT (smoothed as in RFC 6298), a loss estimate
(the share of the last LOSS_WINDOW probes that went unanswered), reachability, and the
tunnel MTU the path currently carries.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass

from core.constants import ControlKind
from core.errors import WireError

PROBE = struct.Struct("!BIQ")
REPLY = struct.Struct("!BIQH")
PROBE_INTERVAL = 2.0
"""Seconds between probes while the tunnel carries traffic (or has keepalives enabled)."""
ACTIVE_WINDOW = 10.0
"""A tunnel that sent or received anything in this many seconds counts as active."""
UNREACHABLE_AFTER = 6.0
"""No answer to probes and no packet at all for this long: the peer is unreachable. With the
2 s probe interval a dead peer is reported within 6-8 s."""
LOSS_WINDOW = 32
MTU_PROBE_INTERVAL = 60.0
"""After the path MTU went down, try the configured MTU again this often (it may come back)."""
MTU_FLOOR_IPV4 = 576
"""The smallest tunnel MTU a path report may set: every IPv4 host must take 576-byte packets
(RFC 791), and a report below it is broken or forged."""
MTU_FLOOR_IPV6 = 1280
"""The floor when the tunnel carries IPv6: IPv6 needs 1280 on every link (RFC 8200 section 5),
and Linux removes every IPv6 address and route from a link set below it, without putting them
back when the MTU rises again. One "fragmentation needed" (or a forged one) would otherwise cut
IPv6 through the tunnel until the next `up`. Inner packets the path cannot carry at 1280 are
lost instead, which IPv6 hosts handle like any loss."""


@dataclass(frozen=True, slots=True)
class Probe:
    probe_id: int
    sent_ns: int
    size: int


def encode_probe(probe_id: int, sent_ns: int, size: int = PROBE.size) -> bytes:
    """A PROBE payload of exactly ``size`` bytes (at least the 13-byte fixed part)."""
    body = PROBE.pack(ControlKind.PROBE, probe_id & 0xFFFFFFFF, sent_ns)
    return body + bytes(max(0, size - len(body)))


def encode_reply(probe: Probe) -> bytes:
    return REPLY.pack(ControlKind.PROBE_REPLY, probe.probe_id, probe.sent_ns, probe.size)


def encode_icmp_relay(icmp: bytes) -> bytes:
    return bytes((ControlKind.ICMP_RELAY,)) + icmp


def decode(payload: bytes) -> tuple[ControlKind, Probe | bytes]:
    """Parse a CONTROL payload; WireError for anything malformed."""
    if not payload:
        raise WireError("empty CONTROL payload")
    kind = payload[0]
    if kind == ControlKind.PROBE:
        if len(payload) < PROBE.size:
            raise WireError("truncated PROBE")
        _, pid, sent = PROBE.unpack_from(payload)
        return ControlKind.PROBE, Probe(pid, sent, len(payload))
    if kind == ControlKind.PROBE_REPLY:
        if len(payload) != REPLY.size:
            raise WireError("PROBE_REPLY has the wrong length")
        _, pid, sent, size = REPLY.unpack_from(payload)
        return ControlKind.PROBE_REPLY, Probe(pid, sent, size)
    if kind == ControlKind.ICMP_RELAY:
        if len(payload) < 9:
            raise WireError("truncated ICMP_RELAY")
        return ControlKind.ICMP_RELAY, payload[1:]
    raise WireError(f"unknown CONTROL kind {kind}")


class PathState:
    """What one end knows about the path to one peer. Times are monotonic seconds."""

    def __init__(self, *, mtu: int, now: float, ipv6: bool = False):
        self.configured_mtu = mtu
        self.mtu = mtu
        self.min_mtu = MTU_FLOOR_IPV6 if ipv6 else MTU_FLOOR_IPV4
        """:meth:`lower_mtu` never goes below this (raised when the tunnel gains IPv6)."""
        self.srtt: float | None = None
        self.rttvar = 0.0
        self._outstanding: dict[int, tuple[float, int]] = {}
        self._results: deque[bool] = deque(maxlen=LOSS_WINDOW)
        self._next_id = 1
        self.last_probe = 0.0
        self.last_answer = now
        self.last_mtu_drop = 0.0
        self.asking_since = now
        self.reachable = True

    # --- probing -----------------------------------------------------------------------------

    def probe_due(self, now: float, *, active: bool) -> bool:
        return active and now - self.last_probe >= PROBE_INTERVAL

    def mtu_probe_size(self, now: float) -> int | None:
        """Inner size of an MTU probe to send now, or None: after a drop, retry the configured
        MTU every MTU_PROBE_INTERVAL so a path that recovered gets its full MTU back."""
        if self.mtu < self.configured_mtu and now - self.last_mtu_drop >= MTU_PROBE_INTERVAL:
            self.last_mtu_drop = now
            return self.configured_mtu
        return None

    def new_probe(self, now: float, size: int = PROBE.size) -> tuple[int, int]:
        """Register a probe about to be sent; returns (probe id, send time in ns)."""
        self._expire(now)
        pid = self._next_id
        self._next_id = (pid + 1) & 0xFFFFFFFF or 1
        self._outstanding[pid] = (now, size)
        if self.last_probe <= self.last_answer:
            self.asking_since = now  # the first probe since the last answer
        self.last_probe = now
        return pid, int(now * 1e9)

    def on_reply(self, probe: Probe, now: float) -> None:
        sent = self._outstanding.pop(probe.probe_id, None)
        if sent is None:
            return  # unknown or too late: already counted as lost
        t0, size = sent
        sample = max(0.0, now - t0)
        if self.srtt is None:
            self.srtt, self.rttvar = sample, sample / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - sample)
            self.srtt = 0.875 * self.srtt + 0.125 * sample
        self._results.append(True)
        self.last_answer = now
        self.reachable = True
        if size > self.mtu:
            self.mtu = min(size, self.configured_mtu)  # a larger probe made it through

    def heard(self, now: float) -> None:
        """Any authenticated packet from the peer proves it is reachable."""
        self.last_answer = now
        self.reachable = True

    def _expire(self, now: float) -> None:
        timeout = max(1.0, 2 * (self.srtt or 0.5) + 4 * self.rttvar)
        for pid, (t0, _size) in list(self._outstanding.items()):
            if now - t0 > timeout:
                del self._outstanding[pid]
                self._results.append(False)

    def update(self, now: float) -> bool:
        """Refresh loss and reachability; True if reachability changed.

        Unreachable means: we asked (a probe went out after the last answer) and nothing came
        back for UNREACHABLE_AFTER. An idle tunnel that sends no probes keeps its last verdict:
        silence we did not ask about is not loss."""
        self._expire(now)
        was = self.reachable
        asked = self.last_probe > self.last_answer
        self.reachable = not (asked and now - self.asking_since >= UNREACHABLE_AFTER)
        return was != self.reachable

    @property
    def loss(self) -> float | None:
        if not self._results:
            return None
        return self._results.count(False) / len(self._results)

    @property
    def rtt_ms(self) -> float | None:
        return None if self.srtt is None else self.srtt * 1000.0

    def lower_mtu(self, mtu: int, now: float) -> bool:
        """The path said the tunnel must carry at most ``mtu``; True if that is news. Never
        below :attr:`min_mtu` (see MTU_FLOOR_IPV6)."""
        mtu = max(mtu, self.min_mtu)
        if mtu >= self.mtu:
            return False
        self.mtu = mtu
        self.last_mtu_drop = now
        return True
