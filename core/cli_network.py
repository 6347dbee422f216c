"""``tunseal network``, ``tunseal trust``, ``tunseal untrust`` and ``tunseal session-started``:
the commands of autoconnect (docs/PROFILE.md, "Connecting by itself"). core/cli.py registers
them with :func:`register`."""

from __future__ import annotations

import argparse
import re
from typing import Any

from core import completion
from core.cli import emit
from core.errors import IPCError
from core.ipcclient import Client

__all__ = ["format_network", "register"]

_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")


def cmd_network(client: Client, args: argparse.Namespace) -> int:
    result = client.call("network")
    return emit(args, result, lambda: format_network(result))


def format_network(result: dict[str, Any]) -> str:
    net = result["network"]
    if not net.get("online"):
        lines = ["network: none (no default route, or its gateway does not answer)"]
    else:
        lines = [f"network: {net['label']}", f"  entry      {net['entry']}"]
        if net.get("gateway_mac") and net.get("nm_uuid"):
            lines.append(f"  gateway    {net['gateway_ip']} ({net['gateway_mac']})")
        if net.get("source") and not net.get("nm_uuid"):
            lines.append(f"  domain     {net.get('domain') or '(none)'} from {net['source']}")
    for p in result.get("profiles", []):
        trusted = {True: "trusted", False: "not trusted", None: "-"}[p.get("trusted")]
        extra = ", autoconnect suspended (taken down by the user)" if p.get("suspended") else ""
        lines.append(f"  {p['name']:<16} {trusted:<12} autoconnect {p['autoconnect']}"
                     f"{', up' if p.get('running') else ''}{extra}")
    return "\n".join(lines)


def _trust_args(args: argparse.Namespace) -> dict[str, Any]:
    if args.gateway_mac or args.domain:
        if args.entry or args.current or not args.gateway_mac:
            raise IPCError("--gateway-mac (and --domain) name a network on their own: give no "
                           "entry and no --current with them", code="usage")
        entry = f"gateway:{args.gateway_mac}" + (f"@{args.domain}" if args.domain else "")
        return {"entry": entry}
    if bool(args.entry) == bool(args.current):
        raise IPCError("name one network: --current, an entry (nm:UUID or "
                       "gateway:MAC@DOMAIN), or --gateway-mac MAC --domain DOMAIN", code="usage")
    if args.current:
        return {"current": True}
    entry = args.entry
    if _UUID_RE.fullmatch(entry):
        entry = "nm:" + entry  # a bare NetworkManager UUID, as nmcli prints it
    return {"entry": entry}


def cmd_trust(client: Client, args: argparse.Namespace) -> int:
    result = client.call("trust", name=args.name, **_trust_args(args))
    already = "" if result.get("changed") else " (it already did)"
    return emit(args, result, lambda: f"profile {args.name!r} trusts {result['entry']}"
                 f"{already}")


def cmd_untrust(client: Client, args: argparse.Namespace) -> int:
    result = client.call("untrust", name=args.name, **_trust_args(args))
    return emit(args, result, lambda: f"profile {args.name!r} no longer trusts "
                 f"{', '.join(result['removed'])}")


def cmd_session_started(client: Client, args: argparse.Namespace) -> int:
    result = client.call("session_started")
    return emit(args, result, lambda: "")


def register(sub: Any) -> None:
    """Add the commands to the ``tunseal`` parser's subparsers."""
    p = sub.add_parser("network", help="show the network this machine is on and which "
                       "profiles trust it")
    p.set_defaults(command=cmd_network)
    for name, fn, text in (("trust", cmd_trust, "trust a network: autoconnect = 'untrusted' "
                            "keeps the tunnel down there"),
                           ("untrust", cmd_untrust, "stop trusting a network")):
        p = sub.add_parser(name, help=text, description=text)
        completion.profile_arg(p.add_argument("name", help="the profile"))
        p.add_argument("entry", nargs="?", help="nm:UUID (or a bare UUID) or gateway:MAC@DOMAIN")
        p.add_argument("--current", action="store_true", help="the network this machine is on")
        p.add_argument("--gateway-mac", metavar="MAC", help="the default gateway's MAC address")
        p.add_argument("--domain", metavar="DOMAIN", help="with --gateway-mac: the DHCP domain")
        p.set_defaults(command=fn)
    p = sub.add_parser("session-started", help="tell the helper your desktop session started "
                       "(autoconnect = 'login'; for an autostart entry)")
    p.set_defaults(command=cmd_session_started)
