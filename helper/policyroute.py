"""Policy routing for full tunnels (``0.0.0.0/0`` or ``::/0``), the way wg-quick does it.

A full tunnel's default route lives in a table of its own (:data:`TABLE`). Two rules send
everything there except the helper's own outer packets, which carry :data:`FWMARK` (set with
SO_MARK on the transport sockets, helper/transport.py)::

    32764: from all lookup main suppress_prefixlength 0      (main, minus its default routes)
    32765: not from all fwmark 0x7453 lookup 29779          (everything else: the tunnel)

So the LAN and other specific routes still work, and the outer packets to the endpoint follow
the main table, i.e. whatever the current physical default route is: a laptop that moves from
Wi-Fi to Ethernet keeps its tunnel without any endpoint host route to refresh.

Every rule is recorded (helper/records.py) before it is added, so a helper killed at any point
leaves nothing that the next start cannot find and remove. Rules carry protocol
:data:`~helper.netdev.RTPROT_TUNSEAL` (``ip rule`` shows ``proto 77``).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
from collections.abc import Sequence
from typing import TypedDict

from pyroute2.netlink.exceptions import NetlinkError

from core.errors import TunsealError
from helper.netdev import RTPROT_TUNSEAL, netlink, netlink_error

__all__ = [
    "FWMARK",
    "TABLE",
    "PolicyRouteError",
    "Rule",
    "add_default_route",
    "add_rule",
    "full_families",
    "remove_rule",
    "rules_for",
    "split_routes",
]

log = logging.getLogger(__name__)

FWMARK = 0x7453
"""The firewall mark of the helper's own sockets ("Ts"). The policy rule lets marked packets
use the main table; the lockdown table (helper/lockdown.py) lets marked packets reach the
peer's endpoint and nothing else."""
TABLE = 0x7453
"""The full tunnel's routing table (29779). One full tunnel per address family at a time."""
PRIO_SUPPRESS = 32764
PRIO_TUNNEL = 32765
"""Just before the main table's own rule (32766), as wg-quick's rules end up."""
FR_INVERT = 0x2
_FAMILY = {4: 2, 6: 10}


class PolicyRouteError(TunsealError):
    """A rule or route of a full tunnel could not be set; the message says what to do."""


class Rule(TypedDict):
    """One policy rule, JSON-safe for the crash records."""

    family: int
    """4 or 6."""
    kind: str
    """"suppress" (main without default routes) or "tunnel" (unmarked traffic to TABLE)."""


def full_families(routes: Sequence[str]) -> tuple[int, ...]:
    """The address families (4, 6) whose default route ``routes`` contain."""
    out = []
    for text in routes:
        net = ipaddress.ip_network(text, strict=False)
        if net.prefixlen == 0 and net.version not in out:
            out.append(net.version)
    return tuple(sorted(out))


def split_routes(routes: Sequence[str]) -> tuple[list[str], tuple[int, ...]]:
    """(routes for the main table, families whose default goes to :data:`TABLE`)."""
    families = full_families(routes)
    rest = [r for r in routes if ipaddress.ip_network(r, strict=False).prefixlen != 0]
    return rest, families


def rules_for(families: Sequence[int]) -> list[Rule]:
    """The rules a full tunnel of ``families`` needs, in the order they are added. The suppress
    rule goes first: if the helper dies between the two, nothing has been diverted yet."""
    out: list[Rule] = []
    for fam in families:
        out.append(Rule(family=fam, kind="suppress"))
        out.append(Rule(family=fam, kind="tunnel"))
    return out


def add_default_route(ifname: str, family: int) -> None:
    """The default route of :data:`TABLE` through ``ifname`` (it goes with the link)."""
    dst = "0.0.0.0/0" if family == 4 else "::/0"
    with netlink(ifname, PolicyRouteError) as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise PolicyRouteError(f"no link {ifname!r}: the engine must hold it open")
        try:
            ipr.route("add", family=_FAMILY[family], dst=dst, oif=int(found[0]), table=TABLE,
                      proto=RTPROT_TUNSEAL)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise _error(ifname, f"add {dst} to table {TABLE}", exc) from None
            raise PolicyRouteError(
                f"{ifname}: routing table {TABLE} already has a default route: another full "
                "tunnel is up (take it down first), or a leftover: 'ip route flush table "
                f"{TABLE}'") from None


def add_rule(rule: Rule) -> None:
    """Add ``rule``; an identical one already there is left alone (EEXIST)."""
    with netlink("policy rule", PolicyRouteError) as ipr:
        try:
            ipr.rule("add", **_spec(rule))
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise _error("policy rule", f"add the {rule['kind']} rule", exc) from None


def remove_rule(rule: Rule) -> bool:
    """Remove ``rule`` if it is there; False when it was already gone."""
    with netlink("policy rule", PolicyRouteError) as ipr:
        try:
            ipr.rule("del", **_spec(rule))
        except NetlinkError as exc:
            if exc.code in (errno.ENOENT, errno.ESRCH):
                return False
            raise _error("policy rule", f"remove the {rule['kind']} rule", exc) from None
    return True


def _spec(rule: Rule) -> dict[str, object]:
    fam = _FAMILY[int(rule["family"])]
    if rule["kind"] == "suppress":
        return dict(family=fam, table=254, priority=PRIO_SUPPRESS, suppress_prefixlen=0,
                    protocol=RTPROT_TUNSEAL)
    if rule["kind"] == "tunnel":
        return dict(family=fam, table=TABLE, priority=PRIO_TUNNEL, fwmark=FWMARK,
                    fwmask=0xFFFFFFFF, flags=FR_INVERT, protocol=RTPROT_TUNSEAL)
    raise PolicyRouteError(f"unknown policy rule kind {rule['kind']!r}")


def _error(what: str, action: str, exc: NetlinkError) -> TunsealError:
    return netlink_error(what, action, exc, PolicyRouteError)
