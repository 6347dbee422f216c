"""helper/engine.py without root: what a tunnel asks of the lockdown (hold_for), and how the
engine records, reports and forgets a tunnel that could not start. Nothing here brings a link
up: a profile missing its keys fails before the engine touches the machine."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.profile import Profile, ProfileSecrets
from helper.engine import Engine, hold_for
from helper.lockdown import PeerAddress
from helper.tunnelspec import TunnelError, spec_from_profile

KEY = base64.b64encode(bytes(range(1, 33))).decode()


def profile(**changes: Any) -> Profile:
    base = Profile(name="office", mode="psk", addresses=("10.77.0.2/32",),
                   endpoint="192.0.2.1:51900", allowed_ips=("10.77.0.0/24",),
                   psk_ref="office.psk")
    return base.replace(**changes)


SECRETS = ProfileSecrets(psk=bytes(32))


def test_a_split_tunnel_holds_nothing_but_its_way_through() -> None:
    hold = hold_for(spec_from_profile(profile(), SECRETS), "ts-office")
    assert hold.lockdown == "off" and not hold.ipv6_block
    assert hold.endpoints == (PeerAddress("192.0.2.1", 51900, "udp"),)


def test_an_ipv4_full_tunnel_blocks_ipv6_beside_it_and_holds_its_dns() -> None:
    spec = spec_from_profile(profile(allowed_ips=("0.0.0.0/0",), dns=("10.77.0.1",)), SECRETS)
    hold = hold_for(spec, "ts-office")
    assert hold.lockdown == "connected" and hold.ipv6_block
    assert hold.dns_servers == ("10.77.0.1",)


def test_always_is_kept_and_off_drops_the_kill_switch() -> None:
    always = hold_for(spec_from_profile(profile(lockdown="always"), SECRETS), "ts-office")
    assert always.lockdown == "always"
    off = hold_for(spec_from_profile(profile(allowed_ips=("0.0.0.0/0", "::/0"),
                                             lockdown="off"), SECRETS), "ts-office")
    assert off.lockdown == "off" and not off.ipv6_block


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[tuple[Engine, list[tuple[str, dict[str, Any]]]]]:
    events: list[tuple[str, dict[str, Any]]] = []
    e = Engine(on_event=lambda kind, data: events.append((kind, dict(data))),
               state_dir=tmp_path)
    try:
        yield e, events
    finally:
        e.shutdown()


def test_a_tunnel_that_cannot_start_is_reported_and_forgotten(
        engine: tuple[Engine, list[tuple[str, dict[str, Any]]]]) -> None:
    e, events = engine
    ephemeral = profile(mode="ephemeral", psk_ref="", private_key_ref="office.private",
                        public_key=KEY)
    with pytest.raises(TunnelError, match="no private key in the keyring"):
        e.up(ephemeral, ProfileSecrets())
    st = e.status("office")
    assert st.state == "error" and "tunseal genkey office" in st.error
    assert e.running() == []
    assert any(kind == "status" and data.get("state") == "error" for kind, data in events)
    e.forget("office")
    assert e.status("office").state == "down"
    assert e.status("never-seen").state == "down"


def test_a_missing_psk_names_the_command_that_fixes_it(
        engine: tuple[Engine, list[tuple[str, dict[str, Any]]]]) -> None:
    e, _ = engine
    with pytest.raises(TunnelError, match="tunseal genpsk office"):
        e.up(profile(), ProfileSecrets())
    assert e.status("office").state == "error"
