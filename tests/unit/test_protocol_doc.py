"""docs/PROTOCOL.md against the code.

The worked examples must be exactly what ``bench/protocol_examples.py`` renders from the code
today, and every hex dump must decode from the document's own description (RFC 1071 checksum,
HMAC-BLAKE2s MACs, the AEAD nonce and associated data) with the keys the document lists. The
tables of constants, flags, options and Noise names are checked against ``core`` too.
"""

from __future__ import annotations

import ast
import hashlib
import hmac
import operator
import re
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from bench import protocol_examples
from core import constants, handshake, noise, session
from core.constants import Flag, Option, PacketType
from core.errors import CryptoError
from core.handshake import Identity, Initiator, Suite

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"
DOC = DOC_PATH.read_text()


# --- reading the document --------------------------------------------------------------------


def _hex_dumps(text: str) -> dict[str, bytes]:
    dumps: dict[str, bytes] = {}
    for tag, body in re.findall(r"<!-- hex:([\w-]+) -->\n```\n(.*?)```", text, re.S):
        data = bytearray()
        for line in body.splitlines():
            offset, *octets = line.split()
            assert int(offset, 16) == len(data), f"{tag}: offset {offset} out of sequence"
            data += bytes(int(o, 16) for o in octets)
        dumps[tag] = bytes(data)
    return dumps


def _values(text: str) -> dict[str, dict[str, bytes]]:
    blocks: dict[str, dict[str, bytes]] = {}
    for tag, body in re.findall(r"<!-- values:(\w+) -->\n```\n(.*?)```", text, re.S):
        pairs = (line.split("=", 1) for line in body.splitlines())
        blocks[tag] = {k.strip(): bytes.fromhex(v.strip()) for k, v in pairs}
    return blocks


DUMPS = _hex_dumps(DOC)
VALUES = _values(DOC)


# --- the document's definitions, implemented here without core ------------------------------


def rfc1071_sum(data: bytes) -> int:
    """One's complement sum of 16-bit words, with end-around carry."""
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return total


def hash_(data: bytes) -> bytes:
    return hashlib.blake2s(data).digest()


def mac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2s).digest()[:16]


class Parsed:
    """A packet split by the rules of sections 3.1-3.4."""

    def __init__(self, packet: bytes):
        vt, hlen, self.oldlen, self.device, self.encap, self.flags, _ = struct.unpack_from(
            "!BBHHHHH", packet)
        assert vt >> 4 == 1, "VER must be 1"
        self.type = vt & 0x0F
        self.header = packet[:hlen * 4]
        self.payload = packet[hlen * 4:]
        assert len(self.header) == hlen * 4 >= 12
        assert rfc1071_sum(self.header) == 0xFFFF, "header checksum does not verify"
        self.options: dict[int, tuple[int, bytes]] = {}
        i = 12
        while i < len(self.header):
            t = self.header[i]
            if t == 0:
                assert not any(self.header[i:]), "non-zero padding after END"
                break
            n = self.header[i + 1]
            assert i + 2 + n <= len(self.header)
            assert t not in self.options, "duplicate option"
            self.options[t] = (i + 2, self.header[i + 2:i + 2 + n])
            i += 2 + n

    def opt(self, kind: int) -> bytes:
        return self.options[kind][1]

    def int_opt(self, kind: int) -> int:
        return int.from_bytes(self.opt(kind), "big")


def mac_inputs(packet: bytes) -> tuple[bytes, bytes]:
    """(mac1 input, mac2 input) as section 9.2 defines them."""
    p = Parsed(packet)
    o1, o2 = p.options[Option.MAC1][0], p.options[Option.MAC2][0]
    buf = bytearray(packet)
    buf[10:12] = bytes(2)
    buf[o2:o2 + 16] = bytes(16)
    in2 = bytes(buf)
    buf[o1:o1 + 16] = bytes(16)
    return bytes(buf), in2


def public(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def tai64n_time(stamp: bytes) -> float:
    seconds, nanos = struct.unpack("!QI", stamp)
    return float(seconds - (1 << 62) + nanos / 1e9)


# --- the examples are the code's -------------------------------------------------------------


def test_examples_section_is_what_the_code_produces() -> None:
    section = protocol_examples.doc_section(DOC)
    assert section, "docs/PROTOCOL.md lost its generated-examples markers"
    assert section == protocol_examples.render(), (
        "docs/PROTOCOL.md's worked examples are stale: run "
        "`.venv/bin/python -m bench.protocol_examples --write` and review the diff")


def test_every_example_is_present() -> None:
    assert set(DUMPS) == {"ex1-init", "ex1-resp", "ex1-data", "ex2-init-first", "ex2-cookie",
                          "ex2-init-retry", "ex2-resp", "ex2-keepalive", "ex3-plain"}
    assert set(VALUES) == {"ex1", "ex2", "ex3"}


@pytest.mark.parametrize("tag", sorted(DUMPS))
def test_header_rules(tag: str) -> None:
    packet = DUMPS[tag]
    p = Parsed(packet)
    sealed = p.type in (PacketType.DATA, PacketType.KEEPALIVE) and tag != "ex3-plain"
    if sealed:
        assert p.flags & 0xC000 == 0xC000 and not p.flags & Flag.KEY_PRESENT
        assert len(p.header) == 28
        assert packet[12:14] == b"\x82\x04" and packet[18:20] == b"\x81\x08"
        assert len(p.payload) == p.oldlen + 16
        assert p.encap == p.int_opt(Option.COUNTER) & 0xFFFF
    elif p.type in (PacketType.HANDSHAKE_INIT, PacketType.HANDSHAKE_RESP):
        assert p.flags == 0xA000 and p.encap == 0 and len(p.payload) == p.oldlen
    elif p.type == PacketType.COOKIE:
        assert p.flags == 0x4000 and p.encap == 0 and p.oldlen == len(p.payload) == 44
    else:
        assert len(p.header) == 12 and len(p.payload) == p.oldlen


# --- example 1: ephemeral mode with a psk ---------------------------------------------------


def test_ex1_keys_and_macs() -> None:
    v = VALUES["ex1"]
    for who in ("initiator_static", "responder_static", "initiator_ephemeral",
                "responder_ephemeral"):
        if f"{who}_public" in v:
            assert public(v[f"{who}_private"]) == v[f"{who}_public"]
    assert v["mac1_key_to_responder"] == hash_(b"mac1----" + v["responder_static_public"])
    assert v["mac1_key_to_initiator"] == hash_(b"mac1----" + v["initiator_static_public"])
    init, resp = DUMPS["ex1-init"], DUMPS["ex1-resp"]
    for packet, key in ((init, v["mac1_key_to_responder"]), (resp, v["mac1_key_to_initiator"])):
        p = Parsed(packet)
        in1, _ = mac_inputs(packet)
        assert p.opt(Option.MAC1) == mac(key, in1)
        assert p.opt(Option.MAC2) == bytes(16)
    # message 1 starts with the initiator's ephemeral public key, message 2 with the responder's
    assert Parsed(init).payload[:32] == v["initiator_ephemeral_public"]
    assert Parsed(resp).payload[:32] == v["responder_ephemeral_public"]
    assert Parsed(resp).opt(Option.RECEIVER_INDEX) == Parsed(init).opt(Option.SENDER_INDEX)


def test_ex1_handshake_replays_through_core() -> None:
    v = VALUES["ex1"]
    init, resp = Parsed(DUMPS["ex1-init"]), Parsed(DUMPS["ex1-resp"])
    suite = Suite("ephemeral", "chacha20-poly1305", True)
    i_ident = Identity(v["initiator_static_private"], v["responder_static_public"], v["psk"])
    r_ident = Identity(v["responder_static_private"], v["initiator_static_public"], v["psk"])
    initiator = Initiator(suite, i_ident, device_id=init.device,
                          local_index=init.int_opt(Option.SENDER_INDEX),
                          now=tai64n_time(v["timestamp"]),
                          ephemeral=v["initiator_ephemeral_private"])
    assert initiator.packet == DUMPS["ex1-init"]
    received = handshake.read_initiation(DUMPS["ex1-init"], v["mac1_key_to_responder"])
    answered = handshake.respond(received, suite, lambda _pub: r_ident,
                                 own_static=v["responder_static_private"],
                                 device_id=resp.device,
                                 local_index=resp.int_opt(Option.SENDER_INDEX),
                                 ephemeral=v["responder_ephemeral_private"])
    assert answered.timestamp == v["timestamp"]
    assert answered.packet == DUMPS["ex1-resp"]
    done = initiator.consume_response(DUMPS["ex1-resp"])
    assert (done.send_key, done.recv_key) == (v["k1_initiator_to_responder"],
                                             v["k2_responder_to_initiator"])
    assert (answered.completed.send_key, answered.completed.recv_key) == (
        v["k2_responder_to_initiator"], v["k1_initiator_to_responder"])


def test_ex1_data_opens_with_the_documented_key() -> None:
    v = VALUES["ex1"]
    packet = DUMPS["ex1-data"]
    p = Parsed(packet)
    counter = p.int_opt(Option.COUNTER)
    assert counter == protocol_examples.EX1_COUNTER
    nonce = bytes(4) + counter.to_bytes(8, "big")
    aead = ChaCha20Poly1305(v["k1_initiator_to_responder"])
    assert aead.decrypt(nonce, p.payload, p.header) == v["inner"]
    assert p.oldlen == len(v["inner"])
    # and through the receive path of core.session, as the responder would
    kp = session.Keypair(cipher="chacha20-poly1305", send_key=v["k2_responder_to_initiator"],
                         recv_key=v["k1_initiator_to_responder"],
                         local_index=p.int_opt(Option.RECEIVER_INDEX), remote_index=0,
                         device_id=2, is_initiator=False, created=0.0)
    got, ptype, flags, encap, inner = session.open_data(packet, {kp.local_index: kp}.get)
    assert (got, ptype, flags, encap, inner) == (kp, PacketType.DATA, 0xC000, counter & 0xFFFF,
                                                 v["inner"])


# --- example 2: psk mode, cookie ------------------------------------------------------------


def test_ex2_mac_and_cookie_keys() -> None:
    v = VALUES["ex2"]
    assert v["mac1_key"] == hash_(b"mac1----" + v["psk"])
    assert v["cookie_key"] == hash_(b"cookie--" + v["psk"])
    assert v["cookie"] == mac(v["cookie_secret"], v["source"])
    for tag in ("ex2-init-first", "ex2-init-retry", "ex2-resp"):
        in1, _ = mac_inputs(DUMPS[tag])
        assert Parsed(DUMPS[tag]).opt(Option.MAC1) == mac(v["mac1_key"], in1), tag


def test_ex2_cookie_reply_opens_and_keys_mac2() -> None:
    v = VALUES["ex2"]
    first, reply, retry = (Parsed(DUMPS[t]) for t in ("ex2-init-first", "ex2-cookie",
                                                       "ex2-init-retry"))
    assert reply.opt(Option.RECEIVER_INDEX) == first.opt(Option.SENDER_INDEX)
    nonce, sealed = reply.payload[:12], reply.payload[12:]
    cookie = ChaCha20Poly1305(v["cookie_key"]).decrypt(nonce, sealed, first.opt(Option.MAC1))
    assert cookie == v["cookie"]
    assert first.opt(Option.MAC2) == bytes(16)
    _, in2 = mac_inputs(DUMPS["ex2-init-retry"])
    assert retry.opt(Option.MAC2) == mac(cookie, in2)


def test_ex2_handshake_and_keepalive() -> None:
    v = VALUES["ex2"]
    retry, resp = Parsed(DUMPS["ex2-init-retry"]), Parsed(DUMPS["ex2-resp"])
    suite = Suite("psk", "aes-128-gcm", True)
    ident = Identity(psk=v["psk"])
    initiator = Initiator(suite, ident, device_id=retry.device,
                          local_index=retry.int_opt(Option.SENDER_INDEX),
                          now=tai64n_time(v["retry_timestamp"]), cookie=v["cookie"],
                          ephemeral=v["retry_ephemeral_private"], origin=v["origin"])
    assert initiator.packet == DUMPS["ex2-init-retry"]
    received = handshake.read_initiation(DUMPS["ex2-init-retry"], v["mac1_key"])
    answered = handshake.respond(received, suite, lambda _pub: ident, own_static=None,
                                 device_id=resp.device,
                                 local_index=resp.int_opt(Option.SENDER_INDEX),
                                 ephemeral=v["responder_ephemeral_private"])
    assert answered.packet == DUMPS["ex2-resp"]
    done = initiator.consume_response(DUMPS["ex2-resp"])
    assert (done.send_key, done.recv_key) == (v["k1_initiator_to_responder"],
                                             v["k2_responder_to_initiator"])
    ka = Parsed(DUMPS["ex2-keepalive"])
    assert ka.type == PacketType.KEEPALIVE and ka.oldlen == 0
    assert ka.opt(Option.RECEIVER_INDEX) == resp.opt(Option.SENDER_INDEX)
    counter = ka.int_opt(Option.COUNTER)
    nonce = bytes(4) + counter.to_bytes(8, "big")
    aead = AESGCM(v["k1_initiator_to_responder"][:16])
    assert aead.decrypt(nonce, ka.payload, ka.header) == b""


def test_ex2_origin_option_and_prologue() -> None:
    """Section 8.2: a psk-mode initiation carries ORIGIN, and the Noise prologue is
    "Tunseal v1|<cipher>|" followed by that origin ID: message 1 opens with exactly that
    prologue (run through the bare Noise engine, not core.handshake) and with no other."""
    v = VALUES["ex2"]
    assert v["prologue"] == b"Tunseal v1|aes-128-gcm|" + v["origin"]
    for tag, stamp in (("ex2-init-first", "first_timestamp"), ("ex2-init-retry",
                                                               "retry_timestamp")):
        p = Parsed(DUMPS[tag])
        assert p.opt(Option.ORIGIN) == v["origin"] and len(v["origin"]) == 16
        assert Option.ORIGIN & constants.OPTION_CRITICAL

        def read(prologue: bytes, message: bytes = p.payload) -> bytes:
            hs = noise.HandshakeState("NNpsk0", False, cipher="AESGCM", prologue=prologue,
                                      psk=v["psk"])
            return hs.read_message(message)

        assert read(v["prologue"]) == v[stamp]
        for wrong in (b"Tunseal v1|aes-128-gcm", b"Tunseal v1|aes-128-gcm|" + bytes(16)):
            with pytest.raises(CryptoError):
                read(wrong)


# --- example 3: plain mode, CSUM_PARTIAL ----------------------------------------------------


def test_ex3_plain_packet_and_checksum_completion() -> None:
    inner = VALUES["ex3"]["inner"]
    packet = DUMPS["ex3-plain"]
    p = Parsed(packet)
    assert (p.type, p.device, p.encap, p.flags) == (PacketType.DATA, 3, 42, 0x1000)
    assert p.payload == inner
    assert session.open_plain(packet) == (PacketType.DATA, 3, 42, 0x1000, inner)
    # Complete the UDP checksum as section 14.2 says, then check it the ordinary way.
    ihl = (inner[0] & 0x0F) * 4
    assert inner[0] >> 4 == 4 and inner[9] == 17
    udp = bytearray(inner[ihl:])
    udp += b"\0" * (len(udp) % 2)
    done = ~rfc1071_sum(bytes(udp)) & 0xFFFF or 0xFFFF
    struct.pack_into("!H", udp, 6, done)
    pseudo = inner[12:20] + struct.pack("!BBH", 0, 17, len(inner) - ihl)
    assert rfc1071_sum(pseudo + bytes(udp)) == 0xFFFF


# --- tables ---------------------------------------------------------------------------------

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.Pow: operator.pow}


def _number(expr: str) -> int | float:
    def ev(node: ast.AST) -> int | float:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            value: int | float = _OPS[type(node.op)](ev(node.left), ev(node.right))
            return value
        raise ValueError(f"unsupported expression {expr!r}")

    # The document writes powers as 2^60.
    return ev(ast.parse(expr.replace("^", "**"), mode="eval").body)


def test_constants_table_matches_core() -> None:
    rows = re.findall(r"^\| `([A-Z_]+)` \| ([^|]+) \|", DOC, re.M)
    assert len(rows) >= 15
    for name, value in rows:
        assert _number(value.strip()) == getattr(constants, name), name


def test_flag_option_and_type_tables_match_core() -> None:
    for mask, name in re.findall(r"^\| `(0x[0-9A-F]{4})` \| ([A-Z_]+) +\|", DOC, re.M):
        assert Flag[name] == int(mask, 16)
    options = re.findall(r"^\| `(0x[0-9a-f]{2})` \| ([A-Z_0-9]+) +\| [^|]+\| (yes|no|-) +\|",
                         DOC, re.M)
    assert len(options) == len(Option) + 1
    for code, name, critical in options:
        value = int(code, 16)
        if name == "END":
            assert value == constants.OPTION_END
            continue
        assert Option[name] == value
        assert (critical == "yes") == bool(value & constants.OPTION_CRITICAL)
    types = dict(re.findall(r"^\| ([1-8])    \| ([A-Z_]+) +\|", DOC, re.M))
    assert {int(k): v for k, v in types.items()} == {t.value: t.name for t in PacketType}


def test_noise_names_and_prologues_are_documented() -> None:
    for mode, has_psk in (("ephemeral", False), ("ephemeral", True), ("psk", True),
                          ("rotating", True)):
        for cipher in constants.CIPHERS:
            suite = Suite(mode, cipher, has_psk)
            name = noise.protocol_name(suite.pattern, suite.noise_cipher, "BLAKE2s")
            assert f"`{name}`" in DOC
            assert f"`{suite.prologue.decode()}`" in DOC
