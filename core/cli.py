"""``tunseal``: the command-line client of the helper. Every command is one or two requests over
the control socket; the CLI never touches the network configuration itself.

Exit codes: 0 success; 1 the helper reported an error (or a local file could not be written);
2 usage error; 3 the helper is not running or refuses this user; 4 a profile, key or file was
not found.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, TextIO

from core import completion
from core.atomicfile import write_atomic
from core.errors import HelperUnavailable, IPCError
from core.format import format_peers, format_status
from core.ipc import RequestError
from core.ipcclient import Client, all_statuses, gateway_peers, list_all_profiles, tunnel_status
from core.profile import dumps, profile_from_dict
from core.status import TunnelStatus

__all__ = ["EXIT_ERROR", "EXIT_NOT_FOUND", "EXIT_OK", "EXIT_UNAVAILABLE", "EXIT_USAGE", "main"]

EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNAVAILABLE: Final = 3
EXIT_NOT_FOUND: Final = 4

MAX_IMPORT: Final = 64 * 1024

EPILOG = """\
exit codes: 0 ok, 1 error reported by the helper, 2 usage, 3 helper unavailable or not allowed,
4 not found. Options --json and --socket go before the command."""

Command = Callable[[Client, argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    client = Client(args.socket)
    try:
        command: Command = args.command
        return command(client, args)
    except KeyboardInterrupt:
        return EXIT_OK if getattr(args, "watch", False) else 130
    except IPCError as e:
        return _report_error(e, args.json)
    finally:
        client.close()


# --- commands -----------------------------------------------------------------------------------


def cmd_up(client: Client, args: argparse.Namespace) -> int:
    result = client.call("connect", name=args.name)
    return emit(args, result, lambda: format_status(_status(result["status"]), time.time()))


def cmd_down(client: Client, args: argparse.Namespace) -> int:
    result = client.call("disconnect", name=args.name)
    return emit(args, result, lambda: format_status(_status(result["status"]), time.time()))


def _statuses(client: Client, name: str | None, peers: bool = False) -> dict[str, Any]:
    """``{"tunnels": [...]}``: the named tunnel (with ``peers``: with every one of its peers),
    or every page of them."""
    if name:
        return {"tunnels": [tunnel_status(client, name, peers=peers)]}
    return {"tunnels": all_statuses(client)}


def cmd_status(client: Client, args: argparse.Namespace) -> int:
    if args.peers and not args.name:
        raise IPCError("--peers needs a tunnel's NAME: tunseal status NAME --peers", code="usage")
    if not args.watch:
        result = _statuses(client, args.name, args.peers)
        return emit(args, result, lambda: _format_tunnels(result["tunnels"], args.peers))
    shown = 0
    while args.count is None or shown < args.count:
        if shown:
            time.sleep(args.interval)
        result = _statuses(client, args.name, args.peers)
        if args.json:
            print(json.dumps(result), flush=True)
        else:
            _redraw(_format_tunnels(result["tunnels"], args.peers))
        shown += 1
    return EXIT_OK


def cmd_lockdown(client: Client, args: argparse.Namespace) -> int:
    call_args: dict[str, Any] = {"action": args.action}
    if args.allow_lan:
        call_args["allow_lan"] = True
    result = client.call("lockdown", **call_args)
    return emit(args, result, lambda: format_lockdown(result))


def format_lockdown(st: dict[str, Any]) -> str:
    """The lockdown state as a person reads it (docs/LOCKDOWN.md)."""
    tunnels = ", ".join(st.get("tunnels") or [])
    if st.get("blocked"):
        head = "lockdown: BLOCKED: no tunnel is up, nothing leaves this machine"
    elif st.get("active"):
        head = f"lockdown: on: nothing leaves this machine but through {tunnels or 'the tunnel'}"
    else:
        head = "lockdown: off"
    lines = [head]
    if st.get("always"):
        lines.append("  always     on (also with no tunnel up; 'tunseal lockdown off' ends it)")
    if st.get("active"):
        lines.append(f"  LAN        {'allowed' if st.get('allow_lan') else 'blocked'}")
    if st.get("ipv6_blocked"):
        lines.append(f"  IPv6       blocked beside {', '.join(st['ipv6_blocked'])}")
    return "\n".join(lines)


def cmd_list(client: Client, args: argparse.Namespace) -> int:
    profiles = list_all_profiles(client)
    if args.names:
        names = [str(p["tunnel"]["name"]) for p in profiles]
        if args.json:
            return emit(args, {"names": names}, lambda: "")
        for name in names:
            print(name)
        return 0
    states = {t["name"]: t["state"] for t in all_statuses(client)}
    result = {"profiles": profiles, "states": states}
    return emit(args, result, lambda: _format_list(profiles, states))


def cmd_import(client: Client, args: argparse.Namespace) -> int:
    text = _read_profile_file(args.file)
    result = client.call("import_profile", text=text, replace=args.replace)
    name = result["profile"]["tunnel"]["name"]
    stored = result.get("stored_secrets") or []

    def human() -> str:
        keys = f"; stored in the keyring: {', '.join(stored)}" if stored else ""
        return f"imported profile {name!r}{keys}"

    return emit(args, result, human)


def cmd_remove(client: Client, args: argparse.Namespace) -> int:
    result = client.call("remove_profile", name=args.name)
    return emit(args, result, lambda: f"removed profile {args.name!r} and its keys")


def cmd_export(client: Client, args: argparse.Namespace) -> int:
    result = client.call("export_profile", name=args.name, with_secrets=args.with_secrets)
    text: str = result["text"]
    if args.output:
        _write_private(args.output, text, secret=bool(result.get("with_secrets")))
        return emit(args, {"file": args.output, **result},
                     lambda: f"exported profile {args.name!r} to {args.output}")
    if args.json:
        return emit(args, result, lambda: "")
    sys.stdout.write(text)
    return EXIT_OK


def cmd_genkey(client: Client, args: argparse.Namespace) -> int:
    result = client.call("genkey", name=args.name)
    if not args.json:
        ref = result["profile"].get("keys", {}).get("private_key", "")
        print(f"new private key stored in the keyring as {ref!r}; the peer needs this "
              "public key:", file=sys.stderr)
    return emit(args, result, lambda: result["public_key"])


def cmd_pubkey(client: Client, args: argparse.Namespace) -> int:
    result = client.call("public_key", name=args.name)
    return emit(args, result, lambda: result["public_key"])


def cmd_genpsk(client: Client, args: argparse.Namespace) -> int:
    result = client.call("genpsk", name=args.name)
    ref = result["profile"].get("keys", {}).get("psk", "")
    return emit(args, result, lambda: (
        f"new pre-shared key stored in the keyring as {ref!r}; give it to the peer with "
        f"'tunseal export {args.name} --with-secrets -o FILE' over a trusted channel"))


def cmd_setpeerkey(client: Client, args: argparse.Namespace) -> int:
    result = client.call("set_peer_key", name=args.name, public_key=args.key)
    return emit(args, result, lambda: f"profile {args.name!r}: peer public key set")


def cmd_peer_add(client: Client, args: argparse.Namespace) -> int:
    call_args: dict[str, Any] = {"name": args.name}
    if args.allowed_ips:
        call_args["allowed_ips"] = list(args.allowed_ips)
    if args.public_key:
        call_args["public_key"] = args.public_key
    result = client.call("peer_add", **call_args)
    if args.output:
        _write_private(args.output, result["profile"], secret=True)
    if args.json:
        print(json.dumps(result if not args.output else {"peer": result["peer"]}, indent=2))
        return EXIT_OK
    peer = result["peer"]
    print(f"added peer {peer['name']}: {', '.join(peer['allowed_ips'])}"
          f" (device ID {peer['device_id']})")
    if args.output:
        print(f"client profile written to {args.output} (it holds the peer's keys: move it to "
              "the peer once, then delete it)")
    else:
        print("# client profile (holds the peer's keys; import it on the peer with "
              "'tunseal import FILE'):" if "[secrets]" in result["profile"] else
              "# client profile (no keys: the peer has its own; import it there with "
              "'tunseal import --replace FILE'):")
        print(result["profile"], end="")
    if args.qr:
        listing = client.call("peer_list")
        print(f"gateway public key: {listing['public_key']}")
        print(terminal_qr(listing["public_key"]))
    return EXIT_OK


def cmd_peer_invite(client: Client, args: argparse.Namespace) -> int:
    call_args: dict[str, Any] = {"name": args.name, "expires": args.expires}
    if args.allowed_ips:
        call_args["allowed_ips"] = list(args.allowed_ips)
    result = client.call("peer_invite", **call_args)
    if args.output:
        _write_private(args.output, result["invitation"] + "\n", secret=True)
    if args.json:
        return emit(args, result, lambda: "")
    expires = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(result["expires"]))
    print(f"invitation for {result['name']} ({', '.join(result['allowed_ips'])}) to "
          f"{result['endpoint']}, good once, until {expires}:")
    print(result["invitation"])
    if not args.no_qr:
        print(terminal_qr(result["invitation"]))
    print("On the laptop: tunseal join INVITATION (or File > Join an office... in the app). "
          "Anyone holding it can join once: send it over a channel you trust.")
    if args.output:
        print(f"also written to {args.output} (0600)")
    return EXIT_OK


def cmd_peer_revoke(client: Client, args: argparse.Namespace) -> int:
    result = client.call("peer_revoke", name=args.name)

    def human() -> str:
        parts = []
        if result["peer_removed"]:
            parts.append(f"removed peer {args.name} and ended its sessions")
        if result["withdrawn"]:
            parts.append(f"withdrew invitation(s) {', '.join(result['withdrawn'])}")
        return "; ".join(parts)

    return emit(args, result, human)


def cmd_join(client: Client, args: argparse.Namespace) -> int:
    text = args.invitation
    if text == "-":
        text = sys.stdin.read(8192)
    elif not text.lower().startswith("tunseal1:"):
        text = _read_profile_file(text)  # a file holding the invitation
    call_args: dict[str, Any] = {"invitation": text}
    if args.name:
        call_args["name"] = args.name
    result = client.call("join", **call_args)

    def human() -> str:
        joined = result["joined"]
        name = result["profile"]["tunnel"]["name"]
        return (f"joined gateway {joined['gateway']} at {joined['endpoint']} as "
                f"{result['peer_name']}: profile {name!r}, address "
                f"{', '.join(result['profile']['interface']['addresses'])}; the key pair was "
                f"made here and the private key never left this machine.\n"
                f"connect with: tunseal up {name}")

    return emit(args, result, human)


def cmd_peer_list(client: Client, args: argparse.Namespace) -> int:
    result = gateway_peers(client)

    def human() -> str:
        lines = [f"gateway {result['gateway']}  public key {result['public_key']}"]
        for p in result["peers"]:
            lines.append(f"  {p['name']:<20} {p.get('state', 'down'):<12} "
                         f"{', '.join(p['allowed_ips']):<24} {p.get('endpoint', '')}")
        if not result["peers"]:
            lines.append("  (no peers yet: 'tunseal peer invite NAME' or 'tunseal peer add NAME')")
        for i in result.get("invitations") or []:
            until = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(i["expires"]))
            lines.append(f"  {i['name']:<20} {'invited':<12} {', '.join(i['allowed_ips']):<24} "
                         f"until {until} (invitation {i['id']})")
        return "\n".join(lines)

    return emit(args, result, human)


def cmd_peer_show(client: Client, args: argparse.Namespace) -> int:
    result = client.call("peer_show", name=args.name)
    return emit(args, result, lambda: "\n".join(f"{k}: {v}" for k, v in result.items()))


def cmd_peer_remove(client: Client, args: argparse.Namespace) -> int:
    result = client.call("peer_remove", name=args.name)
    return emit(args, result, lambda: f"removed peer {args.name}")


def terminal_qr(text: str) -> str:
    """A QR code drawn with block characters, or a note if the QR library is missing."""
    try:
        import segno
    except ImportError:
        return "(install the 'segno' package to see a QR code here)"
    buf = io.StringIO()
    segno.make(text, error="m").terminal(out=buf, compact=True)
    return buf.getvalue()


def cmd_show(client: Client, args: argparse.Namespace) -> int:
    result: dict[str, Any] = dict(client.call("get_profile", name=args.name))
    try:
        result["public_key"] = client.call("public_key", name=args.name)["public_key"]
    except RequestError as e:
        if e.code != "not_found":
            raise
        result["public_key"] = None

    def human() -> str:
        text = dumps(profile_from_dict(result["profile"]))
        lines = [line for line in text.splitlines() if not line.startswith("# Tunseal profile")]
        key = result["public_key"] or f"none yet (tunseal genkey {args.name})"
        return "\n".join([*lines, f"# this end's public key: {key}"]).strip("\n")

    return emit(args, result, human)


def _status(d: dict[str, Any]) -> TunnelStatus:
    return TunnelStatus.from_dict(d)


def _format_tunnels(tunnels: list[dict[str, Any]], peers: bool = False) -> str:
    if not tunnels:
        return "no profiles; import one with 'tunseal import FILE'"
    now = time.time()
    shown = []
    for t in tunnels:
        st = _status(t)
        text = format_status(st, now)
        if peers and st.peers:
            text += "\n" + format_peers(st)
        elif st.peer_count > len(st.peers):
            text += f"\n  (list them with 'tunseal status {st.name} --peers' or " \
                    "'tunseal peer list')"
        shown.append(text)
    return "\n\n".join(shown)


def _format_list(profiles: list[dict[str, Any]], states: dict[str, str]) -> str:
    if not profiles:
        return "no profiles; import one with 'tunseal import FILE'"
    rows = [("NAME", "STATE", "MODE", "ENDPOINT")]
    for p in profiles:
        name = p["tunnel"]["name"]
        endpoint = p.get("peer", {}).get("endpoint", "") or "(listening)"
        rows.append((name, states.get(name, "down"), p["tunnel"].get("mode", ""), endpoint))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r[:3], widths, strict=True)) + "  " + r[3]
        for r in rows
    )


def _redraw(text: str) -> None:
    if sys.stdout.isatty():
        sys.stdout.write("\x1b[H\x1b[2J")  # home, clear screen
    stamp = time.strftime("%H:%M:%S")
    sys.stdout.write(f"{stamp}  (Ctrl-C to stop)\n{text}\n\n")
    sys.stdout.flush()


# --- output and errors --------------------------------------------------------------------------


def emit(args: argparse.Namespace, result: Any, human: Callable[[], str]) -> int:
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        text = human()
        if text:
            print(text)
    return EXIT_OK


def _report_error(e: IPCError, as_json: bool, out: TextIO | None = None) -> int:
    details = e.details if isinstance(e, RequestError) else ()
    if as_json:
        error: dict[str, Any] = {"code": e.code, "message": str(e)}
        if details:
            error["details"] = [{"field": d.field, "message": d.message} for d in details]
        print(json.dumps({"error": error}, indent=2), file=out or sys.stdout)
    else:
        print(f"tunseal: {e}", file=out or sys.stderr)
        for d in details:
            print(f"  {d.field}: {d.message}" if d.field else f"  {d.message}",
                  file=out or sys.stderr)
    if isinstance(e, HelperUnavailable) or e.code == "forbidden":
        return EXIT_UNAVAILABLE
    if e.code == "not_found":
        return EXIT_NOT_FOUND
    if e.code == "usage":
        return EXIT_USAGE
    return EXIT_ERROR


def _read_profile_file(path: str) -> str:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_IMPORT + 1)
    except FileNotFoundError:
        raise IPCError(f"{path}: no such file", code="not_found") from None
    except OSError as e:
        raise IPCError(f"cannot read {path}: {e.strerror or e}", code="usage") from None
    if len(raw) > MAX_IMPORT:
        raise IPCError(f"{path} is larger than 64 KiB; is it a profile?", code="usage")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise IPCError(f"{path} is not UTF-8 text", code="usage") from None


def _write_private(path: str, text: str, *, secret: bool) -> None:
    """Write atomically; a file holding secrets is created 0600 and never exists wider."""
    try:
        write_atomic(path, text.encode("utf-8"), mode=0o600 if secret else 0o666)
    except OSError as e:
        raise IPCError(f"cannot write {path}: {e.strerror or e}", code="local") from None


# --- arguments ----------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunseal", description="Control Tunseal tunnels through the Tunseal helper.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    parser.add_argument("--socket", metavar="PATH",
                        help="the helper's socket (default $TUNSEAL_SOCKET or "
                        "/run/tunseal/helper.sock)")
    sub = parser.add_subparsers(metavar="COMMAND", required=True)

    def command(name: str, fn: Command, help_text: str, *names: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        for arg in names:
            action = p.add_argument(arg)
            if arg == "name":
                completion.profile_arg(action)
        p.set_defaults(command=fn)
        return p

    command("up", cmd_up, "bring a tunnel up", "name")
    command("down", cmd_down, "take a tunnel down", "name")
    status = command("status", cmd_status, "show tunnel status")
    completion.profile_arg(status.add_argument("name", nargs="?"))
    status.add_argument("--peers", action="store_true",
                        help="with NAME: also list every peer (a gateway's status counts them)")
    status.add_argument("--watch", action="store_true", help="redraw every second until Ctrl-C")
    status.add_argument("--count", type=_positive_int, help="with --watch: stop after N redraws")
    status.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    listing = command("list", cmd_list, "list profiles and their state")
    listing.add_argument("--names", action="store_true",
                         help="print only the profiles' names, one per line (for scripts)")
    lock = command("lockdown", cmd_lockdown,
                   "the kill switch: 'on' blocks everything but the tunnel, even with no "
                   "tunnel up, until 'off'")
    lock.add_argument("action", choices=("on", "off", "status"))
    lock.add_argument("--allow-lan", action="store_true",
                      help="with on: let the local network (RFC 1918, link-local, ULA) through")
    imp = command("import", cmd_import, "import a .tunseal file (its [secrets] go to the keyring)",
                  "file")
    imp.add_argument("--replace", action="store_true", help="replace a profile of the same name")
    command("remove", cmd_remove, "take a tunnel down and delete its profile and keys", "name")
    exp = command("export", cmd_export, "print or write a profile as a .tunseal file", "name")
    exp.add_argument("--with-secrets", action="store_true",
                     help="include the keys (the file is then created 0600)")
    exp.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    command("genkey", cmd_genkey, "generate a new private key; prints the public key", "name")
    command("show", cmd_show, "show a profile and this end's public key", "name")
    command("pubkey", cmd_pubkey, "print this end's public key", "name")
    command("genpsk", cmd_genpsk, "generate a new pre-shared key", "name")
    command("setpeerkey", cmd_setpeerkey, "set the peer's public key", "name", "key")
    join = command("join", cmd_join, "join an office gateway with an invitation: makes the "
                   "key pair here, enrols, and saves the profile")
    join.add_argument("invitation", help="the invitation text (tunseal1:...), a file holding "
                      "it, or - to read it from standard input")
    join.add_argument("--name", help="the profile's name (default: the gateway's)")
    peer = sub.add_parser("peer", help="manage the peers of a gateway helper",
                          description="Manage the peers of a helper started with --gateway.")
    psub = peer.add_subparsers(metavar="ACTION", required=True)
    add = psub.add_parser("add", help="add a peer; prints its ready-to-import client profile")
    add.add_argument("name")
    add.add_argument("--allowed-ip", action="append", metavar="CIDR", dest="allowed_ips",
                     help="inner address(es) routed to this peer (default: the next free one)")
    add.add_argument("-o", "--output", metavar="FILE",
                     help="write the client profile (with its keys, 0600) to FILE")
    add.add_argument("--qr", action="store_true",
                     help="also show the gateway's public key as a QR code in the terminal")
    add.add_argument("--public-key", metavar="KEY",
                     help="the peer's own public key (it made its key pair itself, e.g. with "
                     "'tunseal genkey'): the gateway then creates no private key, and the "
                     "profile carries none")
    add.set_defaults(command=cmd_peer_add)
    inv = psub.add_parser("invite", help="print a one-time invitation for a new peer (the "
                          "peer makes its own keys when it joins)")
    inv.add_argument("name")
    inv.add_argument("--allowed-ip", action="append", metavar="CIDR", dest="allowed_ips",
                     help="inner address(es) routed to this peer (default: the next free one)")
    inv.add_argument("--expires", default="24h", metavar="DURATION",
                     help="how long it stays good: 90s, 30m, 24h (default), 7d")
    inv.add_argument("-o", "--output", metavar="FILE",
                     help="also write the invitation to FILE (0600)")
    inv.add_argument("--no-qr", action="store_true", help="do not draw the QR code")
    inv.set_defaults(command=cmd_peer_invite)
    rev = psub.add_parser("revoke", help="remove a peer and end its sessions at once; "
                          "withdraw its open invitation")
    rev.add_argument("name")
    rev.set_defaults(command=cmd_peer_revoke)
    for action, fn, text in (("list", cmd_peer_list, "list the gateway's peers"),
                             ("show", cmd_peer_show, "show one peer"),
                             ("remove", cmd_peer_remove, "remove a peer and its keys")):
        p = psub.add_parser(action, help=text)
        if action != "list":
            p.add_argument("name")
        p.set_defaults(command=fn)
    # Commands that live in their own modules (autoconnect's network/trust/untrust, doctor,
    # bugreport, completion) register themselves.
    from core import bugreport, cli_network, doctor

    for module in (cli_network, doctor, bugreport, completion):
        module.register(sub)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


if __name__ == "__main__":
    sys.exit(main())
