"""Invitations (core/invitation.py), the enrolment messages (core/enrol.py) and the gateway's
invitation store and registrar (helper/enrolment.py), in process, with an injected clock.

The registrar runs with a real InvitationStore on disk and a small gateway stand-in that records
registrations (the thing under test is the registrar's verdicts and the store's burns; the
real gateway's registration is tests/net/test_enrol.py's)."""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path
from typing import Any

import enrol_example
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import invitation as inv_format
from core import noise, wire
from core.constants import Option, PacketType
from core.endpoint import Endpoint
from core.enrol import REFUSALS, Accepted, Attempt, Code, EnrolGate, Enrolment, Verdict
from core.handshake import FloodGuard, _build, blake2s, mac
from core.invitation import Invitation, InvitationError
from core.responder import Refused
from helper.enrolment import GatewayRegistrar, InvitationStore

DOC = (Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md").read_text()
GW = bytes([7]) * 32
NOW = 1_800_000_000.0


def _invitation(secret: bytes, inv_id: bytes, expires: int = int(NOW) + 3600) -> Invitation:
    return Invitation(noise.public_key(GW), inv_id, secret, expires, "198.18.0.1", 51900,
                      "office", "10.1.0.2/32")


# --- the invitation text ---------------------------------------------------------------------


def test_invitation_round_trip_and_whitespace() -> None:
    inv = _invitation(inv_format.new_secret(), inv_format.new_id())
    text = inv_format.encode(inv)
    assert text.startswith("tunseal1:") and len(text) < 200
    assert inv_format.decode(text) == inv
    wrapped = "  " + "\n".join(text[i:i + 40] for i in range(0, len(text), 40)) + "\n"
    assert inv_format.decode(wrapped) == inv
    assert "secret" not in repr(inv) or "<secret>" in repr(inv)
    assert inv.secret.hex() not in repr(inv)


@pytest.mark.parametrize(("text", "match"), [
    ("hello", "not a Tunseal invitation"),
    ("tunseal1:", "cut short"),
    ("tunseal1:AAAA", "cut short"),
    ("tunseal1:" + "A" * 2000, "longer than any invitation"),
    ("tunseal1:@@@@", "damaged"),
])
def test_invitation_refusals(text: str, match: str) -> None:
    with pytest.raises(InvitationError, match=match):
        inv_format.decode(text)


def test_every_changed_character_is_damage() -> None:
    text = inv_format.encode(_invitation(bytes(16), bytes(8)))
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for i in range(len("tunseal1:"), len(text)):
        other = alphabet[(alphabet.index(text[i]) + 1) % len(alphabet)]
        with pytest.raises(InvitationError):
            inv_format.decode(text[:i] + other + text[i + 1:])


def test_unknown_version_is_named() -> None:
    raw = bytearray(base64.urlsafe_b64decode(
        inv_format.encode(_invitation(bytes(16), bytes(8)))[9:] + "=="))
    raw[0] = 2
    body = bytes(raw[:-4])
    fixed = body + blake2s(body)[:4]
    text = "tunseal1:" + base64.urlsafe_b64encode(fixed).decode().rstrip("=")
    with pytest.raises(InvitationError, match="format version 2"):
        inv_format.decode(text)


@settings(max_examples=300)
@given(st.text(max_size=300))
def test_decode_never_fails_otherwise(text: str) -> None:
    try:
        inv_format.decode("tunseal1:" + text)
    except InvitationError:
        pass


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("30m", 1800), ("24h", 86400),
                                               ("7d", 604800), ("45", 45)])
def test_durations(text: str, seconds: int) -> None:
    assert inv_format.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0s", "31d", "1w", "-5m", "1.5h"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(InvitationError):
        inv_format.parse_duration(text)


def test_the_signature_proves_the_secret() -> None:
    secret = inv_format.new_secret()
    sig = inv_format.sign(secret, b"message")
    assert inv_format.verify(inv_format.verify_key(secret), sig, b"message")
    assert not inv_format.verify(inv_format.verify_key(secret), sig, b"messagf")
    assert not inv_format.verify(inv_format.verify_key(inv_format.new_secret()), sig, b"message")


# --- the gateway's registrar, with a real store ----------------------------------------------


class Office:
    """Stands in for helper/gateway.py's GatewayService: records what would be registered."""

    name = "office"

    def __init__(self) -> None:
        self.peers: dict[str, str] = {}

    def enrol_peer(self, name: str, public_key: str, allowed_ips: tuple[str, ...]) -> None:
        self.peers[name] = public_key

    def accepted_for(self, name: str, public_key: str) -> Accepted | None:
        if self.peers.get(name) != public_key:
            return None
        return Accepted(peer_name=name, addresses=("10.1.0.2/32",), routes=("10.1.0.0/24",),
                        device_id=2)


class Rig:
    def __init__(self, tmp: Path):
        self.clock = [NOW]
        self.path = tmp / "gw.invitations.json"
        self.store = InvitationStore(self.path, clock=lambda: self.clock[0])
        self.office = Office()
        self.sent: list[bytes] = []
        self.registrar = GatewayRegistrar(self.store, self.office,
                                          lambda pkt, src: self.sent.append(pkt),
                                          clock=lambda: self.clock[0])
        self.gate = EnrolGate(GW, self.registrar)

    def issue(self, name: str = "alice", lifetime: int = 3600) -> Invitation:
        rec, secret = self.store.issue(name, ("10.1.0.2/32",), lifetime)
        return _invitation(secret, bytes.fromhex(rec.id), rec.expires)

    def enrol(self, inv: Invitation, laptop: bytes, *, now: float | None = None,
              index: int = 0x1234) -> Verdict:
        """One attempt; the verdict from the reply sent now or by the worker."""
        attempt = Attempt(inv, laptop, local_index=index,
                          now=now if now is not None else time.time())
        reply = self.send(attempt.packet)
        assert reply is not None
        return attempt.read_reply(reply)

    def send(self, packet: bytes) -> bytes | None:
        out = self.gate.handle(packet, b"198.18.0.9|4000")
        if out.reply is not None:
            return out.reply
        for w in self.registrar.workers:
            w.join(5)
        return self.sent.pop() if self.sent else None


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


def test_join_then_burnt_for_everyone_else(rig: Rig) -> None:
    inv, laptop = rig.issue(), noise.generate_private_key()
    verdict = rig.enrol(inv, laptop)
    assert verdict.code == Code.ACCEPTED and verdict.accepted is not None
    assert verdict.accepted.device_id == 2
    assert rig.office.peers == {"alice": base64.b64encode(noise.public_key(laptop)).decode()}
    other = rig.enrol(inv, noise.generate_private_key())
    assert other.code == Code.USED and "already used" in other.message
    # The same laptop's retry (its first answer lost) is answered again, from the store.
    assert rig.enrol(inv, laptop).code == Code.ACCEPTED


def test_burn_is_on_disk_before_anything_else(rig: Rig) -> None:
    inv = rig.issue()
    assert rig.enrol(inv, noise.generate_private_key()).code == Code.ACCEPTED
    stored = json.loads(rig.path.read_text())["invitations"][0]
    assert stored["state"] == "used" and stored["used_by"]
    assert rig.path.stat().st_mode & 0o777 == 0o600
    # A new store on the same file (a restarted gateway) still refuses it.
    again = Rig(rig.path.parent)
    assert again.enrol(inv, noise.generate_private_key()).code == Code.USED


def test_store_holds_no_secret(rig: Rig) -> None:
    inv = rig.issue()
    text = rig.path.read_text()
    for spelling in (inv.secret.hex(), base64.b64encode(inv.secret).decode(),
                     base64.urlsafe_b64encode(inv.secret).decode().rstrip("=")):
        assert spelling not in text


def test_expired_by_the_gateways_clock(rig: Rig) -> None:
    inv = rig.issue(lifetime=60)
    rig.clock[0] += 61
    verdict = rig.enrol(inv, noise.generate_private_key())
    assert verdict.code == Code.EXPIRED and "expired" in verdict.message
    assert rig.office.peers == {}


def test_altered_secret_and_unknown_id(rig: Rig) -> None:
    inv = rig.issue()
    forged = Invitation(**{**_fields(inv), "secret": bytes(16)})
    verdict = rig.enrol(forged, noise.generate_private_key())
    assert verdict.code == Code.BAD_SECRET and "altered" in verdict.message
    assert rig.enrol(Invitation(**{**_fields(inv), "invitation_id": bytes(8)}),
                     noise.generate_private_key()).code == Code.UNKNOWN
    # Neither burnt it.
    assert rig.enrol(inv, noise.generate_private_key()).code == Code.ACCEPTED


def test_withdrawn(rig: Rig) -> None:
    inv = rig.issue()
    assert rig.store.withdraw("alice") == [inv.invitation_id.hex()]
    assert rig.enrol(inv, noise.generate_private_key()).code == Code.UNKNOWN


def test_replayed_enrol_is_refused_and_learns_nothing(rig: Rig) -> None:
    inv, laptop = rig.issue(), noise.generate_private_key()
    attempt = Attempt(inv, laptop, local_index=5, now=NOW)
    first = rig.send(attempt.packet)
    assert first is not None and attempt.read_reply(first).code == Code.ACCEPTED
    replay = rig.gate.handle(attempt.packet, b"203.0.113.5|1")
    assert replay.refused == Code.REPLAY and replay.reply is not None
    with pytest.raises(Exception):  # noqa: B017  only the ephemeral's owner could read it
        attempt.read_reply(replay.reply)


def test_a_second_enrol_while_registering_gets_no_answer(rig: Rig) -> None:
    inv, laptop = rig.issue(), noise.generate_private_key()
    rig.registrar._pending.add(inv.invitation_id.hex())
    out = rig.gate.handle(Attempt(inv, laptop, local_index=9, now=NOW).packet, b"x|1")
    assert out.reply is None and rig.office.peers == {}


def _fields(inv: Invitation) -> dict[str, Any]:
    return {k: getattr(inv, k) for k in ("gateway_public", "invitation_id", "secret", "expires",
                                         "host", "port", "gateway", "address")}


@pytest.mark.parametrize("code", [c for c in Code if c != Code.ACCEPTED])
def test_every_refusal_has_words(code: Code) -> None:
    v = Verdict.decode(Verdict(code, detail="why").encode())
    assert v.code == code and v.message == f"{REFUSALS[code]}: why"


# --- hostile ENROL packets -------------------------------------------------------------------


def _endpoint_with_gate(rig: Rig) -> Endpoint:
    ep = Endpoint("ephemeral", "aes-256-gcm", device_id=1, static_private=GW)
    ep.enrolment = rig.gate
    return ep


def test_hostile_enrols_are_counted_drops(rig: Rig) -> None:
    ep = _endpoint_with_gate(rig)
    good = Attempt(rig.issue(), noise.generate_private_key(), local_index=3, now=NOW).packet
    bad_mac = bytearray(good)
    o1 = wire.option_offset(bad_mac, Option.MAC1)
    assert o1 is not None
    bad_mac[o1] ^= 1
    bad_mac[10:12] = b"\0\0"
    bad_mac[10:12] = wire.internet_checksum(bytes(bad_mac[:good[1] * 4])).to_bytes(2, "big")
    cases = {
        "runt": (good[:11], "bad_header"),
        "cut": (good[:-1], "enrol_malformed"),
        "oversize": (_rebuilt(good, good[56:] + bytes(500)), "enrol_malformed"),
        "bad_mac": (bytes(bad_mac), "enrol_mac"),
        "garbage_noise": (_rebuilt(good, bytes(180)), "enrol_mac"),
        "good_mac1_garbage_noise": (_build(
            PacketType.ENROL, device_id=0, options=[(Option.SENDER_INDEX, bytes(4))],
            payload=bytes(range(180)), mac1_key=blake2s(b"mac1----", noise.public_key(GW)),
            cookie=None)[0], "enrol_failed"),
        "reply_type": (_rebuilt(bytes([0x18]) + good[1:], good[56:]), "bad_header"),
    }
    for name, (packet, reason) in cases.items():
        r = ep.receive(packet, b"x|1")
        assert r.drop == reason, (name, r)
        assert not r.replies
    assert rig.office.peers == {}


def _rebuilt(good: bytes, payload: bytes) -> bytes:
    """``good``'s header around another payload, OLDPACKETLEN and checksum fixed (MAC1 is then
    wrong, unless the length check comes first)."""
    header = bytearray(good[:good[1] * 4])
    header[2:4] = min(len(payload), 0xFFFF).to_bytes(2, "big")
    header[10:12] = b"\0\0"
    header[10:12] = wire.internet_checksum(bytes(header)).to_bytes(2, "big")
    return bytes(header) + payload


def test_rate_limit_per_source(rig: Rig) -> None:
    inv = rig.issue()
    reasons = []
    for i in range(8):
        packet = Attempt(inv, noise.generate_private_key(), local_index=i + 1, now=NOW).packet
        try:
            rig.gate.handle(packet, b"one|1")
            reasons.append("ok")
        except Refused as e:
            reasons.append(e.reason)
    assert "enrol_rate" in reasons


def test_an_end_without_enrolment_drops_them() -> None:
    ep = Endpoint("ephemeral", "aes-256-gcm", device_id=1, static_private=GW)
    inv = _invitation(bytes(16), bytes(8))
    r = ep.receive(Attempt(inv, noise.generate_private_key(), local_index=1, now=NOW).packet)
    assert r.drop == "bad_header" and not r.replies


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.sampled_from([0x17, 0x18]))
def test_random_enrolment_packets_never_crash(data: bytes, vt: int) -> None:
    gate = EnrolGate(GW, _NeverCalled())
    ep = Endpoint("ephemeral", "aes-256-gcm", device_id=1, static_private=GW)
    ep.enrolment = gate
    r = ep.receive(bytes([vt]) + data, b"x|1")
    assert r.drop is not None and not r.replies


class _NeverCalled:
    def decide(self, e: Enrolment) -> Verdict | None:
        raise AssertionError("a random packet reached the registrar")


# --- the worked example in docs/PROTOCOL.md section 17.5 --------------------------------------


def test_worked_example_is_what_the_code_sends() -> None:
    start = DOC.index("<!-- enrol-values -->")
    end = DOC.index("<!-- END ENROL EXAMPLE -->")
    assert DOC[start:end] == enrol_example.section()


def test_worked_example_decodes_by_the_document() -> None:
    """ENROL from the document's hex, read the way section 17 describes it."""
    dump = re.search(r"<!-- enrol-hex:enrol -->\n```\n(.*?)```", DOC, re.S)
    assert dump is not None
    packet = bytes.fromhex("".join(line[6:] for line in dump.group(1).splitlines()))
    assert packet[0] == 0x17 and packet[1] == 14 and packet[8:10] == b"\xa0\x00"
    assert len(packet) == 236 and int.from_bytes(packet[2:4], "big") == 180
    p = wire.parse(packet)
    assert p.type == PacketType.ENROL
    assert p.require(Option.SENDER_INDEX) == bytes.fromhex("600dcafe")
    gw_public = noise.public_key(enrol_example.GATEWAY_STATIC)
    zeroed = bytearray(p.header)
    o1 = wire.option_offset(zeroed, Option.MAC1)
    assert o1 is not None
    zeroed[10:12] = b"\0\0"
    zeroed[o1:o1 + 16] = bytes(16)
    assert mac(blake2s(b"mac1----", gw_public), bytes(zeroed) + p.payload) == \
        p.require(Option.MAC1)
    hs = noise.HandshakeState("IK", False, cipher="ChaChaPoly", prologue=b"Tunseal v1|enrol",
                              s=enrol_example.GATEWAY_STATIC)
    plain = hs.read_message(p.payload)
    assert hs.remote_static == noise.public_key(enrol_example.LAPTOP_STATIC)
    timestamp, inv_id, signature = plain[:12], plain[12:20], plain[20:]
    assert inv_id == enrol_example.INVITATION_ID and len(signature) == 64
    signed = (b"Tunseal v1 enrol request" + gw_public + hs.remote_static + p.payload[:32]
              + timestamp + inv_id)
    assert inv_format.verify(inv_format.verify_key(enrol_example.SECRET), signature, signed)


def test_nothing_is_decrypted_while_flooded(rig: Rig) -> None:
    """Above the load threshold (all sources together) every ENROL is dropped before the DH."""
    inv = rig.issue()
    gate = EnrolGate(GW, _NeverCalled(), guard=FloodGuard(load_threshold=3))
    packets = [Attempt(inv, noise.generate_private_key(), local_index=i + 1, now=NOW).packet
               for i in range(3)]
    for i, packet in enumerate(packets):  # three sources, a bucket each: all to the DH
        with pytest.raises(AssertionError, match="reached the registrar"):
            gate.handle(packet, f"src{i}|1".encode())
    with pytest.raises(Refused) as refused:
        gate.handle(packets[0], b"src9|1")
    assert refused.value.reason == "enrol_rate"
