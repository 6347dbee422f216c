"""Lockdown (the kill switch): one nftables table that lets nothing out but the tunnel.

:func:`ruleset` is a pure function from a :class:`Policy` to the text of the whole table
(``table inet tunseal_lockdown``); docs/LOCKDOWN.md explains it line by line. :func:`apply`
loads it with one ``nft -f`` transaction that deletes and re-adds the table, so there is never a
moment with half a table, or none, while one is wanted. The table is keyed on the outgoing
interface name (a tunnel's ``ts-...`` name matches even while its device is gone, so a
reconnecting or crashed tunnel blocks instead of leaking) and on :data:`FWMARK`, which only the
helper's own transport sockets carry (SO_MARK needs CAP_NET_ADMIN).

:class:`Lockdown` is the helper's state: which tunnels hold the lockdown (from ``up`` until the
user's ``down``), whether ``always`` is on (persisted in ``<state_dir>/lockdown.json``), and the
DNS servers the tunnel may use (:meth:`Lockdown.set_dns_servers`, for helper/dns.py). A helper
killed with SIGKILL leaves the table in the kernel, still blocking; the next start reconciles it
(:meth:`Lockdown.reconcile`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from core import fields
from core.atomicfile import write_atomic
from core.constants import RAW_IP_PROTOCOL, TransportKind
from core.errors import TunsealError
from helper.policyroute import FWMARK

__all__ = [
    "FAMILY",
    "FWMARK",
    "TABLE",
    "Hold",
    "Lockdown",
    "LockdownError",
    "PeerAddress",
    "Policy",
    "apply",
    "present",
    "ruleset",
]

log = logging.getLogger(__name__)

FAMILY = "inet"
TABLE = "tunseal_lockdown"
LAN4 = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "224.0.0.0/24")
"""RFC 1918, IPv4 link-local, and link-local multicast (mDNS, printers' discovery)."""
LAN6 = ("fe80::/10", "fc00::/7", "ff02::/16")
"""Link-local, unique local (ULA), and link-scope multicast."""
DNS_PORTS = (53, 853)
"""DNS and DNS over TLS: what the DNS rules hold to the tunnel's servers."""
NFT_TIMEOUT = 10.0


class LockdownError(TunsealError):
    """The lockdown could not be set or changed; the message says what to do."""


@dataclass(frozen=True, slots=True)
class PeerAddress:
    """Where a tunnel's outer packets go: the only non-tunnel destination marked packets may
    reach."""

    address: str
    port: int
    transport: str = "udp"


@dataclass(frozen=True, slots=True)
class Policy:
    """What the table allows. ``families`` are the blocked address families (4, 6): a
    lockdown blocks both, an IPv4 full tunnel without IPv6 blocks only 6."""

    families: frozenset[int]
    tunnels: tuple[str, ...] = ()
    endpoints: tuple[PeerAddress, ...] = ()
    allow_lan: bool = False
    dns_servers: tuple[str, ...] = ()
    """The tunnel's DNS servers: port 53/853 to anything else is dropped (loopback aside)."""


def ruleset(policy: Policy) -> str:
    """The whole table for ``policy`` (nft syntax, one rule per line)."""
    for name in policy.tunnels:
        if not fields.is_ifname(name):
            raise LockdownError(f"{name!r} is not an interface name")
    tunnels = _set(f'"{t}"' for t in policy.tunnels)
    out = [
        f"table {FAMILY} {TABLE} {{",
        "  chain output {",
        "    type filter hook output priority filter; policy accept;",
        '    oifname "lo" accept',
        # The helper's own lookups of its peers' host names (helper/hostlookup.py): marked
        # like its tunnels' packets, so nothing else's DNS gets by.
        f"    meta mark {FWMARK:#x} meta l4proto {{ tcp, udp }} th dport 53 accept",
    ]
    out += [f"    {r}" for r in _dns_rules(policy, tunnels)]
    if tunnels:
        out.append(f"    oifname {tunnels} accept")
    out += [f"    {r}" for r in _endpoint_rules(policy.endpoints)]
    out += [
        "    udp sport 68 udp dport 67 accept",
        "    udp sport 546 udp dport 547 accept",
        "    icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } "
        "ip6 hoplimit 255 accept",
        "    icmpv6 type { mld-listener-report, mld-listener-done, mld2-listener-report } "
        "ip6 daddr ff02::/16 accept",
    ]
    out += [f"    {r}" for r in _lan_rules(policy, "daddr")]
    out += [f"    {r}" for r in _drops(policy)]
    out += ["  }", "  chain forward {",
            "    type filter hook forward priority filter; policy accept;"]
    if tunnels:
        out += [f"    oifname {tunnels} accept", f"    iifname {tunnels} accept"]
    out += [f"    {r}" for r in _lan_rules(policy, "daddr")]
    out += [f"    {r}" for r in _drops(policy)]
    out += ["  }", "}"]
    return "\n".join(out) + "\n"


def _set(items: Iterable[str]) -> str:
    values = list(items)
    if not values:
        return ""
    return values[0] if len(values) == 1 else "{ " + ", ".join(values) + " }"


def _dns_rules(policy: Policy, tunnels: str) -> list[str]:
    """DNS (53, 853; UDP and TCP) may go to the tunnel's servers only; without a list, it may
    go through the tunnel only. Either way never to the LAN's resolver, allow_lan or not."""
    ports = "th dport { " + ", ".join(str(p) for p in DNS_PORTS) + " }"
    proto = "meta l4proto { tcp, udp }"
    out = []
    servers = [ipaddress.ip_address(s) for s in policy.dns_servers]
    for fam, ip in ((4, "ip"), (6, "ip6")):
        if fam not in policy.families:
            continue
        mine = [str(a) for a in servers if a.version == fam]
        if servers and mine:
            out.append(f"{ip} daddr != {_set(mine)} {proto} {ports} counter drop")
        elif servers:
            out.append(f"meta nfproto ipv{fam} {proto} {ports} counter drop")
        if tunnels:
            out.append(f"meta nfproto ipv{fam} oifname != {tunnels} {proto} {ports} counter drop")
        else:
            out.append(f"meta nfproto ipv{fam} {proto} {ports} counter drop")
    return out


def _endpoint_rules(endpoints: Iterable[PeerAddress]) -> list[str]:
    out = []
    for ep in sorted(set(endpoints), key=lambda e: (e.address, e.port, e.transport)):
        addr = ipaddress.ip_address(ep.address)
        ip = "ip" if addr.version == 4 else "ip6"
        if ep.transport == TransportKind.RAW:
            what = f"meta l4proto {RAW_IP_PROTOCOL}"
        else:
            what = f"udp dport {int(ep.port)}"
        out.append(f"meta mark {FWMARK:#x} {ip} daddr {addr} {what} accept")
    return out


def _lan_rules(policy: Policy, which: str) -> list[str]:
    if not policy.allow_lan:
        return []
    out = []
    if 4 in policy.families:
        out.append(f"ip {which} {_set(LAN4)} accept")
    if 6 in policy.families:
        out.append(f"ip6 {which} {_set(LAN6)} accept")
    return out


def _drops(policy: Policy) -> list[str]:
    return [f"meta nfproto ipv{fam} counter drop" for fam in sorted(policy.families)]


# --- the applier -------------------------------------------------------------------------------


def _nft(script: str, what: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["nft", "-f", "-"], input=script, text=True, capture_output=True,
                              timeout=NFT_TIMEOUT, check=False)
    except FileNotFoundError:
        raise LockdownError(f"cannot {what}: nftables ('nft') is not installed; install the "
                            "nftables package (a full tunnel needs it to keep traffic from "
                            "leaving beside the tunnel)") from None
    except subprocess.TimeoutExpired:
        raise LockdownError(f"cannot {what}: nft did not answer in {NFT_TIMEOUT:.0f} s") from None


def apply(policy: Policy | None) -> None:
    """Make the kernel's table match ``policy`` (None: no table), in one transaction: the
    first line creates the table if it is missing so that the delete cannot fail."""
    head = f"table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n"
    script = head + (ruleset(policy) if policy is not None else "")
    done = _nft(script, "set the lockdown rules")
    if done.returncode != 0:
        raise LockdownError(f"nft refused the lockdown rules: {done.stderr.strip()}")


def present() -> bool:
    """Whether the kernel has the table (left by a crashed helper, say)."""
    try:
        done = subprocess.run(["nft", "list", "table", FAMILY, TABLE], capture_output=True,
                              text=True, timeout=NFT_TIMEOUT, check=False)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


# --- the helper's state ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hold:
    """One tunnel's claim on the table, from ``up`` until the user's ``down``."""

    ifname: str
    endpoints: tuple[PeerAddress, ...] = ()
    families: frozenset[int] = frozenset({4, 6})
    allow_lan: bool = False
    lockdown: str = "connected"
    """"connected" or "always" (a kill switch), or "off": no kill switch, only what
    ``families`` blocks (the IPv6 block of an IPv4 full tunnel, or nothing); such a hold still
    lets its tunnel through whenever ``always`` is on."""
    dns_servers: tuple[str, ...] = ()
    """The tunnel's DNS servers (its profile's ``dns``): under lockdown, DNS may go to these
    only."""
    ipv6_block: bool = False
    """An IPv4 full tunnel: IPv6 stays blocked beside it even when its kill switch ends."""

    def without_kill_switch(self) -> Hold:
        if not _kill_switch(self):
            return self
        return replace(self, lockdown="off", allow_lan=True,
                       families=frozenset({6}) if self.ipv6_block else frozenset())


@dataclass
class _State:
    always: bool = False
    allow_lan: bool = False
    holds: dict[str, Hold] = field(default_factory=dict)
    dns_servers: tuple[str, ...] = ()


class Lockdown:
    """The lockdown of this helper. Thread-safe; every change rewrites the table at once."""

    def __init__(self, state_dir: Path, *,
                 on_change: Callable[[dict[str, Any]], None] | None = None,
                 applier: Callable[[Policy | None], None] = apply):
        self._path = Path(state_dir) / "lockdown.json"
        self._on_change = on_change
        self._apply = applier
        self._lock = threading.RLock()
        self._state = _State(**self._load())
        self._applied: Policy | None = None
        self._stale = False
        self._up: set[str] = set()

    # --- what the engine and the service call ------------------------------------------------

    def hold(self, name: str, hold: Hold) -> None:
        """``name`` holds the lockdown (before its tunnel starts). A profile in ``always``
        lockdown also turns the global ``always`` on."""
        with self._lock:
            self._state.holds[name] = hold
            if hold.lockdown == "always" and not self._state.always:
                self._state.always, self._state.allow_lan = True, hold.allow_lan
                self._save()
            self._sync()

    @contextlib.contextmanager
    def let_through(self, name: str, endpoint: PeerAddress) -> Iterator[None]:
        """While inside: the helper's marked packets may reach ``endpoint`` (a join's gateway)
        through whatever lockdown is in force. Blocks nothing and holds no tunnel itself."""
        self.hold(name, Hold(ifname="", endpoints=(endpoint,), families=frozenset(),
                             lockdown="off"))
        try:
            yield
        finally:
            self.release(name)

    def holds(self, name: str) -> bool:
        return name in self._state.holds

    def kill_switch(self, name: str) -> bool:
        """Whether ``name`` holds a kill switch now (connected or always)."""
        hold = self._state.holds.get(name)
        return hold is not None and _kill_switch(hold)

    def update_endpoints(self, name: str, endpoints: tuple[PeerAddress, ...]) -> None:
        """A tunnel's endpoint moved (its host name resolved to a new address)."""
        with self._lock:
            old = self._state.holds.get(name)
            if old is not None and old.endpoints != endpoints:
                self._state.holds[name] = replace(old, endpoints=endpoints)
                self._sync()

    def release(self, name: str) -> None:
        """The user took ``name`` down: its lockdown ends (``always`` stays)."""
        with self._lock:
            self._up.discard(name)
            if self._state.holds.pop(name, None) is not None:
                self._sync()

    def set_up(self, name: str, up: bool) -> None:
        """Whether ``name``'s tunnel carries traffic now (for the "blocked" state)."""
        with self._lock:
            was = self._status_key()
            (self._up.add if up else self._up.discard)(name)
            if self._status_key() != was:
                self._publish()

    def set_always(self, on: bool, *, allow_lan: bool = False) -> None:
        with self._lock:
            self._state.always, self._state.allow_lan = on, allow_lan and on
            if not on:
                # Off means off: the connected lockdowns end too (tunnels stay up, and still
                # pass should `always` come back); the IPv6 block of IPv4 full tunnels, which
                # is no kill switch, remains.
                self._state.holds = {n: h.without_kill_switch()
                                     for n, h in self._state.holds.items()}
            self._save()
            self._sync()

    def set_dns_servers(self, servers: Iterable[str]) -> None:
        """The DNS servers the tunnel may use under lockdown (helper/dns.py's hook)."""
        with self._lock:
            new = tuple(str(ipaddress.ip_address(s)) for s in servers)
            if new != self._state.dns_servers:
                self._state.dns_servers = new
                self._sync()

    def note_stale(self, table: str) -> bool:
        """A crash record names the table: the crashed helper's lockdown is still in the kernel
        (and blocking). :meth:`reconcile` decides what stays."""
        if table != TABLE:
            return False
        self._stale = True
        return True

    def reconcile(self, keep: Iterable[tuple[str, Hold]] = ()) -> None:
        """At start, before any tunnel comes up: ``keep`` are the holds of profiles about to
        come back up (persist); with those and ``always`` the table is rewritten, without
        them removed. One transaction either way: a crashed helper's table never lapses
        while one is wanted."""
        with self._lock:
            for name, hold in keep:
                self._state.holds[name] = hold
            left = self._stale or present()
            self._stale = False
            if left:
                log.info("lockdown: reconciling the table left by an earlier run")
            elif self._policy() is None:
                return  # nothing there, nothing wanted: no need to touch the firewall
            self._applied = None
            self._sync(force=True)

    def status(self) -> dict[str, Any]:
        with self._lock:
            return self._status()

    @property
    def policy(self) -> Policy | None:
        return self._policy()

    # --- internals ---------------------------------------------------------------------------

    def _policy(self) -> Policy | None:
        s = self._state
        holds = list(s.holds.values())
        families: set[int] = set()
        for h in holds:
            families |= h.families
        locking = [h for h in holds if _kill_switch(h)]
        if s.always:
            families |= {4, 6}
        if not families:
            return None
        lan = [h.allow_lan for h in locking] + ([s.allow_lan] if s.always else [])
        return Policy(
            families=frozenset(families),
            tunnels=tuple(sorted({h.ifname for h in holds if h.ifname})),
            endpoints=tuple(sorted({e for h in holds for e in h.endpoints},
                                   key=lambda e: (e.address, e.port, e.transport))),
            allow_lan=all(lan) if lan else True,
            dns_servers=_dns(s, locking) if (locking or s.always) else (),
        )

    def _sync(self, *, force: bool = False) -> None:
        policy = self._policy()
        if policy == self._applied and not force:
            return
        self._apply(policy)
        before = self._applied
        self._applied = policy
        log.info("lockdown: %s", _describe(policy))
        if _blocking(before) != _blocking(policy):
            log.info("lockdown %s", "started" if _blocking(policy) else "ended")
        self._publish()

    def _status_key(self) -> tuple[bool, bool]:
        st = self._status()
        return bool(st["active"]), bool(st["blocked"])

    def _status(self) -> dict[str, Any]:
        policy = self._applied
        locked = sorted(n for n, h in self._state.holds.items() if _kill_switch(h))
        active = _blocking(policy)
        return {
            "always": self._state.always,
            "allow_lan": policy.allow_lan if policy is not None else self._state.allow_lan,
            "active": active,
            "blocked": active and not (set(self._state.holds) & self._up),
            "tunnels": locked,
            "ipv6_blocked": sorted(n for n, h in self._state.holds.items()
                                   if not _kill_switch(h) and 6 in h.families),
            "dns_servers": list(self._state.dns_servers),
        }

    def _publish(self) -> None:
        if self._on_change is not None:
            try:
                self._on_change(self._status())
            except Exception:
                log.exception("delivering a lockdown event failed")

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self._path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            # Unreadable: err on the safe side, the user turns it off explicitly.
            log.warning("%s is unreadable (%s): keeping lockdown 'always' on", self._path, e)
            return {"always": True}
        return {"always": data.get("always") is True, "allow_lan": data.get("allow_lan") is True}

    def _save(self) -> None:
        data = json.dumps({"always": self._state.always, "allow_lan": self._state.allow_lan})
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(str(self._path), data.encode() + b"\n", mode=0o600)
        except OSError as e:
            raise LockdownError(f"cannot save the lockdown state in {self._path}: {e}") from None


def _dns(state: _State, locking: list[Hold]) -> tuple[str, ...]:
    """The tunnels' own servers and those :meth:`Lockdown.set_dns_servers` added, in order."""
    out: list[str] = []
    for server in (*(s for h in locking for s in h.dns_servers), *state.dns_servers):
        if server not in out:
            out.append(server)
    return tuple(out)


def _kill_switch(hold: Hold) -> bool:
    return hold.lockdown in ("connected", "always")


def _blocking(policy: Policy | None) -> bool:
    """A kill switch is in force (both families blocked), not just the IPv6 block."""
    return policy is not None and policy.families == frozenset({4, 6})


def _describe(policy: Policy | None) -> str:
    if policy is None:
        return "no table"
    fams = "+".join(f"IPv{f}" for f in sorted(policy.families))
    lan = ", LAN allowed" if policy.allow_lan and _blocking(policy) else ""
    tunnels = ", ".join(policy.tunnels) or "no tunnel"
    return f"blocking {fams} except through {tunnels}{lan}"

