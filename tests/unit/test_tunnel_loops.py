"""A real Tunnel's data path in-process, without root: its loops' supervision (issue 9, "the
class") and the relay of outer ICMP errors for IPv6 inner packets (finding 11).

The Tunnel is built the way ``Tunnel.start`` builds it, minus what needs root and changes the
host (the TUN device, links, routes): a socketpair stands in for the TUN file descriptor and
the transport is a real UDP socket on loopback. Everything else (Endpoint, DataPath, the
supervised loops, ``_path_errors``, ``status``) is the production code.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from core.constants import FIXED_HEADER_LEN
from core.handshake import Identity
from core.session import seal_plain_into
from helper.records import Records
from helper.transport import Address, UdpTransport
from helper.tun import Tun
from helper.tunnel import Tunnel
from helper.tunnelspec import PeerSpec, TunnelSpec

WAIT = 20.0
LOOPBACK = "127.0.0.1"
OUR_V6 = bytes.fromhex("fd445eed000000000000000000000002")
FAR_V6 = bytes.fromhex("fd010000000000000000000000000001")
OUR_V4 = bytes([10, 44, 0, 2])
FAR_V4 = bytes([10, 1, 0, 1])


def until(what: str, check: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@dataclass
class Rig:
    tunnel: Tunnel
    tun: socket.socket
    """Our side of the TUN stand-in: what we write here, the tunnel reads as outgoing."""
    far: socket.socket
    states: list[str] = field(default_factory=list)

    def read_tun(self, timeout: float = WAIT) -> bytes | None:
        r, _, _ = select.select([self.tun], [], [], timeout)
        return self.tun.recv(1 << 17) if r else None

    def from_far(self, inner: bytes) -> None:
        """A `plain` packet from the far end to the tunnel's UDP port."""
        out = bytearray(FIXED_HEADER_LEN + len(inner))
        seal_plain_into(out, 0, inner, device_id=1, encap_id=1, flags=0)
        self.far.sendto(out, (LOOPBACK, self.tunnel.listen_port))


def udp4(src: bytes, dst: bytes, payload: bytes) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 1, 0x4000, 64, 17, 0,
                     src, dst)
    return ip + struct.pack("!HHHH", 40000, 9999, 8 + len(payload), 0) + payload


def udp6(src: bytes, dst: bytes, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", 40000, 9999, 8 + len(payload), 0) + payload
    return struct.pack("!IHBB16s16s", 0x60000000, len(udp), 17, 64, src, dst) + udp


def in_process_tunnel(tmp: Path, far_endpoint: Address) -> tuple[Tunnel, socket.socket,
                                                                  list[str]]:
    """A `plain` client tunnel to ``far_endpoint``, its loops running (Tunnel.start without
    the TUN device and netdev)."""
    spec = TunnelSpec(
        name=f"rx-{uuid.uuid4().hex[:8]}", mode="plain", cipher="chacha20-poly1305",
        transport="udp", device_id=2, addresses=("10.44.0.2/24", "fd44:5eed::2/64"),
        mtu=1400, routes=(), listen_port=0, ipv6_outer=False, static_private=None,
        has_psk=False,
        peers=(PeerSpec("far", Identity(), 1, ("10.1.0.0/16", "fd01::/64"), far_endpoint),))
    states: list[str] = []
    t = Tunnel(spec, records=Records(tmp), on_change=lambda tun: states.append(tun.state))
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    t.attach(Tun(ours.detach(), t.ifname, False), UdpTransport(bind=LOOPBACK), None)
    for ps in spec.peers:
        t.add_peer(ps)
    t._start_loops()
    return t, theirs, states


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    far = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    far.bind((LOOPBACK, 0))
    t, tun, states = in_process_tunnel(tmp_path, far.getsockname())
    try:
        yield Rig(t, tun, far, states)
    finally:
        t.stop()
        tun.close()
        far.close()
        assert all(not s.thread.is_alive() for s in t._threads) or not t._threads


def carries_traffic(rig: Rig) -> bool:
    """One packet each way through the tunnel."""
    rig.tun.send(udp4(OUR_V4, FAR_V4, b"out"))
    rig.far.settimeout(WAIT)
    got = rig.far.recv(2048)
    rig.from_far(udp4(FAR_V4, OUR_V4, b"in"))
    back = rig.read_tun()
    return got.endswith(b"out") and back is not None and back.endswith(b"in")


class ReceiveFault:
    """Wraps the transport's real ``receive``; raises once per ``arm``. Installed before the
    loops start (run_rx looks ``receive`` up once), it kills the receive loop on purpose."""

    def __init__(self, real: Callable[[bytearray], tuple[int, int, Address]]):
        self.real = real
        self.armed = 0
        self.fired = 0

    def __call__(self, buf: bytearray) -> tuple[int, int, Address]:
        if self.armed:
            self.armed -= 1
            self.fired += 1
            raise RuntimeError("injected fault")
        return self.real(buf)


def test_a_receive_loop_that_dies_is_restarted(tmp_path: Path) -> None:
    far = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    far.bind((LOOPBACK, 0))
    spec_rig: Rig | None = None
    try:
        t, tun, states = in_process_tunnel(tmp_path, far.getsockname())
        spec_rig = Rig(t, tun, far, states)
        # Swap the rx loop for one whose receive can be made to fail: stop the loops, install
        # the fault, start them again (as the supervisor itself would).
        dp = t.datapath
        assert dp is not None and t.transport is not None
        dp.stop.set()
        for s in t._threads:
            s.join(5.0)
        t._threads.clear()
        dp.stop.clear()
        fault = ReceiveFault(t.transport.receive)
        t.transport.receive = fault  # type: ignore[method-assign]
        t._start_loops()
        assert carries_traffic(spec_rig)
        rx = next(s for s in t._threads if s.name.endswith("-rx"))
        fault.armed = 1
        until("the rx loop to die and be restarted", lambda: rx.restarts == 1)
        assert carries_traffic(spec_rig)
        assert t.state != "failed" and t.status().error == ""
        # It keeps dying: after RESTART_LIMIT restarts in the window, the tunnel fails, says
        # why, and stops its other loop too (no half-dead tunnel).
        fault.armed = 1000
        until("the tunnel to fail", lambda: t.state == "failed")
        st = t.status()
        assert st.state == "failed" and "failed" in states
        assert "rx loop died 4 times" in st.error and "injected fault" in st.error, st.error
        assert f"tunseal down {t.name}" in st.error
        assert st.to_dict()["error"] == st.error
        until("both loops to end", lambda: not any(s.thread.is_alive() for s in t._threads))
        assert rx.restarts == 3
    finally:
        if spec_rig is not None:
            spec_rig.tunnel.stop()
            spec_rig.tun.close()
        far.close()


def test_a_transmit_loop_whose_tun_breaks_fails_the_tunnel(rig: Rig) -> None:
    """The TUN descriptor turns into something that cannot be read (a directory): every read
    raises, every restart dies again, and the tunnel ends up ``failed`` with the reason."""
    assert carries_traffic(rig)
    assert rig.tunnel.tun is not None
    d = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.dup2(d, rig.tunnel.tun.fd)
    finally:
        os.close(d)
    until("the tunnel to fail", lambda: rig.tunnel.state == "failed")
    err = rig.tunnel.status().error
    assert "tx loop died 4 times" in err and "IsADirectoryError" in err, err
    assert rig.states[-1] == "failed"
    shows_failed_with_reason(rig.tunnel.status().to_dict())


def shows_failed_with_reason(data: dict[str, object]) -> None:
    """What the CLI, the GUI's model (window and tray) and its notifications make of a
    ``failed`` status event, as the helper sends it."""
    from core.format import format_status
    from core.status import TunnelStatus
    from gui.format import state_text
    from gui.model import Availability, Model, TrayState
    from gui.notify import Kind, TransitionTracker

    st = TunnelStatus.from_dict(dict(data))
    reason = str(data["error"])
    text = format_status(st, time.time())
    assert f"{st.name}: failed" in text and reason in text, text
    model = Model()
    model.availability = Availability(ok=True)
    model.apply_status(data, time.time())
    assert model.tray_state() is TrayState.PROBLEM
    assert state_text("failed") == "Failed"
    tracker = TransitionTracker()
    tracker.observe(st.name, "up")
    notice = tracker.observe(st.name, "failed", error=reason)
    assert notice is not None and notice.kind is Kind.FAILED and notice.is_problem
    assert reason in notice.body and "keeps trying" not in notice.body


def test_finding11_outer_icmp_errors_are_relayed_for_ipv6_inner_packets(
        tmp_path: Path) -> None:
    """An IPv6 packet into the tunnel; the outer path answers "port unreachable" (nothing
    listens at the far end): the inner IPv6 sender must get an ICMPv6 destination
    unreachable quoting its packet. The sent-packet ring kept 28 bytes, less than an IPv6
    header, so no error was ever relayed for IPv6."""
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind((LOOPBACK, 0))
    nowhere = closed.getsockname()
    closed.close()  # nothing listens there now: the kernel answers with ICMP port unreachable
    t, tun, _ = in_process_tunnel(tmp_path, nowhere)
    try:
        pkt = udp6(OUR_V6, FAR_V6, b"hello over v6")
        deadline = time.monotonic() + WAIT
        msg = None
        while msg is None:
            assert time.monotonic() < deadline, f"no ICMPv6 error relayed: {t.status().drops}"
            tun.send(pkt)
            got = None
            r, _, _ = select.select([tun], [], [], 0.5)
            if r:
                got = tun.recv(4096)
            if got and got[0] >> 4 == 6 and got[6] == 58:
                msg = got
        assert msg[40:42] == bytes((1, 3)), msg[40:42].hex()  # unreachable, address
        assert msg[24:40] == OUR_V6  # to the inner sender
        assert msg[48:48 + 48] == pkt[:48]  # quoting its IPv6 and UDP headers
        until("the relay to be counted", lambda: t.status().drops.get("icmp_relayed", 0) >= 1)
    finally:
        t.stop()
        tun.close()
