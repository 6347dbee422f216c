"""Transmit: the native sealer and the pure-Python one (helper/offload.py ``seal_tso``,
``Keypair.seal_into``, ``frame_tso_plain``) put the same bytes on the wire for the same keys
and counters, and each side opens what the other sealed."""

from __future__ import annotations

import itertools
import os
import struct
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import native
from core.constants import PacketType
from core.session import Keypair, open_data, open_plain
from helper import offload
from helper.transport import MAX_GSO_SEGMENTS

CIPHERS = st.sampled_from(["aes-256-gcm", "chacha20-poly1305", "aes-128-gcm"])
SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def pair(cipher: str, counter: int = 0) -> tuple[Keypair, Keypair, Keypair]:
    """A native sender, a pure-Python sender with the same keys, and the receiver."""
    k1, k2 = os.urandom(32), os.urandom(32)
    common = dict(cipher=cipher, local_index=5, remote_index=0x01020304, device_id=77,
                  created=0.0)
    nat = Keypair(send_key=k1, recv_key=k2, is_initiator=True, native=True, **common)  # type: ignore[arg-type]
    py = Keypair(send_key=k1, recv_key=k2, is_initiator=True, native=False, **common)  # type: ignore[arg-type]
    rx = Keypair(send_key=k2, recv_key=k1, is_initiator=False, native=False, **common)  # type: ignore[arg-type]
    for kp in (nat, py):
        kp.send_counter = counter
    nat.native.set_next_counter(counter)
    py._nonces = itertools.count(counter)
    return nat, py, rx


@st.composite
def tso_frames(draw: st.DrawFn) -> bytes:
    """A virtio header + TCP super-packet, mostly well-formed, sometimes not."""
    v6 = draw(st.booleans())
    opts = draw(st.sampled_from([b"", b"\x01\x01\x08\x0a" + bytes(8), bytes(40)]))
    doff = draw(st.one_of(st.just((20 + len(opts)) // 4), st.integers(0, 15)))
    flags = draw(st.one_of(st.just(0x18), st.just(0x10), st.integers(0, 255)))
    payload = draw(st.integers(1, 9000))
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, draw(st.integers(0, 2**32 - 1)), 99,
                      doff << 4, flags, 502, 0, 7) + opts
    body = tcp + bytes(range(256)) * (payload // 256) + bytes(payload % 256)
    src, dst = (os.urandom(16), os.urandom(16)) if v6 else (os.urandom(4), os.urandom(4))
    if v6:
        ip = struct.pack("!IHBB16s16s", 0x6000_0000 | draw(st.integers(0, 0xFFFFF)),
                         len(body), draw(st.sampled_from([6, 6, 17])), 64, src, dst)
        gso_type, ip_len = offload.GSO_TCPV6, 40
    else:
        ip = struct.pack("!BBHHHBBH4s4s", draw(st.sampled_from([0x45, 0x45, 0x46])),
                         draw(st.integers(0, 255)), 20 + len(body),
                         draw(st.integers(0, 0xFFFF)), draw(st.sampled_from([0x4000, 0])),
                         draw(st.integers(1, 255)), 6, 0, src, dst)
        gso_type, ip_len = offload.GSO_TCPV4, 20
    gso_type |= draw(st.sampled_from([0, 0, offload.GSO_ECN]))
    # small segments too: a frame of more than 64 segments takes more than one GSO send
    gso_size = draw(st.one_of(st.integers(500, 1400), st.integers(8, 120), st.integers(0, 70000)))
    ip_len = draw(st.one_of(st.just(ip_len), st.integers(0, 70)))
    vnet = offload.VNET.pack(1, draw(st.sampled_from([gso_type, gso_type, 0, 3])), 0,
                             gso_size & 0xFFFF, ip_len, 16)
    return vnet + ip + body


def run_native(kp: Keypair, frame: bytes, mtu: int) -> tuple[tuple[int, ...], list[list[bytes]]]:
    out = bytearray(offload._GSO_BUDGET + 2048)
    sent: list[list[bytes]] = []

    def flush(end: int, seg: int) -> int:
        batch = [bytes(out[o:min(o + seg, end)]) for o in range(0, end, seg)]
        assert len(batch) <= MAX_GSO_SEGMENTS  # one GSO send: the kernel takes 64 at most
        sent.append(batch)
        return 0

    off, seg, count, nbytes, _first = native.built.seal_tso(kp.native, frame, out, 0, flush,
                                                             mtu)
    if count > 0:
        flush(off, seg)
    return (count, nbytes) if count >= 0 else (-1,), sent


def run_python(kp: Keypair, frame: bytes, mtu: int) -> tuple[tuple[int, ...], list[list[bytes]]]:
    out = bytearray(offload._GSO_BUDGET + 2048)
    scratch = bytearray(65536 + 64)
    sent: list[list[bytes]] = []

    def flush(end: int, seg: int) -> int:
        batch = [bytes(out[o:min(o + seg, end)]) for o in range(0, end, seg)]
        assert len(batch) <= MAX_GSO_SEGMENTS  # one GSO send: the kernel takes 64 at most
        sent.append(batch)
        return 0

    off, seg, count, nbytes = offload.seal_tso(memoryview(frame), kp, out, 0, scratch, flush,
                                               mtu)
    if count > 0:
        flush(off, seg)
    return (count, nbytes) if count >= 0 else (-1,), sent


@SETTINGS
@given(frame=tso_frames(), cipher=CIPHERS, mtu=st.sampled_from([1408, 1280, 600, 65535]),
       counter=st.sampled_from([0, 1, 0xFFFF, 2**40 - 3]))
def test_seal_tso_same_wire_bytes(frame: bytes, cipher: str, mtu: int, counter: int) -> None:
    nat, py, rx = pair(cipher, counter)
    r_py, sent_py = run_python(py, frame, mtu)
    if r_py != (-1,) and len(sent_py[0][0]) > 2048:
        return  # a segment larger than the native sealer's slot: it declines (generic path)
    r_nat, batches = run_native(nat, frame, mtu)
    assert r_nat == r_py
    assert batches == sent_py  # the same datagrams, in the same GSO sends
    sent_nat = [d for b in batches for d in b]
    if r_nat != (-1,):
        assert nat.native.next_counter == counter + r_nat[0]
        for d in sent_nat:  # and the far end opens them
            _kp, _t, _flags, _e, inner = open_data(d, lambda i: rx)
            assert len(inner) + 44 == len(d)


def cut_plain(cutter: Any, frame: bytes, mtu: int, encap: int
              ) -> tuple[tuple[int, ...], list[list[bytes]]]:
    out = bytearray(offload._GSO_BUDGET + 2048)
    sent: list[list[bytes]] = []

    def flush(end: int, seg: int) -> int:
        batch = [bytes(out[o:min(o + seg, end)]) for o in range(0, end, seg)]
        assert len(batch) <= MAX_GSO_SEGMENTS  # one GSO send: the kernel takes 64 at most
        sent.append(batch)
        return 0

    off, seg, count, nbytes, next_encap = cutter(memoryview(frame), 0xBEEF, encap, out, 0,
                                                 flush, mtu)
    if count > 0:
        flush(off, seg)
    return ((count, nbytes, next_encap) if count >= 0 else (-1, next_encap)), sent


@SETTINGS
@given(frame=tso_frames(), mtu=st.sampled_from([1408, 1280, 600, 65535]),
       encap=st.sampled_from([0, 1, 0xFFFE, 0xFFFF]))
def test_frame_tso_plain_same_wire_bytes(frame: bytes, mtu: int, encap: int) -> None:
    """`plain` mode: the native cutter and offload.frame_tso_plain frame the same segments
    (12-byte header, EncapID wrapping at 16 bits), and each parses as plain DATA."""
    r_py, sent_py = cut_plain(offload.frame_tso_plain, frame, mtu, encap)
    if r_py[0] != -1 and len(sent_py[0][0]) > 2048:
        return  # a segment larger than the native cutter's slot: it declines (generic path)
    r_nat, batches = cut_plain(native.built.frame_tso_plain, frame, mtu, encap)
    assert r_nat == r_py
    assert batches == sent_py  # the same datagrams, in the same GSO sends
    sent_nat = [d for b in batches for d in b]
    for i, d in enumerate(sent_nat):
        ptype, dev, e, flags, inner = open_plain(d)
        assert (ptype, dev, e) == (PacketType.DATA, 0xBEEF, (encap + i) & 0xFFFF)
        assert flags == (0x1000 | (0x0800 if i else 0)) and len(inner) + 12 == len(d)


@SETTINGS
@given(inner=st.binary(max_size=1500), cipher=CIPHERS, ptype=st.sampled_from([1, 5, 6]),
       flags=st.sampled_from([0, 0x1000, 0x0800, 0x1800]))
def test_seal_one_same_bytes_and_cross_open(inner: bytes, cipher: str, ptype: int,
                                            flags: int) -> None:
    nat, py, rx = pair(cipher)
    a, b = nat.seal(inner, ptype, flags), py.seal(inner, ptype, flags)
    assert a == b
    _kp, t, _f, _e, got = open_data(bytes(a), lambda _i: rx)  # Python opens native's
    assert (t, got) == (ptype, inner)


def test_native_opens_python_and_keeps_one_window() -> None:
    k1, k2 = os.urandom(32), os.urandom(32)
    common = dict(cipher="aes-256-gcm", local_index=5, remote_index=6, device_id=1,
                  created=0.0)
    py_tx = Keypair(send_key=k1, recv_key=k2, is_initiator=True, native=False, **common)  # type: ignore[arg-type]
    nat_rx = Keypair(send_key=k2, recv_key=k1, is_initiator=False, native=True, **common)  # type: ignore[arg-type]
    pkts = [bytes(py_tx.seal(bytes([i]) * 100)) for i in range(5)]
    for i, p in enumerate(pkts):
        assert open_data(p, lambda _i: nat_rx)[4] == bytes([i]) * 100
    assert nat_rx.replay.highest == 4
    try:
        open_data(pkts[2], lambda _i: nat_rx)
    except Exception as e:  # the one window saw it already
        assert getattr(e, "reason", None) == "replay"
    else:
        raise AssertionError("a replay was accepted")
    tampered = bytearray(pkts[4])
    tampered[-1] ^= 1
    try:
        open_data(bytes(tampered), lambda _i: nat_rx)
    except Exception as e:
        assert getattr(e, "reason", None) == "bad_tag"
    else:
        raise AssertionError("a forgery was accepted")


def test_native_keypair_never_shows_its_keys() -> None:
    k1, k2 = os.urandom(32), os.urandom(32)
    kp = Keypair(cipher="aes-256-gcm", send_key=k1, recv_key=k2, local_index=1,
                 remote_index=2, device_id=3, is_initiator=True, created=0.0, native=True)
    assert kp._send is None and kp._recv is None
    n = kp.native
    assert not any(k1 in repr(getattr(n, a, b"")).encode() for a in dir(n))
    assert k1.hex() not in repr(n) and k2.hex() not in repr(n)
