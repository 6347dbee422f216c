"""Live status of a tunnel, as the helper reports it to the CLI and the GUI.

Shared by both sides of the control socket (it is part of the IPC schema). Holds counters and
states only: never a key, never a packet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from dataclasses import fields as dc_fields
from enum import StrEnum
from typing import Any, Final

PEERS_INLINE: Final = 32
"""A tunnel's status lists its peers when it has at most this many (a client's one, a small
gateway's). A larger gateway's status gives only ``peer_count`` and ``peers_up``, so the status
stays far below the control protocol's 64 KiB and cheap to build every second; its peers are
asked for in pages (``status`` with ``peers``, ``peer_list``: docs/IPC.md)."""


class TunnelState(StrEnum):
    """down: not running. connecting: running, no session yet. handshaking: initiation in
    flight. up: a confirmed session. unreachable: the peer stopped answering. error: failed to
    start. failed: was running, but its data path stopped and could not be restarted;
    ``error`` says why (the tunnel carries nothing until it is taken down and up again)."""

    DOWN = "down"
    CONNECTING = "connecting"
    HANDSHAKING = "handshaking"
    UP = "up"
    UNREACHABLE = "unreachable"
    ERROR = "error"
    FAILED = "failed"

    @property
    def trying(self) -> bool:
        """Running but not connected: handshakes are being tried (or will be)."""
        return self in (TunnelState.CONNECTING, TunnelState.HANDSHAKING, TunnelState.UNREACHABLE)



@dataclass(frozen=True, slots=True)
class PeerStatus:
    name: str
    state: str
    endpoint: str = ""
    allowed_ips: tuple[str, ...] = ()
    last_handshake: float | None = None
    """Unix time of the last completed handshake."""
    rx_bytes: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    tx_packets: int = 0
    rtt_ms: float | None = None
    loss: float | None = None
    """Fraction of probes unanswered over the recent window, 0.0-1.0."""

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in _PEER_FIELDS}


_PEER_FIELDS: Final = tuple(f.name for f in dc_fields(PeerStatus))


@dataclass(frozen=True, slots=True)
class DnsStatus:
    """The DNS in effect for a running tunnel, as the system reports it (docs/DNS.md)."""

    backend: str
    """resolved (systemd-resolved, per link), resolvconf, or file (/etc/resolv.conf)."""
    servers: tuple[str, ...] = ()
    domains: tuple[str, ...] = ()
    """``corp.example`` search and route, ``~corp.example`` route only, ``~.`` every name."""
    default_route: bool | None = None
    """resolved only: the link also answers names no routing domain claims."""

    def summary(self) -> str:
        """One line for a person: ``10.44.0.1 for ~corp.example ~. (systemd-resolved, default
        route)``."""
        servers = ", ".join(self.servers) or "no servers"
        domains = f" for {' '.join(self.domains)}" if self.domains else ""
        how = {"resolved": "systemd-resolved", "resolvconf": "resolvconf",
               "file": "/etc/resolv.conf"}.get(self.backend, self.backend)
        if self.default_route:
            how += ", default route"
        return f"{servers}{domains} ({how})"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DnsStatus:
        route = d.get("default_route")
        return cls(backend=str(d.get("backend", "")),
                   servers=tuple(str(s) for s in d.get("servers", ())),
                   domains=tuple(str(s) for s in d.get("domains", ())),
                   default_route=None if route is None else bool(route))


@dataclass(frozen=True, slots=True)
class TunnelStatus:
    name: str
    state: str
    mode: str = ""
    cipher: str = ""
    transport: str = ""
    interface: str = ""
    endpoint: str = ""
    mtu: int = 0
    last_handshake: float | None = None
    rx_bytes: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    tx_packets: int = 0
    rx_rate: float = 0.0
    """Bytes per second over the last status interval."""
    tx_rate: float = 0.0
    rtt_ms: float | None = None
    loss: float | None = None
    drops: dict[str, int] = field(default_factory=dict)
    ecn_ce: int = 0
    """Congestion marks (ECN CE) the outer path made, passed on to ECN-capable inner packets
    (RFC 6040, docs/DATAPATH.md); those it made on packets that cannot carry one were dropped
    and are in ``drops`` as ``ecn_not_ect_ce``."""
    peers: tuple[PeerStatus, ...] = ()
    """Every peer when there are at most :data:`PEERS_INLINE`, else none (or the page of
    them that a ``status`` request with ``peers`` asked for)."""
    peer_count: int = 0
    """How many peers the tunnel has."""
    peers_up: int = 0
    """How many of them have a confirmed session."""
    error: str = ""
    since: float | None = None
    """Unix time the tunnel entered its current state."""
    dns: DnsStatus | None = None
    """The tunnel's DNS while it is up and has DNS settings."""
    lockdown: str = ""
    """"off", "connected" or "always" (docs/LOCKDOWN.md)."""
    ipv6: str = ""
    """"blocked": a full IPv4 tunnel without IPv6 keeps IPv6 from leaving; "tunnel": IPv6
    goes through the tunnel (it routes ::/0); "": neither (a split tunnel)."""

    def congestion_summary(self) -> str:
        """``12 congestion marks seen (2 packets dropped: not ECN-capable)``; "" if none."""
        dropped = self.drops.get("ecn_not_ect_ce", 0)
        seen = self.ecn_ce + dropped
        if not seen:
            return ""
        text = f"{seen} congestion mark{'s' if seen != 1 else ''} seen"
        if dropped:
            text += f" ({dropped} packet{'s' if dropped != 1 else ''} dropped: not ECN-capable)"
        return text

    def to_dict(self) -> dict[str, Any]:
        # By hand, not dataclasses.asdict: it deep-copies every value, and a gateway's status
        # is built once a second.
        out = {f: getattr(self, f) for f in _TUNNEL_FIELDS}
        out["drops"] = dict(self.drops)
        out["peers"] = [p.to_dict() for p in self.peers]
        out["dns"] = None if self.dns is None else {
            "backend": self.dns.backend, "servers": self.dns.servers,
            "domains": self.dns.domains, "default_route": self.dns.default_route}
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TunnelStatus:
        known = {f for f in cls.__dataclass_fields__}
        data = {k: v for k, v in d.items() if k in known}
        peers = []
        for p in d.get("peers", ()):
            fields: dict[str, Any] = {k: v for k, v in p.items()
                                      if k in PeerStatus.__dataclass_fields__}
            fields["allowed_ips"] = tuple(fields.get("allowed_ips", ()))
            peers.append(PeerStatus(**fields))
        data["peers"] = tuple(peers)
        data["drops"] = {str(k): int(v) for k, v in dict(d.get("drops", {})).items()}
        dns = d.get("dns")
        data["dns"] = DnsStatus.from_dict(dns) if isinstance(dns, dict) else None
        return cls(**data)


_TUNNEL_FIELDS: Final = tuple(f.name for f in dc_fields(TunnelStatus))
