"""How a tunnel's status reads, for the CLI and the GUI alike: pure functions, tested without a
helper (tests/unit/test_cli.py)."""

from __future__ import annotations

from core.constants import Mode
from core.status import TunnelStatus

__all__ = ["format_age", "format_status", "human_bytes"]


def format_status(st: TunnelStatus, now: float) -> str:
    """A tunnel's status as a person reads it: state first, then one fact per line."""
    since = f" for {duration(now - st.since)}" if st.since and st.state != "down" else ""
    lines = [f"{st.name}: {st.state}{since}"]
    if st.mode == Mode.PLAIN:
        lines.append("  UNSAFE: no encryption (mode plain): anyone on the path can read and "
                     "change this traffic")
    if st.error:
        lines.append(f"  error      {st.error}")
    if st.state == "down":
        return "\n".join(lines)
    cipher = "" if st.mode == Mode.PLAIN else st.cipher
    rows = [
        ("endpoint", _endpoint(st)),
        ("interface", ", ".join(x for x in (st.interface, f"MTU {st.mtu}" if st.mtu else "") if x)),
        ("security", ", ".join(x for x in (st.mode, cipher) if x)),
        ("handshake", format_age(st.last_handshake, now)),
        ("transfer", f"{human_bytes(st.rx_bytes)} received, {human_bytes(st.tx_bytes)} sent"),
        ("rate", f"{human_bytes(st.rx_rate)}/s in, {human_bytes(st.tx_rate)}/s out"),
        ("RTT", _rtt(st)),
        ("congestion", st.congestion_summary()),
        ("DNS", st.dns.summary() if st.dns is not None else ""),
        ("lockdown", _lockdown(st)),
        ("IPv6", _ipv6(st)),
        ("peers", f"{st.peer_count} ({st.peers_up} up)" if st.peer_count > 1 else ""),
    ]
    lines += [f"  {label:<10} {value}" for label, value in rows if value]
    return "\n".join(lines)


def format_peers(st: TunnelStatus) -> str:
    """One line per peer of ``st`` (a gateway's, ``tunseal status NAME --peers``)."""
    return "\n".join(f"  {p.name:<20} {p.state:<12} {', '.join(p.allowed_ips):<24} "
                     f"{p.endpoint}".rstrip() for p in st.peers)


def format_age(then: float | None, now: float) -> str:
    """'12 s ago', '5 min ago', ... or 'never'."""
    if then is None:
        return "never"
    return f"{duration(max(0.0, now - then))} ago"


def human_bytes(n: float) -> str:
    """1023 B, 1.5 KiB, 12 MiB, ..."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            if unit == "B":
                return f"{int(value)} B"
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def duration(seconds: float) -> str:
    """A span of time for people: '45 s', '12 min', '3 h 5 min', '2 d 4 h'."""
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def _endpoint(st: TunnelStatus) -> str:
    where = st.endpoint or "none (listening)"
    return f"{where} over {st.transport}" if st.transport else where


def _rtt(st: TunnelStatus) -> str:
    if st.rtt_ms is None:
        return "not measured yet"
    loss = f" (loss {st.loss * 100:.0f} %)" if st.loss is not None else ""
    return f"{st.rtt_ms:.1f} ms{loss}"


def _lockdown(st: TunnelStatus) -> str:
    return {"connected": "on while connected: nothing leaves but through the tunnel",
            "always": "always: nothing leaves but through the tunnel, even when it is down",
            }.get(st.lockdown, "")


def _ipv6(st: TunnelStatus) -> str:
    if st.ipv6 == "blocked":
        return "blocked: this tunnel routes all IPv4 but no IPv6, so no IPv6 leaves beside it"
    if st.ipv6 == "tunnel":
        return "through the tunnel"
    return ""
