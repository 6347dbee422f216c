"""What a running tunnel learns about the path to its peers, and what it does about it: liveness
and RTT probes, MTU probes, the peer's CONTROL messages, and ICMP errors about our outer packets
(a lower MTU, or an error relayed to the inner sender). The tunnel's MTU is decided here.

One :class:`PathFeedback` per tunnel, built with the tunnel's other parts (helper/tunnel.py);
the data path calls :meth:`control` and :meth:`path_errors` from its receive thread, the tunnel
calls :meth:`probes` from its timer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from core import probe
from core.constants import (
    DATA_HEADER_LEN,
    FIXED_HEADER_LEN,
    TAG_LEN,
    ControlKind,
    Mode,
    PacketType,
    TransportKind,
)
from core.endpoint import AnyPeer, Endpoint
from core.errors import TunsealError
from core.peer import Address, Peer
from core.probe import ACTIVE_WINDOW
from helper import icmp, netdev
from helper.allowedips import AllowedIPs
from helper.datapath import DataPath
from helper.transport import PathError

log = logging.getLogger(__name__)


def outer_overhead(v4: bool, transport: str, mode: str) -> int:
    """Bytes the tunnel adds to an inner packet on the wire."""
    ip = 20 if v4 else 40
    tunseal = DATA_HEADER_LEN + TAG_LEN if Mode(mode).sealed else FIXED_HEADER_LEN
    return ip + TransportKind(transport).header_len + tunseal


def peer_keepalive(peer: AnyPeer) -> float:
    return peer.keepalive if isinstance(peer, Peer) else 0.0


class PathFeedback:
    """Probes, CONTROL handling, path errors and the MTU of one tunnel.

    ``allowed_of(peer)`` gives a peer's networks and ``carries_ipv6()`` whether the tunnel
    carries IPv6 (then its MTU stays at 1280 or more): both change as a gateway's peers come
    and go, so they are asked each time. ``on_mtu`` is called after the MTU changed."""

    def __init__(self, *, name: str, ifname: str, mode: str, transport: str,
                 addresses: tuple[str, ...], endpoint: Endpoint, datapath: DataPath,
                 routes: AllowedIPs[AnyPeer], lock: threading.RLock,
                 allowed_of: Callable[[AnyPeer], tuple[str, ...]],
                 carries_ipv6: Callable[[], bool], on_mtu: Callable[[], None]):
        self.name = name
        self._ifname = ifname
        self._mode = mode
        self._transport = transport
        self._addresses = addresses
        self._endpoint = endpoint
        self._datapath = datapath
        self._routes = routes
        self._lock = lock
        self._allowed_of = allowed_of
        self._carries_ipv6 = carries_ipv6
        self._on_mtu = on_mtu

    def probes(self, peer: AnyPeer, now: float) -> list[bytes]:
        """Liveness/RTT probes while the tunnel is active, and MTU probes after a drop (the
        caller holds the tunnel's lock)."""
        path = peer.path
        if path is None or peer.endpoint is None:
            return []
        if peer.last_received > path.last_answer:
            path.heard(peer.last_received)
        path.update(now)
        if isinstance(peer, Peer) and peer.sending_keypair() is None:
            return []
        # An unreachable peer keeps being probed, so it is seen coming back even with no
        # traffic to carry.
        active = (peer_keepalive(peer) > 0 or now - peer.last_data < ACTIVE_WINDOW
                  or not path.reachable)
        out: list[bytes] = []
        size = path.mtu_probe_size(now)
        if size is not None:
            pid, sent = path.new_probe(now, size)
            out += self._endpoint.seal(peer, probe.encode_probe(pid, sent, size),
                                       PacketType.CONTROL)
        if path.probe_due(now, active=active):
            pid, sent = path.new_probe(now)
            out += self._endpoint.seal(peer, probe.encode_probe(pid, sent), PacketType.CONTROL)
        return out

    def control(self, peer: AnyPeer, payload: bytes) -> None:
        """A CONTROL message from a peer (called from the receive thread)."""
        dp, ep = self._datapath, self._endpoint
        try:
            kind, body = probe.decode(payload)
        except TunsealError:
            ep.count("bad_control")
            return
        if kind == ControlKind.PROBE and isinstance(body, probe.Probe):
            with self._lock:
                packets = ep.seal(peer, probe.encode_reply(body), PacketType.CONTROL)
            dp.send_to(peer, packets)
        elif kind == ControlKind.PROBE_REPLY and isinstance(body, probe.Probe):
            if peer.path is not None:
                before = peer.path.mtu
                peer.path.on_reply(body, time.monotonic())
                if peer.path.mtu != before:
                    self.set_mtu(peer.path.mtu, "an MTU probe got through")
        elif kind == ControlKind.ICMP_RELAY and isinstance(body, bytes):
            # Relayed ICMP is inner traffic from the peer: same source rule as its data.
            if self._routes.source_owner(body) is peer:
                dp.write_tun(body)
            else:
                ep.count("bad_source")

    def path_errors(self, errors: list[PathError]) -> None:
        """ICMP errors about our outer packets (receive thread): lower the MTU, or relay the
        error to the inner sender whose packet it was (RFC 2003 §4)."""
        dp = self._datapath
        now = time.monotonic()
        for err in errors:
            peer = self._peer_at(err.destination)
            if peer is None or peer.path is None:
                continue
            encap = int.from_bytes(err.payload[6:8], "big") if len(err.payload) >= 8 else -1
            quoted = dp.ring(peer).find(encap) if encap >= 0 else None
            if err.mtu is not None:
                overhead = outer_overhead(err.v4, self._transport, self._mode)
                if peer.path.lower_mtu(err.mtu - overhead, now):
                    self.set_mtu(peer.path.mtu, f"the path MTU dropped to {err.mtu}")
                if quoted is not None:
                    dp.tell_too_big(quoted, peer.path.mtu)
                continue
            kinds = icmp.translate_outer(err.v4, err.icmp_type, err.icmp_code)
            if kinds is None or quoted is None:
                continue
            src = dp.icmp_source[0] if quoted[0] >> 4 == 4 else dp.icmp_source[1]
            msg = icmp.icmp_error(quoted, from_addr=src, v4=kinds[0], v6=kinds[1])
            if msg is not None:
                dp.write_tun(msg)
                self._endpoint.count("icmp_relayed")

    def _peer_at(self, addr: Address | None) -> AnyPeer | None:
        peers = list(self._endpoint.peers)
        if len(peers) == 1:
            return peers[0]
        for peer in peers:
            ep = peer.endpoint
            if addr is not None and isinstance(ep, tuple) and ep[0] == addr[0]:
                return peer
        return None

    def set_mtu(self, mtu: int, why: str) -> None:
        peers = list(self._endpoint.peers)
        # One TUN device for all peers: the tunnel MTU is the smallest any path carries.
        mtu = min([p.path.mtu for p in peers if p.path is not None] + [mtu])
        if self._carries_ipv6():
            mtu = max(mtu, probe.MTU_FLOOR_IPV6)  # the PathState floor, for every caller
        self._datapath.mtu = mtu
        # The live peers' networks: what the link must route now (removed peers' are gone).
        routes = [n for p in peers for n in self._allowed_of(p)]
        try:
            # Addresses and routes go back on after the change, should the kernel have
            # dropped any with it (IPv6 below 1280: see netdev.set_mtu).
            netdev.set_mtu(self._ifname, mtu, addresses=list(self._addresses), routes=routes)
        except TunsealError as e:
            log.warning("tunnel %s: setting MTU %d failed: %s", self.name, mtu, e,
                        extra={"tunnel": self.name})
        log.info("tunnel %s: MTU now %d (%s)", self.name, mtu, why, extra={"tunnel": self.name})
        self._on_mtu()
