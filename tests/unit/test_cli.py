"""core/cli: what `tunseal status` shows, and the usage exit code (no helper needed for either)."""

from __future__ import annotations

import pytest

from core.cli import EXIT_USAGE, main
from core.format import format_age, format_status, human_bytes
from core.status import DnsStatus, TunnelStatus

NOW = 1_800_000_000.0


def up(**changes: object) -> TunnelStatus:
    fields: dict[str, object] = {
        "name": "office", "state": "up", "mode": "ephemeral", "cipher": "chacha20-poly1305",
        "transport": "udp", "interface": "ts-office", "endpoint": "198.51.100.7:51900",
        "mtu": 1408, "last_handshake": NOW - 12, "rx_bytes": 5 * 1024 * 1024 + 300,
        "tx_bytes": 340 * 1024, "rx_rate": 2048.0, "tx_rate": 200.0, "rtt_ms": 23.4,
        "loss": 0.0, "since": NOW - 300,
    }
    fields.update(changes)
    return TunnelStatus(**fields)  # type: ignore[arg-type]


def test_status_at_a_glance() -> None:
    text = format_status(up(), NOW)
    assert text.splitlines() == [
        "office: up for 5 min",
        "  endpoint   198.51.100.7:51900 over udp",
        "  interface  ts-office, MTU 1408",
        "  security   ephemeral, chacha20-poly1305",
        "  handshake  12 s ago",
        "  transfer   5.0 MiB received, 340 KiB sent",
        "  rate       2.0 KiB/s in, 200 B/s out",
        "  RTT        23.4 ms (loss 0 %)",
    ]
    assert "UNSAFE" not in text


def test_status_shows_the_dns_in_effect() -> None:
    full = DnsStatus("resolved", ("10.77.0.1", "fd77::1"), ("corp.example", "~."), True)
    assert "  DNS        10.77.0.1, fd77::1 for corp.example ~. (systemd-resolved, default " \
        "route)" in format_status(up(dns=full), NOW)
    plain = DnsStatus("file", ("10.77.0.1",), ())
    assert "  DNS        10.77.0.1 (/etc/resolv.conf)" in format_status(up(dns=plain), NOW)
    assert "DNS" not in format_status(up(), NOW)  # a tunnel without DNS settings
    # the status travels as JSON: the DNS survives the round trip
    assert TunnelStatus.from_dict(up(dns=full).to_dict()).dns == full


def test_plain_mode_warns() -> None:
    text = format_status(up(mode="plain"), NOW)
    assert text.splitlines()[1].startswith("  UNSAFE: no encryption")
    assert "  security   plain" in text and "chacha20" not in text


def test_down_and_error_states_are_short() -> None:
    assert format_status(TunnelStatus(name="office", state="down"), NOW) == "office: down"
    text = format_status(up(state="error", error="no route to 198.51.100.7"), NOW)
    assert "  error      no route to 198.51.100.7" in text


def test_never_handshaken_and_unmeasured() -> None:
    text = format_status(up(last_handshake=None, rtt_ms=None, loss=None), NOW)
    assert "  handshake  never" in text
    assert "  RTT        not measured yet" in text


@pytest.mark.parametrize(
    ("n", "shown"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"),
     (12 * 1024**2, "12 MiB"), (3 * 1024**4, "3.0 TiB"), (5000 * 1024**4, "5000 TiB")],
)
def test_human_bytes(n: int, shown: str) -> None:
    assert human_bytes(n) == shown


@pytest.mark.parametrize(
    ("age", "shown"),
    [(0, "0 s ago"), (59.9, "59 s ago"), (61, "1 min ago"), (3 * 3600 + 120, "3 h 2 min ago"),
     (2 * 86400 + 3600, "2 d 1 h ago"), (-5, "0 s ago")],
)
def test_age(age: float, shown: str) -> None:
    assert format_age(NOW - age, NOW) == shown
    assert format_age(None, NOW) == "never"


@pytest.mark.parametrize("argv", [[], ["frobnicate"], ["up"], ["status", "--count", "0"]])
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == EXIT_USAGE
    assert "usage: tunseal" in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "exit codes" in capsys.readouterr().out
