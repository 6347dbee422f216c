"""One running tunnel: its TUN device, routes, DNS, transport, protocol endpoint and threads.

Start-up records every system change before making it (helper/records.py), so a helper killed
at any point leaves nothing behind that the next start cannot find and undo. What the tunnel is
made of comes from helper/tunnelspec.py; what it learns about its paths (probes, CONTROL, ICMP
errors, the MTU) is helper/pathfeedback.py's.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from core import gateway as gwconf
from core import probe
from core.endpoint import AnyPeer, Endpoint
from core.errors import ProfileError, TunsealError
from core.peer import Address, Peer, RekeyPolicy
from core.probe import UNREACHABLE_AFTER, PathState
from core.status import PEERS_INLINE, PeerStatus, TunnelState, TunnelStatus
from helper import dns, nat, netdev, policyroute
from helper.allowedips import AllowedIPs
from helper.datapath import DataPath
from helper.handshakestate import HandshakeStore
from helper.pathfeedback import PathFeedback
from helper.records import Records
from helper.supervisor import Supervised
from helper.transport import Transport, open_transport
from helper.tun import Tun, open_tun
from helper.tunnelspec import PeerSpec, TunnelError, TunnelSpec, interface_addresses, resolve

log = logging.getLogger(__name__)

RERESOLVE_AFTER = 10.0
"""Seconds of failing handshakes after which an endpoint's host name is looked up again (and at
most this often)."""


HostNetworks = list[ipaddress.IPv4Address | ipaddress.IPv6Address | ipaddress.IPv4Network
                    | ipaddress.IPv6Network]
"""A tunnel's own addresses and the networks of the host's other links (check_peer)."""


@dataclass(frozen=True, slots=True)
class Parts:
    """A started tunnel's moving parts, built together by :meth:`Tunnel.attach` once the TUN
    device and the transport are open. ``handshakes`` is None in ``plain`` mode, which has no
    handshake to remember."""

    tun: Tun
    transport: Transport
    endpoint: Endpoint
    datapath: DataPath
    feedback: PathFeedback
    handshakes: HandshakeStore | None


class Tunnel:
    def __init__(self, spec: TunnelSpec, *, records: Records,
                 on_change: Callable[[Tunnel], None], ifname: str | None = None,
                 on_endpoints: Callable[[Tunnel], None] = lambda _t: None):
        self.spec = spec
        self.name = spec.name
        self.ifname = ifname or netdev.ifname_for(spec.name)
        self._owns_link = False
        """This tunnel created its link (and its record): only then may stop() remove them."""
        self._records = records
        self._on_change = on_change
        self.lock = threading.RLock()
        self._parts: Parts | None = None
        """Built by attach(), as start() opens the TUN device and the transport."""
        self._opened: list[Callable[[], None]] = []
        """What start() opened before the parts exist: closed by stop() if it fails there."""
        self.routes: AllowedIPs[AnyPeer] = AllowedIPs()
        self._nft_table = ""
        self._rules: list[policyroute.Rule] = []
        self._on_endpoints = on_endpoints
        self._resolving = threading.Lock()
        self._resolved_at = time.monotonic()
        self._configured = False
        self._added_allowed: dict[str, tuple[str, ...]] = {}
        self._ipv6 = any(":" in n for n in (*spec.addresses, *spec.routes))
        """An IPv6 address or route on the tunnel (only ever becomes true: added peers'
        networks stay in _added_allowed)."""
        self._threads: list[Supervised] = []
        self.failure = ""
        """Why the tunnel is ``failed`` (its data path could not be kept running), or ""."""
        self._dns: dns.ActiveDns | None = None
        self.since = time.time()
        self._last_state = ""
        self._rate_sample = (time.monotonic(), 0, 0)
        self.rx_rate = 0.0
        self.tx_rate = 0.0

    def __repr__(self) -> str:
        return f"Tunnel({self.name!r}, {self.ifname})"

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def full_tunnel(self) -> bool:
        """The tunnel routes 0.0.0.0/0 or ::/0: everything, not just some networks."""
        return any(ipaddress.ip_network(r, strict=False).prefixlen == 0 for r in self.spec.routes)

    @property
    def dns_servers(self) -> tuple[str, ...]:
        """The DNS servers queries go to while the tunnel is up (lockdown lets port 53/853
        through to these alone)."""
        return self.spec.dns

    @property
    def tun(self) -> Tun | None:
        return self._parts.tun if self._parts is not None else None

    @property
    def transport(self) -> Transport | None:
        return self._parts.transport if self._parts is not None else None

    @property
    def endpoint(self) -> Endpoint | None:
        return self._parts.endpoint if self._parts is not None else None

    @property
    def datapath(self) -> DataPath | None:
        return self._parts.datapath if self._parts is not None else None

    @property
    def peers(self) -> list[AnyPeer]:
        return list(self._parts.endpoint.peers) if self._parts is not None else []

    @property
    def peer(self) -> AnyPeer | None:
        """The peer of a client tunnel (None for a gateway with several, or none)."""
        peers = self.peers
        return peers[0] if len(peers) == 1 else None

    def start(self) -> None:
        spec = self.spec
        if netdev.link_exists(self.ifname):
            # Another tunnel's, or someone else's: attaching to it (or failing to) must not
            # end with this tunnel's stop() deleting it and its record.
            raise TunnelError(f"tunnel {spec.name!r}: a link named {self.ifname} already "
                              "exists; is another tunnel using it?")
        self._records.note_link(self.ifname, spec.name)
        self._owns_link = True
        try:
            tun = open_tun(self.ifname)
            self._opened.append(tun.close)
            main_routes, full = policyroute.split_routes(spec.routes)
            netdev.configure(self.ifname, addresses=list(spec.addresses), mtu=spec.mtu,
                             routes=main_routes)
            self._route_everything(full)
            listening = all(p.endpoint is None for p in spec.peers)
            transport = open_transport(spec.transport, port=spec.listen_port,
                                       ipv6=spec.ipv6_outer, listening=listening)
            self._opened.insert(0, transport.close)
            parts = self.attach(tun, transport, self._open_handshake_memory())
            # A gateway's peers are checked against one dump of the host's networks and an
            # index of those added before them, not a dump and a scan per peer.
            own = self._own_networks() if spec.forward else None
            taken = gwconf.PrefixIndex()
            for ps in spec.peers:
                self.add_peer(ps, own=own, taken=taken)
                for n in ps.allowed_ips:
                    taken.add(n, ps.name)
            self._configured = True
            if spec.dns or spec.dns_search:
                # dns.start records the backup before it changes anything (crash safety).
                self._dns = dns.start(self.ifname, spec.dns, spec.dns_search,
                                      full_tunnel=self.full_tunnel, records=self._records)
            if spec.masquerade or spec.forward:
                self._nft_table = nat.enable(self.ifname, list(spec.masquerade))
            self._start_loops()
            # INFO is for people ("connecting to ..."); the set-up's details are DEBUG. Not
            # "up": nothing is connected before a handshake completes (see notify()).
            log.debug("tunnel %s started on %s (%s, %s, %s, %d peer(s)%s)", spec.name,
                      self.ifname, spec.mode,
                      spec.cipher if spec.mode.sealed else "no encryption",
                      spec.transport, len(spec.peers),
                      f", offloads: tun={tun.vnet_hdr} gso={transport.gso} "
                      f"gro={transport.gro}", extra={"tunnel": spec.name})
            targets = [format_address(p.endpoint) for p in spec.peers if p.endpoint]
            if targets:
                log.info("%s: connecting to %s", spec.name, ", ".join(targets),
                         extra={"tunnel": spec.name})
            else:
                log.info("%s: waiting for the other end to connect (%s port %d)", spec.name,
                         spec.transport.upper(), self.listen_port, extra={"tunnel": spec.name})
            for peer in self.peers:
                if isinstance(peer, Peer) and peer.initiates:
                    with self.lock:
                        init = peer.begin_handshake()
                    parts.datapath.send_to(peer, [init])
        except BaseException:
            self.stop()
            raise
        self.notify()

    def attach(self, tun: Tun, transport: Transport, handshakes: HandshakeStore | None) -> Parts:
        """Build the tunnel's parts around an open TUN device and transport, in one place
        (start() calls this; so do tests that bring their own device)."""
        spec = self.spec
        endpoint = Endpoint(spec.mode, spec.cipher, device_id=spec.device_id,
                            static_private=spec.static_private, has_psk=spec.has_psk,
                            memory=handshakes)
        transport.enable_path_errors()
        # The data path calls the path feedback, which sends through the data path: the two
        # callbacks find `feedback` when they first run, once the loops start.
        datapath = DataPath(endpoint, tun, transport, self.routes, self.lock,
                            on_state=self.notify, mtu=spec.mtu,
                            on_control=lambda peer, payload: feedback.control(peer, payload),
                            on_path_errors=lambda errors: feedback.path_errors(errors),
                            icmp_source=interface_addresses(spec.addresses),
                            one_peer=len(spec.peers) == 1 and not spec.forward)
        feedback = PathFeedback(name=self.name, ifname=self.ifname, mode=spec.mode,
                                transport=spec.transport, addresses=spec.addresses,
                                endpoint=endpoint, datapath=datapath, routes=self.routes,
                                lock=self.lock, allowed_of=self._allowed_of,
                                carries_ipv6=self._carries_ipv6,
                                on_mtu=lambda: self._on_change(self))
        self._parts = Parts(tun, transport, endpoint, datapath, feedback, handshakes)
        self._opened.clear()
        return self._parts

    def _open_handshake_memory(self) -> HandshakeStore | None:
        """The persisted origin ID and replay timestamps of this tunnel (sealed modes)."""
        if not self.spec.mode.sealed:
            return None
        state_dir = self._records.dir.parent  # Records keeps <state_dir>/run
        try:
            return HandshakeStore.open(state_dir, self.spec.name)
        except OSError as e:
            raise TunnelError(f"tunnel {self.name!r}: cannot keep its handshake memory in "
                              f"{state_dir}/handshakes: {e.strerror}") from None

    def _flush_handshakes(self) -> None:
        handshakes = self._parts.handshakes if self._parts is not None else None
        if handshakes is None:
            return
        try:
            handshakes.flush()
        except OSError as e:
            log.warning("tunnel %s: saving the handshake memory failed: %s", self.name,
                        e.strerror, extra={"tunnel": self.name})

    def _route_everything(self, families: tuple[int, ...]) -> None:
        """A full tunnel's default route goes to a table of its own, and policy rules send
        everything there but the helper's own (marked) outer packets, which follow the main
        table: the current physical route, however often it changes (helper/policyroute.py).
        Each rule is recorded before it is added."""
        for fam in families:
            policyroute.add_default_route(self.ifname, fam)
        for rule in policyroute.rules_for(families):
            self._records.note_rule(self.ifname, rule)
            self._rules.append(rule)
            policyroute.add_rule(rule)

    def check_peer(self, name: str, allowed_ips: tuple[str, ...], *,
                   own: HostNetworks | None = None,
                   taken: gwconf.PrefixIndex | None = None) -> None:
        """ProfileError when a gateway may not route ``allowed_ips`` to peer ``name``: a default
        route or too wide a prefix, an overlap with another peer's networks, or with a network
        this host is on (its LAN, its uplink, the tunnel's own address). The gateway file is
        checked the same way (core/gateway.py); this also sees the host's links, which the
        file does not know. A client tunnel's one peer may route anything (0.0.0.0/0 is how
        a client sends everything through the tunnel). ``own`` (:meth:`_own_networks`) and
        ``taken`` (the other peers' networks) when the caller checks many peers at once."""
        if not self.spec.forward:
            return
        if taken is None:
            taken = gwconf.PrefixIndex({n: other for other, allowed in self._added_allowed.items()
                                        if other != name for n in allowed})
        if own is None:
            own = self._own_networks()
        problems = [m for text in allowed_ips
                    for m in gwconf.prefix_conflicts(text, taken=taken, own=own)]
        if problems:
            raise ProfileError(f"gateway {self.name!r}, peer {name!r}: "
                               + "; ".join(problems), field="allowed_ips")

    def _own_networks(self) -> HostNetworks:
        """The tunnel's own addresses and the networks of this host's other links."""
        return [*(ipaddress.ip_interface(a).ip for a in self.spec.addresses),
                *(i.network for i in netdev.local_networks(exclude=self.ifname))]

    def add_peer(self, ps: PeerSpec, *, own: HostNetworks | None = None,
                 taken: gwconf.PrefixIndex | None = None) -> AnyPeer:
        """Add a peer to the running tunnel (a gateway's `tunseal peer add` lands here);
        ``own`` and ``taken`` as for :meth:`check_peer`."""
        parts = self._running()
        ep, dp = parts.endpoint, parts.datapath
        spec = self.spec
        self.check_peer(ps.name, ps.allowed_ips, own=own, taken=taken)
        policy = None
        if spec.mode.sealed:
            policy = RekeyPolicy.for_mode(spec.mode, rotate_seconds=spec.rekey_seconds,
                                          rotate_messages=spec.rekey_messages)
        if self._configured:
            # A peer added while running (gateway `peer add`): its networks need kernel routes
            # into the TUN device too (configure is idempotent and skips covered ones).
            netdev.configure(self.ifname, addresses=list(spec.addresses),
                             mtu=dp.mtu, routes=list(ps.allowed_ips))
        with self.lock:
            peer = ep.add_peer(ps.name, ps.ident, remote_device_id=ps.remote_device_id,
                               initiates=ps.endpoint is not None, keepalive=ps.keepalive,
                               policy=policy)
            peer.endpoint = ps.endpoint
            v6 = self._ipv6 = self._ipv6 or any(":" in n for n in ps.allowed_ips)
            peer.path = PathState(mtu=spec.mtu, now=time.monotonic(), ipv6=v6)
            if v6:  # a gateway peer may bring the tunnel's first IPv6 network
                for other in ep.peers:
                    if other.path is not None:
                        other.path.min_mtu = max(other.path.min_mtu, probe.MTU_FLOOR_IPV6)
            for prefix in ps.allowed_ips:
                self.routes.insert(prefix, peer)
            self._added_allowed[ps.name] = ps.allowed_ips
        return peer

    def remove_peer(self, name: str) -> bool:
        if self._parts is None:
            return False
        ep, dp = self._parts.endpoint, self._parts.datapath
        allowed = self._allowed_of_name(name)
        with self.lock:
            for peer in list(ep.peers):
                if peer.name == name:
                    self.routes.remove_value(peer)
                    if allowed:
                        try:
                            netdev.remove_routes(self.ifname, list(allowed))
                        except TunsealError as e:
                            log.warning("tunnel %s: removing routes of %s failed: %s",
                                        self.name, name, e, extra={"tunnel": self.name})
                    ep.remove_peer(peer)
                    dp.rings.pop(id(peer), None)
                    # Its networks are free again: another peer may be given them.
                    self._added_allowed.pop(name, None)
                    return True
        return False

    def _start_loops(self) -> None:
        """The data path's two loops, each restarted if it dies (helper/supervisor.py)."""
        dp = self._running().datapath
        for fn, label in ((dp.run_tx, "tx"), (dp.run_rx, "rx")):
            loop = Supervised(f"{self.name}-{label}", fn, dp.stop, self._loop_failed)
            loop.start()
            self._threads.append(loop)

    def _loop_failed(self, reason: str) -> None:
        """A loop kept dying: stop the other one too and show ``failed`` with the reason,
        rather than run half a tunnel. The user's way out is down and up again."""
        self.failure = (f"{reason}; the tunnel carries no traffic: run 'tunseal down "
                        f"{self.name}' and 'tunseal up {self.name}'")
        log.error("tunnel %s failed: %s", self.name, reason, extra={"tunnel": self.name})
        self._running().datapath.stop.set()
        self.notify()

    def _running(self) -> Parts:
        """The parts, for what only a started tunnel does (adding peers, running loops)."""
        if self._parts is None:
            raise TunnelError(f"tunnel {self.name!r} is not started")
        return self._parts

    def stop(self) -> None:
        parts = self._parts
        if parts is not None:
            parts.datapath.stop.set()
        for t in self._threads:
            t.join(timeout=2.0)
        self._threads.clear()
        self._flush_handshakes()
        for rule in reversed(self._rules):
            try:
                policyroute.remove_rule(rule)
            except TunsealError as e:
                log.warning("tunnel %s: removing a policy rule failed: %s", self.name, e,
                            extra={"tunnel": self.name})
        self._rules.clear()
        if self._dns is not None:
            try:
                self._dns.close()
            except TunsealError as e:
                log.warning("tunnel %s: restoring DNS failed: %s", self.name, e,
                            extra={"tunnel": self.name})
            self._dns = None
        if parts is not None:
            parts.transport.close()
            parts.tun.close()  # the kernel removes the device and its routes with the last fd
        for close in self._opened:  # start() failed before the parts were built
            close()
        self._opened.clear()
        if self._owns_link and netdev.link_exists(self.ifname):
            netdev.delete_link(self.ifname)
        if self._nft_table:
            nat.disable(self._nft_table)
            self._nft_table = ""
        if self._owns_link:
            self._records.forget(self.ifname)
        if parts is not None:
            for peer in list(parts.endpoint.peers):
                parts.endpoint.remove_peer(peer)
        log.info("%s: disconnected", self.name, extra={"tunnel": self.name})

    # --- timers ------------------------------------------------------------------------------

    def tick(self) -> None:
        """Timer work (every 250 ms): handshake retries, rekeys, keepalives, expiry, probes."""
        if self._parts is None:
            return
        ep, dp, feedback = self._parts.endpoint, self._parts.datapath, self._parts.feedback
        now = time.monotonic()
        with self.lock:
            out = ep.tick()
            for peer in ep.peers:
                out.extend((peer, pkt) for pkt in feedback.probes(peer, now))
        for peer, pkt in out:
            dp.send_to(peer, [pkt])
        self._flush_handshakes()
        if (TunnelState(self.state).trying
                and now - self._resolved_at > RERESOLVE_AFTER):
            self.reresolve("handshakes keep failing")
        self.notify()

    def reresolve(self, why: str) -> None:
        """Look the endpoints' host names up again, in a thread of its own (a lookup can take
        seconds); a peer whose name now gives another address is sent there, and the lockdown
        table follows (``on_endpoints``)."""
        named = [ps for ps in self.spec.peers if ps.endpoint_host]
        if not named or not self._resolving.acquire(blocking=False):
            return
        self._resolved_at = time.monotonic()

        def run() -> None:
            try:
                self._reresolve(named, why)
            finally:
                self._resolving.release()

        threading.Thread(target=run, name=f"{self.name}-resolve", daemon=True).start()

    def _reresolve(self, named: list[PeerSpec], why: str) -> None:
        moved = False
        for ps in named:
            port = ps.endpoint[1] if ps.endpoint is not None else 0
            try:
                # An IPv4 socket reaches IPv4 only; an IPv6 one both (v4-mapped).
                family = 0 if self.spec.ipv6_outer else socket.AF_INET
                # With the tunnel's DNS in place the system's resolver would ask servers that
                # only this (unanswering) tunnel reaches: ask the network's ones directly.
                active = self._dns if self.spec.dns else None
                addr = resolve(self.name, ps.endpoint_host, int(port), family,
                               avoid=self.spec.dns, direct=active is not None,
                               known=active.network_servers() if active is not None else ())
            except TunnelError as e:
                log.info("tunnel %s: %s", self.name, e, extra={"tunnel": self.name})
                continue
            with self.lock:
                for peer in self.peers:
                    if peer.name == ps.name and peer.endpoint != addr:
                        log.info("tunnel %s: %s now resolves to %s (%s)", self.name,
                                 ps.endpoint_host, addr[0], why, extra={"tunnel": self.name})
                        peer.endpoint = addr
                        moved = True
        if not moved:
            return
        self.spec = replace(self.spec, peers=tuple(
            replace(ps, endpoint=self._endpoint_of(ps.name) or ps.endpoint)
            for ps in self.spec.peers))
        self._on_endpoints(self)
        self.path_changed("the endpoint moved")

    def _endpoint_of(self, name: str) -> Address | None:
        for peer in self.peers:
            if peer.name == name and isinstance(peer.endpoint, tuple):
                return peer.endpoint
        return None

    def path_changed(self, why: str) -> None:
        """The machine's network changed (or it woke up): start fresh handshakes so the far
        end learns our new address and any NAT mapping is rebuilt."""
        if self._parts is None:
            return
        dp = self._parts.datapath
        out: list[tuple[AnyPeer, bytes]] = []
        with self.lock:
            for peer in self.peers:
                if isinstance(peer, Peer) and peer.initiates:
                    out.append((peer, peer.begin_handshake()))
        for peer, pkt in out:
            dp.send_to(peer, [pkt])
        if out:
            log.info("%s: the network changed (%s): reconnecting (re-handshaking)", self.name,
                     why, extra={"tunnel": self.name})
        if why != "the endpoint moved":
            self.reresolve(why)

    def _carries_ipv6(self) -> bool:
        """Any IPv6 address or route on the tunnel: then its MTU stays at 1280 or more."""
        return self._ipv6

    def notify(self) -> None:
        state = self.state
        if state != self._last_state:
            if self._last_state:
                log.debug("tunnel %s: %s -> %s", self.name, self._last_state, state,
                          extra={"tunnel": self.name})
            # The first state seen may already be "up" (the receive thread can complete a
            # quick handshake before start() looks): that is news too.
            words = self._change_in_words(self._last_state, state)
            if words:
                log.log(logging.WARNING if state == "unreachable" else logging.INFO,
                        "%s: %s", self.name, words, extra={"tunnel": self.name})
            self._last_state = state
            self.since = time.time()
            self._on_change(self)

    def _change_in_words(self, old: str, new: str) -> str:
        """A state change as the log line a person reads ('' for the ones only DEBUG tells);
        ``old`` is '' for the first state seen."""
        if not old and len(self.spec.peers) != 1:
            return ""  # a gateway is "up" as it starts: the start line said it waits
        old = old or "connecting"
        peer = self.peer
        where = format_address(peer.endpoint) if peer is not None else ""
        if new == "up":
            if old == "unreachable":
                return f"connected again: {self.name} answers"
            return f"connected to {self.name}" + (f" ({where})" if where else "")
        if new == "unreachable":
            lost = "lost the connection: " if old == "up" else ""
            return f"{lost}{self.name} does not answer" + (f" at {where}" if where else "") + \
                "; still trying"
        if old == "up":
            return "reconnecting"
        return ""

    # --- status ------------------------------------------------------------------------------

    def peer_state(self, peer: AnyPeer) -> str:
        s = peer.state
        if s == "waiting":
            return "connecting"
        path = peer.path
        if path is not None and not path.reachable and peer.endpoint is not None:
            return "unreachable"
        if (s == "handshaking" and isinstance(peer, Peer) and peer.attempt_started is not None
                and time.monotonic() - peer.attempt_started > UNREACHABLE_AFTER * 2):
            return "unreachable"
        return s

    @property
    def state(self) -> str:
        if self.failure:
            return "failed"
        peers = self.peers
        if len(self.spec.peers) == 1 and len(peers) == 1:
            return self.peer_state(peers[0])
        # A gateway is up as soon as it listens; its peers carry their own states.
        return "up" if self._parts is not None else "connecting"

    def _totals(self) -> tuple[int, int, int, int]:
        rx = tx = rxp = txp = 0
        for p in self.peers:
            st = p.stats
            rx, tx, rxp, txp = rx + st.rx_bytes, tx + st.tx_bytes, rxp + st.rx_packets, \
                txp + st.tx_packets
        return rx, tx, rxp, txp

    def sample_rates(self) -> None:
        """Update rx/tx rates (bytes/s) since the previous call."""
        now = time.monotonic()
        rx, tx, _, _ = self._totals()
        t0, rx0, tx0 = self._rate_sample
        dt = max(now - t0, 1e-3)
        self.rx_rate, self.tx_rate = max(0.0, (rx - rx0) / dt), max(0.0, (tx - tx0) / dt)
        self._rate_sample = (now, rx, tx)

    def _peer_status(self, peer: AnyPeer) -> PeerStatus:
        st, path = peer.stats, peer.path
        return PeerStatus(
            name=peer.name, state=self.peer_state(peer), endpoint=format_address(peer.endpoint),
            allowed_ips=self._allowed_of(peer), last_handshake=st.last_handshake,
            rx_bytes=st.rx_bytes, tx_bytes=st.tx_bytes, rx_packets=st.rx_packets,
            tx_packets=st.tx_packets, rtt_ms=path.rtt_ms if path else None,
            loss=path.loss if path else None,
        )

    def _allowed_of(self, peer: AnyPeer) -> tuple[str, ...]:
        return self._allowed_of_name(peer.name)

    def _allowed_of_name(self, name: str) -> tuple[str, ...]:
        if name in self._added_allowed:
            return self._added_allowed[name]
        for ps in self.spec.peers:
            if ps.name == name:
                return ps.allowed_ips
        return ()

    def peer_statuses(self) -> list[PeerStatus]:
        """Every peer's status, sorted by name (a gateway's peers, paged by the helper)."""
        return sorted((self._peer_status(p) for p in self.peers), key=lambda ps: ps.name)

    def peer_status(self, name: str) -> PeerStatus | None:
        for p in self.peers:
            if p.name == name:
                return self._peer_status(p)
        return None

    def status(self) -> TunnelStatus:
        """The tunnel's status, listing its peers only when there are at most PEERS_INLINE
        (else counted: built every second, it must not grow with a gateway's peers)."""
        spec = self.spec
        live = self.peers
        single = self._peer_status(live[0]) if len(live) == 1 and len(spec.peers) == 1 \
            else None
        peers = tuple(self._peer_status(p) for p in live) if single is None and \
            len(live) <= PEERS_INLINE else (single,) if single else ()
        rx, tx, rxp, txp = self._totals()
        handshakes = [p.stats.last_handshake for p in live if p.stats.last_handshake is not None]
        return TunnelStatus(
            name=spec.name, state=self.state, mode=spec.mode,
            cipher=spec.cipher if spec.mode.sealed else "none", transport=spec.transport,
            interface=self.ifname,
            endpoint=single.endpoint if single else f"listening on port {self.listen_port}",
            mtu=self._parts.datapath.mtu if self._parts is not None else spec.mtu,
            last_handshake=max(handshakes) if handshakes else None,
            rx_bytes=rx, tx_bytes=tx, rx_packets=rxp, tx_packets=txp,
            rx_rate=self.rx_rate, tx_rate=self.tx_rate,
            rtt_ms=single.rtt_ms if single else None, loss=single.loss if single else None,
            drops=dict(self._parts.endpoint.drops) if self._parts is not None else {},
            ecn_ce=self._parts.datapath.ecn_ce if self._parts is not None else 0,
            peers=peers, peer_count=len(live),
            peers_up=sum(1 for p in live if self.peer_state(p) == "up"),
            since=self.since, error=self.failure,
            dns=self._dns.status() if self._dns is not None else None,
            lockdown=spec.lockdown,
            ipv6="blocked" if spec.blocks_ipv6 else "tunnel" if 6 in spec.full_families else "",
        )

    @property
    def listen_port(self) -> int:
        if self._parts is None:
            return self.spec.listen_port
        return self._parts.transport.local_port


def format_address(addr: object) -> str:
    if not isinstance(addr, tuple) or len(addr) < 2:
        return ""
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
