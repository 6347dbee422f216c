"""A helper killed with SIGKILL while its tunnel is up, and what the next start makes of it; and
the key-leak audit over everything the helpers wrote.

The kernel deletes a non-persistent TUN device (and every route through it) when the last file
descriptor on it closes, so a crashed helper leaves no device behind; a device that outlived
its helper anyway is removed from the crash record at the next start (helper/records.py). A
``persist`` profile comes back up after the restart, and traffic flows again.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from typing import Any

import helpers_proc
import netlab
import pytest
from tunnellab import (
    MODES,
    EchoServer,
    End,
    Spec,
    TunnelPair,
    assert_transfer,
    assert_udp_echo,
    echo_sizes,
    ip_json,
    tcp_transfer,
    tunnel_pair,
    udp_echo,
)

from helper.keystore import SERVICE
from helper.netdev import RTPROT_TUNSEAL

pytestmark = [pytest.mark.netns, pytest.mark.keyring]

NBYTES = 2_000_000
GONE_TIMEOUT = 5.0
RECOVERY_TIMEOUT = 45.0
"""A restarted server has forgotten the sessions: the client notices the silence after
KEEPALIVE_TIMEOUT + REKEY_TIMEOUT (15 s) of sending unanswered, then handshakes again."""


def tunnel_links(lab: netlab.Lab, ns: str) -> list[str]:
    return sorted(link["ifname"] for link in ip_json(lab, ns, "link", "show")
                  if link["ifname"].startswith("ts-"))


def routes_via(lab: netlab.Lab, ns: str, ifname: str) -> list[dict[str, Any]]:
    """Every IPv4 and IPv6 route of every table whose device is ``ifname``."""
    routes = ip_json(lab, ns, "-4", "route", "show", "table", "all")
    routes += ip_json(lab, ns, "-6", "route", "show", "table", "all")
    return [r for r in routes if r.get("dev") == ifname]


def main_routes(lab: netlab.Lab, ns: str, ifname: str) -> list[str]:
    """The destinations of the main table's routes through ``ifname``, sorted: the prefix
    routes of the link's addresses and the ones Tunseal adds for allowed_ips that those do not
    cover (protocol 77)."""
    return sorted(f"{r['dst']} {r.get('protocol')}" for r in routes_via(lab, ns, ifname)
                  if r.get("table", "main") == "main")


def wait_until(what: str, ok: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.1)


def record_of(end: End, ifname: str) -> dict[str, Any] | None:
    path = end.helper.state_dir / "run" / f"{ifname}.json"
    return json.loads(path.read_text()) if path.exists() else None


def recover(pair: TunnelPair, timeout: float = RECOVERY_TIMEOUT) -> None:
    """Keep offering traffic (one datagram at a time, as a user's applications would) until both
    ends are up again."""
    deadline = time.monotonic() + timeout
    echo = EchoServer(pair, port=7009)
    try:
        while not all(end.status(cli=False)["state"] == "up" for end in pair.ends):
            assert time.monotonic() < deadline, {e.role: e.status() for e in pair.ends}
            echo.exchange([64], stop=False)
    finally:
        echo.counts()
    pair.wait_state("up")


@pytest.mark.parametrize("victim", ["client", "server"])
def test_sigkill_leaves_no_device_and_a_restart_brings_the_tunnel_back(
    lab: netlab.Lab, victim: str
) -> None:
    with tunnel_pair(lab, Spec(persist=True, inner6=True)) as pair:
        end: End = getattr(pair, victim)
        assert_transfer(tcp_transfer(pair, NBYTES), NBYTES, pair)
        ifname = end.status()["interface"]
        assert tunnel_links(lab, end.ns) == [ifname]
        routes = main_routes(lab, end.ns, ifname)
        assert "10.44.0.0/24 kernel" in routes and "fd44:5eed::/64 kernel" in routes, routes
        old_pid = end.helper.pid
        assert record_of(end, ifname)["pid"] == old_pid  # type: ignore[index]

        end.helper.kill()
        wait_until(f"{ifname} deleted", lambda: tunnel_links(lab, end.ns) == [], GONE_TIMEOUT)
        assert routes_via(lab, end.ns, ifname) == []
        # The crash record stays for the next start to act on.
        assert record_of(end, ifname)["pid"] == old_pid  # type: ignore[index]

        end.helper.start()
        end.helper.wait_for_log(f"brought up persisting tunnel {end.name!r}")
        new_pid = end.helper.pid
        assert new_pid != old_pid
        recover(pair)
        assert tunnel_links(lab, end.ns) == [ifname]
        assert main_routes(lab, end.ns, ifname) == routes
        assert record_of(end, ifname)["pid"] == new_pid  # type: ignore[index]
        assert_transfer(tcp_transfer(pair, NBYTES), NBYTES, pair)
        assert_udp_echo(*udp_echo(pair, count=30, v6=True))


def test_a_device_that_outlived_its_helper_is_removed_at_the_next_start(
    lab: netlab.Lab,
) -> None:
    """As if the crashed helper's device had survived it (made persistent): the same name, up,
    with a Tunseal route. The next start deletes it from the crash record before the persisting
    profile comes back on a fresh device."""
    with tunnel_pair(lab, Spec(persist=True)) as pair:
        end = pair.client
        ifname = end.status()["interface"]
        routes = main_routes(lab, end.ns, ifname)
        end.helper.kill()
        wait_until(f"{ifname} deleted", lambda: tunnel_links(lab, end.ns) == [], GONE_TIMEOUT)
        holder = netlab.hold_tun(lab, end.ns, ifname, persist=True)
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(10)
        lab.run(end.ns, "ip", "link", "set", ifname, "up")
        lab.run(end.ns, "ip", "route", "add", f"{pair.server.inner4}/32", "dev", ifname,
                "proto", str(RTPROT_TUNSEAL))
        assert tunnel_links(lab, end.ns) == [ifname]
        assert main_routes(lab, end.ns, ifname) == [f"{pair.server.inner4} {RTPROT_TUNSEAL}"]
        index = ip_json(lab, end.ns, "link", "show", ifname)[0]["ifindex"]

        end.helper.start()
        end.helper.wait_for_log(f"removed a leftover from an earlier run: deleted link {ifname}")
        pair.wait_state("up")
        links = ip_json(lab, end.ns, "link", "show", ifname)
        assert [link["ifname"] for link in links] == [ifname]
        assert links[0]["ifindex"] != index, "the stale device was reused, not replaced"
        assert main_routes(lab, end.ns, ifname) == routes
        assert_transfer(tcp_transfer(pair, NBYTES), NBYTES, pair)


# --- the key-leak audit ------------------------------------------------------------------------


def secret_tool(ref: str) -> bytes | None:
    """The key under ``ref`` as ``secret-tool`` (libsecret, not our code) reads it. A lookup
    that fails with a message (not just "no such item") is tried again, twice at most: see
    tunnellab.read_key."""
    for _ in range(3):
        done = subprocess.run(["secret-tool", "lookup", "service", SERVICE, "username", ref],
                              capture_output=True, text=True, timeout=30, check=False)
        if done.returncode == 0 and done.stdout:
            return base64.b64decode(done.stdout)
        if not done.stderr.strip():
            return None
        time.sleep(0.2)
    raise AssertionError(f"secret-tool lookup {ref}: {done.stderr.strip()}")


@pytest.mark.parametrize("mode", MODES)
def test_no_key_material_in_logs_status_or_state(lab: netlab.Lab, mode: str) -> None:
    """Everything a person might do with a tunnel, including a crash of both helpers; then
    every line either helper logged, every status reply and CLI output, and every file under
    both state directories is searched for every key, in hex, base64 (with and without
    padding, URL-safe) and raw. (Every other test's pair runs the same search when it ends;
    this one also proves the search finds keys where they are.)"""
    spec = Spec(mode=mode, persist=True)
    with tunnel_pair(lab, spec) as pair:
        assert_udp_echo(*udp_echo(pair, count=20))
        for end in pair.ends:
            end.cli("status")
            end.cli_json("status")
            end.cli("list")
            end.cli("show", end.name)
            end.cli("export", end.name)
            end.cli("status", "--watch", "--count", "2", "--interval", "0.1")
            with end.helper.client() as c:
                c.call("subscribe")
                end.cli("down", end.name)
                end.cli("up", end.name)
                while (event := c.next_event(0.5)) is not None:
                    end.watch.transcript.append(json.dumps(event.data))
        pair.wait_state("up")

        for end in pair.ends:
            end.helper.kill()
        for end in pair.ends:
            end.helper.start()
        recover(pair)
        echo = EchoServer(pair)
        assert echo.exchange(echo_sizes(1000, 10))["ok"] == 10

        refs = [ref for end in pair.ends for ref in end.key_refs()]
        pair.watch.note_keys(refs)
        by_tool = {ref: secret_tool(ref) for ref in refs}
        if not spec.sealed:
            assert pair.watch.keys == {} and set(by_tool.values()) == {None}
            pair.watch.check(expect_keys=False)
            return
        known = {k.split("#")[0]: v for k, v in pair.watch.keys.items()}
        assert {ref: key for ref, key in by_tool.items() if key is not None} == known
        expected = {f"profile:{e.name}:psk" for e in pair.ends} if spec.has_psk else set()
        if spec.profile_mode == "ephemeral":
            expected |= {f"profile:{e.name}:private" for e in pair.ends}
        assert set(known) == expected
        # Both ends of a psk tunnel hold the same key under their own refs.
        if spec.has_psk:
            assert len({known[f"profile:{e.name}:psk"] for e in pair.ends}) == 1
        pair.watch.check()

        # The search is not blind: an export the user asked secrets for is where they are.
        exported = helpers_proc.cli(pair.server.helper.socket, "export", pair.server.name,
                                    "--with-secrets").stdout
        pair.watch.transcript.append(exported)
        assert pair.watch.findings(), "the leak search missed keys in an export with secrets"
        pair.watch.transcript.remove(exported)
