"""core/bugreport.py's Redactor on text that holds what a report must not: keys in every text
spelling, endpoints, global addresses, host names, MAC addresses; and what it must keep."""

from __future__ import annotations

import base64
import os

from core.bugreport import Redactor


def test_keys_in_every_spelling_are_replaced() -> None:
    key = os.urandom(32)
    std = base64.b64encode(key).decode()
    url = base64.urlsafe_b64encode(key).decode()
    redact = Redactor()
    for spelling in (std, std.rstrip("="), url, url.rstrip("="), key.hex(), key.hex().upper()):
        out = redact(f"psk = {spelling!r}; key={spelling}\n")
        assert spelling not in out
        assert out.count("<key>") == 2, out


def test_endpoints_hosts_and_global_addresses_get_stable_placeholders() -> None:
    redact = Redactor(addresses=["198.18.2.2", "198.18.2.2:51900"], hosts=["vpn.corp.example"])
    out = redact("connecting to 198.18.2.2:51900 (vpn.corp.example = 198.18.2.2), "
                 "packed c6120202; DNS 8.8.8.8 and 2001:4860:4860::8888; MAC 6a:03:2a:9f:1b:85")
    for secret in ("198.18.2.2", "vpn.corp.example", "c6120202", "8.8.8.8",
                   "2001:4860:4860::8888", "6a:03:2a:9f:1b:85"):
        assert secret not in out, (secret, out)
    assert out.count("<endpoint-") == 3  # the same peer, everywhere the same placeholder
    assert len({p for p in out.split() if p.startswith("(<host")}) == 1
    assert "<address-1>" in out and "<address-2>" in out and "<mac>" in out


def test_what_helps_a_reader_is_kept() -> None:
    text = ("13:33:45 INFO office: up, MTU 1408, inner 10.44.0.2, rx 1.5 KiB, "
            "lo 127.0.0.1 ff:ff:ff:ff:ff:ff fd44:5eed::2 tunnel.py")
    assert Redactor()(text) == text
