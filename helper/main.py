"""``tunseal-helper``: the privileged service behind the CLI and the GUI.

Builds the key store, the profile store, the engine, the request handlers and the control socket,
brings persisting tunnels back up, and serves until SIGTERM or SIGINT, when it takes every tunnel
down before exiting. It refuses to start without an encrypted keyring: there is no plaintext
fallback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.errors import IPCError, TunsealError
from helper import diagnose
from helper.autoconnect import Autoconnect
from helper.control import ControlServer
from helper.engine import Engine
from helper.gateway import GatewayService
from helper.keystore import SERVICE as KEYRING_SERVICE
from helper.keystore import KeyringUnavailable, KeyStore
from helper.profilestore import ProfileStore
from helper.recentlog import RecentLog
from helper.service import Service

log = logging.getLogger("helper")

DEFAULT_SOCKET = "/run/tunseal/helper.sock"
DEFAULT_STATE_DIR = "/var/lib/tunseal"
DEFAULT_GROUP = "tunseal"


def sd_notify(state: str) -> bool:
    """Tell systemd ``state`` (``READY=1``...) over $NOTIFY_SOCKET, as sd_notify(3) does: one
    datagram to a Unix socket, a path or (leading '@') an abstract name. False when there is
    no such socket (not started by systemd with Type=notify) or the datagram could not go."""
    where = os.environ.get("NOTIFY_SOCKET", "")
    if not where.startswith(("/", "@")):
        return False
    address = "\0" + where[1:] if where.startswith("@") else where
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(state.encode("utf-8"), address)
        except OSError as e:
            log.warning("could not notify systemd at %s: %s", where, e.strerror or e)
            return False
    return True


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="tunseal-helper",
        description="The Tunseal privileged helper: runs tunnels for the tunseal CLI and GUI.",
    )
    parser.add_argument("--socket", default=DEFAULT_SOCKET, type=Path,
                        help=f"control socket path (default {DEFAULT_SOCKET})")
    parser.add_argument("--state-dir", default=DEFAULT_STATE_DIR, type=Path,
                        help=f"profiles and runtime state (default {DEFAULT_STATE_DIR})")
    parser.add_argument("--group", default=DEFAULT_GROUP,
                        help="members of this group may use the helper (default %(default)s); "
                        "if it does not exist, only root may")
    parser.add_argument("--gateway", metavar="CONFIG", type=Path,
                        help="also run the office gateway described by CONFIG (docs/GATEWAY.md)")
    parser.add_argument("--keyring-service", default=KEYRING_SERVICE, metavar="NAME",
                        help="the Secret Service 'service' attribute of this helper's key items "
                        "(default %(default)s); helpers sharing one Secret Service (tests, "
                        "several helpers for one user) need one each, as key item names are "
                        "the helper's own (profile:NAME:private)")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"],
                        help="(default %(default)s)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    level = getattr(logging, args.log_level.upper())
    # stderr goes to the journal, which stamps the time itself.
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    args.socket.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    args.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    args.state_dir.chmod(0o700)
    try:
        keys = KeyStore(args.keyring_service)
    except KeyringUnavailable as e:
        print(f"tunseal-helper: no Secret Service available: {e}", file=sys.stderr)
        return 1
    try:
        return asyncio.run(_run(args, keys, level))
    except IPCError as e:  # the socket cannot be created (another helper is running...)
        print(f"tunseal-helper: {e}", file=sys.stderr)
        return 1


async def _run(args: argparse.Namespace, keys: KeyStore, level: int) -> int:
    profiles = ProfileStore(args.state_dir / "profiles")
    diagnose.configure(args.state_dir)
    server: ControlServer | None = None
    auto: Autoconnect | None = None

    def forward(event: str, data: dict[str, Any]) -> None:
        if server is not None:
            server.publish(event, data)
        if auto is not None:
            auto.on_event(event, data)

    # Starting the engine (it undoes what a crashed run left), the gateway and a shutdown all
    # talk netlink through pyroute2, whose synchronous IPRoute drives an asyncio loop of its
    # own: that fails on this thread, where a loop is already running. So: worker threads.
    engine = await asyncio.to_thread(Engine, on_event=forward, state_dir=args.state_dir)
    gateway: GatewayService | None = None
    if args.gateway is not None:
        try:
            gateway = GatewayService(args.gateway, keys=keys, engine=engine, notify=forward)
            await asyncio.to_thread(gateway.start)
        except TunsealError as e:
            await asyncio.to_thread(engine.shutdown)
            print(f"tunseal-helper: gateway {args.gateway}: {e}", file=sys.stderr)
            return 1
    recent = RecentLog(level)  # for recent_log: clients that open after the fact
    logging.getLogger().addHandler(recent)
    service = Service(profiles=profiles, keys=keys, engine=engine, notify=forward,
                      gateway=gateway, recent_log=recent)
    # Before anyone can connect: profiles stored with caller-chosen key names get the
    # helper's own (helper/keyrefs.py).
    await asyncio.to_thread(service.migrate_key_refs)
    auto = Autoconnect(service=service, profiles=profiles, running=engine.running)
    auto.register(service)
    engine.add_network_listener(auto.network_changed)
    server = ControlServer(path=args.socket, group=args.group, service=service)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    handler = server.log_handler(level)
    logging.getLogger().addHandler(handler)
    try:
        await server.start()
        restoring = asyncio.create_task(asyncio.to_thread(service.restore))
        auto.start()
        log.info("ready")
        # Type=notify: the unit is up once clients can connect (the socket listens).
        sd_notify(f"READY=1\nSTATUS=listening on {args.socket}\nMAINPID={os.getpid()}")
        await stop.wait()
        log.info("stopping: taking every tunnel down")
        sd_notify("STOPPING=1\nSTATUS=taking every tunnel down")
        await restoring
    finally:
        await server.close()
        await asyncio.to_thread(auto.stop)
        logging.getLogger().removeHandler(handler)
        logging.getLogger().removeHandler(recent)
        await asyncio.to_thread(engine.shutdown)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
