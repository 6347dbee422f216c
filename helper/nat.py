"""Forwarding and masquerade for a gateway: peers reach the office LAN through it.

One nftables table per tunnel (``inet tunseal_<ifname>``), created when the gateway starts and
deleted when it stops; a crash leaves a table that the next start replaces (same name). IP
forwarding is switched on while the gateway runs and restored to what it was afterwards.
"""

from __future__ import annotations

import logging
import re
import subprocess
from pathlib import Path

from core import fields
from core.errors import TunsealError

log = logging.getLogger(__name__)

_FORWARD = (Path("/proc/sys/net/ipv4/ip_forward"), Path("/proc/sys/net/ipv6/conf/all/forwarding"))


class NatError(TunsealError):
    pass


def _nft(script: str) -> None:
    try:
        proc = subprocess.run(["nft", "-f", "-"], input=script, text=True, capture_output=True,
                              timeout=10, check=False)
    except FileNotFoundError:
        raise NatError("nftables ('nft') is not installed: install the nftables package "
                       "or remove 'masquerade' from the gateway configuration") from None
    if proc.returncode != 0:
        raise NatError(f"nft refused the masquerade rules: {proc.stderr.strip()}")


def table_name(tun_if: str) -> str:
    return "tunseal_" + re.sub(r"[^A-Za-z0-9_]", "_", tun_if)


def enable(tun_if: str, out_ifaces: list[str]) -> str:
    """Forward from ``tun_if`` (to the LAN and between peers) and masquerade what leaves
    through ``out_ifaces`` (none: plain routing). Returns a handle for :func:`disable`."""
    for name in [tun_if, *out_ifaces]:
        if not fields.is_ifname(name):
            raise NatError(f"{name!r} is not a valid interface name")
    table = table_name(tun_if)
    if out_ifaces:
        outs = ", ".join(f'"{i}"' for i in out_ifaces)
        _nft(f"""table inet {table}
delete table inet {table}
table inet {table} {{
  chain post {{ type nat hook postrouting priority srcnat; policy accept;
    iifname "{tun_if}" oifname {{ {outs} }} masquerade; }}
}}
""")
    previous = []
    for path in _FORWARD:
        try:
            previous.append(path.read_text().strip())
            path.write_text("1\n")
        except OSError as e:
            previous.append("")
            log.warning("could not enable forwarding (%s): %s", path, e)
    return table + ":" + ",".join(previous)


def disable(handle: str) -> None:
    table, _, prev = handle.partition(":")
    try:
        _nft(f"table inet {table}\ndelete table inet {table}\n")
    except NatError as e:
        log.debug("removing masquerade table %s: %s", table, e)
    for path, value in zip(_FORWARD, prev.split(","), strict=False):
        if value in ("0", "1"):
            try:
                path.write_text(value + "\n")
            except OSError:
                pass
