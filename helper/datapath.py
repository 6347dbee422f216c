"""The two directions of the data path: TUN -> seal -> transport, transport -> open -> TUN.

Each direction is one thread with one loop, and the loops stay plain on purpose: this is where
throughput is earned. Per TUN read the kernel may hand over a 64 KB TCP super-packet; it is cut
into segments that are sealed straight into one output buffer and leave in one UDP GSO send.
Per socket read the kernel may hand over a GRO run of datagrams; each is opened and the inner
segments are glued back into a super-packet for one TUN write. Anything unusual (no session
yet, handshakes, a peer that roamed, a session to confirm) leaves the fast path and goes to the
Endpoint under the tunnel's lock.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import threading
import time
from collections.abc import Callable
from typing import Any

from core import ecn, native, session
from core.constants import DATA_HEADER_LEN, FIXED_HEADER_LEN, TAG_LEN, Flag, PacketType
from core.endpoint import AnyPeer, Endpoint, PlainPeer
from core.errors import TunsealError
from core.peer import Peer
from helper import icmp, offload
from helper.allowedips import AllowedIPs
from helper.icmp import SentRing
from helper.transport import MAX_GSO_SEGMENTS, Address, PathError, Transport
from helper.tun import Tun

log = logging.getLogger(__name__)

native_seal_tso: Callable[..., tuple[int, int, int, int, int]] | None = (
    native.built.seal_tso if native.built is not None else None)
"""Seals TSO frames for keypairs with a native half (only made when the module is built)."""
native_frame_tso_plain: Callable[..., tuple[int, int, int, int, int]] | None = (
    native.built.frame_tso_plain if native.built is not None else None)
"""`plain` mode's TSO cutter on the native core (offload.frame_tso_plain's contract)."""

GSO_BUDGET = 65000
"""Bytes per GSO send: below the 65,507-byte UDP payload limit with room for one more."""
POLL_MS = 250
"""How long an idle loop sleeps before checking whether it should stop."""
ICMP_RATE = 100
"""ICMP errors per second the tunnel sends to inner senders, at most."""
LOG_INTERVAL = 10.0
"""Seconds between two logged internal errors of one data path (each is counted anyway)."""
_CSUM = int(Flag.CSUM_PARTIAL)
_CONT = int(Flag.CONTINUATION)
SEALED = session.SEALED_FLAGS
_ALLOWED = SEALED | _CSUM | _CONT
_PLAIN_ALLOWED = _CSUM | _CONT
MIN_SEALED = DATA_HEADER_LEN + TAG_LEN
_NATIVE_END, _NATIVE_SLOW, _NATIVE_LOOKUP, _NATIVE_OPENED = 0, 1, 2, 3
"""Why the native receive call stopped (native/src/rx.rs ``Status``)."""
_LOOP_HANDOFF, _LOOP_IDLE, _LOOP_ERROR, _LOOP_DEADLINE, _LOOP_OTHER = 0, 1, 2, 3, 4
"""Why the native receive loop returned (native/src/rxloop.rs ``Why``)."""
LOOP_BUDGET = 0.1
"""Seconds the native receive loop runs before Python does its book-keeping (the peer's
counters and timers, a session retired meanwhile stops being accepted)."""


def address_key(addr: Address) -> bytes:
    """A compact form of an outer address for the responder's per-source accounting."""
    return f"{addr[0]}|{addr[1]}".encode()


class DataPath:
    def __init__(self, endpoint: Endpoint, tun: Tun, transport: Transport,
                 routes: AllowedIPs[AnyPeer], lock: threading.RLock,
                 on_state: Callable[[], None] | None = None, *, mtu: int = 1408,
                 on_control: Callable[[AnyPeer, bytes], None] | None = None,
                 on_path_errors: Callable[[list[PathError]], None] | None = None,
                 icmp_source: tuple[bytes, bytes] = (b"", b""), one_peer: bool = True):
        self.endpoint = endpoint
        self.tun = tun
        self.transport = transport
        self.routes = routes
        self.lock = lock
        self.on_state = on_state or (lambda: None)
        self.on_control = on_control or (lambda peer, payload: None)
        self.on_path_errors = on_path_errors or (lambda errors: None)
        self.mtu = mtu
        """Largest inner packet the tunnel carries now (lowered when the path MTU drops)."""
        self.icmp_source = icmp_source
        """(IPv4, IPv6) address of our tunnel interface: the source of ICMP errors we send."""
        self.one_peer = one_peer
        """A client tunnel: exactly one peer, for good (a gateway's peers come and go, so it
        always routes by destination)."""
        self.rings: dict[int, SentRing] = {}
        self._icmp_window = (0.0, 0)
        self.stop = threading.Event()
        self.sealed = endpoint.suite is not None
        self.native = native.module
        """The native core, used in every mode when it is built (None: the pure-Python path)."""
        native.log_choice()
        self.coalescer: offload.Coalescer | None = None
        self.rx_native: _NativeRx | None = None
        """The receive loop's native half while it runs on the native core."""
        self.ecn_ce = 0
        """Outer congestion marks (CE) passed on to ECN-capable inner packets (RFC 6040); the
        Not-ECT ones dropped under CE are counted in drops as ``ecn_not_ect_ce``."""
        self._last_internal_log = -LOG_INTERVAL
        self._pollers: dict[int | tuple[int, ...], select.poll] = {}
        os.set_blocking(tun.fd, False)
        transport.set_blocking(False)

    # --- helpers shared by both loops ------------------------------------------------------

    def send_to(self, peer: AnyPeer, packets: list[bytes]) -> None:
        addr = peer.endpoint
        if addr is None:
            return
        for pkt in packets:
            self.transport.send(pkt, addr)

    def ring(self, peer: AnyPeer) -> SentRing:
        r = self.rings.get(id(peer))
        if r is None:
            r = self.rings[id(peer)] = SentRing()
        return r

    def write_tun(self, packet: bytes) -> None:
        """Inject a packet (an ICMP error we generated) into the inner network."""
        frame = offload.plain_frame(packet) if self.tun.vnet_hdr else packet
        self.deliver(frame)

    def tell_too_big(self, inner: bytes | memoryview, mtu: int) -> None:
        """ICMP "fragmentation needed"/"packet too big" to an inner sender, at most
        ICMP_RATE per second (a TCP sender needs one, not one per segment)."""
        now = time.monotonic()
        start, n = self._icmp_window
        if now - start >= 1.0:
            start, n = now, 0
        if n >= ICMP_RATE:
            return
        self._icmp_window = (start, n + 1)
        src = self.icmp_source[0] if inner[0] >> 4 == 4 else self.icmp_source[1]
        msg = icmp.too_big(inner, mtu, from_addr=src)
        if msg is not None:
            self.write_tun(msg)

    def _wait(self, fd: int | list[int]) -> None:
        try:
            # One poll object per set of fds (each loop waits on its own), made once: after
            # every packet the loop comes here, and on the end that answers a ping the other
            # thread's wake-up often waits on this CPU until this one sleeps.
            key = tuple(fd) if isinstance(fd, list) else fd
            p = self._pollers.get(key)
            if p is None:
                p = self._pollers[key] = select.poll()
                for f in (fd if isinstance(fd, list) else [fd]):
                    p.register(f, select.POLLIN)
            p.poll(POLL_MS)
        except (OSError, ValueError):
            time.sleep(POLL_MS / 1000)

    def _single_peer(self) -> AnyPeer | None:
        peers = self.endpoint.peers
        return peers[0] if self.one_peer and len(peers) == 1 else None

    # --- TUN -> network --------------------------------------------------------------------

    def run_tx(self) -> None:
        fd, vnet = self.tun.fd, self.tun.vnet_hdr
        buf = bytearray(65536 + 64)
        mv = memoryview(buf)
        scratch = bytearray(65536 + 64)
        out = bytearray(GSO_BUDGET + 2048)
        omv = memoryview(out)
        state = _TxBatch(self, out, omv, scratch)
        emit = state.emit
        tso = state.tso
        one_peer = self._single_peer() is not None
        # The native core reads and seals the single packets the TUN has ready in one call;
        # it hands back (as read) what takes the general path below.
        drain = state.drain if self.native is not None and one_peer else None
        readv = os.readv
        fresh = True
        while not self.stop.is_set():
            try:
                n = drain(buf, fd, vnet, fresh) if drain is not None else -1
                if n < 0:
                    n = readv(fd, [buf])
                elif n == 0:  # the batch is to go now (full, or an idle packet)
                    state.flush()
                    fresh = False
                    continue
            except BlockingIOError:
                state.flush()
                self._wait(fd)
                fresh = True
                continue
            except OSError as e:
                if e.errno == errno.EBADF or self.stop.is_set():
                    break
                raise
            try:
                if vnet:
                    frame = mv[:n]
                    if not (one_peer and n > 2000 and tso(frame)):
                        offload.segment(frame, emit, scratch)
                else:
                    emit(mv[:n], False)
                # The first frame after a wait leaves at once (an idle ping, a lone request);
                # the frames that follow it without a wait are batched into GSO sends.
                if fresh or n > 2000 or state.count >= MAX_GSO_SEGMENTS:
                    state.flush()
                fresh = False
            except Exception:
                # As on receive: a frame the checks missed costs itself and what was batched
                # with it, never the loop.
                self._internal_error("sending", 1 + state.count)
                state.discard()
        state.flush()

    # --- network -> TUN --------------------------------------------------------------------

    def run_rx(self) -> None:
        vnet = self.tun.vnet_hdr
        sock_fd = self.transport.fds()
        buf = bytearray(65536 + 4096)
        mv = memoryview(buf)
        deliver = self.deliver
        counts = self.endpoint.drops
        nrx = _NativeRx(self, self.native, vnet) if self.native is not None else None
        self.rx_native = nrx
        coalescer: offload.Coalescer | None
        if nrx is not None:
            coalescer = nrx.sink if vnet else None
        else:
            coalescer = offload.Coalescer(deliver, self.endpoint.count,
                                              self._count_marks) if vnet else None
        self.coalescer = coalescer
        lookup = self.endpoint.indices.keypair
        peer_of = self.endpoint.indices.peer
        sealed = self.sealed
        unpack_hdr = session.DATA_HEADER.unpack_from
        const = session.DATA_CONST + (0x11 << 8)
        unpack_plain = session.PLAIN_HEADER.unpack_from
        plain_const = (0x11 << 8) + 3
        plain_peer = self.endpoint.plain_peer
        source_owner = self.routes.source_owner
        receive = self.transport.receive
        # Sleep in the receive itself where the transport can (one socket): the packet is in
        # hand on waking, with no poll and no Python between the wake-up and the read.
        blocking = self.transport.block_in_receive(POLL_MS)
        # A client tunnel over raw IP stays native across batches while its session's data
        # flows (receive, open, coalesce, TUN write); Python sees what it must.
        loop = nrx.raw_loop if (nrx is not None and self.sealed and self.one_peer
                                and hasattr(self.native, "rx_loop_raw")) else None
        while not self.stop.is_set():
            try:
                if loop is not None and loop(buf, mv, coalescer):
                    continue
                n, seg, addr = receive(buf)
            except BlockingIOError:
                if coalescer is not None:
                    coalescer.flush()
                if nrx is not None:
                    nrx.take_drops()
                if not blocking:
                    self._wait(sock_fd)
                continue
            except OSError as e:
                if e.errno in (errno.EBADF, errno.ENOTSOCK) or self.stop.is_set():
                    break
                # An ICMP error (or a local EMSGSIZE) surfaced on the socket: the details are
                # in the error queue, which says which packet and what the path wants.
                errors = self.transport.read_errors()
                if errors:
                    try:
                        self.on_path_errors(errors)
                    except Exception:
                        self._internal_error("handling path errors", 1)
                continue
            if n <= 0:
                # An empty datagram (anyone can send one to our port): nothing to read.
                counts["bad_header"] = counts.get("bad_header", 0) + 1
                continue
            now = time.monotonic()
            if seg <= 0 or seg > n:
                seg = n
            # RFC 6040: one outer ECN field for the whole batch, applied to each inner packet
            # (or merged run) on its way to the TUN.
            outer_ecn = self.transport.rx_ecn
            if nrx is not None:
                nrx.batch(buf, mv, n, seg, addr, now, coalescer, outer_ecn)
                continue
            if coalescer is not None:
                coalescer.outer_ecn = outer_ecn
            else:
                deliver = self._deliver_ecn if ecn.REWRITES[outer_ecn] else self.deliver
            kp_index = -1
            cont_next = -1
            kp: session.Keypair | None = None
            peer: Peer | None = None
            rx_packets = rx_bytes = 0
            plain_dev = -1
            ppeer: PlainPeer | None = None
            plain_packets = plain_bytes = 0
            off = 0
            # One guard per batch, not per packet (free in CPython 3.11 until it fires): the
            # checks below are meant to turn every bad packet into a counted drop, and if one
            # is missed, the rest of this batch is counted lost and the loop goes on.
            try:
                for off in range(0, n, seg):
                    ln = min(seg, n - off)
                    # The canonical sealed data header, checked inline (open_data's fast path,
                    # without a function call per packet); anything else takes the general
                    # route.
                    if sealed and ln >= MIN_SEALED and buf[off] == 0x11:
                        (_vt, hw, inner_len, dev, encap, flags, csum, t1, l1, index, t2, l2,
                         counter) = unpack_hdr(buf, off)
                        if (hw == 7 and t1 == 0x82 and l1 == 4 and t2 == 0x81 and l2 == 8
                                and ln == inner_len + MIN_SEALED and flags & ~_ALLOWED == 0
                                and flags & SEALED == SEALED
                                and (const + inner_len + dev + encap + flags + csum + index
                                     + counter) % 0xFFFF == 0):
                            if index != kp_index:
                                cont_next = -1
                                if rx_packets:  # a gateway's batch may hold several peers'
                                    assert peer is not None
                                    _credit(peer, rx_packets, rx_bytes, now)
                                    rx_packets = rx_bytes = 0
                                kp = lookup(index)
                                peer = peer_of(index) if kp is not None else None
                                if kp is None or peer is None:
                                    counts["unknown_session"] = counts.get(
                                        "unknown_session", 0) + 1
                                    kp_index = -1
                                    continue
                                kp_index = index
                            assert kp is not None and peer is not None
                            try:
                                inner = kp.open_sealed(mv[off:off + DATA_HEADER_LEN],
                                                       mv[off + DATA_HEADER_LEN:off + ln],
                                                       counter)
                            except TunsealError as e:
                                reason = getattr(e, "reason", "bad_tag")
                                counts[reason] = counts.get(reason, 0) + 1
                                continue
                            # Only an authenticated packet may move the peer's endpoint
                            # (roaming) or confirm its next session.
                            if kp is peer.next or peer.endpoint != addr:
                                self._slow_after_open(peer, kp, addr)
                            rx_packets += 1
                            rx_bytes += inner_len
                            # A flagged continuation of the segment just opened joins its
                            # run with no header checks: its header is discarded, so it cannot
                            # smuggle a source address past the check its run's first segment
                            # passed, and the run must be this peer's.
                            if (flags & _CONT and counter == cont_next and coalescer is not None
                                    and coalescer.continue_run(inner, peer)):
                                cont_next = counter + 1
                                continue
                            if source_owner(inner) is not peer:
                                counts["bad_source"] = counts.get("bad_source", 0) + 1
                                continue
                            # Only a packet that went on to the run may be continued.
                            cont_next = counter + 1
                            if coalescer is not None:
                                coalescer.add(inner, flags & _CSUM != 0, peer)
                            else:
                                deliver(inner)
                            continue
                    # `plain` mode's 12-byte header, likewise inline.
                    elif not sealed and ln >= FIXED_HEADER_LEN and buf[off] == 0x11 and \
                            buf[off + 1] == 3:
                        _vt, _hw, inner_len, dev, encap, flags, csum = unpack_plain(buf, off)
                        if (ln == inner_len + FIXED_HEADER_LEN and flags & ~_PLAIN_ALLOWED == 0
                                and (plain_const + inner_len + dev + encap + flags + csum)
                                % 0xFFFF == 0):
                            if dev != plain_dev:
                                if plain_packets:
                                    assert ppeer is not None
                                    _credit(ppeer, plain_packets, plain_bytes, now)
                                    plain_packets = plain_bytes = 0
                                ppeer = plain_peer(dev)
                                if ppeer is None:
                                    counts["unknown_peer"] = counts.get("unknown_peer", 0) + 1
                                    continue
                                plain_dev, cont_next = dev, -1
                            assert ppeer is not None
                            if ppeer.endpoint != addr:
                                with self.lock:
                                    ppeer.endpoint = addr  # plain mode cannot authenticate
                            inner = bytes(mv[off + FIXED_HEADER_LEN:off + ln])
                            plain_packets += 1
                            plain_bytes += inner_len
                            if (flags & _CONT and encap == cont_next and coalescer is not None
                                    and coalescer.continue_run(inner, ppeer)):
                                cont_next = (encap + 1) & 0xFFFF
                                continue
                            if source_owner(inner) is not ppeer:
                                counts["bad_source"] = counts.get("bad_source", 0) + 1
                                continue
                            cont_next = (encap + 1) & 0xFFFF
                            if coalescer is not None:
                                coalescer.add(inner, flags & _CSUM != 0, ppeer)
                            else:
                                deliver(inner)
                            continue
                    if ln < FIXED_HEADER_LEN:
                        counts["bad_header"] = counts.get("bad_header", 0) + 1
                        continue
                    self._slow_receive(bytes(mv[off:off + ln]), addr, coalescer, deliver)
                if coalescer is not None:
                    coalescer.flush()
            except Exception:
                if coalescer is not None:
                    coalescer.reset()
                self._internal_error("receiving", -(-(n - off) // seg))
            if peer is not None and rx_packets:
                _credit(peer, rx_packets, rx_bytes, now)
            if ppeer is not None and plain_packets:
                _credit(ppeer, plain_packets, plain_bytes, now)

    def deliver(self, frame: bytes | bytearray) -> None:
        """Write one frame (a packet, or a coalesced super-packet) to the TUN device; one the
        kernel refuses (a malformed inner packet, a device going away) is a counted drop."""
        try:
            os.write(self.tun.fd, frame)
        except OSError:
            self.endpoint.count("tun_rejected")

    def _deliver_ecn(self, frame: bytes | bytearray) -> None:
        """:meth:`deliver` for a batch whose outer ECN field changes or drops inner packets
        (without a virtio header; the Coalescer does this for vnet devices)."""
        pkt = bytearray(frame)
        verdict = ecn.apply(pkt, 0, self.transport.rx_ecn)
        if verdict == ecn.DROP:
            self.endpoint.count("ecn_not_ect_ce")
            return
        if verdict == ecn.MARKED:
            self.ecn_ce += 1
        self.deliver(pkt)

    def _count_marks(self, n: int) -> None:
        self.ecn_ce += n

    def _internal_error(self, doing: str, lost: int) -> None:
        """A bug met while handling packets: count what it cost (``internal_error``), log it
        (with the traceback, at most every LOG_INTERVAL s), and let the loop go on."""
        counts = self.endpoint.drops
        counts["internal_error"] = counts.get("internal_error", 0) + max(lost, 1)
        now = time.monotonic()
        if now - self._last_internal_log >= LOG_INTERVAL:
            self._last_internal_log = now
            log.exception("data path: error while %s (%d packet(s) dropped; the loop goes on)",
                          doing, max(lost, 1))

    def _slow_after_open(self, peer: Peer, kp: session.Keypair, addr: Address) -> None:
        with self.lock:
            if peer.endpoint != addr:
                log.info("peer %s now at %s", peer.name, addr[0], extra={"tunnel": peer.name})
                peer.endpoint = addr
            if kp is peer.next:
                peer.received_with(kp)
                staged = list(peer.staged)
                peer.staged.clear()
                if staged and (skp := peer.sending_keypair()) is not None:
                    self.send_to(peer, [bytes(skp.seal(p)) for p in staged])
                self.on_state()

    def _slow_receive(self, pkt: bytes, addr: Address, coalescer: offload.Coalescer | None,
                      deliver: Callable[[bytes], None]) -> None:
        with self.lock:
            r = self.endpoint.receive(pkt, address_key(addr))
            if r.peer is not None and r.drop is None:
                # Only transport packets that authenticated move the endpoint, never a
                # handshake: a captured initiation replayed later must not redirect the tunnel.
                if r.roam and r.peer.endpoint != addr:
                    r.peer.endpoint = addr
                if isinstance(r.peer, PlainPeer):
                    r.peer.on_authenticated_received(time.monotonic(), data=False)
            if r.replies:
                for reply in r.replies:
                    self.transport.send(reply, addr)
            if r.peer is not None and r.inner is None and r.drop is None:
                self.on_state()
        if r.control is not None and r.peer is not None:
            self.on_control(r.peer, r.control)
        if r.inner is not None and r.peer is not None:
            if self.routes.source_owner(r.inner) is not r.peer:
                self.endpoint.count("bad_source")
                return
            partial = bool(r.flags & _CSUM)
            if coalescer is not None:
                coalescer.add(r.inner, partial, r.peer)
            else:
                deliver(r.inner)


class _NativeRx:
    """The receive loop on the native core: one native call per stretch of a GRO run that
    belongs to one session (open, replay window, RFC 6040, source check, coalescing into
    the TUN write, all without the GIL), and Python for whatever leaves the fast path,
    exactly where the pure-Python loop sends it: a datagram that is not canonical sealed
    DATA goes to the Endpoint, an unknown session is counted, and the first authenticated
    packet that confirms a session or moves the peer stops the call so Python can act."""

    __slots__ = ("dp", "filters", "last", "looped", "mod", "off", "sink")

    def __init__(self, dp: DataPath, mod: Any, vnet: bool):
        self.dp = dp
        self.mod = mod
        self.sink = mod.Coalescer(dp.tun.fd, vnet)
        """The coalescer and drop counters; also what the slow path adds to (one run)."""
        self.filters: dict[int, tuple[int, object, Any]] = {}
        self.off = 0
        """How far the current batch got (what an internal error costs)."""
        self.last: tuple[int, session.Keypair, Peer] | None = None
        """The session the last batch ended with: the next batch (a lone datagram, often)
        starts with it if it is still that index's, saving a native call to learn it."""
        self.looped = 0
        """Packets the native receive loop (`raw_loop`) opened without Python (for tests)."""

    def raw_loop(self, buf: bytearray, mv: memoryview,
                 coalescer: offload.Coalescer | None) -> bool:
        """Receive on the native core across batches (native/src/rxloop.rs) for the session
        the last batch ended with, if it may: a live session that confirms nothing, from the
        peer's own address, over a raw socket with a native receive. False: take the usual
        receive. Raises what a receive raises (BlockingIOError when idle, OSError)."""
        last = self.last
        if last is None:
            return False
        index, kp, peer = last
        dp = self.dp
        indices = dp.endpoint.indices
        ep = peer.endpoint
        if (ep is None or kp is peer.next or indices.keypair(index) is not kp
                or indices.peer(index) is not peer):
            return False
        nat = dp.transport.native_rx(ep)
        if nat is None or nat.part.errors_pending:
            return False
        why, err, n, seg, ecn_field, packed, scope, pos, packets, nbytes, last_auth = (
            self.mod.rx_loop_raw(nat.rx, nat.fd, kp.native, index, buf, self.sink,
                                 self.filter(peer), peer, nat.addr, nat.scope,
                                 time.monotonic() + LOOP_BUDGET, nat.others, nat.poll,
                                 POLL_MS))
        if packets:
            self.looped += packets
            kp.receive_count += packets
            kp.confirmed = True
            _credit(peer, packets, nbytes, last_auth)
        self.take_drops()
        if why == _LOOP_HANDOFF:
            # A run for Python, where the per-batch loop would have handed it over.
            nat.part.rx_ecn = dp.transport.rx_ecn = ecn_field
            self.batch(buf, mv, n, seg, nat.part.source(packed, scope), time.monotonic(),
                       coalescer, ecn_field, pos)
            return True
        if why == _LOOP_IDLE:
            raise BlockingIOError
        if why == _LOOP_ERROR:
            raise OSError(err, os.strerror(err))
        return bool(why == _LOOP_DEADLINE)  # _LOOP_OTHER: the other socket, by the usual receive

    def take_drops(self) -> None:
        drops = self.sink.take_drops()
        if drops:
            counts = self.dp.endpoint.drops
            for reason, k in drops:
                counts[reason] = counts.get(reason, 0) + k
        marks = self.sink.take_marks()
        if marks:
            self.dp.ecn_ce += marks

    def filter(self, peer: AnyPeer) -> Any:
        """The native source filter for ``peer``, rebuilt when the allowed IPs change."""
        routes = self.dp.routes
        hit = self.filters.get(id(peer))
        if hit is not None and hit[0] == routes.version and hit[1] is peer:
            return hit[2]
        if len(self.filters) > 4096:
            self.filters.clear()
        f = self.mod.SourceFilter(*routes.source_filter(peer))
        self.filters[id(peer)] = (routes.version, peer, f)
        return f

    def batch(self, buf: bytearray, mv: memoryview, n: int, seg: int, addr: Address,
              now: float, coalescer: offload.Coalescer | None, outer_ecn: int = 0,
              start: int = 0) -> None:
        """Handle one receive batch (``buf[start:n]``, datagrams of ``seg`` bytes)."""
        dp = self.dp
        self.off = start
        try:
            if dp.sealed:
                self._batch(buf, mv, n, seg, addr, now, coalescer, outer_ecn, start)
            else:
                self._batch_plain(buf, mv, n, seg, addr, now, coalescer, outer_ecn, start)
        except Exception:
            self.sink.reset()
            dp._internal_error("receiving", -(-(n - self.off) // seg))
        self.take_drops()

    def _batch(self, buf: bytearray, mv: memoryview, n: int, seg: int, addr: Address,
               now: float, coalescer: offload.Coalescer | None, outer_ecn: int,
               start: int) -> None:
        dp = self.dp
        rx_run = self.mod.rx_run
        no_cont = cont = self.mod.NO_CONT
        sink = self.sink
        indices = dp.endpoint.indices
        counts = dp.endpoint.drops
        kp: session.Keypair | None = None
        peer: Peer | None = None
        filt = None
        kp_index = -1
        last = self.last
        if last is not None and indices.keypair(last[0]) is last[1] and \
                indices.peer(last[0]) is last[2]:
            kp_index, kp, peer = last
            filt = self.filter(peer)
        packets = nbytes = 0
        off = start
        while off < n:
            self.off = off
            if kp is not None and peer is not None:
                slow = kp is peer.next or peer.endpoint != addr
                off, status, index, cont, pk, by = rx_run(
                    kp.native, kp_index, buf, n, off, seg, sink, filt, peer, outer_ecn, cont,
                    slow)
                if pk:
                    packets += pk
                    nbytes += by
                    kp.receive_count += pk
                    kp.confirmed = True
            else:
                off, status, index, cont, pk, by = rx_run(
                    None, 0, buf, n, off, seg, sink, None, None, outer_ecn, cont, False)
            if status == _NATIVE_END:
                break
            if status == _NATIVE_OPENED:
                assert kp is not None and peer is not None
                # Only an authenticated packet may move the peer's endpoint (roaming) or
                # confirm its next session.
                dp._slow_after_open(peer, kp, addr)
                continue
            if status == _NATIVE_LOOKUP:
                if index != kp_index:
                    cont = no_cont
                    if packets:  # a gateway's batch may hold several peers'
                        assert peer is not None
                        _credit(peer, packets, nbytes, now)
                        packets = nbytes = 0
                    kp = indices.keypair(index)
                    peer = indices.peer(index) if kp is not None else None
                    if kp is None or peer is None:
                        counts["unknown_session"] = counts.get("unknown_session", 0) + 1
                        kp_index = -1
                        kp = None
                        off += seg
                        continue
                    kp_index = index
                    filt = self.filter(peer)
                if kp is not None and kp.native is not None:
                    continue
                # A keypair without a native half (made before the module was built?) is
                # opened by the general route.
            self.off = off
            ln = min(seg, n - off)
            dp._slow_receive(bytes(mv[off:off + ln]), addr, coalescer,
                             dp._deliver_ecn if ecn.REWRITES[outer_ecn] else dp.deliver)
            off += seg
        self.off = n
        self.last = (kp_index, kp, peer) if (
            kp is not None and peer is not None and kp.native is not None) else None
        sink.flush()
        if peer is not None and packets:
            _credit(peer, packets, nbytes, now)

    def _batch_plain(self, buf: bytearray, mv: memoryview, n: int, seg: int, addr: Address,
                     now: float, coalescer: offload.Coalescer | None, outer_ecn: int,
                     start: int) -> None:
        """`plain` mode: one native call per stretch of datagrams from one DeviceID (header
        checks, source check, RFC 6040, coalescing into the TUN write), Python for the
        DeviceID look-up, the endpoint (plain mode cannot authenticate: any valid packet
        moves it, as on the pure-Python path) and whatever is not canonical plain DATA."""
        dp = self.dp
        rx_plain = self.mod.rx_plain
        cont = no_cont = self.mod.NO_CONT
        sink = self.sink
        counts = dp.endpoint.drops
        plain_peer = dp.endpoint.plain_peer
        ppeer: PlainPeer | None = None
        dev: int | None = None
        filt = None
        packets = nbytes = 0
        off = start
        while off < n:
            self.off = off
            off, status, index, cont, pk, by = rx_plain(dev, buf, n, off, seg, sink, filt,
                                                        ppeer, outer_ecn, cont)
            packets += pk
            nbytes += by
            if status == _NATIVE_END:
                break
            if status == _NATIVE_LOOKUP:
                if packets:
                    assert ppeer is not None
                    _credit(ppeer, packets, nbytes, now)
                    packets = nbytes = 0
                p = plain_peer(index)
                if p is None:
                    counts["unknown_peer"] = counts.get("unknown_peer", 0) + 1
                    off += seg
                    continue
                ppeer, dev, cont = p, index, no_cont
                filt = self.filter(p)
                if p.endpoint != addr:
                    with dp.lock:
                        p.endpoint = addr
                continue
            self.off = off
            ln = min(seg, n - off)
            dp._slow_receive(bytes(mv[off:off + ln]), addr, coalescer,
                             dp._deliver_ecn if ecn.REWRITES[outer_ecn] else dp.deliver)
            off += seg
        self.off = n
        sink.flush()
        if ppeer is not None and packets:
            _credit(ppeer, packets, nbytes, now)


def _credit(peer: AnyPeer, packets: int, nbytes: int, now: float) -> None:
    """What a peer received in one batch (or one native loop call): its counters, and the
    timers' hook (the time of its last authenticated packet)."""
    st = peer.stats
    st.rx_packets += packets
    st.rx_bytes += nbytes
    peer.on_authenticated_received(now, data=True)


def _link_local(pkt: memoryview) -> bool:
    """Packets the kernel sends on every link (IPv6 ND/MLD from fe80::, to ff02::; IPv4 to
    224.0.0.0/24) that a layer-3 tunnel must not carry: the far end would drop them as
    coming from outside the peer's allowed IPs."""
    if len(pkt) >= 40 and pkt[0] >> 4 == 6:
        link_src = pkt[8] == 0xFE and pkt[9] & 0xC0 == 0x80
        return link_src or (pkt[24] == 0xFF and pkt[25] & 0x0F <= 2)
    return len(pkt) >= 20 and pkt[16] == 224 and pkt[17] == 0 and pkt[18] == 0


class _TxBatch:
    """Accumulates sealed packets for one peer into one GSO send."""

    __slots__ = ("_drain", "count", "dp", "ecn", "off", "omv", "out", "peer", "quotes",
                 "scratch", "seg", "single")

    def __init__(self, dp: DataPath, out: bytearray, omv: memoryview, scratch: bytearray):
        self.dp = dp
        self.out = out
        self.omv = omv
        self.scratch = scratch
        self.off = 0
        self.seg = 0
        self.count = 0
        self.ecn = 0
        """The outer ECN field of what is batched: the inner one (RFC 6040 normal mode)."""
        self.peer: AnyPeer | None = None
        self.single = dp._single_peer()
        mod = dp.native
        self._drain = mod.drain_tx if mod is not None else None
        self.quotes = bytearray(MAX_GSO_SEGMENTS * mod.QUOTE_SLOT if mod is not None else 0)
        """Per packet drained natively: its EncapID, length and start (for the ICMP ring)."""

    def _send(self, end: int, seg: int) -> int:
        peer = self.peer
        if peer is not None and end:
            addr = peer.endpoint
            if addr is not None:
                self.dp.transport.send_segments(self.omv[:end], seg, addr, self.ecn)
            peer.on_data_sent(time.monotonic())
        return 0

    def flush(self) -> None:
        if self.count:
            self._send(self.off, self.seg)
        self.off = self.count = self.seg = 0

    def drain(self, buf: bytearray, fd: int, vnet: bool, fresh: bool) -> int:
        """Read the single packets the TUN device has ready and seal them into the batch on
        the native core, in one call (no Python per packet but its ICMP ring entry). Returns
        n > 0: a frame of n bytes is in ``buf`` for the general path (a TSO frame, a packet
        too big or not fitting the batch); 0: send the batch now; -1: the peer cannot be
        sealed natively now (no confirmed session: the caller reads itself). Raises
        BlockingIOError when the device has nothing more to read."""
        peer = self.single
        kp: session.Keypair | None = None
        if isinstance(peer, Peer):
            kp = peer.current
            if kp is None or not kp.confirmed or kp.native is None or self._drain is None:
                return -1
            nkp, dev, encap = kp.native, 0, 0
        elif isinstance(peer, PlainPeer) and self._drain is not None:
            nkp, dev, encap = None, peer.device_id, peer.encap
        else:
            return -1
        if peer is not self.peer:
            self.flush()
            self.peer = peer
        start = self.count
        status, n, (self.off, self.seg, self.count, self.ecn), packets, nbytes, encap = (
            self._drain(nkp, dev, encap, fd, vnet, buf, self.out,
                        (self.off, self.seg, self.count, self.ecn), self.dp.mtu, fresh,
                        self.quotes))
        if packets:
            if kp is None:
                assert isinstance(peer, PlainPeer)
                peer.encap = encap
            else:
                kp.send_counter = nkp.next_counter  # for rekey decisions only
            record = self.dp.ring(peer).record
            q = self.quotes
            slot = len(q) // MAX_GSO_SEGMENTS
            for o in range(start * slot, self.count * slot, slot):
                record(q[o] << 8 | q[o + 1], 1, bytes(q[o + 3:o + 3 + q[o + 2]]))
            st = peer.stats
            st.tx_packets += packets
            st.tx_bytes += nbytes
        if status == 0:
            raise BlockingIOError
        if status == 3:
            raise OSError(n, os.strerror(n))
        return n if status == 2 else 0

    def discard(self) -> None:
        """Forget what is batched, unsent (after a frame failed half-way)."""
        self.off = self.count = self.seg = 0

    def tso(self, frame: memoryview) -> bool:
        """Fast path for a TCP super-packet to the only peer; False: use the generic path."""
        peer = self.single
        if isinstance(peer, PlainPeer):
            return self._tso_plain(peer, frame)
        if not isinstance(peer, Peer):
            return False
        kp = peer.current
        if kp is None or not kp.confirmed:
            return False
        if peer is not self.peer or self.count:
            self.flush()
            self.peer = peer
        self.ecn = ecn.of_packet(frame, offload.VNET_LEN)  # every segment has the frame's
        if kp.native is not None and native_seal_tso is not None:
            off, seg, count, nbytes, first = native_seal_tso(kp.native, frame, self.out, 0,
                                                             self._send, self.dp.mtu)
            if count < 0:
                return False
            kp.send_counter = first + count  # for rekey decisions only
            first_encap = first & 0xFFFF
        else:
            first_encap = kp.send_counter & 0xFFFF
            off, seg, count, nbytes = offload.seal_tso(frame, kp, self.out, 0, self.scratch,
                                                       self._send, self.dp.mtu)
        return self._tso_done(peer, frame, first_encap, off, seg, count, nbytes)

    def _tso_plain(self, peer: PlainPeer, frame: memoryview) -> bool:
        if peer is not self.peer or self.count:
            self.flush()
            self.peer = peer
        self.ecn = ecn.of_packet(frame, offload.VNET_LEN)
        first = peer.encap
        cut = native_frame_tso_plain if self.dp.native is not None else None
        off, seg, count, nbytes, peer.encap = (cut or offload.frame_tso_plain)(
            frame, peer.device_id, first, self.out, 0, self._send, self.dp.mtu)
        return self._tso_done(peer, frame, first, off, seg, count, nbytes)

    def _tso_done(self, peer: AnyPeer, frame: memoryview, first_encap: int, off: int,
                  seg: int, count: int, nbytes: int) -> bool:
        """Book-keeping after a TSO frame was cut: the ICMP ring, too-big feedback, counters,
        and sending what is left in the buffer. False: the frame was not cut."""
        if count < 0:
            return False
        dp = self.dp
        inner = frame[offload.VNET_LEN:]
        dp.ring(peer).record(first_encap, count, bytes(inner[:icmp.QUOTE_LEN]))
        if count and offload.tso_segment_size(frame) > dp.mtu:
            # Re-segmented to fit the lowered MTU; tell TCP so it stops sending too big.
            dp.tell_too_big(inner, dp.mtu)
        st = peer.stats
        st.tx_packets += count
        st.tx_bytes += nbytes
        self.off, self.seg = off, seg
        self.count = -(-off // seg) if seg else 0
        self.flush()
        return True

    def emit(self, pkt: memoryview, partial: bool) -> None:
        dp = self.dp
        peer = self.single or dp.routes.destination_owner(pkt)
        if peer is None:
            dp.endpoint.count("no_route")
            return
        if peer is not self.peer:
            self.flush()
            self.peer = peer
        flags = _CSUM if partial else 0
        if _link_local(pkt):
            return  # neighbour discovery, MLD, mDNS...: meaningless beyond this link
        if len(pkt) > dp.mtu and icmp.dont_fragment(pkt):
            dp.tell_too_big(pkt, dp.mtu)
            dp.endpoint.count("too_big")
            return
        if isinstance(peer, Peer):
            kp = peer.current
            if kp is None or not kp.confirmed:
                self._slow(peer, bytes(pkt), flags)
                return
            dp.ring(peer).record(kp.send_counter & 0xFFFF, 1, bytes(pkt[:icmp.QUOTE_LEN]))
            need = DATA_HEADER_LEN + len(pkt) + TAG_LEN
        else:
            dp.ring(peer).record(peer.encap, 1, bytes(pkt[:icmp.QUOTE_LEN]))
            need = FIXED_HEADER_LEN + len(pkt)
        # GSO sends equal-sized datagrams (only the last may be shorter) within one budget,
        # and one outer ECN field.
        inner_ecn = ecn.of_packet(pkt)
        if self.count and (need > self.seg or self.off + need > GSO_BUDGET
                           or inner_ecn != self.ecn):
            self.flush()
            self.peer = peer
        self.ecn = inner_ecn
        if isinstance(peer, Peer):
            assert kp is not None
            size = kp.seal_into(self.out, self.off, pkt, PacketType.DATA, flags)
        else:
            size = session.seal_plain_into(self.out, self.off, pkt, device_id=peer.device_id,
                                           encap_id=peer.encap, flags=flags)
            peer.encap = (peer.encap + 1) & 0xFFFF
        st = peer.stats
        st.tx_packets += 1
        st.tx_bytes += len(pkt)
        if not self.count:
            self.seg = size
        self.off += size
        self.count += 1
        if size < self.seg or self.count >= MAX_GSO_SEGMENTS:
            self.flush()

    def _slow(self, peer: Peer, pkt: bytes, flags: int) -> None:
        self.flush()
        with self.dp.lock:
            packets = self.dp.endpoint.seal(peer, pkt, PacketType.DATA, flags)
        self.dp.send_to(peer, packets)
        self.dp.on_state()

