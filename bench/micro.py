"""Micro-benchmarks of the protocol core, each next to the bare cryptography it cannot avoid.

Data path (1400-byte inner packets): seal + open per packet through ``core.session``
(``Keypair.seal_into`` + ``Keypair.open_sealed`` after the header unpack, as the helper's
receive loop does; ``seal_plain_into`` + ``open_plain`` in plain mode),
beside the bare AEAD calls those functions make (``encrypt_into`` then ``decrypt``, same sizes,
fixed nonce, 28-byte associated data). psk, rotating and ephemeral share that path, so it is
reported once per cipher as "sealed".

Handshakes: initiation + response + completion through ``core.handshake`` per Noise pattern,
beside the bare cost of the X25519 operations the pattern requires (fresh ephemeral key
generations and Diffie-Hellman exchanges, counted below), timed in the same run.

Gateway: what an office gateway with 1,000 registered peers pays per answered initiation
(``Endpoint.receive`` of an IK initiation, rate limits lifted: the cost, not the policy),
beside the X25519 it cannot avoid (one key generation, three DHs: es, ee, se; ss is kept per
peer), with the price of each piece (µs per DH, hash, HMAC, AEAD, Python call) and of the
per-packet look-ups at that size (allowed IPs by longest prefix, the session by index).

Each pair (ours, bare) runs in interleaved rounds; each figure is the median of ROUNDS rounds,
about ``--seconds`` per figure in all. Run on demand, not in the test suite::

    python -m bench.micro [--seconds 1.0] [--json results.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any
from unittest import mock

import cryptography
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from core import handshake, noise, session
from core.constants import CIPHERS, DATA_HEADER_LEN, TAG_LEN, PacketType
from core.handshake import Identity, Initiator, Suite

PACKET_SIZE = 1400
ROUNDS = 15

# X25519 operations each pattern needs at minimum, both ends together, with the static key
# pairs and the static-static secret (ss) kept between handshakes: every "e" token generates a
# key pair; every other DH token is one exchange on each side (IK: es, ee, se; NNpsk0: ee).
REQUIRED_X25519 = {
    "IK": {"keygen": 2, "dh": 6},
    "IKpsk2": {"keygen": 2, "dh": 6},
    "NNpsk0": {"keygen": 2, "dh": 2},
}
PATTERN_SUITES = {
    "IK": Suite("ephemeral", "chacha20-poly1305", False),
    "IKpsk2": Suite("ephemeral", "chacha20-poly1305", True),
    "NNpsk0": Suite("psk", "chacha20-poly1305", True),
}


# --- timing --------------------------------------------------------------------------------


def _calibrate(work: Callable[[int], None], seconds: float) -> int:
    """How many operations make one round of about ``seconds``."""
    n = 1
    while True:
        start = time.perf_counter()
        work(n)
        took = time.perf_counter() - start
        if took > 0.02:
            return max(1, int(n * seconds / took))
        n *= 4


def rates(*works: Callable[[int], None], seconds: float) -> list[float]:
    """Median operations per second of each ``work(n)``.

    The works run in interleaved rounds (a, b, a, b, ...), ROUNDS each of about
    ``seconds / ROUNDS``, so a burst of load on the machine hits all of them alike and their
    ratio stays meaningful even when the absolute figures wobble.
    """
    sizes = [_calibrate(w, seconds / ROUNDS) for w in works]
    samples: list[list[float]] = [[] for _ in works]
    gc.collect()
    for _ in range(ROUNDS):
        for work, n, got in zip(works, sizes, samples, strict=True):
            start = time.perf_counter()
            work(n)
            got.append(n / (time.perf_counter() - start))
    return [statistics.median(s) for s in samples]


# --- data path ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DataResult:
    mode: str
    cipher: str
    ours_pps: float
    bare_pps: float | None
    """None for plain mode: it has no cryptography to compare against."""

    @property
    def ratio(self) -> float | None:
        return self.ours_pps / self.bare_pps if self.bare_pps else None

    @property
    def ours_mbps(self) -> float:
        return self.ours_pps * PACKET_SIZE * 8 / 1e6


def _keypairs(cipher: str) -> tuple[session.Keypair, session.Keypair]:
    k1, k2 = os.urandom(32), os.urandom(32)
    tx = session.Keypair(cipher=cipher, send_key=k1, recv_key=k2, local_index=1,
                         remote_index=2, device_id=1, is_initiator=True, created=0.0)
    rx = session.Keypair(cipher=cipher, send_key=k2, recv_key=k1, local_index=2,
                         remote_index=1, device_id=2, is_initiator=False, created=0.0)
    return tx, rx


def sealed_ours(cipher: str) -> Callable[[int], None]:
    tx, rx = _keypairs(cipher)
    inner = os.urandom(PACKET_SIZE)
    buf = bytearray(DATA_HEADER_LEN + PACKET_SIZE + TAG_LEN)
    view = memoryview(buf)
    seal_into, open_sealed, data = tx.seal_into, rx.open_sealed, PacketType.DATA
    unpack = session.DATA_HEADER.unpack_from

    def work(n: int) -> None:
        for _ in range(n):
            size = seal_into(buf, 0, inner, data)
            open_sealed(view[:DATA_HEADER_LEN], view[DATA_HEADER_LEN:size], unpack(buf)[-1])

    return work


def sealed_bare(cipher: str) -> Callable[[int], None]:
    aead = session.make_aead(cipher, os.urandom(32))
    inner = os.urandom(PACKET_SIZE)
    aad = os.urandom(DATA_HEADER_LEN)
    nonce = bytes(12)
    out = bytearray(PACKET_SIZE + TAG_LEN)
    encrypt_into, decrypt = aead.encrypt_into, aead.decrypt

    def work(n: int) -> None:
        for _ in range(n):
            encrypt_into(nonce, inner, aad, out)
            decrypt(nonce, out, aad)

    return work


def plain_ours() -> Callable[[int], None]:
    inner = os.urandom(PACKET_SIZE)
    buf = bytearray(12 + PACKET_SIZE)
    view = memoryview(buf)
    seal, open_plain = session.seal_plain_into, session.open_plain

    def work(n: int) -> None:
        for i in range(n):
            size = seal(buf, 0, inner, device_id=1, encap_id=i)
            open_plain(view[:size])

    return work


def bench_datapath(seconds: float) -> list[DataResult]:
    (plain,) = rates(plain_ours(), seconds=seconds)
    results = [DataResult("plain", "-", plain, None)]
    for cipher in CIPHERS:
        ours, bare = rates(sealed_ours(cipher), sealed_bare(cipher), seconds=seconds)
        results.append(DataResult("sealed", cipher, ours, bare))
    return results


# --- handshakes ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HandshakeResult:
    pattern: str
    modes: str
    ours_hps: float
    bare_hps: float
    required_x25519: dict[str, int]
    ours_x25519: dict[str, int]

    @property
    def ratio(self) -> float:
        return self.ours_hps / self.bare_hps


def _handshake_parties(pattern: str) -> Callable[[], None]:
    """One complete handshake per call: initiation, response, completion."""
    suite = PATTERN_SUITES[pattern]
    psk = os.urandom(32) if suite.has_psk else None
    if pattern == "NNpsk0":
        i_ident = r_ident = Identity(psk=psk)
        own_static = None
        mac1_key = i_ident.mac1_key_for(None)
    else:
        si, sr = noise.generate_private_key(), noise.generate_private_key()
        i_ident = Identity(si, noise.public_key(sr), psk)
        r_ident = Identity(sr, noise.public_key(si), psk)
        own_static = sr
        mac1_key = i_ident.mac1_key_for(noise.public_key(sr))
    clock = [1.7e9]

    def ident_for(_public: bytes | None) -> Identity:
        return r_ident

    def one() -> None:
        clock[0] += 1.0
        init = Initiator(suite, i_ident, device_id=1, local_index=7, now=clock[0])
        received = handshake.read_initiation(init.packet, mac1_key)
        resp = handshake.respond(received, suite, ident_for, own_static=own_static,
                                 device_id=2, local_index=9)
        init.consume_response(resp.packet)

    return one


def handshake_ours(pattern: str) -> Callable[[int], None]:
    one = _handshake_parties(pattern)

    def work(n: int) -> None:
        for _ in range(n):
            one()

    return work


def handshake_bare(pattern: str) -> Callable[[int], None]:
    need = REQUIRED_X25519[pattern]
    key = X25519PrivateKey.generate()
    peer = X25519PrivateKey.generate().public_key()
    generate = X25519PrivateKey.generate

    def work(n: int) -> None:
        for _ in range(n):
            for _ in range(need["keygen"]):
                generate().public_key().public_bytes_raw()
            for _ in range(need["dh"]):
                key.exchange(peer)

    return work


@contextmanager
def counting_x25519() -> Iterator[Counter[str]]:
    """Count the X25519 scalar multiplications core.noise performs while active.

    In OpenSSL both ``generate`` and ``from_private_bytes`` compute the public key (one
    fixed-base multiplication each); ``exchange`` is one variable-base multiplication.
    """
    counts: Counter[str] = Counter()
    real = X25519PrivateKey

    class Key:
        def __init__(self, key: X25519PrivateKey):
            self._key = key

        def exchange(self, peer: Any) -> bytes:
            counts["dh"] += 1
            return self._key.exchange(peer)

        def public_key(self) -> Any:
            return self._key.public_key()

        def private_bytes_raw(self) -> bytes:
            return self._key.private_bytes_raw()

    class Factory:
        @staticmethod
        def generate() -> Key:
            counts["keygen"] += 1
            return Key(real.generate())

        @staticmethod
        def from_private_bytes(data: bytes) -> Key:
            counts["load_private"] += 1
            return Key(real.from_private_bytes(data))

    with mock.patch.object(noise, "X25519PrivateKey", Factory):
        yield counts


def bench_handshakes(seconds: float) -> list[HandshakeResult]:
    results = []
    for pattern in PATTERN_SUITES:
        one = _handshake_parties(pattern)
        with counting_x25519() as counts:
            # Static keys loaded (and ss computed) under the counter, by a first handshake;
            # what is counted is the second, as every later one goes.
            noise._static_keypair.cache_clear()
            noise._static_shared.cache_clear()
            one()
            counts.clear()
            one()
        ours, bare = rates(handshake_ours(pattern), handshake_bare(pattern), seconds=seconds)
        results.append(HandshakeResult(
            pattern, PATTERN_SUITES[pattern].mode if pattern == "NNpsk0" else "ephemeral",
            ours, bare, dict(REQUIRED_X25519[pattern]), dict(sorted(counts.items()))))
    return results


# --- gateway ------------------------------------------------------------------------------

GATEWAY_PEERS = 1000
GATEWAY_KEYS = 128
"""Initiators the measurement cycles through (each registered), as bench/gateway.py does."""


@dataclass(frozen=True, slots=True)
class GatewayResult:
    peers: int
    ours_hps: float
    bare_hps: float
    costs_us: dict[str, float]
    lookups_us: dict[str, float]

    @property
    def ratio(self) -> float:
        return self.ours_hps / self.bare_hps


def _gateway_responder() -> Callable[[int], None]:
    from core.endpoint import Endpoint
    from core.handshake import FloodGuard

    gw = noise.generate_private_key()
    ep = Endpoint("ephemeral", "aes-256-gcm", device_id=1, static_private=gw)
    assert ep.responder is not None
    ep.responder.guard = FloodGuard(rate=1e12, load_threshold=1 << 62)
    keys = [noise.generate_private_key() for _ in range(GATEWAY_PEERS)]
    for i, k in enumerate(keys):
        ep.add_peer(f"p{i}", Identity(peer_public=noise.public_key(k)), remote_device_id=i + 2,
                    initiates=False)
    suite = Suite("ephemeral", "aes-256-gcm", False)
    idents = [Identity(k, noise.public_key(gw)) for k in keys[:GATEWAY_KEYS]]
    now = time.time()
    pool = [(Initiator(suite, idents[j % GATEWAY_KEYS], device_id=0, local_index=j + 1,
                       now=now + j * 1e-3).packet, bytes([10, 0, j % 256, j // 256, 0, 9]))
            for j in range(8 * GATEWAY_KEYS)]
    peers = list(ep.peers)
    pos = [0]

    def work(n: int) -> None:
        for _ in range(n):
            j = pos[0]
            if j == 0:  # the pool starts over: let its timestamps count as new again
                for p in peers:
                    p.last_timestamp = b""  # type: ignore[union-attr]
            r = ep.receive(*pool[j])
            if r.drop is not None:
                raise RuntimeError(f"gateway responder refused: {r.drop} {r.detail}")
            pos[0] = (j + 1) % len(pool)
            if len(ep.indices) > 4 * GATEWAY_PEERS:
                raise RuntimeError("sessions pile up")

    return work


def _gateway_bare() -> Callable[[int], None]:
    key = X25519PrivateKey.generate()
    peer = X25519PrivateKey.generate().public_key()
    generate = X25519PrivateKey.generate

    def work(n: int) -> None:
        for _ in range(n):
            generate().public_key().public_bytes_raw()
            key.exchange(peer)
            key.exchange(peer)
            key.exchange(peer)

    return work


def _per_call_us(fn: Callable[[], object], seconds: float) -> float:
    def work(n: int) -> None:
        for _ in range(n):
            fn()

    return 1e6 / rates(work, seconds=seconds / 4)[0]


def _lookups(seconds: float) -> dict[str, float]:
    import ipaddress

    from core.peer import IndexTable
    from helper.allowedips import AllowedIPs

    table: AllowedIPs[int] = AllowedIPs()
    nets = []
    for i in range(GATEWAY_PEERS):
        text = f"10.77.{100 + i // 250}.{1 + i % 250}/32"
        table.insert(text, i)
        nets.append((int(ipaddress.ip_network(text).network_address), 0xFFFFFFFF, i))
    table.insert("10.77.0.0/16", -1)  # a peer's wider network behind the others
    last = int(ipaddress.ip_address("10.77.103.250"))

    def scan() -> int | None:  # what a list would do: test every network in turn
        for net, mask, value in nets:
            if last & mask == net:
                return value
        return None

    indices = IndexTable()
    wanted = [indices.allocate(None) for _ in range(GATEWAY_PEERS)][-1]
    return {"allowed_ips_longest_prefix": _per_call_us(lambda: table.lookup_v4(last), seconds),
            "allowed_ips_linear_scan": _per_call_us(scan, seconds),
            "session_by_index": _per_call_us(lambda: indices.keypair(wanted), seconds)}


def _costs(seconds: float) -> dict[str, float]:
    import hashlib

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key = X25519PrivateKey.generate()
    peer = X25519PrivateKey.generate().public_key()
    h = noise._hash_for("BLAKE2s")
    k32, d64 = os.urandom(32), os.urandom(64)
    aead, nonce = AESGCM(k32), bytes(12)
    return {
        "x25519_keygen": _per_call_us(
            lambda: X25519PrivateKey.generate().public_key().public_bytes_raw(), seconds),
        "x25519_dh": _per_call_us(lambda: key.exchange(peer), seconds),
        "blake2s_64B": _per_call_us(lambda: hashlib.blake2s(d64).digest(), seconds),
        "hmac_blake2s_64B": _per_call_us(lambda: h.hmac(k32, d64), seconds),
        "hkdf_3_outputs": _per_call_us(lambda: h.hkdf(k32, d64, 3), seconds),
        "aesgcm_new_key_and_seal_32B": _per_call_us(
            lambda: AESGCM(k32).encrypt(nonce, d64[:32], d64), seconds),
        "aesgcm_seal_32B": _per_call_us(lambda: aead.encrypt(nonce, d64[:32], d64), seconds),
        "python_call": _per_call_us(lambda: None, seconds),
    }


def bench_gateway(seconds: float) -> GatewayResult:
    ours, bare = rates(_gateway_responder(), _gateway_bare(), seconds=seconds)
    return GatewayResult(GATEWAY_PEERS, ours, bare, _costs(seconds), _lookups(seconds))


# --- reporting ------------------------------------------------------------------------------


def _ops(counts: dict[str, int]) -> str:
    return "+".join(f"{v} {k}" for k, v in counts.items())


def report(data: list[DataResult], hs: list[HandshakeResult], gw: GatewayResult) -> str:
    lines = [
        f"Tunseal micro-benchmarks: Python {platform.python_version()}, cryptography "
        f"{cryptography.__version__}, {platform.machine()}, median of {ROUNDS} rounds",
        "",
        f"Data path, seal + open of one {PACKET_SIZE}-byte inner packet",
        f"{'mode':<8} {'cipher':<18} {'ours pkt/s':>11} {'Mbit/s':>8} {'bare AEAD pkt/s':>16} "
        f"{'ours/bare':>9}",
    ]
    for r in data:
        bare = f"{r.bare_pps:>16,.0f}" if r.bare_pps else f"{'-':>16}"
        ratio = f"{r.ratio:>9.2f}" if r.ratio else f"{'-':>9}"
        lines.append(f"{r.mode:<8} {r.cipher:<18} {r.ours_pps:>11,.0f} {r.ours_mbps:>8,.0f} "
                     f"{bare} {ratio}")
    lines += [
        "",
        "Handshakes (initiation + response + completion, chacha20-poly1305)",
        f"{'pattern':<8} {'modes':<15} {'ours hs/s':>10} {'bare X25519 hs/s':>17} "
        f"{'ours/bare':>9}  X25519 ops: required / ours",
    ]
    for h in hs:
        modes = "psk, rotating" if h.pattern == "NNpsk0" else "ephemeral"
        lines.append(f"{h.pattern:<8} {modes:<15} {h.ours_hps:>10,.0f} {h.bare_hps:>17,.0f} "
                     f"{h.ratio:>9.2f}  {_ops(h.required_x25519)} / {_ops(h.ours_x25519)}")
    us, bare_us = 1e6 / gw.ours_hps, 1e6 / gw.bare_hps
    lines += [
        "",
        f"Gateway with {gw.peers} peers: an IK initiation answered (Endpoint.receive, aes-256-gcm)",
        f"  ours {gw.ours_hps:,.0f} hs/s = {us:.0f} us; its X25519 (1 keygen + 3 DH) "
        f"{gw.bare_hps:,.0f} hs/s = {bare_us:.0f} us; the rest {us - bare_us:.0f} us; "
        f"ours/bare {gw.ratio:.2f}",
        "  us each: " + ", ".join(f"{k} {v:.2f}" for k, v in gw.costs_us.items()),
        f"  look-ups at {gw.peers} peers, us each: "
        + ", ".join(f"{k} {v:.2f}" for k, v in gw.lookups_us.items()),
    ]
    lines += [
        "",
        "bare AEAD: encrypt_into + decrypt, as core.session calls them (fixed nonce, 28-byte AAD).",
        "bare X25519: the key generations (generate + public key) and exchanges the pattern",
        "needs; 'ours' counts what core.noise performs (load_private = from_private_bytes).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Tunseal protocol micro-benchmarks")
    ap.add_argument("--seconds", type=float, default=1.0,
                    help="time per measurement (default 1.0)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    args = ap.parse_args(argv)
    started, cpu_started = time.perf_counter(), time.process_time()
    data = bench_datapath(args.seconds)
    hs = bench_handshakes(args.seconds)
    gw = bench_gateway(args.seconds)
    wall = time.perf_counter() - started
    cpu_share = (time.process_time() - cpu_started) / wall
    sys.stdout.write(report(data, hs, gw) + "\n")
    sys.stdout.write(f"total {wall:.1f} s; this process got {cpu_share:.0%} of a CPU")
    if cpu_share < 0.9:
        sys.stdout.write(" (the machine was busy: absolute figures are understated; the "
                         "interleaved ratios much less so)")
    sys.stdout.write("\n")
    if args.json:
        doc = {
            "python": platform.python_version(),
            "cryptography": cryptography.__version__,
            "machine": platform.machine(),
            "packet_size": PACKET_SIZE,
            "rounds": ROUNDS,
            "seconds_per_measurement": args.seconds,
            "wall_seconds": wall,
            "cpu_share": cpu_share,
            "datapath": [{**asdict(r), "ratio": r.ratio, "ours_mbps": r.ours_mbps}
                         for r in data],
            "handshakes": [{**asdict(h), "ratio": h.ratio} for h in hs],
            "gateway": {**asdict(gw), "ratio": gw.ratio},
        }
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
