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

from core import probe
from core.constants import DATA_HEADER_LEN, FIXED_HEADER_LEN, TAG_LEN, ControlKind, PacketType
from core.endpoint import AnyPeer, Endpoint
from core.errors import TunsealError
from core.handshake import Identity
from core.peer import Peer, RekeyPolicy
from core.probe import ACTIVE_WINDOW, UNREACHABLE_AFTER, PathState
from core.profile import Profile, ProfileSecrets
from core.responder import ANY_DEVICE
from core.status import PeerStatus, TunnelStatus
from helper import dns, icmp, netdev
from helper.allowedips import AllowedIPs
from helper.datapath import DataPath
from helper.records import Records
from helper.transport import Address, PathError, Transport, open_transport
from helper.tun import Tun, open_tun

log = logging.getLogger(__name__)


class TunnelError(TunsealError):
    pass


def interface_addresses(profile: Profile) -> tuple[bytes, bytes]:
    """(IPv4, IPv6) address of the tunnel interface, packed (b"" when it has none)."""
    v4 = v6 = b""
    for a in profile.addresses:
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
    host, port = profile.endpoint_host, profile.endpoint_port
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as e:
        raise TunnelError(f"profile {profile.name!r}: cannot resolve endpoint {host!r}: "
                          f"{e.strerror}") from None
    _fam, _, _, _, sa = infos[0]
    return (str(sa[0]), int(sa[1]))


def identity_for(profile: Profile, secrets: ProfileSecrets) -> Identity:
    if profile.mode == "ephemeral":
        if secrets.private_key is None:
            raise TunnelError(f"profile {profile.name!r} has no private key in the keyring: "
                              f"run 'tunseal genkey {profile.name}'")
        peer_public = base64.b64decode(profile.public_key)
        return Identity(static_private=secrets.private_key, peer_public=peer_public,
                        psk=secrets.psk)
    if profile.mode in ("psk", "rotating"):
        if secrets.psk is None:
            raise TunnelError(f"profile {profile.name!r} has no pre-shared key in the keyring: "
                              f"run 'tunseal genpsk {profile.name}' or import it")
        return Identity(psk=secrets.psk)
    return Identity()


class Tunnel:
    def __init__(self, profile: Profile, secrets: ProfileSecrets, *, records: Records,
                 on_change: Callable[[Tunnel], None]):
        self.profile = profile
        self.name = profile.name
        self.ifname = netdev.ifname_for(profile.name)
        self._secrets = secrets
        self._records = records
        self._on_change = on_change
        self.lock = threading.RLock()
        self.tun: Tun | None = None
        self.transport: Transport | None = None
        self.endpoint: Endpoint | None = None
        self.datapath: DataPath | None = None
        self.peer: AnyPeer | None = None
        self._threads: list[threading.Thread] = []
        self._dns_backup: dict[str, object] | None = None
        self.since = time.time()
        self._last_state = ""
        self._rate_sample = (time.monotonic(), 0, 0)
        self.rx_rate = 0.0
        self.tx_rate = 0.0

    def __repr__(self) -> str:
        return f"Tunnel({self.name!r}, {self.ifname})"

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        p = self.profile
        ident = identity_for(p, self._secrets)
        remote = resolve_endpoint(p)
        self._records.note_link(self.ifname, p.name)
        try:
            self.tun = open_tun(self.ifname)
            netdev.configure(self.ifname, addresses=list(p.addresses), mtu=p.mtu,
                             routes=list(p.allowed_ips))
            ipv6 = remote is not None and ":" in remote[0]
            self.transport = open_transport(p.transport, port=p.listen_port,
                                            ipv6=ipv6 or (remote is None and p.transport == "udp"))
            ep = Endpoint(p.mode, p.cipher, device_id=p.device_id,
                          static_private=ident.static_private, has_psk=ident.psk is not None)
            policy = None
            if p.mode != "plain":
                policy = RekeyPolicy.for_mode(p.mode, rotate_seconds=p.rekey_seconds,
                                              rotate_messages=p.rekey_messages)
            peer = ep.add_peer(p.name, ident, remote_device_id=ANY_DEVICE,
                               initiates=remote is not None, keepalive=float(p.keepalive),
                               policy=policy)
            peer.endpoint = remote
            self.endpoint, self.peer = ep, peer
            routes: AllowedIPs[AnyPeer] = AllowedIPs()
            for prefix in p.allowed_ips:
                routes.insert(prefix, peer)
            peer.path = PathState(mtu=p.mtu, now=time.monotonic())
            self.transport.enable_path_errors()
            self.datapath = DataPath(ep, self.tun, self.transport, routes, self.lock,
                                     on_state=self.notify, mtu=p.mtu,
                                     on_control=self._control,
                                     on_path_errors=self._path_errors,
                                     icmp_source=interface_addresses(p))
            if p.dns or p.dns_search:
                self._dns_backup = dns.apply(self.ifname, list(p.dns), list(p.dns_search))
                self._records.note_dns(self.ifname, self._dns_backup)
            for fn, label in ((self.datapath.run_tx, "tx"), (self.datapath.run_rx, "rx")):
                t = threading.Thread(target=self._guard(fn), name=f"{p.name}-{label}",
                                     daemon=True)
                t.start()
                self._threads.append(t)
            log.info("tunnel %s up on %s (%s, %s, %s%s)", p.name, self.ifname, p.mode,
                     p.cipher if p.mode != "plain" else "no encryption", p.transport,
                     f", offloads: tun={self.tun.vnet_hdr} gso={self.transport.gso} "
                     f"gro={self.transport.gro}", extra={"tunnel": p.name})
            if isinstance(peer, Peer) and peer.initiates:
                with self.lock:
                    init = peer.begin_handshake()
                self.datapath.send_to(peer, [init])
        except BaseException:
            self.stop()
            raise
        self.notify()

    def _guard(self, fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except Exception:
                log.exception("tunnel %s: data path failed", self.name,
                              extra={"tunnel": self.name})
        return run

    def stop(self) -> None:
        if self.datapath is not None:
            self.datapath.stop.set()
        for t in self._threads:
            t.join(timeout=2.0)
        self._threads.clear()
        if self._dns_backup is not None:
            try:
                dns.restore(self._dns_backup)
            except TunsealError as e:
                log.warning("tunnel %s: restoring DNS failed: %s", self.name, e,
                            extra={"tunnel": self.name})
            self._dns_backup = None
        if self.transport is not None:
            self.transport.close()
        if self.tun is not None:
            self.tun.close()  # the kernel removes the device and its routes with the last fd
        if netdev.link_exists(self.ifname):
            netdev.delete_link(self.ifname)
        self._records.forget(self.ifname)
        if self.endpoint is not None and self.peer is not None:
            self.endpoint.remove_peer(self.peer)
        log.info("tunnel %s down", self.name, extra={"tunnel": self.name})

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
        self.notify()

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
        active = (self.profile.keepalive > 0 or now - peer.last_sent < ACTIVE_WINDOW
                  or now - peer.last_received < ACTIVE_WINDOW)
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
            dp.write_tun(body)

    def _path_errors(self, errors: list[PathError]) -> None:
        """ICMP errors about our outer packets (receive thread): lower the MTU, or relay the
        error to the inner sender whose packet it was (RFC 2003 §4)."""
        dp, peer = self.datapath, self.peer
        if dp is None or peer is None or peer.path is None:
            return
        now = time.monotonic()
        for err in errors:
            encap = int.from_bytes(err.payload[6:8], "big") if len(err.payload) >= 8 else -1
            quoted = dp.ring(peer).find(encap) if encap >= 0 else None
            if err.mtu is not None:
                overhead = outer_overhead(err.v4, self.profile.transport, self.profile.mode)
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

    def _set_mtu(self, mtu: int, why: str) -> None:
        if self.datapath is not None:
            self.datapath.mtu = mtu
        try:
            netdev.set_mtu(self.ifname, mtu)
        except TunsealError as e:
            log.warning("tunnel %s: setting MTU %d failed: %s", self.name, mtu, e,
                        extra={"tunnel": self.name})
        log.info("tunnel %s: MTU now %d (%s)", self.name, mtu, why, extra={"tunnel": self.name})
        self._on_change(self)

    def notify(self) -> None:
        state = self.state
        if state != self._last_state:
            if self._last_state:
                log.info("tunnel %s: %s -> %s", self.name, self._last_state, state,
                         extra={"tunnel": self.name})
            self._last_state = state
            self.since = time.time()
            self._on_change(self)

    # --- status ------------------------------------------------------------------------------

    @property
    def state(self) -> str:
        if self.peer is None:
            return "connecting"
        s = self.peer.state
        if s == "waiting":
            return "connecting"
        path = self.peer.path
        if path is not None and not path.reachable and self.peer.endpoint is not None:
            return "unreachable"
        if (s == "handshaking" and isinstance(self.peer, Peer)
                and self.peer.attempt_started is not None
                and time.monotonic() - self.peer.attempt_started > UNREACHABLE_AFTER * 2):
            return "unreachable"
        return s

    def sample_rates(self) -> None:
        """Update rx/tx rates (bytes/s) since the previous call."""
        now = time.monotonic()
        st = self.peer.stats if self.peer is not None else None
        rx = st.rx_bytes if st else 0
        tx = st.tx_bytes if st else 0
        t0, rx0, tx0 = self._rate_sample
        dt = max(now - t0, 1e-3)
        self.rx_rate, self.tx_rate = (rx - rx0) / dt, (tx - tx0) / dt
        self._rate_sample = (now, rx, tx)

    def status(self) -> TunnelStatus:
        p = self.profile
        peer = self.peer
        path = peer.path if peer is not None else None
        st = peer.stats if peer is not None else None
        endpoint = ""
        if peer is not None and isinstance(peer.endpoint, tuple):
            host, port = peer.endpoint[0], peer.endpoint[1]
            endpoint = f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
        peers: tuple[PeerStatus, ...] = ()
        if peer is not None and st is not None:
            peers = (PeerStatus(name=peer.name, state=self.state, endpoint=endpoint,
                                allowed_ips=p.allowed_ips, last_handshake=st.last_handshake,
                                rx_bytes=st.rx_bytes, tx_bytes=st.tx_bytes,
                                rx_packets=st.rx_packets, tx_packets=st.tx_packets,
                                rtt_ms=path.rtt_ms if path else None,
                                loss=path.loss if path else None),)
        return TunnelStatus(
            name=p.name, state=self.state, mode=p.mode,
            cipher=p.cipher if p.mode != "plain" else "none", transport=p.transport,
            interface=self.ifname, endpoint=endpoint,
            mtu=self.datapath.mtu if self.datapath is not None else p.mtu,
            rtt_ms=path.rtt_ms if path is not None else None,
            loss=path.loss if path is not None else None,
            last_handshake=st.last_handshake if st else None,
            rx_bytes=st.rx_bytes if st else 0, tx_bytes=st.tx_bytes if st else 0,
            rx_packets=st.rx_packets if st else 0, tx_packets=st.tx_packets if st else 0,
            rx_rate=self.rx_rate, tx_rate=self.tx_rate,
            drops=dict(self.endpoint.drops) if self.endpoint else {},
            peers=peers, since=self.since,
        )
