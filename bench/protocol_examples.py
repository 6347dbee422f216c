"""The worked examples of docs/PROTOCOL.md, produced by the real code from fixed inputs.

Every byte in the examples section of the spec comes from here: the handshakes run through
``core.handshake`` (with fixed static, ephemeral and pre-shared keys and a fixed clock), the data
packets through ``core.session`` and ``core.endpoint``. ``tests/unit/test_protocol_doc.py``
checks that the section in the document is exactly what this module renders, and decodes the
bytes independently from the document's own description, so the spec cannot drift from the code.

    python -m bench.protocol_examples            # print the section
    python -m bench.protocol_examples --write    # replace it in docs/PROTOCOL.md
    python -m bench.protocol_examples --check    # exit 1 if the document is out of date
"""

from __future__ import annotations

import argparse
import struct
import sys
from pathlib import Path
from unittest import mock

from core import handshake, noise, wire
from core.constants import Flag, Option, PacketType
from core.endpoint import Endpoint
from core.handshake import CookieGenerator, Identity, Initiator, Suite
from core.session import Keypair

DOC = Path(__file__).resolve().parents[1] / "docs" / "PROTOCOL.md"
BEGIN = "<!-- BEGIN GENERATED EXAMPLES: python -m bench.protocol_examples --write -->"
END = "<!-- END GENERATED EXAMPLES -->"

# Fixed inputs. Repeated bytes keep them recognisable in the dumps; X25519 clamps them.
EX1_INITIATOR_STATIC = bytes([0x11]) * 32
EX1_RESPONDER_STATIC = bytes([0x22]) * 32
EX1_PSK = bytes([0x33]) * 32
EX1_INITIATOR_EPHEMERAL = bytes([0x44]) * 32
EX1_RESPONDER_EPHEMERAL = bytes([0x55]) * 32
EX1_INITIATOR_INDEX = 0x1A2B3C4D
EX1_RESPONDER_INDEX = 0x5E6F7081
EX1_INITIATOR_DEVICE = 1
EX1_RESPONDER_DEVICE = 2
EX1_TIME = 1767225600.5
EX1_COUNTER = 0x12345

EX2_PSK = bytes([0x66]) * 32
EX2_EPHEMERAL_FIRST = bytes([0x77]) * 32
EX2_EPHEMERAL_RETRY = bytes([0x88]) * 32
EX2_RESPONDER_EPHEMERAL = bytes([0x99]) * 32
EX2_INDEX_FIRST = 0x31415926
EX2_INDEX_RETRY = 0x27182818
EX2_RESPONDER_INDEX = 0x16180339
EX2_INITIATOR_DEVICE = 7
EX2_RESPONDER_DEVICE = 8
EX2_TIME_FIRST = 1767225601.0
EX2_TIME_RETRY = 1767225606.0
EX2_COOKIE_SECRET = bytes([0xAA]) * 32
EX2_COOKIE_NONCE = bytes([0xBB]) * 12
EX2_SOURCE = bytes([198, 51, 100, 7]) + (40000).to_bytes(2, "big")
EX2_ORIGIN = bytes([0xCC]) * 16

EX3_DEVICE = 3
EX3_REMOTE_DEVICE = 4
EX3_PACKETS_BEFORE = 42


# --- inner packets ---------------------------------------------------------------------------


def _fold(total: int) -> int:
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _sum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    return _fold(sum(struct.unpack(f"!{len(data) // 2}H", data)))


def _ipv4(proto: int, src: bytes, dst: bytes, body: bytes, ident: int) -> bytes:
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), ident, 0x4000, 64,
                                proto, 0, src, dst))
    struct.pack_into("!H", hdr, 10, ~_sum16(bytes(hdr)) & 0xFFFF)
    return bytes(hdr) + body


INNER_SRC = bytes([10, 77, 0, 2])
INNER_DST = bytes([10, 77, 0, 1])


def icmp_echo() -> bytes:
    """IPv4 ICMP echo request 10.77.0.2 -> 10.77.0.1, id 0x1234, seq 1, 8 bytes of data."""
    body = bytearray(struct.pack("!BBHHH", 8, 0, 0, 0x1234, 1) + b"tunseal!")
    struct.pack_into("!H", body, 2, ~_sum16(bytes(body)) & 0xFFFF)
    return _ipv4(1, INNER_SRC, INNER_DST, bytes(body), 0x0001)


def udp_partial() -> bytes:
    """IPv4 UDP 10.77.0.2:40000 -> 10.77.0.1:53 whose checksum field holds only the folded
    pseudo-header sum, as a TSO/GSO sender leaves it (CHECKSUM_PARTIAL)."""
    data = b"hello, tunnel"
    length = 8 + len(data)
    pseudo = _sum16(INNER_SRC + INNER_DST + struct.pack("!BBH", 0, 17, length))
    body = struct.pack("!HHHH", 40000, 53, length, pseudo) + data
    return _ipv4(17, INNER_SRC, INNER_DST, body, 0x0002)


# --- the three exchanges -------------------------------------------------------------------

EX1_SUITE = Suite("ephemeral", "chacha20-poly1305", True)
EX2_SUITE = Suite("psk", "aes-128-gcm", True)


def noise_name(suite: Suite) -> str:
    return noise.protocol_name(suite.pattern, suite.noise_cipher, "BLAKE2s")


def _initiator_keypair(done: handshake.Completed, suite: Suite, device_id: int) -> Keypair:
    # What core.peer.Peer._install builds from a completed handshake.
    return Keypair(cipher=suite.cipher, send_key=done.send_key, recv_key=done.recv_key,
                   local_index=done.local_index, remote_index=done.remote_index,
                   device_id=device_id, is_initiator=True, created=0.0)


def ephemeral_example() -> dict[str, bytes]:
    """Example 1: ephemeral mode with a psk (Noise IKpsk2), chacha20-poly1305."""
    suite = EX1_SUITE
    i_pub = noise.public_key(EX1_INITIATOR_STATIC)
    r_pub = noise.public_key(EX1_RESPONDER_STATIC)
    i_ident = Identity(EX1_INITIATOR_STATIC, r_pub, EX1_PSK)
    r_ident = Identity(EX1_RESPONDER_STATIC, i_pub, EX1_PSK)
    init = Initiator(suite, i_ident, device_id=EX1_INITIATOR_DEVICE,
                     local_index=EX1_INITIATOR_INDEX, now=EX1_TIME,
                     ephemeral=EX1_INITIATOR_EPHEMERAL)
    mac1_to_responder = i_ident.mac1_key_for(r_pub)
    received = handshake.read_initiation(init.packet, mac1_to_responder)

    def ident_for(public: bytes | None) -> Identity:
        if public != i_pub:
            raise AssertionError("the example initiation names another static key")
        return r_ident

    resp = handshake.respond(received, suite, ident_for, own_static=EX1_RESPONDER_STATIC,
                             device_id=EX1_RESPONDER_DEVICE, local_index=EX1_RESPONDER_INDEX,
                             ephemeral=EX1_RESPONDER_EPHEMERAL)
    done = init.consume_response(resp.packet)
    kp = _initiator_keypair(done, suite, EX1_INITIATOR_DEVICE)
    scratch = bytearray(64)
    for _ in range(EX1_COUNTER):  # advance the session so the packet shown has EX1_COUNTER
        kp.seal_into(scratch, 0, b"", PacketType.KEEPALIVE)
    inner = icmp_echo()
    return {
        "initiator_static_private": EX1_INITIATOR_STATIC,
        "initiator_static_public": i_pub,
        "responder_static_private": EX1_RESPONDER_STATIC,
        "responder_static_public": r_pub,
        "psk": EX1_PSK,
        "initiator_ephemeral_private": EX1_INITIATOR_EPHEMERAL,
        "initiator_ephemeral_public": noise.public_key(EX1_INITIATOR_EPHEMERAL),
        "responder_ephemeral_private": EX1_RESPONDER_EPHEMERAL,
        "responder_ephemeral_public": noise.public_key(EX1_RESPONDER_EPHEMERAL),
        "timestamp": handshake.tai64n(EX1_TIME),
        "mac1_key_to_responder": mac1_to_responder,
        "mac1_key_to_initiator": r_ident.mac1_key_for(i_pub),
        "k1_initiator_to_responder": done.send_key,
        "k2_responder_to_initiator": done.recv_key,
        "inner": inner,
        "init": init.packet,
        "resp": resp.packet,
        "data": bytes(kp.seal(inner)),
    }


def _fake_urandom(n: int) -> bytes:
    if n == len(EX2_COOKIE_SECRET):
        return EX2_COOKIE_SECRET
    if n == len(EX2_COOKIE_NONCE):
        return EX2_COOKIE_NONCE
    raise AssertionError(f"unexpected urandom({n}) while generating the cookie example")


def psk_example() -> dict[str, bytes]:
    """Example 2: psk mode (Noise NNpsk0), aes-128-gcm, with a cookie round trip."""
    suite = EX2_SUITE
    ident = Identity(psk=EX2_PSK)
    first = Initiator(suite, ident, device_id=EX2_INITIATOR_DEVICE, local_index=EX2_INDEX_FIRST,
                      now=EX2_TIME_FIRST, ephemeral=EX2_EPHEMERAL_FIRST, origin=EX2_ORIGIN)
    mac1_key = ident.mac1_key_for(None)
    cookie_key = ident.cookie_key_for(None)
    received = handshake.read_initiation(first.packet, mac1_key)
    # The cookie secret and the reply's nonce come from os.urandom; fix them for the example.
    with mock.patch("core.handshake.os.urandom", _fake_urandom):
        cookies = CookieGenerator(cookie_key, clock=lambda: 0.0)
        cookie_reply = cookies.reply(received, EX2_SOURCE, device_id=EX2_RESPONDER_DEVICE)
    cookie = handshake.open_cookie_reply(cookie_reply, cookie_key, first)
    retry = Initiator(suite, ident, device_id=EX2_INITIATOR_DEVICE, local_index=EX2_INDEX_RETRY,
                      now=EX2_TIME_RETRY, cookie=cookie, ephemeral=EX2_EPHEMERAL_RETRY,
                      origin=EX2_ORIGIN)
    received = handshake.read_initiation(retry.packet, mac1_key)
    if not cookies.mac2_ok(received, EX2_SOURCE):
        raise AssertionError("the retry's MAC2 does not verify")
    resp = handshake.respond(received, suite, lambda _public: ident, own_static=None,
                             device_id=EX2_RESPONDER_DEVICE, local_index=EX2_RESPONDER_INDEX,
                             ephemeral=EX2_RESPONDER_EPHEMERAL)
    done = retry.consume_response(resp.packet)
    kp = _initiator_keypair(done, suite, EX2_INITIATOR_DEVICE)
    return {
        "psk": EX2_PSK,
        "origin": EX2_ORIGIN,
        "prologue": suite.prologue_for(EX2_ORIGIN),
        "first_ephemeral_private": EX2_EPHEMERAL_FIRST,
        "retry_ephemeral_private": EX2_EPHEMERAL_RETRY,
        "responder_ephemeral_private": EX2_RESPONDER_EPHEMERAL,
        "first_timestamp": handshake.tai64n(EX2_TIME_FIRST),
        "retry_timestamp": handshake.tai64n(EX2_TIME_RETRY),
        "mac1_key": mac1_key,
        "cookie_key": cookie_key,
        "cookie_secret": EX2_COOKIE_SECRET,
        "source": EX2_SOURCE,
        "cookie": cookie,
        "k1_initiator_to_responder": done.send_key,
        "k2_responder_to_initiator": done.recv_key,
        "init_first": first.packet,
        "cookie_reply": cookie_reply,
        "init_retry": retry.packet,
        "resp": resp.packet,
        "keepalive": bytes(kp.seal(b"", PacketType.KEEPALIVE)),
    }


def plain_example() -> dict[str, bytes]:
    """Example 3: plain mode, the 43rd packet to a peer, carrying a CSUM_PARTIAL UDP datagram."""
    ep = Endpoint("plain", "chacha20-poly1305", device_id=EX3_DEVICE, clock=lambda: 0.0)
    peer = ep.add_peer("far", Identity(), remote_device_id=EX3_REMOTE_DEVICE, initiates=True)
    for _ in range(EX3_PACKETS_BEFORE):
        ep.seal(peer, b"")
    inner = udp_partial()
    (packet,) = ep.seal(peer, inner, PacketType.DATA, int(Flag.CSUM_PARTIAL))
    return {"inner": inner, "plain": packet}


# --- rendering -------------------------------------------------------------------------------


def hexdump(data: bytes) -> list[str]:
    lines = []
    for off in range(0, len(data), 16):
        chunk = data[off:off + 16]
        left = " ".join(f"{b:02x}" for b in chunk[:8])
        right = " ".join(f"{b:02x}" for b in chunk[8:])
        lines.append(f"{off:04x}  {left}  {right}".rstrip())
    return lines


def _flag_names(flags: int) -> str:
    names = [f.name for f in Flag if flags & f and f.name]
    return "|".join(names) if names else "none"


_OPTION_NAMES = {int(o): o.name for o in Option}


def annotate(packet: bytes) -> list[str]:
    """One line per header field of ``packet``: offsets, bytes, meaning."""
    p = wire.parse(packet)
    h = p.header

    def line(start: int, end: int, text: str) -> str:
        where = f"{start:02x}" if end - start == 1 else f"{start:02x}-{end - 1:02x}"
        raw = " ".join(f"{b:02x}" for b in h[start:end])
        if len(raw) > 23:
            raw = raw[:20] + "..."
        return f"{where:<6} {raw:<24} {text}"

    out = [
        line(0, 1, f"VER={h[0] >> 4} TYPE={p.type.value} ({p.type.name})"),
        line(1, 2, f"HLEN={h[1]} words ({len(h)} header bytes)"),
        line(2, 4, f"OLDPACKETLEN={p.inner_len}"),
        line(4, 6, f"DeviceID={p.device_id}"),
        line(6, 8, f"EncapID=0x{p.encap_id:04x}"),
        line(8, 10, f"Flags=0x{p.flags:04x} ({_flag_names(p.flags)})"),
        line(10, 12, f"Checksum=0x{int.from_bytes(h[10:12], 'big'):04x}"),
    ]
    i = wire.FIXED.size
    while i < len(h):
        t = h[i]
        if t == 0:
            out.append(line(i, len(h), "END, then zero padding"))
            break
        n = h[i + 1]
        data = h[i + 2:i + 2 + n]
        name = _OPTION_NAMES.get(t, f"option 0x{t:02x}")
        value = f"0x{int.from_bytes(data, 'big'):0{2 * n}x}" if n <= 8 else data.hex()
        out.append(line(i, i + 2 + n, f"{name} (type 0x{t:02x}, length {n}) = {value}"))
        i += 2 + n
    out.append(f"{len(h):02x}-    {'':<24} payload, {len(packet) - len(h)} bytes")
    return out


def _values(tag: str, values: dict[str, bytes], names: list[str]) -> list[str]:
    width = max(len(n) for n in names)
    return [f"<!-- values:{tag} -->", "```", *(f"{n:<{width}} = {values[n].hex()}" for n in names),
            "```", ""]


def _packet(tag: str, title: str, packet: bytes, *notes: str) -> list[str]:
    return [f"{title} ({len(packet)} bytes):", "", f"<!-- hex:{tag} -->", "```",
            *hexdump(packet), "```", "", "Its header, field by field:", "", "```",
            *annotate(packet), "```", "", *notes, *([""] if notes else [])]


def _render_ex1() -> list[str]:
    e = ephemeral_example()
    out = [
        "### Example 1: `ephemeral` mode with a psk, chacha20-poly1305",
        "",
        f"Noise protocol `{noise_name(EX1_SUITE)}`, prologue `{EX1_SUITE.prologue.decode()}` "
        f"(ASCII). Initiator: DeviceID {EX1_INITIATOR_DEVICE}, session index "
        f"0x{EX1_INITIATOR_INDEX:08x}, clock at Unix time {EX1_TIME}. Responder: DeviceID "
        f"{EX1_RESPONDER_DEVICE}, session index 0x{EX1_RESPONDER_INDEX:08x}. Private keys are "
        "raw X25519 scalars (clamped by X25519 itself). `inner` is the IPv4 ICMP echo request "
        "the DATA packet carries.",
        "",
    ]
    out += _values("ex1", e, [
        "initiator_static_private", "initiator_static_public", "responder_static_private",
        "responder_static_public", "psk", "initiator_ephemeral_private",
        "initiator_ephemeral_public", "responder_ephemeral_private",
        "responder_ephemeral_public", "timestamp", "mac1_key_to_responder",
        "mac1_key_to_initiator", "k1_initiator_to_responder", "k2_responder_to_initiator",
        "inner",
    ])
    out += _packet("ex1-init", "HANDSHAKE_INIT, initiator to responder (no cookie: MAC2 zero)",
                   e["init"], "The payload is Noise message 1: `e` (32) || encrypted `s` "
                   "(32 + 16) || encrypted timestamp (12 + 16).")
    out += _packet("ex1-resp", "HANDSHAKE_RESP, responder to initiator", e["resp"],
                   "The payload is Noise message 2: `e` (32) || encrypted empty payload (16).")
    out += _packet(
        "ex1-data", f"DATA, initiator to responder, packet counter 0x{EX1_COUNTER:x}", e["data"],
        "AEAD: ChaCha20-Poly1305, key `k1_initiator_to_responder`, nonce "
        f"`{EX1_COUNTER.to_bytes(12, 'big').hex()}`, associated data = the 28 header bytes. "
        f"The payload is the {len(e['inner'])}-byte ciphertext of `inner`, then the tag. "
        f"EncapID is the counter's low 16 bits, 0x{EX1_COUNTER & 0xFFFF:04x}.")
    return out


def _render_ex2() -> list[str]:
    e = psk_example()
    out = [
        "### Example 2: `psk` mode, aes-128-gcm, with a cookie round trip",
        "",
        f"Noise protocol `{noise_name(EX2_SUITE)}`, prologue `{EX2_SUITE.prologue.decode()}|` "
        "followed by the initiator's 16-byte origin ID `origin` (section 8.2; `prologue` "
        "below is the whole of it, in hex). "
        f"Initiator DeviceID {EX2_INITIATOR_DEVICE}, responder DeviceID "
        f"{EX2_RESPONDER_DEVICE}. The responder is under load: it answers the first initiation "
        f"(index 0x{EX2_INDEX_FIRST:08x}) with a cookie reply, and the initiator's retry 5 s "
        f"later (a new attempt: index 0x{EX2_INDEX_RETRY:08x}, new ephemeral key, new "
        f"timestamp) carries MAC2. The responder's index is 0x{EX2_RESPONDER_INDEX:08x}. "
        "`source` is the first initiation's outer source address as this responder packs it "
        "(198.51.100.7 port 40000); the packing is the responder's own business, since only "
        "it ever computes cookies.",
        "",
    ]
    out += _values("ex2", e, [
        "psk", "origin", "prologue", "first_ephemeral_private", "retry_ephemeral_private",
        "responder_ephemeral_private", "first_timestamp", "retry_timestamp", "mac1_key",
        "cookie_key", "cookie_secret", "source", "cookie", "k1_initiator_to_responder",
        "k2_responder_to_initiator",
    ])
    out += _packet("ex2-init-first", "HANDSHAKE_INIT, first attempt", e["init_first"],
                   "The payload is Noise message 1: `e` (32) || encrypted timestamp (12 + 16).")
    out += _packet("ex2-cookie", "COOKIE reply to the first attempt", e["cookie_reply"],
                   "The payload is the 12-byte nonce, then ChaCha20-Poly1305 with key "
                   "`cookie_key` of `cookie` (16 + 16), associated data = MAC1 of the first "
                   "initiation. `cookie` = MAC(`cookie_secret`, `source`).")
    out += _packet("ex2-init-retry", "HANDSHAKE_INIT, the retry, MAC2 keyed by `cookie`",
                   e["init_retry"])
    out += _packet("ex2-resp", "HANDSHAKE_RESP", e["resp"],
                   "The payload is Noise message 2: `e` (32) || encrypted empty payload (16).")
    out += _packet(
        "ex2-keepalive", "KEEPALIVE, initiator to responder: the session's first packet, which "
        "confirms the session to the responder", e["keepalive"],
        "AEAD: AES-128-GCM, key = the first 16 bytes of `k1_initiator_to_responder`, nonce "
        f"`{bytes(12).hex()}` (counter 0), associated data = the 28 header bytes. The payload "
        "is the tag alone.")
    return out


def _render_ex3() -> list[str]:
    e = plain_example()
    out = [
        "### Example 3: `plain` mode, CSUM_PARTIAL",
        "",
        f"DeviceID {EX3_DEVICE}. This is the {EX3_PACKETS_BEFORE + 1}rd packet this end sends "
        f"to the peer, so EncapID is {EX3_PACKETS_BEFORE} (0x{EX3_PACKETS_BEFORE:04x}). `inner` "
        "is an IPv4 UDP datagram 10.77.0.2:40000 -> 10.77.0.1:53 whose checksum field holds "
        "only the folded pseudo-header sum; the receiver completes it.",
        "",
    ]
    out += _values("ex3", e, ["inner"])
    out += _packet("ex3-plain", "DATA in plain mode", e["plain"])
    return out


def render() -> str:
    lines = [BEGIN, "", *_render_ex1(), *_render_ex2(), *_render_ex3(), END]
    return "\n".join(lines) + "\n"


def doc_section(text: str) -> str:
    """The generated section of ``text`` (markers included), or '' if it has none."""
    start = text.find(BEGIN)
    end = text.find(END)
    if start < 0 or end < start:
        return ""
    return text[start:end + len(END)] + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true", help="update docs/PROTOCOL.md in place")
    group.add_argument("--check", action="store_true", help="exit 1 if the document is stale")
    args = ap.parse_args(argv)
    fresh = render()
    if not (args.write or args.check):
        sys.stdout.write(fresh)
        return 0
    text = DOC.read_text()
    current = doc_section(text)
    if not current:
        sys.stderr.write(f"{DOC}: no generated-examples markers\n")
        return 1
    if args.check:
        return 0 if current == fresh else 1
    DOC.write_text(text.replace(current, fresh))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
