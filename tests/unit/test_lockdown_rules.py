"""The lockdown ruleset builder (a pure function) and the lockdown state, without a kernel; and
each generated table checked by the real nft (``nft -c``, in a throwaway network namespace)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from helper.lockdown import (
    FWMARK,
    TABLE,
    Hold,
    Lockdown,
    PeerAddress,
    Policy,
    ruleset,
)

BOTH = frozenset({4, 6})
OFFICE = PeerAddress("198.18.2.2", 51900)


def output_rules(text: str) -> list[str]:
    chain = text.split("chain output {", 1)[1].split("}\n  chain forward", 1)[0]
    return [line.strip() for line in chain.splitlines()[2:] if line.strip()]


def index(rules: list[str], needle: str) -> int:
    found = [i for i, r in enumerate(rules) if needle in r]
    assert found, f"{needle!r} not in {rules}"
    return found[0]


def test_a_connected_lockdown_allows_loopback_tunnel_marked_endpoint_dhcp_nd_only() -> None:
    rules = output_rules(ruleset(Policy(BOTH, ("ts-office",), (OFFICE,))))
    assert rules[0] == 'oifname "lo" accept'
    assert 'oifname "ts-office" accept' in rules
    assert f"meta mark {FWMARK:#x} ip daddr 198.18.2.2 udp dport 51900 accept" in rules
    # Every accept that is not loopback or the tunnel is either the marked endpoint, DHCP or
    # link-level control; nothing for LAN destinations without allow_lan.
    accepts = [r for r in rules if r.endswith("accept")]
    assert len(accepts) == 8, accepts
    # The helper's own marked DNS (host name look-ups, helper/hostlookup.py) comes before the
    # DNS drops; unmarked DNS does not.
    marked_dns = f"meta mark {FWMARK:#x} meta l4proto {{ tcp, udp }} th dport 53 accept"
    assert rules[1] == marked_dns
    assert index(rules, "th dport { 53, 853 }") > 1
    assert not any("192.168.0.0/16" in r for r in rules)
    assert rules[-2:] == ["meta nfproto ipv4 counter drop", "meta nfproto ipv6 counter drop"]


def test_dns_is_dropped_before_the_lan_is_allowed() -> None:
    rules = output_rules(ruleset(Policy(BOTH, ("ts-office",), (OFFICE,), allow_lan=True)))
    dns = index(rules, "th dport { 53, 853 }")
    assert dns < index(rules, "192.168.0.0/16") and dns < index(rules, "fc00::/7")
    assert dns < index(rules, 'oifname "ts-office" accept')


def test_the_tunnels_dns_servers_are_the_only_ones_allowed() -> None:
    rules = output_rules(ruleset(Policy(BOTH, ("ts-office",), dns_servers=("10.44.0.1",))))
    assert "ip daddr != 10.44.0.1 meta l4proto { tcp, udp } th dport { 53, 853 } counter drop" \
        in rules
    # No IPv6 server: no IPv6 DNS at all.
    assert "meta nfproto ipv6 meta l4proto { tcp, udp } th dport { 53, 853 } counter drop" \
        in rules


def test_the_ipv6_block_of_an_ipv4_full_tunnel_leaves_ipv4_alone() -> None:
    text = ruleset(Policy(frozenset({6}), ("ts-office",)))
    assert "meta nfproto ipv4" not in text
    assert "meta nfproto ipv6 counter drop" in text


def test_a_raw_transport_endpoint_and_an_ipv6_one() -> None:
    rules = output_rules(ruleset(Policy(BOTH, ("ts-x",), (
        PeerAddress("2001:db8::5", 0, "raw"), PeerAddress("2001:db8::6", 51900)))))
    assert f"meta mark {FWMARK:#x} ip6 daddr 2001:db8::5 meta l4proto 253 accept" in rules
    assert f"meta mark {FWMARK:#x} ip6 daddr 2001:db8::6 udp dport 51900 accept" in rules


def test_a_bad_interface_name_is_refused() -> None:
    from helper.lockdown import LockdownError
    with pytest.raises(LockdownError):
        ruleset(Policy(BOTH, ('ts-x" accept; #',)))


class Applied:
    """The policies the lockdown hands to the applier, in order."""

    def __init__(self) -> None:
        self.policies: list[Policy | None] = []

    def __call__(self, policy: Policy | None) -> None:
        self.policies.append(policy)


def test_holds_always_and_release(tmp_path: Path) -> None:
    applied = Applied()
    events: list[dict[str, object]] = []
    lock = Lockdown(tmp_path, on_change=events.append, applier=applied)
    lock.hold("office", Hold("ts-office", (OFFICE,)))
    policy = applied.policies[-1]
    assert policy is not None and policy.families == BOTH and policy.tunnels == ("ts-office",)
    assert events[-1]["blocked"] is True  # not up yet
    lock.set_up("office", True)
    assert events[-1]["blocked"] is False
    lock.release("office")
    assert applied.policies[-1] is None
    # always: persisted, blocks with no tunnel, survives a new Lockdown (a restart).
    lock.set_always(True, allow_lan=True)
    assert json.loads((tmp_path / "lockdown.json").read_text()) == {"always": True,
                                                                    "allow_lan": True}
    again = Lockdown(tmp_path, applier=applied)
    again.reconcile()
    policy = applied.policies[-1]
    assert policy is not None and policy.tunnels == () and policy.allow_lan
    assert again.status()["blocked"] is True
    # off ends the connected holds as well; the IPv6-only blocks stay, also that of a
    # connected IPv4 full tunnel.
    again.hold("a", Hold("ts-a"))
    again.hold("b", Hold("ts-b", families=frozenset({6}), allow_lan=True, lockdown="off"))
    again.hold("c", Hold("ts-c", ipv6_block=True))
    again.set_always(False)
    policy = applied.policies[-1]
    assert policy is not None and policy.families == frozenset({6})
    assert again.status()["tunnels"] == [] and again.status()["ipv6_blocked"] == ["b", "c"]


def test_an_unreadable_state_file_keeps_always_on(tmp_path: Path) -> None:
    (tmp_path / "lockdown.json").write_text("{not json")
    assert Lockdown(tmp_path, applier=Applied()).status()["always"] is True


def test_the_strictest_allow_lan_wins(tmp_path: Path) -> None:
    applied = Applied()
    lock = Lockdown(tmp_path, applier=applied)
    lock.hold("a", Hold("ts-a", allow_lan=True))
    assert applied.policies[-1] is not None and applied.policies[-1].allow_lan
    lock.hold("b", Hold("ts-b", allow_lan=False))
    assert applied.policies[-1] is not None and not applied.policies[-1].allow_lan


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("nft") is None
                    or shutil.which("unshare") is None,
                    reason="nft -c needs root and nftables")
@pytest.mark.parametrize("policy", [
    Policy(BOTH),
    Policy(BOTH, ("ts-office",), (OFFICE,), allow_lan=True, dns_servers=("10.44.0.1", "fd44::1")),
    Policy(frozenset({6}), ("ts-office", "ts-home"),
           (OFFICE, PeerAddress("2001:db8::1", 0, "raw"))),
], ids=["always", "connected+lan+dns", "ipv6-only"])
def test_nft_accepts_every_table(policy: Policy) -> None:
    done = subprocess.run(["unshare", "-n", "nft", "-c", "-f", "-"], input=ruleset(policy),
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert f"table inet {TABLE}" in ruleset(policy)


def test_dns_servers_come_from_the_tunnels_under_lockdown_and_the_hook(tmp_path: Path) -> None:
    applied = Applied()
    lock = Lockdown(tmp_path, applier=applied)
    lock.hold("office", Hold("ts-office", dns_servers=("10.44.0.1",)))
    lock.hold("split", Hold("ts-split", families=frozenset(), lockdown="off",
                            dns_servers=("10.9.0.1",)))
    lock.set_dns_servers(["fd44::1", "10.44.0.1"])
    policy = applied.policies[-1]
    assert policy is not None and policy.dns_servers == ("10.44.0.1", "fd44::1")
    rules = output_rules(ruleset(policy))
    assert "ip daddr != 10.44.0.1 meta l4proto { tcp, udp } th dport { 53, 853 } counter drop" \
        in rules
    assert "ip6 daddr != fd44::1 meta l4proto { tcp, udp } th dport { 53, 853 } counter drop" \
        in rules


def test_a_profile_in_always_lockdown_keeps_blocking_after_its_down(tmp_path: Path) -> None:
    applied = Applied()
    lock = Lockdown(tmp_path, applier=applied)
    lock.hold("office", Hold("ts-office", (OFFICE,), lockdown="always"))
    lock.release("office")
    policy = applied.policies[-1]
    assert policy is not None and policy.families == BOTH and policy.tunnels == ()
    assert lock.status()["always"] and lock.status()["blocked"]
    assert json.loads((tmp_path / "lockdown.json").read_text())["always"] is True
    lock.set_always(False)
    assert applied.policies[-1] is None
