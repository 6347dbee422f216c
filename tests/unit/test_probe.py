"""CONTROL messages and the per-peer path soft state (core/probe.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import probe
from core.constants import ControlKind
from core.errors import WireError
from core.probe import UNREACHABLE_AFTER, PathState


def test_probe_reply_round_trip_and_padding() -> None:
    payload = probe.encode_probe(7, 123_456_789, size=1200)
    assert len(payload) == 1200
    kind, body = probe.decode(payload)
    assert kind is ControlKind.PROBE and body == probe.Probe(7, 123_456_789, 1200)
    assert isinstance(body, probe.Probe)
    kind, reply = probe.decode(probe.encode_reply(body))
    assert kind is ControlKind.PROBE_REPLY and reply == body


def test_icmp_relay_round_trip() -> None:
    icmp = bytes(range(40))
    assert probe.decode(probe.encode_icmp_relay(icmp)) == (ControlKind.ICMP_RELAY, icmp)


@pytest.mark.parametrize("payload", [b"", b"\x01\x00", b"\x02" + bytes(13), b"\x03abc", b"\x09"])
def test_malformed_control_is_a_wire_error(payload: bytes) -> None:
    with pytest.raises(WireError):
        probe.decode(payload)


@settings(max_examples=500)
@given(st.binary(max_size=64))
def test_decode_is_total(payload: bytes) -> None:
    try:
        probe.decode(payload)
    except WireError:
        pass


def test_rtt_is_smoothed_and_loss_counts_unanswered_probes() -> None:
    path = PathState(mtu=1408, now=0.0)
    pid, sent = path.new_probe(0.0)
    path.on_reply(probe.Probe(pid, sent, 13), 0.010)
    assert path.rtt_ms == pytest.approx(10.0)
    pid2, sent2 = path.new_probe(1.0)
    path.on_reply(probe.Probe(pid2, sent2, 13), 1.030)
    assert 10.0 < (path.rtt_ms or 0) < 30.0  # moved towards the new sample, not onto it
    path.new_probe(2.0)  # never answered
    path.update(10.0)
    assert path.loss == pytest.approx(1 / 3)


def test_unreachable_only_when_asked_and_unanswered() -> None:
    path = PathState(mtu=1408, now=0.0)
    path.update(UNREACHABLE_AFTER * 5)
    assert path.reachable, "an idle path that was never probed is not unreachable"
    path.new_probe(100.0)
    path.update(100.0 + UNREACHABLE_AFTER - 0.1)
    assert path.reachable
    assert path.update(100.0 + UNREACHABLE_AFTER + 0.1) is True
    assert not path.reachable
    path.heard(107.0)
    path.update(107.0)
    assert path.reachable


def test_mtu_goes_down_on_report_and_up_on_a_larger_probe() -> None:
    path = PathState(mtu=1408, now=0.0)
    assert path.lower_mtu(1208, 1.0) and path.mtu == 1208
    assert not path.lower_mtu(1300, 2.0)
    assert path.mtu_probe_size(2.0) is None  # too soon after the drop
    size = path.mtu_probe_size(100.0)
    assert size == 1408
    pid, sent = path.new_probe(100.0, size)
    path.on_reply(probe.Probe(pid, sent, size), 100.01)
    assert path.mtu == 1408


def test_finding4_mtu_floor_is_1280_when_the_tunnel_carries_ipv6() -> None:
    """Issue 9 finding 4: a report below 1280 (real or forged) must not take a tunnel that
    carries IPv6 below IPv6's minimum link MTU, where Linux deletes the link's IPv6 addresses."""
    path = PathState(mtu=1408, now=0.0, ipv6=True)
    assert path.lower_mtu(1144, 1.0) and path.mtu == probe.MTU_FLOOR_IPV6 == 1280
    assert not path.lower_mtu(600, 2.0) and path.mtu == 1280
    assert not path.lower_mtu(0, 3.0) and path.mtu == 1280
    # It still comes back up to the configured MTU when a full-size probe gets through.
    size = path.mtu_probe_size(100.0)
    assert size == 1408
    pid, sent = path.new_probe(100.0, size)
    path.on_reply(probe.Probe(pid, sent, size), 100.1)
    assert path.mtu == 1408


def test_finding4_ipv4_only_tunnel_keeps_the_576_floor() -> None:
    path = PathState(mtu=1408, now=0.0)
    assert path.lower_mtu(1144, 1.0) and path.mtu == 1144
    assert path.lower_mtu(100, 2.0) and path.mtu == probe.MTU_FLOOR_IPV4 == 576
    assert not path.lower_mtu(500, 3.0)


def test_finding4_floor_raised_later_applies_to_the_next_report() -> None:
    """A gateway that gains an IPv6 peer at runtime raises the floor of its existing paths."""
    path = PathState(mtu=1408, now=0.0)
    path.min_mtu = probe.MTU_FLOOR_IPV6
    assert path.lower_mtu(900, 1.0) and path.mtu == 1280
