"""Live status of a tunnel, as the helper reports it to the CLI and the GUI.

Shared by both sides of the control socket (it is part of the IPC schema). Holds counters and
states only: never a key, never a packet.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

STATES = ("down", "connecting", "handshaking", "up", "unreachable", "error")
"""down: not running. connecting: running, no session yet. handshaking: initiation in flight.
up: a confirmed session. unreachable: the peer stopped answering. error: failed to start."""


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
    peers: tuple[PeerStatus, ...] = ()
    error: str = ""
    since: float | None = None
    """Unix time the tunnel entered its current state."""
    lockdown: str = ""
    """"off", "connected" or "always" (docs/LOCKDOWN.md)."""
    ipv6: str = ""
    """"blocked": a full IPv4 tunnel without IPv6 keeps IPv6 from leaving; "tunnel": IPv6
    goes through the tunnel (it routes ::/0); "": neither (a split tunnel)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

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
        return cls(**data)
