"""Human units for the window: sizes, rates, ages, states, and the graph's axis ticks.

Pure functions. Sizes and ages are the CLI's (:mod:`core.cli`), so both clients say the same.
"""

from __future__ import annotations

import math
import time

from core.format import format_age, human_bytes
from core.probe import LOSS_WINDOW, PROBE_INTERVAL
from core.status import TunnelStatus

__all__ = [
    "STATE_WORDS",
    "axis_ticks",
    "connected_for",
    "duration_text",
    "format_age",
    "handshake_text",
    "human_bytes",
    "human_rate",
    "loss_text",
    "no_answer_causes",
    "rtt_text",
    "short_rate",
    "state_text",
    "time_axis_label",
]

STATE_WORDS = {
    "down": "Disconnected",
    "connecting": "Connecting…",
    "handshaking": "Connecting… (handshake)",
    "up": "Connected",
    "unreachable": "No answer from the server",
    "error": "Failed",
    "failed": "Failed",
}
"""What each core.status state is called in the window and the tray."""


def state_text(state: str) -> str:
    return STATE_WORDS.get(state, state.capitalize() or "Unknown")


def no_answer_causes(endpoint: str, transport: str, *, was_up: bool) -> list[str]:
    """The likely reasons a server does not answer, most likely first, in words a user can
    check or pass on. ``was_up``: the tunnel had a session (so keys and address were right)."""
    host, _, port = endpoint.rpartition(":")
    where = f"{host or endpoint}" + (f", {transport.upper()} port {port}" if port else "")
    if was_up:
        return [f"The network between here and the server ({where}) is down, or this "
                "computer went offline.",
                "The server stopped or restarted.",
                "A firewall or Wi-Fi portal started blocking the traffic."]
    return ["The server does not know this computer's public key yet: give it to your "
            "administrator (Keys tab).",
            f"The server address or port is wrong ({where}): check Server with Edit.",
            "The security mode or cipher differs from the server's: ask your administrator "
            "for the profile file rather than typing it in.",
            f"A firewall blocks {transport.upper()} port {port or 'of the server'} on the way, or "
            "the server is not running."]


def human_rate(bytes_per_second: float) -> str:
    """'0 B/s', '512 B/s', '1.5 KiB/s', '12 MiB/s'."""
    return f"{human_bytes(max(0.0, bytes_per_second))}/s"


def short_rate(bytes_per_second: float) -> str:
    """An axis label: like :func:`human_rate` but without a decimal when the value is round."""
    text = human_rate(bytes_per_second)
    return text.replace(".0 ", " ")


def handshake_text(st: TunnelStatus, now: float | None = None) -> str:
    if st.state == "down":
        return "—"
    return format_age(st.last_handshake, time.time() if now is None else now)


LOSS_SPAN = LOSS_WINDOW * PROBE_INTERVAL
"""Seconds of probes the helper's loss figure covers (its last LOSS_WINDOW probes)."""


def rtt_text(st: TunnelStatus) -> str:
    """The helper keeps the last RTT measured while probes go unanswered: say it is old."""
    if st.state == "down":
        return "—"
    if st.rtt_ms is None:
        return "not measured yet"
    if st.state != "up":
        return f"no answer (last measured {st.rtt_ms:.1f} ms)"
    return f"{st.rtt_ms:.1f} ms"


def loss_text(st: TunnelStatus, *, recovered: float | None = None,
              now: float | None = None) -> str:
    """The helper's loss covers its last probes, so for a while after an outage it counts the
    outage too: ``recovered`` (when the tunnel came back) says so rather than alarm."""
    if st.state == "down":
        return "—"
    if st.loss is None:
        return "not measured yet"
    text = f"{st.loss * 100:.0f} %" if st.loss >= 0.1 else f"{st.loss * 100:.1f} %"
    now = time.time() if now is None else now
    if (st.state == "up" and st.loss > 0 and recovered is not None
            and now - recovered < LOSS_SPAN):
        text += (f" (counts the outage {duration_text(now - recovered)} ago; clears within "
                 f"{duration_text(LOSS_SPAN - (now - recovered))})")
    return text


def duration_text(seconds: float) -> str:
    """'12 s', '5 min 3 s', '2 h 5 min'."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s" if s % 60 else f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60} min"


def connected_for(st: TunnelStatus, now: float | None = None) -> str:
    if st.state != "up" or st.since is None:
        return "—"
    return duration_text((time.time() if now is None else now) - st.since)


def axis_ticks(maximum: float, *, count: int = 4, base: float = 1024.0) -> list[float]:
    """Round tick values from 0 to at least ``maximum`` in about ``count`` steps. A step is a
    1, 2, 2.5 or 5 multiple of a power of ten of a power of ``base`` (bytes read best in 1024s:
    '256 KiB/s', never '262144 B/s'). Never empty: an idle graph gets a 0-1000 B/s scale."""
    top = max(maximum, 1000.0)
    raw = top / max(1, count)
    unit = base ** max(0, math.floor(math.log(raw, base)))
    scaled = raw / unit
    step_in_unit = next((s for s in _NICE_STEPS if s >= scaled), None)
    if step_in_unit is None:  # e.g. 700 MiB: one step of the next unit up reads better
        unit, step_in_unit = unit * base, 1
    step = step_in_unit * unit
    n = max(1, math.ceil(top / step - 1e-9))
    return [i * step for i in range(n + 1)]


_NICE_STEPS = (1, 2, 2.5, 5, 10, 20, 25, 50, 100, 200, 250, 500)


def time_axis_label(seconds_ago: float) -> str:
    """'now', '-30 s', '-2 min'."""
    s = round(seconds_ago)
    if s <= 0:
        return "now"
    if s < 60:
        return f"-{s} s"
    minutes = s / 60
    return f"-{minutes:.0f} min" if minutes == int(minutes) else f"-{minutes:.1f} min"
