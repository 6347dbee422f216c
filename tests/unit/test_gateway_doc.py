"""docs/GATEWAY.md's annotated configuration is a valid gateway file and names every key."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from core import gateway
from core.errors import ProfileInvalid

DOC = Path(__file__).resolve().parents[2] / "docs" / "GATEWAY.md"


def example() -> str:
    blocks = re.findall(r"```toml\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 1, "GATEWAY.md should have exactly one TOML example"
    return blocks[0]


def test_the_example_loads() -> None:
    gw = gateway.loads(example())
    assert gw.name == "office" and gw.masquerade == ("eth0",)
    assert [p.name for p in gw.peers] == ["alice-laptop"]


def test_the_example_shows_every_key() -> None:
    data = tomllib.loads(example())
    gw_keys = {"name", "addresses", "mode", "cipher", "transport", "listen_port", "mtu",
               "device_id", "public_endpoint", "lan", "dns", "masquerade", "private_key"}
    peer_keys = {"name", "public_key", "device_id", "allowed_ips", "psk", "keepalive"}
    assert set(data) == {"format", "gateway", "peer"}
    assert set(data["gateway"]) == gw_keys
    assert set(data["peer"][0]) == peer_keys
    # and those are the keys the parser accepts: an unknown one is an error
    bad = example().replace('name = "office"', 'name = "office"\nsurprise = 1')
    try:
        gateway.loads(bad)
    except ProfileInvalid as e:
        assert "gateway.surprise" in str(e.problems)
    else:
        raise AssertionError("an unknown key was accepted")
