"""One running tunnel: its TUN device, routes, DNS, transport, protocol endpoint and threads.

Start-up records every system change before making it (helper/records.py), so a helper killed
at any point leaves nothing behind that the next start cannot find and undo.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from core import gateway as gwconf
from core import probe
from core.constants import DATA_HEADER_LEN, FIXED_HEADER_LEN, TAG_LEN, ControlKind, PacketType
from core.endpoint import AnyPeer, Endpoint
from core.errors import ProfileError, TunsealError
from core.handshake import Identity
from core.peer import Peer, RekeyPolicy
from core.probe import ACTIVE_WINDOW, UNREACHABLE_AFTER, PathState
from core.profile import Profile, ProfileSecrets
from core.responder import ANY_DEVICE
from core.status import PeerStatus, TunnelStatus
from helper import dns, icmp, nat, netdev, policyroute
from helper.allowedips import AllowedIPs
from helper.datapath import DataPath
from helper.handshakestate import HandshakeStore
from helper.lockdown import PeerAddress
from helper.records import Records
from helper.supervisor import Supervised
from helper.transport import Address, PathError, Transport, open_transport
from helper.tun import Tun, open_tun

log = logging.getLogger(__name__)

RERESOLVE_AFTER = 10.0
"""Seconds of failing handshakes after which an endpoint's host name is looked up again (and at
most this often)."""


class TunnelError(TunsealError):
    pass


def interface_addresses(addresses: tuple[str, ...]) -> tuple[bytes, bytes]:
    """(IPv4, IPv6) address of the tunnel interface, packed (b"" when it has none)."""
    v4 = v6 = b""
    for a in addresses:
        ip = ipaddress.ip_interface(a).ip
        if ip.version == 4 and not v4:
            v4 = ip.packed
        elif ip.version == 6 and not v6:
            v6 = ip.packed
    return v4, v6


def outer_overhead(v4: bool, transport: str, mode: str) -> int:
    """Bytes the tunnel adds to an inner packet on the wire."""
    ip = 20 if v4 else 40
    udp = 8 if transport == "udp" else 0
    tunseal = FIXED_HEADER_LEN if mode == "plain" else DATA_HEADER_LEN + TAG_LEN
    return ip + udp + tunseal


def resolve_endpoint(profile: Profile) -> Address | None:
    if not profile.endpoint:
        return None
    return resolve(profile.name, profile.endpoint_host, profile.endpoint_port)


def resolve(name: str, host: str, port: int, family: int = 0) -> Address:
    """``host`` looked up (``family``: only addresses the transport's socket can reach)."""
    try:
        infos = socket.getaddrinfo(host, port, family, type=socket.SOCK_DGRAM)
    except socket.gaierror as e:
        raise TunnelError(f"profile {name!r}: cannot resolve endpoint {host!r}: "
                          f"{e.strerror}") from None
    _fam, _, _, _, sa = infos[0]
    return (str(sa[0]), int(sa[1]))


def is_host_name(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return bool(host)
    return False


def identity_for(profile: Profile, secrets: ProfileSecrets) -> Identity:
    if profile.mode == "ephemeral":
        if secrets.private_key is None:
            raise TunnelError(f"profile {profile.name!r} has no private key in the keyring: "
                              f"run 'tunseal genkey {profile.name}'")
        if not profile.public_key:
            raise TunnelError(f"profile {profile.name!r} does not know the peer's public key: "
                              f"run 'tunseal setpeerkey {profile.name} KEY' with the key the "
                              "peer's administrator gave you")
        peer_public = base64.b64decode(profile.public_key)
        return Identity(static_private=secrets.private_key, peer_public=peer_public,
                        psk=secrets.psk)
    if profile.mode in ("psk", "rotating"):
        if secrets.psk is None:
            raise TunnelError(f"profile {profile.name!r} has no pre-shared key in the keyring: "
                              f"run 'tunseal genpsk {profile.name}' or import it")
        return Identity(psk=secrets.psk)
    return Identity()


@dataclass(frozen=True, slots=True)
class PeerSpec:
    """One peer of a tunnel: a client has one, a gateway many."""

    name: str
    ident: Identity
    remote_device_id: int = ANY_DEVICE
    allowed_ips: tuple[str, ...] = ()
    endpoint: Address | None = None
    keepalive: float = 0.0
    endpoint_host: str = ""
    """The endpoint's host name as the profile gives it, when it is a name: looked up again
    when handshakes keep failing or the network changes."""


@dataclass(frozen=True, slots=True)
class TunnelSpec:
    """Everything a running tunnel needs, whether it came from a profile or a gateway config."""

    name: str
    mode: str
    cipher: str
    transport: str
    device_id: int
    addresses: tuple[str, ...]
    mtu: int
    routes: tuple[str, ...]
    listen_port: int
    ipv6_outer: bool
    static_private: bytes | None
    has_psk: bool
    peers: tuple[PeerSpec, ...]
    dns: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    rekey_seconds: float | None = None
    rekey_messages: int | None = None
    keepalive: float = 0.0
    masquerade: tuple[str, ...] = ()
    """Gateway: interfaces out of which traffic from peers is masqueraded (nftables)."""
    forward: bool = False
    """Gateway: route between peers and the LAN (IP forwarding on while up)."""
    lockdown: str = "off"
    """The effective lockdown: "off", "connected" or "always" (helper/lockdown.py)."""
    allow_lan: bool = False

    @property
    def full_families(self) -> tuple[int, ...]:
        return policyroute.full_families(self.routes)

    @property
    def blocks_ipv6(self) -> bool:
        """An IPv4 full tunnel that carries no IPv6: IPv6 must not leave beside it."""
        return self.full_families == (4,)

    def peer_addresses(self) -> tuple[PeerAddress, ...]:
        return tuple(PeerAddress(p.endpoint[0], int(p.endpoint[1]), self.transport)
                     for p in self.peers if p.endpoint is not None)

    def __repr__(self) -> str:
        return f"TunnelSpec({self.name!r}, {self.mode}, {len(self.peers)} peers)"


def spec_from_profile(profile: Profile, secrets: ProfileSecrets) -> TunnelSpec:
    ident = identity_for(profile, secrets)
    remote = resolve_endpoint(profile)
    host = profile.endpoint_host if profile.endpoint else ""
    peer = PeerSpec(profile.name, ident, ANY_DEVICE, profile.allowed_ips, remote,
                    float(profile.keepalive),
                    endpoint_host=host if is_host_name(host) else "")
    return TunnelSpec(
        name=profile.name, mode=profile.mode, cipher=profile.cipher,
        transport=profile.transport, device_id=profile.device_id,
        addresses=profile.addresses, mtu=profile.mtu, routes=profile.allowed_ips,
        listen_port=profile.listen_port,
        ipv6_outer=(remote is not None and ":" in remote[0])
        or (remote is None and profile.transport == "udp"),
        static_private=ident.static_private, has_psk=ident.psk is not None, peers=(peer,),
        dns=profile.dns, dns_search=profile.dns_search,
        rekey_seconds=float(profile.rekey_seconds), rekey_messages=profile.rekey_messages,
        keepalive=float(profile.keepalive),
        lockdown=profile.effective_lockdown, allow_lan=profile.allow_lan,
    )


class Tunnel:
    def __init__(self, spec: TunnelSpec, *, records: Records,
                 on_change: Callable[[Tunnel], None], ifname: str | None = None,
                 on_endpoints: Callable[[Tunnel], None] | None = None):
        self.spec = spec
        self.name = spec.name
        self.ifname = ifname or netdev.ifname_for(spec.name)
        self._owns_link = False
        """This tunnel created its link (and its record): only then may stop() remove them."""
        self._records = records
        self._on_change = on_change
        self.lock = threading.RLock()
        self.tun: Tun | None = None
        self.transport: Transport | None = None
        self.endpoint: Endpoint | None = None
        self.datapath: DataPath | None = None
        self._handshakes: HandshakeStore | None = None
        self.routes: AllowedIPs[AnyPeer] = AllowedIPs()
        self._nft_table = ""
        self._rules: list[policyroute.Rule] = []
        self._on_endpoints = on_endpoints
        self._resolving = threading.Lock()
        self._resolved_at = time.monotonic()
        self._configured = False
        self._added_allowed: dict[str, tuple[str, ...]] = {}
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
    def peers(self) -> list[AnyPeer]:
        return list(self.endpoint.peers) if self.endpoint is not None else []

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
            self.tun = open_tun(self.ifname)
            main_routes, full = policyroute.split_routes(spec.routes)
            netdev.configure(self.ifname, addresses=list(spec.addresses), mtu=spec.mtu,
                             routes=main_routes)
            self._route_everything(full)
            listening = all(p.endpoint is None for p in spec.peers)
            self.transport = open_transport(spec.transport, port=spec.listen_port,
                                            ipv6=spec.ipv6_outer, listening=listening)
            self._handshakes = self._open_handshake_memory()
            self.endpoint = Endpoint(spec.mode, spec.cipher, device_id=spec.device_id,
                                     static_private=spec.static_private, has_psk=spec.has_psk,
                                     memory=self._handshakes)
            self.transport.enable_path_errors()
            self.datapath = DataPath(self.endpoint, self.tun, self.transport, self.routes,
                                     self.lock, on_state=self.notify, mtu=spec.mtu,
                                     on_control=self._control,
                                     on_path_errors=self._path_errors,
                                     icmp_source=interface_addresses(spec.addresses),
                                     one_peer=len(spec.peers) == 1 and not spec.forward)
            for ps in spec.peers:
                self.add_peer(ps)
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
                      spec.cipher if spec.mode != "plain" else "no encryption",
                      spec.transport, len(spec.peers),
                      f", offloads: tun={self.tun.vnet_hdr} gso={self.transport.gso} "
                      f"gro={self.transport.gro}", extra={"tunnel": spec.name})
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
                    self.datapath.send_to(peer, [init])
        except BaseException:
            self.stop()
            raise
        self.notify()

    def _open_handshake_memory(self) -> HandshakeStore | None:
        """The persisted origin ID and replay timestamps of this tunnel (sealed modes)."""
        if self.spec.mode == "plain":
            return None
        state_dir = self._records.dir.parent  # Records keeps <state_dir>/run
        try:
            return HandshakeStore.open(state_dir, self.spec.name)
        except OSError as e:
            raise TunnelError(f"tunnel {self.name!r}: cannot keep its handshake memory in "
                              f"{state_dir}/handshakes: {e.strerror}") from None

    def _flush_handshakes(self) -> None:
        if self._handshakes is None:
            return
        try:
            self._handshakes.flush()
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

    def check_peer(self, name: str, allowed_ips: tuple[str, ...]) -> None:
        """ProfileError when a gateway may not route ``allowed_ips`` to peer ``name``: a default
        route or too wide a prefix, an overlap with another peer's networks, or with a network
        this host is on (its LAN, its uplink, the tunnel's own address). The gateway file is
        checked the same way (core/gateway.py); this also sees the host's links, which the
        file does not know. A client tunnel's one peer may route anything (0.0.0.0/0 is how
        a client sends everything through the tunnel)."""
        if not self.spec.forward:
            return
        taken = {n: other for other, allowed in self._added_allowed.items() if other != name
                 for n in allowed}
        own = [*(ipaddress.ip_interface(a).ip for a in self.spec.addresses),
               *(i.network for i in netdev.local_networks(exclude=self.ifname))]
        problems = [m for text in allowed_ips
                    for m in gwconf.prefix_conflicts(text, taken=taken, own=own)]
        if problems:
            raise ProfileError(f"gateway {self.name!r}, peer {name!r}: "
                               + "; ".join(problems), field="allowed_ips")

    def add_peer(self, ps: PeerSpec) -> AnyPeer:
        """Add a peer to the running tunnel (a gateway's `tunseal peer add` lands here)."""
        ep, dp = self.endpoint, self.datapath
        assert ep is not None and dp is not None
        spec = self.spec
        self.check_peer(ps.name, ps.allowed_ips)
        policy = None
        if spec.mode != "plain":
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
            v6 = self._carries_ipv6() or any(":" in n for n in ps.allowed_ips)
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
        ep = self.endpoint
        if ep is None:
            return False
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
                    if self.datapath is not None:
                        self.datapath.rings.pop(id(peer), None)
                    return True
        return False

    def _start_loops(self) -> None:
        """The data path's two loops, each restarted if it dies (helper/supervisor.py)."""
        dp = self.datapath
        assert dp is not None
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
        if self.datapath is not None:
            self.datapath.stop.set()
        self.notify()

    def stop(self) -> None:
        if self.datapath is not None:
            self.datapath.stop.set()
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
        if self.transport is not None:
            self.transport.close()
        if self.tun is not None:
            self.tun.close()  # the kernel removes the device and its routes with the last fd
        if self._owns_link and netdev.link_exists(self.ifname):
            netdev.delete_link(self.ifname)
        if self._nft_table:
            nat.disable(self._nft_table)
            self._nft_table = ""
        if self._owns_link:
            self._records.forget(self.ifname)
        if self.endpoint is not None:
            for peer in list(self.endpoint.peers):
                self.endpoint.remove_peer(peer)
        log.info("%s: disconnected", self.name, extra={"tunnel": self.name})

    # --- timers ------------------------------------------------------------------------------

    def tick(self) -> None:
        """Timer work (every 250 ms): handshake retries, rekeys, keepalives, expiry, probes."""
        ep, dp = self.endpoint, self.datapath
        if ep is None or dp is None:
            return
        now = time.monotonic()
        with self.lock:
            out = ep.tick()
            for peer in ep.peers:
                out.extend((peer, pkt) for pkt in self._probes(peer, now))
        for peer, pkt in out:
            dp.send_to(peer, [pkt])
        self._flush_handshakes()
        if (self.state in ("unreachable", "handshaking", "connecting")
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
                addr = resolve(self.name, ps.endpoint_host, int(port), family)
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
        if self._on_endpoints is not None:
            self._on_endpoints(self)
        self.path_changed("the endpoint moved")

    def _endpoint_of(self, name: str) -> Address | None:
        for peer in self.peers:
            if peer.name == name and isinstance(peer.endpoint, tuple):
                return peer.endpoint
        return None

    def _probes(self, peer: AnyPeer, now: float) -> list[bytes]:
        """Liveness/RTT probes while the tunnel is active, and MTU probes after a drop."""
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
            out += self.endpoint.seal(peer, probe.encode_probe(pid, sent, size),  # type: ignore[union-attr]
                                      PacketType.CONTROL)
        if path.probe_due(now, active=active):
            pid, sent = path.new_probe(now)
            out += self.endpoint.seal(peer, probe.encode_probe(pid, sent),  # type: ignore[union-attr]
                                      PacketType.CONTROL)
        return out

    def _control(self, peer: AnyPeer, payload: bytes) -> None:
        """A CONTROL message from a peer (called from the receive thread)."""
        dp, ep = self.datapath, self.endpoint
        if dp is None or ep is None:
            return
        try:
            kind, body = probe.decode(payload)
        except TunsealError:
            ep.count("bad_control")
            return
        if kind == ControlKind.PROBE and isinstance(body, probe.Probe):
            with self.lock:
                packets = ep.seal(peer, probe.encode_reply(body), PacketType.CONTROL)
            dp.send_to(peer, packets)
        elif kind == ControlKind.PROBE_REPLY and isinstance(body, probe.Probe):
            if peer.path is not None:
                before = peer.path.mtu
                peer.path.on_reply(body, time.monotonic())
                if peer.path.mtu != before:
                    self._set_mtu(peer.path.mtu, "an MTU probe got through")
        elif kind == ControlKind.ICMP_RELAY and isinstance(body, bytes):
            # Relayed ICMP is inner traffic from the peer: same source rule as its data.
            if self.routes.source_owner(body) is peer:
                dp.write_tun(body)
            else:
                ep.count("bad_source")

    def _path_errors(self, errors: list[PathError]) -> None:
        """ICMP errors about our outer packets (receive thread): lower the MTU, or relay the
        error to the inner sender whose packet it was (RFC 2003 §4)."""
        dp = self.datapath
        if dp is None:
            return
        now = time.monotonic()
        for err in errors:
            peer = self._peer_at(err.destination)
            if peer is None or peer.path is None:
                continue
            encap = int.from_bytes(err.payload[6:8], "big") if len(err.payload) >= 8 else -1
            quoted = dp.ring(peer).find(encap) if encap >= 0 else None
            if err.mtu is not None:
                overhead = outer_overhead(err.v4, self.spec.transport, self.spec.mode)
                if peer.path.lower_mtu(err.mtu - overhead, now):
                    self._set_mtu(peer.path.mtu, f"the path MTU dropped to {err.mtu}")
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
                self.endpoint.count("icmp_relayed")  # type: ignore[union-attr]

    def path_changed(self, why: str) -> None:
        """The machine's network changed (or it woke up): start fresh handshakes so the far
        end learns our new address and any NAT mapping is rebuilt."""
        dp = self.datapath
        if dp is None:
            return
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

    def _peer_at(self, addr: Address | None) -> AnyPeer | None:
        peers = self.peers
        if len(peers) == 1:
            return peers[0]
        for peer in peers:
            ep = peer.endpoint
            if addr is not None and isinstance(ep, tuple) and ep[0] == addr[0]:
                return peer
        return None

    def _carries_ipv6(self) -> bool:
        """Any IPv6 address or route on the tunnel: then its MTU stays at 1280 or more."""
        nets = (*self.spec.addresses, *self.spec.routes,
                *(n for allowed in self._added_allowed.values() for n in allowed))
        return any(":" in n for n in nets)

    def _set_mtu(self, mtu: int, why: str) -> None:
        # One TUN device for all peers: the tunnel MTU is the smallest any path carries.
        mtu = min([p.path.mtu for p in self.peers if p.path is not None] + [mtu])
        if self._carries_ipv6():
            mtu = max(mtu, probe.MTU_FLOOR_IPV6)  # the PathState floor, for every caller
        if self.datapath is not None:
            self.datapath.mtu = mtu
        # The live peers' networks: what the link must route now (removed peers' are gone).
        routes = [n for p in self.peers for n in self._allowed_of(p)]
        try:
            # Addresses and routes go back on after the change, should the kernel have
            # dropped any with it (IPv6 below 1280: see netdev.set_mtu).
            netdev.set_mtu(self.ifname, mtu, addresses=list(self.spec.addresses),
                           routes=routes)
        except TunsealError as e:
            log.warning("tunnel %s: setting MTU %d failed: %s", self.name, mtu, e,
                        extra={"tunnel": self.name})
        log.info("tunnel %s: MTU now %d (%s)", self.name, mtu, why, extra={"tunnel": self.name})
        self._on_change(self)

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
        return "up" if self.datapath is not None else "connecting"

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

    def status(self) -> TunnelStatus:
        spec = self.spec
        peers = tuple(self._peer_status(p) for p in self.peers)
        single = peers[0] if len(peers) == 1 and len(spec.peers) == 1 else None
        rx, tx, rxp, txp = self._totals()
        handshakes = [p.last_handshake for p in peers if p.last_handshake is not None]
        return TunnelStatus(
            name=spec.name, state=self.state, mode=spec.mode,
            cipher=spec.cipher if spec.mode != "plain" else "none", transport=spec.transport,
            interface=self.ifname,
            endpoint=single.endpoint if single else f"listening on port {self.listen_port}",
            mtu=self.datapath.mtu if self.datapath is not None else spec.mtu,
            last_handshake=max(handshakes) if handshakes else None,
            rx_bytes=rx, tx_bytes=tx, rx_packets=rxp, tx_packets=txp,
            rx_rate=self.rx_rate, tx_rate=self.tx_rate,
            rtt_ms=single.rtt_ms if single else None, loss=single.loss if single else None,
            drops=dict(self.endpoint.drops) if self.endpoint else {},
            ecn_ce=self.datapath.ecn_ce if self.datapath is not None else 0,
            peers=peers, since=self.since, error=self.failure,
            dns=self._dns.status() if self._dns is not None else None,
            lockdown=spec.lockdown,
            ipv6="blocked" if spec.blocks_ipv6 else "tunnel" if 6 in spec.full_families else "",
        )

    @property
    def listen_port(self) -> int:
        return self.transport.local_port if self.transport is not None else self.spec.listen_port


def peer_keepalive(peer: AnyPeer) -> float:
    return peer.keepalive if isinstance(peer, Peer) else 0.0


def format_address(addr: object) -> str:
    if not isinstance(addr, tuple) or len(addr) < 2:
        return ""
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
