"""Autoconnect without root: trusted-network entries, identity matching, the policy's decisions,
and what helper/netident.py reads from /proc, lease files and resolv.conf (real files in a
temporary directory)."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ProfileInvalid
from core.profile import Profile, dumps, loads, profile_from_dict, profile_to_dict
from core.trusted import NetworkIdentity, TrustedNetwork, is_trusted, parse_entry
from helper import netident
from helper.autoconnect import Policy, Setting

MAC_OFFICE = "52:54:00:0a:0b:0c"
MAC_CAFE = "52:54:00:ca:fe:01"
OFFICE = NetworkIdentity(gateway_ip="192.168.60.1", gateway_mac=MAC_OFFICE,
                         domain="office.example", interface="eth0")
CAFE = NetworkIdentity(gateway_ip="192.168.50.1", gateway_mac=MAC_CAFE, domain="cafe.example",
                       interface="wlan0")
OFFLINE = NetworkIdentity()
TRUST_OFFICE = (f"gateway:{MAC_OFFICE}@office.example",)


def setting(mode: str = "untrusted", trusted: tuple[str, ...] = TRUST_OFFICE,
            name: str = "office", owner: int | None = 1000) -> Setting:
    return Setting(name, mode, trusted, owner)


# --- entries and matching ---------------------------------------------------------------------


def test_entries_parse_to_canonical_form() -> None:
    assert parse_entry("gateway:52:54:00:0A:0B:0C@Office.Example.") == TrustedNetwork(
        gateway_mac=MAC_OFFICE, domain="office.example")
    assert parse_entry("gateway:52:54:00:0a:0b:0c").entry == f"gateway:{MAC_OFFICE}"
    uuid = "1C6A3F5E-7D2B-4C8E-9F01-23456789ABCD"
    assert parse_entry(f"nm:{uuid}").entry == f"nm:{uuid.lower()}"


@pytest.mark.parametrize("bad, says", [
    ("Office Wi-Fi", "is not a network"),
    ("ssid:Office", "is not a network"),
    ("gateway:52:54:00:0a:0b", "is not a MAC address"),
    ("gateway:ff:ff:ff:ff:ff:ff@x.example", "is not a gateway's address"),
    ("gateway:52:54:00:0a:0b:0c@", "is not a domain name"),
    ("gateway:52:54:00:0a:0b:0c@bad..example", "is not a domain name"),
    ("nm:not-a-uuid", "is not a NetworkManager connection UUID"),
])
def test_bad_entries_say_what_to_write(bad: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_entry(bad)


def test_a_network_is_trusted_by_mac_and_domain_together() -> None:
    assert is_trusted(OFFICE, TRUST_OFFICE) is True
    # The same router MAC handing out another domain, or another MAC with the office's domain
    # (someone copying one of the two) is not the office.
    assert is_trusted(NetworkIdentity(gateway_mac=MAC_OFFICE, domain="evil.example"),
                      TRUST_OFFICE) is False
    assert is_trusted(NetworkIdentity(gateway_mac=MAC_CAFE, domain="office.example"),
                      TRUST_OFFICE) is False
    assert is_trusted(NetworkIdentity(gateway_mac=MAC_OFFICE), TRUST_OFFICE) is False
    assert is_trusted(NetworkIdentity(gateway_mac=MAC_OFFICE), (f"gateway:{MAC_OFFICE}",))
    assert is_trusted(OFFLINE, TRUST_OFFICE) is None


def test_networkmanager_identity_matches_its_uuid_and_offers_it_first() -> None:
    uuid = "1c6a3f5e-7d2b-4c8e-9f01-23456789abcd"
    nm = NetworkIdentity(nm_uuid=uuid, nm_name="Office", gateway_mac=MAC_OFFICE,
                         domain="office.example")
    assert nm.entry == f"nm:{uuid}"
    assert is_trusted(nm, (f"nm:{uuid.upper()}",)) is True
    assert is_trusted(nm, TRUST_OFFICE) is True
    assert is_trusted(nm, ("nm:00000000-0000-4000-8000-000000000000",)) is False
    assert NetworkIdentity.from_dict(nm.to_dict()) == nm


# --- the profile fields -----------------------------------------------------------------------


def test_profile_fields_round_trip_through_text_and_dict() -> None:
    p = Profile("office", addresses=("10.44.0.2/24",), endpoint="198.18.2.2",
                autoconnect="untrusted",
                trusted_networks=(*TRUST_OFFICE, "nm:1c6a3f5e-7d2b-4c8e-9f01-23456789abcd"))
    text = dumps(p)
    assert 'autoconnect = "untrusted"' in text and "trusted_networks" in text
    assert loads(text) == (p, None)
    assert profile_from_dict(profile_to_dict(p)) == p
    plain = Profile("office", addresses=("10.44.0.2/24",), endpoint="198.18.2.2")
    assert "autoconnect" not in dumps(plain)  # the default is not written
    assert loads(dumps(plain))[0].autoconnect == "never"


def test_profile_refuses_bad_autoconnect_values_per_field() -> None:
    p = Profile("office", addresses=("10.44.0.2/24",), endpoint="198.18.2.2")
    with pytest.raises(ProfileInvalid) as e:
        p.replace(autoconnect="always", trusted_networks=[
            "Office Wi-Fi", *TRUST_OFFICE, f"gateway:{MAC_OFFICE.upper()}@OFFICE.example"])
    fields = [problem.field for problem in e.value.problems]
    assert fields == ["tunnel.autoconnect", "tunnel.trusted_networks[0]",
                      "tunnel.trusted_networks[2]"]
    assert "already listed at [1]" in e.value.problems[2].reason


# --- the policy ---------------------------------------------------------------------------------


def test_untrusted_network_brings_it_up_and_trusted_takes_it_down() -> None:
    policy = Policy()
    actions = policy.decide(CAFE, [setting()], set(), everyone=True)
    assert [(a.name, a.op) for a in actions] == [("office", "up")]
    assert actions[0].why == f"on untrusted network {CAFE.label}: connecting office"
    actions = policy.decide(OFFICE, [setting()], {"office"})
    assert [(a.name, a.op) for a in actions] == [("office", "down")]
    assert actions[0].why.startswith("on trusted network gateway 192.168.60.1")
    assert policy.decide(CAFE, [setting()], set())[0].op == "up"


def test_never_and_no_change_do_nothing() -> None:
    policy = Policy()
    assert policy.decide(CAFE, [setting("never")], set(), everyone=True) == []
    assert policy.decide(CAFE, [setting()], {"office"}, everyone=True) == []
    # The same network again (a DHCP renewal): nothing, even though it is not up now.
    assert policy.decide(CAFE, [setting()], set()) == []


def test_a_manual_up_on_a_trusted_network_stays_until_the_network_changes() -> None:
    policy = Policy()
    assert policy.decide(OFFICE, [setting()], set(), everyone=True) == []
    # The user brings it up at the office; address churn on the same network changes nothing.
    assert policy.decide(OFFICE, [setting()], {"office"}) == []
    assert policy.decide(CAFE, [setting()], {"office"}) == []  # untrusted and up: fine
    assert policy.decide(OFFICE, [setting()], {"office"})[0].op == "down"


def test_a_user_down_suspends_autoconnect_until_another_network() -> None:
    policy = Policy()
    assert policy.decide(CAFE, [setting()], set(), everyone=True)[0].op == "up"
    policy.user_down("office")
    # Offline and back on the same network (suspend, resume): still the user's choice.
    assert policy.decide(OFFLINE, [setting()], set()) == []
    assert policy.decide(CAFE, [setting()], set()) == []
    assert policy.decide(CAFE, [setting()], set(), everyone=True) == []
    other = NetworkIdentity(gateway_ip="10.1.1.1", gateway_mac="52:54:00:99:99:99")
    assert policy.decide(other, [setting()], set())[0].op == "up"


def test_going_offline_takes_nothing_down() -> None:
    policy = Policy()
    policy.decide(CAFE, [setting()], set(), everyone=True)
    assert policy.decide(OFFLINE, [setting()], {"office"}) == []
    assert policy.decide(CAFE, [setting()], {"office"}) == []  # back: still up, nothing to do


def test_changed_settings_are_decided_at_once() -> None:
    policy = Policy()
    assert policy.decide(OFFICE, [setting("never")], set(), everyone=True) == []
    assert policy.decide(OFFICE, [setting(trusted=())], set())[0].op == "up"
    # Trusting the current network while up: down.
    assert policy.decide(OFFICE, [setting()], {"office"})[0].op == "down"


def test_login_profiles_come_up_for_their_owners_session_only() -> None:
    policy = Policy()
    mine, theirs = setting("login", name="mine", owner=1000), setting("login", name="theirs",
                                                                       owner=1001)
    assert policy.decide(CAFE, [mine, theirs], set(), everyone=True) == []
    actions = policy.decide(CAFE, [mine, theirs], set(), sessions=[1000])
    assert [(a.name, a.op) for a in actions] == [("mine", "up")]
    assert actions[0].why == "session started: connecting mine"
    # A network change never takes a login profile down, trusted or not.
    assert policy.decide(OFFICE, [setting("login", name="mine")], {"mine"}) == []
    root = policy.decide(CAFE, [mine, theirs], set(), sessions=[0])
    assert sorted(a.name for a in root) == ["mine", "theirs"]


# --- reading the network ------------------------------------------------------------------------


ROUTE = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
ts-office\t00000000\t00000000\t0001\t0\t0\t0\t00000000\t0\t0\t0
wlan0\t00000000\t0132A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0
eth0\t00000000\t013CA8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth0\t003CA8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0
"""
ARP = """IP address       HW type     Flags       HW address            Mask     Device
192.168.60.1     0x1         0x2         52:54:00:0A:0B:0C     *        eth0
192.168.50.1     0x1         0x0         00:00:00:00:00:00     *        wlan0
"""


def sources(tmp_path: Path, resolv: str = "") -> netident.Sources:
    (tmp_path / "route").write_text(ROUTE)
    (tmp_path / "arp").write_text(ARP)
    (tmp_path / "resolv.conf").write_text(resolv)
    return netident.Sources(proc_route=tmp_path / "route", proc_arp=tmp_path / "arp",
                            resolv_conf=tmp_path / "resolv.conf",
                            networkd_leases=tmp_path / "leases",
                            dhclient_dirs=(tmp_path / "dhcp",), use_nm=False, arp_probe=False)


def test_gateway_is_the_lowest_metric_default_route_and_its_complete_neighbour(
    tmp_path: Path,
) -> None:
    s = sources(tmp_path)
    assert netident.default_gateway(s) == ("eth0", "192.168.60.1")
    assert netident.neighbour_mac("192.168.60.1", "eth0", s) == MAC_OFFICE
    assert netident.neighbour_mac("192.168.50.1", "wlan0", s) == ""  # incomplete
    assert netident.neighbour_mac("192.168.60.1", "wlan0", s) == ""


def test_domain_from_resolv_conf_skips_tunnels_and_tunseal_written_files(
    tmp_path: Path,
) -> None:
    s = sources(tmp_path, "nameserver 192.168.60.1\nsearch corp.example Office.Example.\n")
    assert netident.dhcp_domain("eth0", s) == ("corp.example", str(s.resolv_conf))
    assert netident.dhcp_domain("eth0", s, exclude=["~corp.example"])[0] == "office.example"
    s.resolv_conf.write_text("# Written by Tunseal while ts-office is up; ...\nsearch x.example\n")
    assert netident.dhcp_domain("eth0", s) == ("", "")


def test_domain_from_dhclient_lease_wins_over_resolv_conf(tmp_path: Path) -> None:
    s = sources(tmp_path, "search other.example\n")
    (tmp_path / "dhcp").mkdir()
    (tmp_path / "dhcp" / "dhclient.leases").write_text(
        'lease {\n  interface "eth0";\n  option domain-name "old.example";\n}\n'
        'lease {\n  interface "wlan0";\n  option domain-name "cafe.example";\n}\n'
        'lease {\n  interface "eth0";\n  option domain-name "office.example";\n}\n')
    assert netident.dhcp_domain("eth0", s)[0] == "office.example"
    assert netident.dhcp_domain("lo", s)[0] == "other.example"


def test_current_identity_without_networkmanager(tmp_path: Path) -> None:
    s = sources(tmp_path, "domain office.example\n")
    got = netident.current(s)
    assert (got.gateway_ip, got.gateway_mac, got.domain, got.interface) == (
        "192.168.60.1", MAC_OFFICE, "office.example", "eth0")
    assert is_trusted(got, TRUST_OFFICE)
    (tmp_path / "route").write_text(ROUTE.splitlines()[0] + "\n")
    assert not netident.current(s).online


def test_arp_reply_parsing() -> None:
    target = bytes([192, 168, 60, 1])
    mac = bytes.fromhex("5254000a0b0c")
    reply = (b"\x02" * 6 + mac + b"\x08\x06" + bytes.fromhex("000108000604") + b"\x00\x02"
             + mac + target + b"\x02" * 6 + bytes([192, 168, 60, 2]))
    assert netident._arp_reply_mac(reply, target) == MAC_OFFICE
    assert netident._arp_reply_mac(reply, bytes([192, 168, 60, 9])) == ""
    assert netident._arp_reply_mac(reply[:30], target) == ""
    request = reply[:20] + b"\x00\x01" + reply[22:]
    assert netident._arp_reply_mac(request, target) == ""


# --- the CLI's side (no helper needed to check what it would send) ------------------------------


def _args(*argv: str) -> object:
    from core.cli import _parser

    return _parser().parse_args(["trust", *argv])


def test_trust_arguments_name_exactly_one_network() -> None:
    from core.cli_network import _trust_args
    from core.errors import IPCError

    assert _trust_args(_args("office", "--current")) == {"current": True}
    uuid = "1c6a3f5e-7d2b-4c8e-9f01-23456789abcd"
    assert _trust_args(_args("office", uuid)) == {"entry": f"nm:{uuid}"}
    assert _trust_args(_args("office", "--gateway-mac", MAC_OFFICE, "--domain", OFFICE.domain)) \
        == {"entry": f"gateway:{MAC_OFFICE}@office.example"}
    assert _trust_args(_args("office", "--gateway-mac", MAC_OFFICE)) == {
        "entry": f"gateway:{MAC_OFFICE}"}
    for bad in (("office",), ("office", uuid, "--current"), ("office", "--domain", "x.example"),
                ("office", "--current", "--gateway-mac", MAC_OFFICE)):
        with pytest.raises(IPCError) as e:
            _trust_args(_args(*bad))
        assert e.value.code == "usage"


def test_network_is_shown_for_people() -> None:
    from core.cli_network import format_network

    text = format_network({"network": CAFE.to_dict(), "profiles": [
        {"name": "office", "autoconnect": "untrusted", "trusted": False, "running": True,
         "suspended": False},
        {"name": "lab", "autoconnect": "never", "trusted": True, "running": False,
         "suspended": True}]})
    assert text.splitlines()[0] == f"network: gateway 192.168.50.1 ({MAC_CAFE}) on wlan0, " \
        "domain cafe.example"
    assert f"entry      gateway:{MAC_CAFE}@cafe.example" in text
    assert "office           not trusted  autoconnect untrusted, up" in text
    assert "suspended" in text.splitlines()[-1]
    assert format_network({"network": OFFLINE.to_dict(), "profiles": []}).startswith(
        "network: none")
