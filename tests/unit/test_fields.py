"""core/fields.py: the one set of field checkers that profiles, the gateway configuration and the
control socket share (issue 12 item 3). Each test feeds the same value to two of them."""

from __future__ import annotations

import base64
import json
from dataclasses import replace

import pytest

from core import fields, gateway, ipc
from core.errors import IPCError, ProfileInvalid
from core.gateway import Gateway, GatewayPeer
from core.profile import Profile, validate

KEY = base64.b64encode(bytes(range(32))).decode()
# The same 32 bytes with the last character's two unused bits set: b64decode(validate=True)
# accepts it, but it is not the canonical encoding, so two texts would name one key.
NONCANONICAL = KEY[:-2] + chr(ord(KEY[-2]) + 1) + "="
LOW_ORDER = base64.b64encode(bytes(32)).decode()  # u = 0


def gateway_problems(gw: Gateway) -> list[tuple[str, str]]:
    try:
        gateway.from_dict(gateway.to_dict(gw))
    except ProfileInvalid as e:
        return [(p.field or "", p.reason) for p in e.problems]
    return []


def office(**peer: object) -> Gateway:
    p = replace(GatewayPeer(name="p0", public_key=KEY, device_id=2,
                            allowed_ips=("10.213.0.2/32",)), **peer)
    return Gateway(name="office", addresses=("10.213.0.1/24",), peers=(p,))


def profile_problems(**changes: object) -> list[tuple[str, str]]:
    try:
        validate(replace(Profile(name="office", addresses=("10.77.0.2/32",),
                                 endpoint="192.0.2.1:51900", public_key=KEY), **changes))
    except ProfileInvalid as e:
        return [(p.field or "", p.reason) for p in e.problems]
    return []


def test_the_canonical_key_is_accepted_everywhere() -> None:
    assert base64.b64decode(NONCANONICAL, validate=True) == base64.b64decode(KEY)
    assert fields.decode_key(KEY) == bytes(range(32))
    assert gateway_problems(office()) == []
    assert profile_problems() == []


@pytest.mark.parametrize("key", [NONCANONICAL, LOW_ORDER, KEY.rstrip("="), KEY + "AAAA"])
def test_the_gateway_refuses_the_keys_a_profile_refuses(key: str) -> None:
    """The gateway used to decode with b64decode(validate=True) alone: a non-canonical
    encoding and a low-order point passed there and failed only in the client profile."""
    from_profile = profile_problems(public_key=key)
    from_gateway = gateway_problems(office(public_key=key))
    assert [f for f, _ in from_profile] == ["peer.public_key"]
    assert from_gateway == [("peer[0].public_key", from_profile[0][1])]


def request(op: str, **args: object) -> bytes:
    return json.dumps({"v": ipc.VERSION, "id": 1, "op": op, "args": args}).encode() + b"\n"


def test_the_control_socket_refuses_a_noncanonical_key() -> None:
    good = ipc.Request.decode(request("set_peer_key", name="office", public_key=KEY))
    assert good.args["public_key"] == KEY
    with pytest.raises(IPCError, match="not a public key"):
        ipc.Request.decode(request("set_peer_key", name="office", public_key=NONCANONICAL))


@pytest.mark.parametrize("name", ["", "-x", "a/b", "..", "x" * 33, "café", "a b"])
def test_one_name_rule(name: str) -> None:
    assert not fields.is_name(name)
    assert [f for f, _ in profile_problems(name=name)] == ["tunnel.name"]
    assert [f for f, _ in gateway_problems(office(name=name))] == ["peer[0].name"]
    with pytest.raises(IPCError, match="not a profile name"):
        ipc.Request.decode(request("connect", name=name))


def test_the_gateway_checks_addresses_dns_and_endpoint_like_a_profile() -> None:
    gw = Gateway(name="office", addresses=("10.213.0.1/24", "fd13::%1/64"),
                 lan=("192.168.10.1/24",), dns=("dns.example",),
                 public_endpoint="vpn.example:99999")
    found = dict(gateway_problems(gw))
    assert found["gateway.addresses[1]"] == "'fd13::%1/64': zone indexes (%...) are not supported"
    assert found["gateway.lan[0]"] == ("'192.168.10.1/24' has host bits set; did you mean "
                                       "192.168.10.0/24?")
    assert found["gateway.dns[0]"] == "'dns.example' is not an IPv4 or IPv6 address"
    assert found["gateway.public_endpoint"] == "port 99999 is out of range (1-65535)"


def test_a_gateway_reference_cannot_spell_the_helpers_own_names() -> None:
    found = gateway_problems(office(psk_ref="profile:office:psk"))
    assert [f for f, _ in found] == ["peer[0].psk"]
    assert fields.key_ref("profile:office:psk") == "profile:office:psk"
    with pytest.raises(fields.Invalid, match="not a keyring item name"):
        fields.key_ref("profile:office:psk", colon=False)


@pytest.mark.parametrize(("text", "ok"), [("eth0", True), ("tun-office.1", True),
                                          ("x" * 15, True), ("x" * 16, False), (".", False),
                                          ("..", False), ("a/b", False), ("eth0\n", False)])
def test_interface_names(text: str, ok: bool) -> None:
    assert fields.is_ifname(text) is ok
