"""The worked example of docs/PROTOCOL.md section 17.5, from fixed inputs.

``python tests/unit/enrol_example.py`` prints the section's generated part;
tests/unit/test_enrol_protocol.py checks that the document holds exactly that.
"""

from __future__ import annotations

from bench.protocol_examples import hexdump
from core import invitation, noise
from core.enrol import Accepted, Attempt, Code, EnrolGate, Enrolment, Verdict
from core.handshake import tai64n

GATEWAY_STATIC = bytes([0x11]) * 32
LAPTOP_STATIC = bytes([0x22]) * 32
LAPTOP_EPHEMERAL = bytes([0x33]) * 32
GATEWAY_EPHEMERAL = bytes([0x44]) * 32
SECRET = bytes(range(0xA0, 0xB0))
INVITATION_ID = bytes.fromhex("0102030405060708")
NOW = 1767225600.25
EXPIRES = 1767312000
INDEX = 0x600DCAFE
ACCEPTED = Accepted(peer_name="alice-laptop", addresses=("10.213.0.2/32",),
                    routes=("10.213.0.0/24", "192.168.10.0/24"), dns=("192.168.10.53",),
                    cipher="aes-256-gcm", transport="udp", mtu=1408, device_id=2, keepalive=25)


class _Accept:
    def __init__(self) -> None:
        self.seen: Enrolment | None = None

    def decide(self, e: Enrolment) -> Verdict:
        assert e.proves(invitation.verify_key(SECRET))
        self.seen = e
        return Verdict(Code.ACCEPTED, ACCEPTED)


def build() -> dict[str, bytes | str]:
    inv = invitation.Invitation(noise.public_key(GATEWAY_STATIC), INVITATION_ID, SECRET,
                                EXPIRES, "vpn.example.org", 51900, "office", "10.213.0.2/32")
    attempt = Attempt(inv, LAPTOP_STATIC, local_index=INDEX, now=NOW,
                      ephemeral=LAPTOP_EPHEMERAL)
    gate = EnrolGate(GATEWAY_STATIC, _Accept())
    outcome = gate.handle(attempt.packet, b"198.51.100.7|40000", ephemeral=GATEWAY_EPHEMERAL)
    assert outcome.reply is not None
    assert attempt.read_reply(outcome.reply) == Verdict(Code.ACCEPTED, ACCEPTED)
    return {"invitation": invitation.encode(inv), "enrol": attempt.packet,
            "reply": outcome.reply, "reply_plaintext": Verdict(Code.ACCEPTED, ACCEPTED).encode(),
            "verify_key": invitation.verify_key(SECRET)}


def section() -> str:
    out = build()
    values = {
        "gateway_static_private": GATEWAY_STATIC.hex(),
        "gateway_static_public": noise.public_key(GATEWAY_STATIC).hex(),
        "laptop_static_private": LAPTOP_STATIC.hex(),
        "laptop_static_public": noise.public_key(LAPTOP_STATIC).hex(),
        "laptop_ephemeral_private": LAPTOP_EPHEMERAL.hex(),
        "gateway_ephemeral_private": GATEWAY_EPHEMERAL.hex(),
        "secret": SECRET.hex(),
        "verify_key": bytes(out["verify_key"]).hex(),  # type: ignore[arg-type]
        "invitation_id": INVITATION_ID.hex(),
        "timestamp": tai64n(NOW).hex(),
    }
    width = max(map(len, values))
    parts = ["<!-- enrol-values -->", "```",
             *(f"{k.ljust(width)} = {v}" for k, v in values.items()), "```", "",
             "The invitation text (expiry 1767312000, endpoint `vpn.example.org:51900`, gateway "
             "`office`, address `10.213.0.2/32`):", "", "<!-- enrol-invitation -->", "```",
             str(out["invitation"]), "```", ""]
    for key, title in (("enrol", "ENROL, laptop to gateway"),
                       ("reply", "ENROL_REPLY, gateway to laptop (ACCEPTED)"),
                       ("reply_plaintext", "The reply's plaintext (code 0, then the fields)")):
        data = out[key]
        assert isinstance(data, bytes)
        parts += [f"{title} ({len(data)} bytes):", "", f"<!-- enrol-hex:{key} -->", "```",
                  "\n".join(hexdump(data)), "```", ""]
    return "\n".join(parts).rstrip() + "\n"


if __name__ == "__main__":
    print(section(), end="")
