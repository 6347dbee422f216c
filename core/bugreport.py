"""``tunseal bugreport -o FILE``: one text file to attach to a bug report, with nothing in it
that identifies the user's peers or could open a tunnel.

It holds the versions (Tunseal, Python, kernel, PySide6, nft, distribution), every tunnel's
status, the profiles (without keys), the helper's recent log and the doctor's report. Before
it is written, :class:`Redactor` replaces:

- every key: 32 bytes in base64 (standard or URL-safe, padded or not) or in hex;
- the peers' addresses and endpoints: every address and host name that a profile or a status
  names as an endpoint, whatever it resolves to, and every globally routable IP address;
- host names: the endpoints' names, the DNS search domains, and this machine's own name;
- hardware (MAC) addresses, which name the networks this machine was on;

each by a placeholder (``<endpoint-1>``, ``<host-2>``, ``<key>``) that is the same everywhere
in the file, so the report still says which lines are about the same peer.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import importlib.metadata
import ipaddress
import json
import platform
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from typing import Any, Final

from core import doctor
from core.atomicfile import write_atomic
from core.errors import IPCError
from core.ipcclient import Client, all_statuses, list_all_profiles

__all__ = ["Redactor", "collect", "register"]

LOG_LINE: Final = 400
"""Characters kept of each log message (a netlink debug dump runs to thousands)."""

_B64_KEY: Final = re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{43}(?:=|(?![A-Za-z0-9+/=_-]))")
_HEX_KEY: Final = re.compile(r"(?<![0-9A-Fa-f])[0-9A-Fa-f]{64}(?![0-9A-Fa-f])")
_IPV4: Final = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d])")
_MAC: Final = re.compile(r"(?<![0-9A-Fa-f:])(?:[0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}(?![0-9A-Fa-f:])")
_IPV6: Final = re.compile(r"(?<![0-9A-Fa-f:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}"
                          r"(?![0-9A-Fa-f:])")


def _is_key(text: str) -> bool:
    raw = text.replace("-", "+").replace("_", "/")
    raw += "=" * (-len(raw) % 4)
    try:
        return len(base64.b64decode(raw, validate=True)) == 32
    except (binascii.Error, ValueError):
        return False


class Redactor:
    """Replaces keys, the given addresses and host names, and every global IP address."""

    def __init__(self, *, addresses: Iterable[str] = (), hosts: Iterable[str] = ()):
        self._names: dict[str, str] = {}
        self._counts: dict[str, int] = {}
        self._literal: list[tuple[re.Pattern[str], str]] = []
        for host in sorted({h for h in hosts if h}, key=len, reverse=True):
            self._add(host, "host", r"(?<![\w-])", r"(?![\w-])")
        for addr in sorted({a for a in addresses if a}, key=len, reverse=True):
            self._add(addr, "endpoint", r"(?<![\w.:])", r"(?![\w:])")

    def _add(self, value: str, kind: str, before: str, after: str) -> None:
        if value in self._names:
            return
        placeholder = self._placeholder(kind)
        self._names[value] = placeholder
        pattern = re.compile(before + re.escape(value) + after, re.IGNORECASE)
        self._literal.append((pattern, placeholder))
        with contextlib.suppress(ValueError):  # an address: also its packed bytes in hex
            packed = ipaddress.ip_address(value).packed.hex()
            self._literal.append((re.compile(re.escape(packed), re.IGNORECASE), placeholder))

    def _placeholder(self, kind: str) -> str:
        self._counts[kind] = self._counts.get(kind, 0) + 1
        return f"<{kind}-{self._counts[kind]}>"

    def __call__(self, text: str) -> str:
        text = _B64_KEY.sub(lambda m: "<key>" if _is_key(m.group(0)) else m.group(0), text)
        text = _HEX_KEY.sub("<key>", text)
        for pattern, placeholder in self._literal:
            text = pattern.sub(placeholder, text)
        text = _MAC.sub(_mac, text)
        text = _IPV4.sub(self._global_ip, text)
        return _IPV6.sub(self._global_ip, text)

    def _global_ip(self, m: re.Match[str]) -> str:
        value = m.group(0)
        try:
            ip = ipaddress.ip_address(value)
        except ValueError:
            return value
        if not ip.is_global:
            return value
        if value not in self._names:
            self._names[value] = self._placeholder("address")
        return self._names[value]


def _mac(m: re.Match[str]) -> str:
    value = m.group(0).lower()
    return value if value in ("00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff") else "<mac>"


# --- collecting ---------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    out = {"tunseal": _dist_version("tunseal"), "python": platform.python_version(),
           "kernel": f"{platform.system()} {platform.release()} {platform.machine()}",
           "pyside6": _dist_version("PySide6-Essentials") or _dist_version("PySide6")
           or "not installed", "nft": _tool_version(["nft", "--version"]),
           "distribution": _os_release()}
    return out


def _dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return ""


def _tool_version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    return (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr) \
        else f"exit {done.returncode}"


def _os_release() -> str:
    with contextlib.suppress(OSError), open("/etc/os-release", encoding="utf-8") as f:
        for line in f:
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    return "unknown"


def _endpoint_parts(endpoint: str) -> list[str]:
    """``host:port``, ``[v6]:port`` -> [host, the whole]."""
    if not endpoint:
        return []
    host = endpoint
    if endpoint.startswith("["):
        host = endpoint[1:].split("]", 1)[0]
    elif endpoint.count(":") == 1:
        host = endpoint.rsplit(":", 1)[0]
    return [host, endpoint]


def _resolved(host: str) -> list[str]:
    try:
        return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, None)})
    except (OSError, UnicodeError):
        return []


def collect(client: Client) -> str:
    """The report's text, redacted."""
    sections: list[tuple[str, str]] = []
    sections.append(("versions", "\n".join(f"{k}: {v}" for k, v in versions().items())))
    addresses: set[str] = set()
    hosts: set[str] = {socket.gethostname(), socket.getfqdn()} - {"localhost", ""}
    profiles: list[dict[str, Any]] = []
    statuses: list[dict[str, Any]] = []
    logs: list[dict[str, Any]] = []
    try:
        profiles = list_all_profiles(client)
        statuses = all_statuses(client)
        logs = client.call("recent_log").get("entries", [])
    except IPCError as e:
        sections.append(("helper", f"not reachable: {e}"))
    for p in profiles:
        endpoint = str(p.get("peer", {}).get("endpoint", ""))
        parts = _endpoint_parts(endpoint)
        addresses.update(parts)
        if parts:
            addresses.update(_resolved(parts[0]))
            hosts.add(parts[0])
        for domain in p.get("interface", {}).get("dns_search", []) or []:
            hosts.add(str(domain).lstrip("~"))
    for st in statuses:
        for endpoint in [st.get("endpoint", "")] + [peer.get("endpoint", "")
                                                      for peer in st.get("peers", [])]:
            addresses.update(_endpoint_parts(str(endpoint)))
    addresses = {a for a in addresses if a}
    hosts = {h for h in hosts if h and not _is_ip(h)}
    sections.append(("status", json.dumps(statuses, indent=2)))
    sections.append(("profiles (no keys)", json.dumps(profiles, indent=2)))
    sections.append(("recent log", "\n".join(
        f"{time.strftime('%H:%M:%S', time.localtime(float(e.get('time', 0))))} "
        f"{e.get('level', '')} {str(e.get('message', ''))[:LOG_LINE]}" for e in logs)
        or "(empty)"))
    sections.append(("doctor", doctor.format_report(doctor.run(client.path))))
    redact = Redactor(addresses=addresses - hosts, hosts=hosts)
    head = (f"Tunseal bug report, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n"
            "Keys, peer addresses, endpoints and host names are replaced by <placeholders>.\n"
            "Read it before you send it.\n")
    body = "\n\n".join(f"== {title} ==\n{text}" for title, text in sections)
    return redact(head + "\n" + body) + "\n"


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


# --- the command --------------------------------------------------------------------------------


def register(sub: Any) -> None:
    p = sub.add_parser("bugreport", help="write a report to attach to a bug (keys, peers and "
                       "host names redacted)", description="Write versions, status, profiles "
                       "(without keys), the helper's recent log and the doctor's report to "
                       "FILE, with keys, peer addresses, endpoints and host names redacted.")
    p.add_argument("-o", "--output", metavar="FILE", required=True,
                   help="where to write the report ('-' for standard output)")
    p.set_defaults(command=cmd_bugreport)


def cmd_bugreport(client: Client, args: Any) -> int:
    text = collect(client)
    if args.output == "-":
        sys.stdout.write(text)
        return 0
    try:
        write_atomic(args.output, text.encode("utf-8"), mode=0o600)
    except OSError as e:
        raise IPCError(f"cannot write {args.output}: {e.strerror or e}", code="local") from None
    print(f"bug report written to {args.output}; read it before you send it", file=sys.stderr)
    return 0
