"""core.profile: the .tunseal format, validation, canonical text, and what hostile input gets."""

from __future__ import annotations

import base64
import copy
import ipaddress
import json
import os
import re
import stat
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.constants import CIPHERS, DEFAULT_PORT, MODES, TRANSPORTS
from core.errors import ProfileError, ProfileInvalid, TunsealError
from core.profile import (
    Profile,
    ProfileSecrets,
    dump,
    dumps,
    is_low_order,
    load,
    loads,
    profile_from_dict,
    profile_to_dict,
    validate,
)

PUB = base64.b64encode(bytes(range(32))).decode()
PRIV = bytes(range(100, 132))
PSK = bytes(range(200, 232))
DOC = Path(__file__).resolve().parents[2] / "docs" / "PROFILE.md"

EXAMPLE = f"""\
# Tunseal profile
format = 1
[tunnel]
name = "office"
mode = "ephemeral"
cipher = "chacha20-poly1305"
mtu = 1408
device_id = 1
persist = false
rekey_seconds = 600
rekey_messages = 16777216
[interface]
addresses = ["10.77.0.2/32", "fd77::2/128"]
listen_port = 0
dns = ["10.77.0.1"]
dns_search = ["office.example"]
[peer]
endpoint = "198.51.100.7:51900"
transport = "udp"
public_key = "{PUB}"
allowed_ips = ["10.77.0.0/24"]
keepalive = 25
[keys]
private_key = "office.private"
psk = "office.psk"
"""

OFFICE = Profile(
    "office",
    cipher="chacha20-poly1305",  # as the EXAMPLE file says (not the default)
    device_id=1,
    addresses=("10.77.0.2/32", "fd77::2/128"),
    dns=("10.77.0.1",),
    dns_search=("office.example",),
    endpoint="198.51.100.7:51900",
    public_key=PUB,
    allowed_ips=("10.77.0.0/24",),
    keepalive=25,
    private_key_ref="office.private",
    psk_ref="office.psk",
)


def example() -> dict[str, Any]:
    return tomllib.loads(EXAMPLE)


def problems(call: Callable[[], object]) -> list[ProfileError]:
    with pytest.raises(ProfileInvalid) as info:
        call()
    assert info.value.problems, "ProfileInvalid without problems"
    return info.value.problems


def fields(errors: list[ProfileError]) -> list[str | None]:
    return [e.field for e in errors]


# --- valid examples -----------------------------------------------------------------------------


def test_example_loads_to_the_expected_profile() -> None:
    profile, secrets = loads(EXAMPLE)
    assert profile == OFFICE
    assert secrets is None
    assert profile.endpoint_host == "198.51.100.7"
    assert profile.endpoint_port == 51900
    assert not profile.is_unsafe


def test_defaults_fill_everything_but_name_and_addresses() -> None:
    p = Profile("x", addresses=("10.0.0.1/32",))
    assert (p.mode, p.cipher, p.transport) == ("ephemeral", "aes-256-gcm", "udp")
    assert (p.mtu, p.device_id, p.persist, p.listen_port, p.keepalive) == (1408, 0, False, 0, 0)
    assert (p.rekey_seconds, p.rekey_messages) == (600, 1 << 24)
    assert p.endpoint == p.public_key == p.private_key_ref == p.psk_ref == ""
    assert p.dns == p.dns_search == p.allowed_ips == ()
    with pytest.raises(TypeError):
        Profile("x", "psk", addresses=("10.0.0.1/32",))  # type: ignore[call-arg]


def test_defaults_alone_report_every_missing_piece() -> None:
    errors = problems(lambda: validate(Profile("x", addresses=("10.0.0.1/32",))))
    # The keys may come later (genkey, setpeerkey): only the listening port is missing.
    assert fields(errors) == ["interface.listen_port"]


@pytest.mark.parametrize(
    "text",
    [
        'format = 1\n[tunnel]\nname = "p"\nmode = "plain"\n[interface]\naddresses = ["10.0.0.1"]\n'
        '[peer]\nendpoint = "peer.example"\n',
        'format = 1\n[tunnel]\nname = "r"\nmode = "rotating"\n[interface]\n'
        'addresses = ["10.0.0.1/24"]\nlisten_port = 51900\n[keys]\npsk = "r.psk"\n',
        # raw transport has no ports: a listening end needs none
        'format = 1\n[tunnel]\nname = "raw"\nmode = "psk"\n[interface]\n'
        'addresses = ["10.0.0.1/24"]\n[peer]\ntransport = "raw"\n[keys]\npsk = "k"\n',
        # cipher is accepted and ignored in plain mode; a mode's unused keys are ignored
        'format = 1\n[tunnel]\nname = "a.b_c-9"\nmode = "plain"\ncipher = "aes-128-gcm"\n'
        '[interface]\naddresses = ["fd00::1/64"]\n[peer]\nendpoint = "[fd00::2]"\n'
        f'public_key = "{PUB}"\nallowed_ips = ["::/0", "0.0.0.0/0"]\n[keys]\npsk = "x/y"\n',
        # routing-only domains for systemd-resolved (docs/DNS.md)
        'format = 1\n[tunnel]\nname = "d"\nmode = "plain"\n[interface]\naddresses = ["10.0.0.1"]\n'
        'dns = ["10.0.0.53"]\ndns_search = ["corp.example", "~lab.example", "~."]\n'
        '[peer]\nendpoint = "peer.example"\n',
    ],
)
def test_valid_variants(text: str) -> None:
    profile, _ = loads(text)
    assert loads(dumps(profile)) == (profile, None)


@pytest.mark.parametrize(
    ("endpoint", "host", "port"),
    [
        ("", "", 0),
        ("vpn.example.com", "vpn.example.com", DEFAULT_PORT),
        ("vpn.example.com:443", "vpn.example.com", 443),
        ("198.51.100.7", "198.51.100.7", DEFAULT_PORT),
        ("198.51.100.7:1", "198.51.100.7", 1),
        ("[2001:db8::1]", "2001:db8::1", DEFAULT_PORT),
        ("[2001:db8::1]:65535", "2001:db8::1", 65535),
        ("localhost", "localhost", DEFAULT_PORT),
        ("1host.example", "1host.example", DEFAULT_PORT),
    ],
)
def test_endpoint_parts(endpoint: str, host: str, port: int) -> None:
    p = OFFICE.replace(endpoint=endpoint, listen_port=51900)
    assert (p.endpoint_host, p.endpoint_port) == (host, port)


def test_endpoint_property_on_a_bad_endpoint_raises_profile_error() -> None:
    p = Profile("x", addresses=("10.0.0.1/32",), endpoint="a:b:c")
    with pytest.raises(ProfileError, match=r"peer\.endpoint"):
        _ = p.endpoint_port


def test_is_unsafe_only_in_plain_mode() -> None:
    assert [OFFICE.replace(mode=m, psk_ref="k").is_unsafe for m in MODES] == [
        True,
        False,
        False,
        False,
    ]


def test_replace_validates_and_accepts_lists() -> None:
    p = OFFICE.replace(dns=["10.77.0.1", "10.77.0.2"], mtu=1500)
    assert p.dns == ("10.77.0.1", "10.77.0.2")
    assert p.mtu == 1500
    assert OFFICE.mtu == 1408
    errors = problems(lambda: OFFICE.replace(mtu=100, endpoint="x:0"))
    assert fields(errors) == ["tunnel.mtu", "peer.endpoint"]
    with pytest.raises(TypeError):
        OFFICE.replace(no_such_field=1)


def test_validate_reports_wrong_python_types_without_crashing() -> None:
    p = Profile(
        123,  # type: ignore[arg-type]
        mtu="1408",  # type: ignore[arg-type]
        addresses=["10.0.0.1/32"],  # type: ignore[arg-type]
        dns=("10.0.0.1", None),  # type: ignore[arg-type]
        persist=1,  # type: ignore[arg-type]
    )
    errors = problems(lambda: validate(p))
    assert fields(errors) == [
        "tunnel.name",
        "tunnel.mtu",
        "tunnel.persist",
        "interface.addresses",
        "interface.listen_port",
        "interface.dns[1]",
    ]
    assert "immutable" in errors[3].reason


# --- invalid examples: each names its field and says what is allowed -----------------------------

INVALID: list[tuple[str, str, object, str, str]] = [
    ("tunnel", "name", "", "tunnel.name", "is not a valid name"),
    ("tunnel", "name", "-office", "tunnel.name", "starting with a letter or digit"),
    ("tunnel", "name", "of fice", "tunnel.name", "letters, digits"),
    ("tunnel", "name", "o" * 33, "tunnel.name", "at most 32"),
    ("tunnel", "name", 5, "tunnel.name", "must be a string, not an integer"),
    ("tunnel", "mode", "fast", "tunnel.mode", "choose one of plain, psk, rotating, ephemeral"),
    ("tunnel", "cipher", "aes", "tunnel.cipher", "choose one of chacha20-poly1305, aes-256-gcm"),
    ("tunnel", "mtu", 575, "tunnel.mtu", "575 is out of range (576-9000)"),
    ("tunnel", "mtu", 9001, "tunnel.mtu", "out of range (576-9000)"),
    ("tunnel", "mtu", 1279, "tunnel.mtu", "too small for IPv6"),
    ("tunnel", "mtu", "1408", "tunnel.mtu", "must be an integer, not a string"),
    ("tunnel", "mtu", 1408.0, "tunnel.mtu", "must be an integer, not a float"),
    ("tunnel", "mtu", True, "tunnel.mtu", "must be an integer, not a boolean"),
    ("tunnel", "device_id", 65536, "tunnel.device_id", "out of range (0-65535)"),
    ("tunnel", "device_id", -1, "tunnel.device_id", "out of range (0-65535)"),
    ("tunnel", "persist", "yes", "tunnel.persist", "must be true or false"),
    ("tunnel", "rekey_seconds", 9, "tunnel.rekey_seconds", "out of range (10-86400)"),
    ("tunnel", "rekey_messages", 999, "tunnel.rekey_messages", "out of range (1000-2**60)"),
    ("tunnel", "rekey_messages", 2**60 + 1, "tunnel.rekey_messages", "(1000-2**60)"),
    ("interface", "addresses", [], "interface.addresses", "at least one address"),
    ("interface", "addresses", "10.0.0.1/32", "interface.addresses", "array of strings"),
    ("interface", "addresses", [1], "interface.addresses[0]", "must be a string"),
    ("interface", "addresses", ["10.0.0.300/32"], "interface.addresses[0]", "not an IPv4"),
    ("interface", "addresses", ["10.0.0.1/33"], "interface.addresses[0]", "at most /32"),
    ("interface", "addresses", ["fd::1/129"], "interface.addresses[0]", "at most /128"),
    ("interface", "addresses", ["10.0.0.1/255.0.0.0"], "interface.addresses[0]", "a number"),
    ("interface", "addresses", ["10.0.0.1/024"], "interface.addresses[0]", "a number"),
    ("interface", "addresses", ["fe80::1%eth0/64"], "interface.addresses[0]", "zone"),
    ("interface", "addresses", ["0.0.0.0/0"], "interface.addresses[0]", "unspecified"),
    ("interface", "addresses", ["ff02::1/128"], "interface.addresses[0]", "multicast"),
    (
        "interface",
        "addresses",
        ["10.0.0.1/24", "10.0.0.2/24", "10.0.0.1/32"],
        "interface.addresses[2]",
        "already listed at [0]",
    ),
    ("interface", "listen_port", 65536, "interface.listen_port", "out of range (0-65535)"),
    ("interface", "dns", ["dns.example"], "interface.dns[0]", "not an IPv4 or IPv6 address"),
    ("interface", "dns", ["10.0.0.1/32"], "interface.dns[0]", "not an IPv4 or IPv6 address"),
    ("interface", "dns", ["::"], "interface.dns[0]", "unspecified"),
    ("interface", "dns_search", ["-a.example"], "interface.dns_search[0]", "not a domain"),
    ("interface", "dns_search", ["a..example"], "interface.dns_search[0]", "not a domain"),
    ("interface", "dns_search", ["a.example."], "interface.dns_search[0]", "not a domain"),
    ("interface", "dns_search", ["A.ex", "a.EX"], "interface.dns_search[1]", "already listed"),
    ("interface", "dns_search", ["a.ex", "~A.ex"], "interface.dns_search[1]", "already listed"),
    ("interface", "dns_search", ["~"], "interface.dns_search[0]", "not a routing domain"),
    ("interface", "dns_search", ["~~a.ex"], "interface.dns_search[0]", "not a routing domain"),
    ("interface", "dns_search", ["~-a.ex"], "interface.dns_search[0]", "not a routing domain"),
    ("interface", "dns_search", ["."], "interface.dns_search[0]", "not a domain"),
    ("interface", "dns_search", ["a~.ex"], "interface.dns_search[0]", "not a domain"),
    ("peer", "endpoint", "198.51.100.7:99999", "peer.endpoint", "port 99999 is out of range"),
    ("peer", "endpoint", "host:0", "peer.endpoint", "port 0 is out of range (1-65535)"),
    ("peer", "endpoint", "host:", "peer.endpoint", "is not a number"),
    ("peer", "endpoint", "host:http", "peer.endpoint", "is not a number"),
    ("peer", "endpoint", "fd00::1:51900", "peer.endpoint", "needs brackets"),
    ("peer", "endpoint", "[fd00::1:51900", "peer.endpoint", "without ']'"),
    ("peer", "endpoint", "[10.0.0.1]:5", "peer.endpoint", "only for IPv6"),
    ("peer", "endpoint", "[fd00::1]5", "peer.endpoint", "expected ':port'"),
    ("peer", "endpoint", "[fe80::1%eth0]:5", "peer.endpoint", "zone"),
    ("peer", "endpoint", "999.1.1.1:5", "peer.endpoint", "not a valid IPv4 address"),
    ("peer", "endpoint", "bad_host:5", "peer.endpoint", "not a valid host name"),
    ("peer", "endpoint", "-bad.example", "peer.endpoint", "not a valid host name"),
    ("peer", "endpoint", "0.0.0.0", "peer.endpoint", "cannot be an endpoint"),
    ("peer", "endpoint", ["h:1"], "peer.endpoint", "must be a string, not an array"),
    ("peer", "transport", "tcp", "peer.transport", "choose one of udp, raw"),
    ("peer", "public_key", "abc", "peer.public_key", "44 characters of base64"),
    ("peer", "public_key", base64.b64encode(bytes(31)).decode(), "peer.public_key", "base64"),
    ("peer", "public_key", PUB[:-2] + "9=", "peer.public_key", "not a public key"),  # not canonical
    ("peer", "public_key", PUB[:-1], "peer.public_key", "not a public key"),
    ("peer", "allowed_ips", ["10.77.0.1/24"], "peer.allowed_ips[0]", "did you mean 10.77.0.0/24?"),
    ("peer", "allowed_ips", ["0.0.0.0/0", "0.0.0.0/0"], "peer.allowed_ips[1]", "already listed"),
    ("peer", "keepalive", 3601, "peer.keepalive", "out of range (0-3600)"),
    ("keys", "private_key", "my key", "keys.private_key", "not a keyring item name"),
    ("keys", "private_key", "k" * 129, "keys.private_key", "at most 128"),
    ("keys", "psk", 1, "keys.psk", "must be a string, not an integer"),
]


@pytest.mark.parametrize(
    ("section", "key", "value", "field", "fragment"),
    INVALID,
    ids=[f"{f}={v!r}"[:50] for _, _, v, f, _ in INVALID],
)
def test_invalid_value_names_its_field(
    section: str, key: str, value: object, field: str, fragment: str
) -> None:
    d = example()
    d[section][key] = value
    errors = problems(lambda: profile_from_dict(d))
    assert fields(errors) == [field], [str(e) for e in errors]
    assert fragment in errors[0].reason
    owner = "" if field == "tunnel.name" else "profile 'office': "  # named only by a valid name
    assert str(errors[0]).startswith(f"{owner}{field}: ")
    # The same problem through the TOML text
    errors = problems(lambda: loads(tomli_w.dumps(d)))
    assert fields(errors) == [field]


def test_messages_read_as_documented() -> None:
    d = example()
    d["peer"]["endpoint"] = "198.51.100.7:99999"
    d["tunnel"]["mode"] = "fast"
    error = problems(lambda: profile_from_dict(d))
    assert [str(e) for e in error] == [
        "profile 'office': tunnel.mode: 'fast' is not a mode; "
        "choose one of plain, psk, rotating, ephemeral",
        "profile 'office': peer.endpoint: port 99999 is out of range (1-65535)",
    ]


def test_every_problem_is_listed_in_field_order() -> None:
    d = example()
    d["keys"]["private_key"] = "bad key"
    d["peer"]["allowed_ips"] = ["10.0.0.0/8", "10.0.0.1/8"]
    d["tunnel"]["mtu"] = 1
    d["tunnel"]["mtuu"] = 1
    d["interface"]["dns"] = ["x"]
    d["extra"] = {}
    del d["format"]
    with pytest.raises(ProfileInvalid) as info:
        profile_from_dict(d)
    assert fields(info.value.problems) == [
        "format",
        "tunnel.mtu",
        "tunnel.mtuu",
        "interface.dns[0]",
        "peer.allowed_ips[1]",
        "keys.private_key",
        "extra",
    ]
    assert str(info.value).startswith("profile 'office': format: missing")
    assert str(info.value).endswith("(and 6 more problem(s))")


@pytest.mark.parametrize("drop", [("peer", "public_key"), ("keys", "private_key")])
def test_ephemeral_profile_may_wait_for_its_keys(drop: tuple[str, str]) -> None:
    d = example()
    del d[drop[0]][drop[1]]
    profile_from_dict(d)  # a draft: saved now, keys generated and exchanged afterwards


@pytest.mark.parametrize(
    ("mode", "drop", "field"),
    [
        ("psk", ("keys", "psk"), "keys.psk"),
        ("rotating", ("keys", "psk"), "keys.psk"),
        ("ephemeral", ("peer", "endpoint"), "interface.listen_port"),
    ],
)
def test_cross_field_rules(mode: str, drop: tuple[str, str], field: str) -> None:
    d = example()
    d["tunnel"]["mode"] = mode
    del d[drop[0]][drop[1]]
    errors = problems(lambda: profile_from_dict(d))
    assert fields(errors) == [field]
    assert "required" in errors[0].reason or "listening" in errors[0].reason


def test_keys_a_mode_does_not_need_may_be_absent() -> None:
    d = example()
    d["tunnel"]["mode"] = "plain"
    del d["keys"], d["peer"]["public_key"]
    assert profile_from_dict(d).is_unsafe
    d["tunnel"]["mode"] = "ephemeral"
    d["peer"]["public_key"] = PUB
    d["keys"] = {"private_key": "k"}  # psk optional in ephemeral mode
    assert profile_from_dict(d).psk_ref == ""


def test_mtu_below_1280_is_fine_without_ipv6() -> None:
    d = example()
    d["interface"]["addresses"] = ["10.77.0.2/32"]
    d["tunnel"]["mtu"] = 576
    assert profile_from_dict(d).mtu == 576
    d["peer"]["allowed_ips"] = ["::/0"]
    assert fields(problems(lambda: profile_from_dict(d))) == ["tunnel.mtu"]


# --- structure ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field", "fragment"),
    [
        (lambda d: d["peer"].update(endpont="x"), "peer.endpont", "did you mean 'endpoint'?"),
        (lambda d: d["tunnel"].update(nmae="x"), "tunnel.nmae", "did you mean 'name'?"),
        (lambda d: d["peer"].update(zzz=1), "peer.zzz", "expected one of endpoint, transport"),
        (lambda d: d["tunnel"].update({"a b": 1}), "tunnel.'a b'", "unknown key"),
        (lambda d: d.pop("format"), "format", "format = 1"),
        (lambda d: d.update(format=2), "format", "upgrade Tunseal"),
        (lambda d: d.update(format=0), "format", "use 1"),
        (lambda d: d.update(format="1"), "format", "must be the integer 1, not a string"),
        (lambda d: d["tunnel"].pop("name"), "tunnel.name", "missing"),
        (lambda d: d.pop("interface"), "interface.addresses", "missing"),
        (lambda d: d.update(peer=[d["peer"]]), "peer", "must be a table, not an array"),
        (lambda d: d.update(keys="k"), "keys", "must be a table, not a string"),
        (lambda d: d.update(secrets={}), "secrets", "never travel inside a profile"),
        (lambda d: d["peer"].update(allowed_ips=["10.0.0.0/8"] * 257), "peer.allowed_ips", "256"),
        (lambda d: d["peer"].update(endpoint="h" * 257), "peer.endpoint", "at most 256"),
    ],
)
def test_structure_problems(
    change: Callable[[dict[str, Any]], object], field: str, fragment: str
) -> None:
    d = example()
    change(d)
    errors = problems(lambda: profile_from_dict(d))
    assert fields(errors) == [field], [str(e) for e in errors]
    assert fragment in errors[0].reason


def test_misspelt_section_is_named_with_a_suggestion() -> None:
    d = example()
    d["tunel"] = d.pop("tunnel")
    errors = problems(lambda: profile_from_dict(d))
    assert fields(errors) == ["tunnel.name", "tunel"]
    assert errors[1].reason == "unknown section; did you mean 'tunnel'?"


def test_not_a_mapping() -> None:
    with pytest.raises(ProfileError, match="must be a table"):
        profile_from_dict([])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('format = 1\n[tunnel\nname = "x"\n', "at line 2, column 8"),
        ("format = 1\nformat = 1\n", "not valid TOML"),
        ("a = " + "[" * 5000, "nested too deeply"),
        ("a = " + "9" * 5000, "not valid TOML"),
        ("# " + "x" * (64 * 1024), "64 KiB"),
        ("# " + "é" * (33 * 1024), "64 KiB"),
        ("", "format: missing"),
    ],
)
def test_unreadable_text(text: str, fragment: str) -> None:
    with pytest.raises(ProfileError) as info:
        loads(text)
    assert fragment in str(info.value)


# --- secrets ------------------------------------------------------------------------------------


def test_secrets_round_trip_and_stay_out_of_repr() -> None:
    secrets = ProfileSecrets(private_key=PRIV, psk=PSK)
    text = dumps(OFFICE, secrets)
    assert text.startswith("# Tunseal profile")
    assert "WARNING" in text.splitlines()[1]
    assert loads(text) == (OFFICE, secrets)
    for shown in (repr(secrets), str(secrets), repr((OFFICE, secrets))):
        assert "redacted" in shown
        for key in (PRIV, PSK):
            assert repr(key) not in shown
            assert base64.b64encode(key).decode() not in shown
            assert key.hex() not in shown
    assert repr(ProfileSecrets(None, PSK)) == "ProfileSecrets(private_key=None, psk=<redacted>)"


@pytest.mark.parametrize(
    "secrets", [ProfileSecrets(), ProfileSecrets(private_key=PRIV), ProfileSecrets(psk=PSK)]
)
def test_partial_secrets_round_trip(secrets: ProfileSecrets) -> None:
    assert loads(dumps(OFFICE, secrets)) == (OFFICE, secrets)


def test_profile_without_secrets_table_gives_none() -> None:
    assert loads(dumps(OFFICE)) == (OFFICE, None)
    assert "[secrets]" not in dumps(OFFICE)


def test_bad_secrets_are_reported_without_echoing_them() -> None:
    almost = base64.b64encode(PSK).decode()[:-1]
    text = dumps(OFFICE) + f'[secrets]\npsk = "{almost}"\nprivate_key = 5\npub = "x"\n'
    errors = problems(lambda: loads(text))
    assert fields(errors) == ["secrets.private_key", "secrets.psk", "secrets.pub"]
    for error in errors:
        assert almost not in str(error)


def test_secret_needs_a_keyring_name_to_go_to() -> None:
    p = OFFICE.replace(psk_ref="")
    with pytest.raises(ProfileInvalid, match=r"keys\.psk"):
        dumps(p, ProfileSecrets(psk=PSK))
    text = dumps(p) + f'[secrets]\npsk = "{base64.b64encode(PSK).decode()}"\n'
    assert fields(problems(lambda: loads(text))) == ["secrets.psk"]


@pytest.mark.parametrize(
    "secrets",
    [ProfileSecrets(psk=bytes(31)), ProfileSecrets(private_key="x" * 32)],  # type: ignore[arg-type]
)
def test_dumps_refuses_malformed_secrets(secrets: ProfileSecrets) -> None:
    with pytest.raises(ProfileInvalid, match="must be 32 bytes"):
        dumps(OFFICE, secrets)


def test_dumps_and_to_dict_refuse_an_invalid_profile() -> None:
    bad = Profile("x", addresses=())
    with pytest.raises(ProfileInvalid):
        dumps(bad)
    with pytest.raises(ProfileInvalid):
        profile_to_dict(bad)


# --- files --------------------------------------------------------------------------------------


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_file_with_secrets_is_0600(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "office.tunseal"
    path.write_text("old")
    path.chmod(0o644)
    dump(OFFICE, path, ProfileSecrets(private_key=PRIV))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load(path) == (OFFICE, ProfileSecrets(private_key=PRIV))
    assert os.listdir(tmp_path) == ["office.tunseal"]  # no temporary file left behind


def test_file_without_secrets_follows_the_umask(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "office.tunseal"
    dump(OFFICE, str(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert load(str(path)) == (OFFICE, None)
    assert path.read_text() == dumps(OFFICE)


def test_dump_of_invalid_profile_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(ProfileInvalid):
        dump(OFFICE.__class__("x", addresses=()), tmp_path / "x.tunseal")
    assert os.listdir(tmp_path) == []
    with pytest.raises(ProfileError, match="cannot write"):
        dump(OFFICE, tmp_path / "missing-dir" / "x.tunseal")


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="cannot read"):
        load(tmp_path / "absent.tunseal")
    big = tmp_path / "big.tunseal"
    big.write_bytes(b"#" * (64 * 1024 + 1))
    with pytest.raises(ProfileError, match="larger than"):
        load(big)
    latin = tmp_path / "latin.tunseal"
    latin.write_bytes(EXAMPLE.replace("office.example", "caf\xe9.example").encode("latin-1"))
    with pytest.raises(ProfileError, match="not UTF-8"):
        load(latin)
    bom = tmp_path / "bom.tunseal"
    bom.write_bytes(b"\xef\xbb\xbf" + EXAMPLE.replace("\n", "\r\n").encode())
    assert load(bom) == (OFFICE, None)


# --- the documentation's examples are valid -------------------------------------------------------


def test_documented_examples_load() -> None:
    blocks = re.findall(r"```toml\n(.*?)```", DOC.read_text(), re.S)
    profiles = [b for b in blocks if "format = 1" in b]
    assert len(profiles) >= 3
    for block in profiles:
        profile, _ = loads(block)
        assert loads(dumps(profile)) == (profile, None)
    assert loads(profiles[0])[0] == OFFICE.replace(
        allowed_ips=("10.77.0.0/24", "fd77::/64"), lockdown="off", autoconnect="untrusted",
        trusted_networks=("gateway:52:54:00:12:34:56@office.example",
                          "nm:1c6a3f5e-7d2b-4c8e-9f01-23456789abcd"))


# --- properties ---------------------------------------------------------------------------------

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,8}[A-Za-z0-9])?"


def _usable(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return not (ip.is_unspecified or ip.is_multicast)


_ips = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).filter(_usable)
_domains = st.lists(st.from_regex(_LABEL, fullmatch=True), min_size=1, max_size=3).map(".".join)
_hosts = st.tuples(
    st.lists(st.from_regex(_LABEL, fullmatch=True), max_size=2),
    st.from_regex(r"[A-Za-z](?:[A-Za-z0-9-]{0,6}[A-Za-z0-9])?", fullmatch=True),
).map(lambda t: ".".join([*t[0], t[1]]))
_refs = st.from_regex(r"[A-Za-z0-9._/-]{1,24}", fullmatch=True)
_keys = st.binary(min_size=32, max_size=32)
_public_keys = _keys.filter(lambda k: not is_low_order(k))


@st.composite
def _interfaces(draw: st.DrawFn) -> str:
    ip = draw(_ips)
    if draw(st.booleans()):
        return str(ip)
    return f"{ip}/{draw(st.integers(0, ip.max_prefixlen))}"


@st.composite
def _networks(draw: st.DrawFn) -> str:
    ip = draw(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)))
    network = ipaddress.ip_network(f"{ip}/{draw(st.integers(0, ip.max_prefixlen))}", strict=False)
    return str(network)


@st.composite
def _endpoints(draw: st.DrawFn) -> str:
    port = draw(st.one_of(st.just(""), st.integers(1, 65535).map(lambda p: f":{p}")))
    kind = draw(st.sampled_from(["none", "host", "v4", "v6"]))
    if kind == "none":
        return ""
    if kind == "host":
        return draw(_hosts) + port
    if kind == "v4":
        return str(draw(st.ip_addresses(v=4).filter(_usable))) + port
    return f"[{draw(st.ip_addresses(v=6).filter(_usable))}]" + port


@st.composite
def valid_profiles(draw: st.DrawFn) -> tuple[Profile, ProfileSecrets | None]:
    mode = draw(st.sampled_from(MODES))
    addresses = draw(
        st.lists(_interfaces(), min_size=1, max_size=4, unique_by=lambda s: s.split("/")[0])
    )
    allowed_ips = draw(st.lists(_networks(), max_size=4, unique=True))
    inner = [ipaddress.ip_network(a, strict=False) for a in (*addresses, *allowed_ips)]
    has_v6 = any(n.version == 6 for n in inner)
    endpoint = draw(_endpoints())
    transport = draw(st.sampled_from(TRANSPORTS))
    listening = endpoint == "" and transport == "udp"
    optional_key = st.one_of(st.just(""),
                             _public_keys.map(lambda k: base64.b64encode(k).decode()))
    public_key = draw(
        _public_keys.map(lambda k: base64.b64encode(k).decode()) if mode == "ephemeral"
        else optional_key
    )
    private_key_ref = draw(_refs if mode == "ephemeral" else st.one_of(st.just(""), _refs))
    psk_ref = draw(_refs if mode in ("psk", "rotating") else st.one_of(st.just(""), _refs))
    profile = Profile(
        draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}", fullmatch=True)),
        mode=mode,
        cipher=draw(st.sampled_from(CIPHERS)),
        mtu=draw(st.integers(1280 if has_v6 else 576, 9000)),
        device_id=draw(st.integers(0, 65535)),
        persist=draw(st.booleans()),
        rekey_seconds=draw(st.integers(10, 86400)),
        rekey_messages=draw(st.integers(1000, 2**60)),
        addresses=tuple(addresses),
        listen_port=draw(st.integers(1 if listening else 0, 65535)),
        dns=tuple(draw(st.lists(_ips.map(str), max_size=3, unique=True))),
        dns_search=tuple(draw(st.lists(_domains, max_size=3, unique_by=str.lower))),
        endpoint=endpoint,
        transport=transport,
        public_key=public_key,
        allowed_ips=tuple(allowed_ips),
        keepalive=draw(st.integers(0, 3600)),
        private_key_ref=private_key_ref,
        psk_ref=psk_ref,
    )
    if not draw(st.booleans()):
        return profile, None
    secrets = ProfileSecrets(
        private_key=draw(st.one_of(st.none(), _keys)) if private_key_ref else None,
        psk=draw(st.one_of(st.none(), _keys)) if psk_ref else None,
    )
    return profile, secrets


@settings(max_examples=250, deadline=None)
@given(valid_profiles())
def test_round_trip(case: tuple[Profile, ProfileSecrets | None]) -> None:
    profile, secrets = case
    validate(profile)
    text = dumps(profile, secrets)
    assert loads(text) == (profile, secrets)
    assert dumps(*loads(text)) == text
    assert dumps(loads(text)[0]) == dumps(profile)
    over_json = json.loads(json.dumps(profile_to_dict(profile)))
    assert profile_from_dict(over_json) == profile
    assert profile.replace() == profile


def _must_only_raise_profile_errors(call: Callable[[], tuple[Profile, object] | Profile]) -> None:
    try:
        result = call()
    except ProfileInvalid as e:
        assert e.problems and all(p.field for p in e.problems), e.problems
        assert str(e)
        return
    except TunsealError as e:
        assert isinstance(e, ProfileError)
        assert str(e)
        return
    profile = result[0] if isinstance(result, tuple) else result
    validate(profile)
    assert loads(dumps(profile))[0] == profile


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_fuzz_loads_arbitrary_text(text: str) -> None:
    _must_only_raise_profile_errors(lambda: loads(text))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_profiles(), st.data())
def test_fuzz_loads_mutated_profiles(case: tuple[Profile, Any], data: st.DataObject) -> None:
    text = dumps(*case)
    start = data.draw(st.integers(0, len(text)))
    end = data.draw(st.integers(start, min(len(text), start + 20)))
    insert = data.draw(st.text(alphabet=st.sampled_from('0123456789abc.:/[]"=,\n -_'), max_size=8))
    _must_only_raise_profile_errors(lambda: loads(text[:start] + insert + text[end:]))


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_plausible = st.sampled_from(
    [
        "",
        "office",
        "ephemeral",
        "psk",
        "plain",
        "udp",
        "raw",
        "10.0.0.1/32",
        ["10.0.0.1/32"],
        ["fd00::/64", "10.0.0.0/8"],
        "[fd00::1]:5",
        "h.example:51900",
        PUB,
        0,
        1,
        1280,
        51900,
        2**60,
        -1,
        True,
    ]
)


def _section(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional={k: st.one_of(_plausible, _json) for k in keys})


_documents = st.fixed_dictionaries(
    {},
    optional={
        "format": st.one_of(st.just(1), _json),
        "tunnel": st.one_of(
            _section(
                [
                    "name",
                    "mode",
                    "cipher",
                    "mtu",
                    "device_id",
                    "persist",
                    "rekey_seconds",
                    "rekey_messages",
                ]
            ),
            _json,
        ),
        "interface": _section(["addresses", "listen_port", "dns", "dns_search"]),
        "peer": _section(["endpoint", "transport", "public_key", "allowed_ips", "keepalive"]),
        "keys": _section(["private_key", "psk"]),
        "secrets": _json,
        "other": _json,
    },
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_documents, _json))
def test_fuzz_profile_from_dict(document: Any) -> None:
    _must_only_raise_profile_errors(lambda: profile_from_dict(copy.deepcopy(document)))


@settings(max_examples=150, deadline=None)
@given(_documents)
def test_fuzz_loads_toml_documents(document: dict[str, Any]) -> None:
    try:
        text = tomli_w.dumps(document)
    except (TypeError, ValueError):  # None and NaN-keyed oddities TOML cannot express
        return
    _must_only_raise_profile_errors(lambda: loads(text))


# --- finding 10: low-order public keys ------------------------------------------------------------

_P = 2**255 - 19
LOW_ORDER = [
    bytes(32),
    (1).to_bytes(32, "little"),
    (_P - 1).to_bytes(32, "little"),
    (_P).to_bytes(32, "little"),  # non-canonical 0
    (_P + 1).to_bytes(32, "little"),  # non-canonical 1
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    bytes(31) + b"\x80",  # 0 with the ignored top bit set
]


@pytest.mark.parametrize("key", LOW_ORDER, ids=lambda k: k.hex()[:8])
def test_finding10_low_order_public_keys_are_refused(key: bytes) -> None:
    """The all-zero key used to be accepted, and the tunnel then failed with an empty error:
    every low-order point gives an all-zero shared secret, whatever this end's key."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import (
        X25519PrivateKey,
        X25519PublicKey,
    )

    assert is_low_order(key)
    with pytest.raises(ValueError):  # what the key exchange itself would do with it
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(key))
    text = base64.b64encode(key).decode()
    with pytest.raises(ProfileInvalid) as info:
        Profile("office", addresses=("10.0.0.2/32",), endpoint="192.0.2.1",
                public_key=text).replace()
    assert [p.field for p in info.value.problems] == ["peer.public_key"]
    assert "low-order point" in info.value.problems[0].reason


def test_ordinary_public_keys_are_not_low_order() -> None:
    from core import noise

    for _ in range(50):
        assert not is_low_order(noise.public_key(noise.generate_private_key()))
