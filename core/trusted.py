"""Trusted networks: how a profile names the networks it need not protect, and how the network
the machine is on now is matched against them.

An entry of a profile's ``trusted_networks`` is one string (docs/PROFILE.md):

* ``nm:UUID`` -- a NetworkManager connection, by its UUID (``nmcli -g UUID connection``);
* ``gateway:MAC@DOMAIN`` -- the default gateway's Ethernet address plus the DHCP domain of the
  network, or ``gateway:MAC`` for a network that hands out no domain.

A Wi-Fi name alone is not an identity: anyone can call an access point "Office". A gateway's
MAC can be copied too, but together with the domain and a tunnel that authenticates its peer,
a spoofed "trusted" network only gets a user's traffic unprotected on a LAN the attacker is
already on, which is the case the user chose to trust.

:class:`NetworkIdentity` is what the helper found out about the network now
(helper/netident.py); :func:`is_trusted` says whether a list of entries trusts it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["NetworkIdentity", "TrustedNetwork", "is_trusted", "parse_entry"]

NM_PREFIX = "nm:"
GATEWAY_PREFIX = "gateway:"
_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_MAC_RE = re.compile(r"[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}")
_LABEL_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


@dataclass(frozen=True, slots=True)
class TrustedNetwork:
    """One parsed entry: an NM connection UUID, or a gateway MAC plus domain ("" for none).
    Values are canonical (lower case), so equal networks compare equal."""

    nm_uuid: str = ""
    gateway_mac: str = ""
    domain: str = ""

    @property
    def entry(self) -> str:
        if self.nm_uuid:
            return NM_PREFIX + self.nm_uuid
        return GATEWAY_PREFIX + self.gateway_mac + (f"@{self.domain}" if self.domain else "")


def parse_entry(text: str) -> TrustedNetwork:
    """The network an entry names; ValueError with what is wrong and how to write it."""
    if text.startswith(NM_PREFIX):
        uuid = text[len(NM_PREFIX):]
        if not _UUID_RE.fullmatch(uuid):
            raise ValueError(f"{_show(text)}: {_show(uuid)} is not a NetworkManager connection "
                             "UUID (8-4-4-4-12 hex digits, as 'nmcli -g UUID connection' "
                             "prints)")
        return TrustedNetwork(nm_uuid=uuid.lower())
    if text.startswith(GATEWAY_PREFIX):
        mac, at, domain = text[len(GATEWAY_PREFIX):].partition("@")
        if not _MAC_RE.fullmatch(mac):
            raise ValueError(f"{_show(text)}: {_show(mac)} is not a MAC address; write six "
                             "hex pairs separated by ':' (52:54:00:12:34:56)")
        if mac.lower() in ("00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff"):
            raise ValueError(f"{_show(text)}: {mac} is not a gateway's address")
        if at and not _is_domain(domain):
            raise ValueError(f"{_show(text)}: {_show(domain)} is not a domain name; write "
                             "gateway:MAC@office.example, or gateway:MAC for a network "
                             "without a DHCP domain")
        return TrustedNetwork(gateway_mac=mac.lower(), domain=domain.lower().rstrip("."))
    raise ValueError(f"{_show(text)} is not a network; write nm:UUID (a NetworkManager "
                     "connection) or gateway:MAC@DOMAIN (the default gateway's MAC address "
                     "and the DHCP domain); 'tunseal network' shows the current one")


@dataclass(frozen=True, slots=True)
class NetworkIdentity:
    """The network the machine is on, as far as the helper can tell. Offline (no default
    route) when neither ``nm_uuid`` nor ``gateway_mac`` is known."""

    nm_uuid: str = ""
    nm_name: str = ""
    """NetworkManager's name of the connection ("Office Wi-Fi"), for people."""
    gateway_ip: str = ""
    gateway_mac: str = ""
    domain: str = ""
    interface: str = ""
    source: str = ""
    """Where the domain came from (a lease file, resolv.conf...), for ``tunseal network``."""

    @property
    def online(self) -> bool:
        return bool(self.nm_uuid or self.gateway_mac)

    @property
    def networks(self) -> tuple[TrustedNetwork, ...]:
        """Every entry that names this network (the NM one first)."""
        out = []
        if self.nm_uuid:
            out.append(TrustedNetwork(nm_uuid=self.nm_uuid.lower()))
        if self.gateway_mac:
            out.append(TrustedNetwork(gateway_mac=self.gateway_mac.lower(),
                                      domain=self.domain.lower().rstrip(".")))
        return tuple(out)

    @property
    def entry(self) -> str:
        """The entry ``tunseal trust NAME --current`` adds: NM's UUID where NM runs."""
        networks = self.networks
        return networks[0].entry if networks else ""

    @property
    def key(self) -> tuple[str, str, str]:
        """What makes two identities the same network (addresses may change on one)."""
        return (self.nm_uuid.lower(), self.gateway_mac.lower(), self.domain.lower())

    @property
    def label(self) -> str:
        """For log lines and menus: ``"Office Wi-Fi"`` or ``gateway 52:54:... domain x``."""
        if not self.online:
            return "no network"
        if self.nm_uuid:
            return f"{self.nm_name!r}" if self.nm_name else f"connection {self.nm_uuid}"
        where = f" on {self.interface}" if self.interface else ""
        domain = f", domain {self.domain}" if self.domain else ", no domain"
        return f"gateway {self.gateway_ip} ({self.gateway_mac}){where}{domain}"

    def to_dict(self) -> dict[str, object]:
        return {"nm_uuid": self.nm_uuid, "nm_name": self.nm_name, "gateway_ip": self.gateway_ip,
                "gateway_mac": self.gateway_mac, "domain": self.domain,
                "interface": self.interface, "source": self.source, "online": self.online,
                "entry": self.entry, "label": self.label}

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> NetworkIdentity:
        def text(key: str) -> str:
            value = d.get(key, "")
            return value if isinstance(value, str) else ""

        return cls(nm_uuid=text("nm_uuid"), nm_name=text("nm_name"),
                   gateway_ip=text("gateway_ip"), gateway_mac=text("gateway_mac"),
                   domain=text("domain"), interface=text("interface"), source=text("source"))


def is_trusted(identity: NetworkIdentity, entries: Iterable[str]) -> bool | None:
    """Whether any of ``entries`` names ``identity``; None when offline (nothing to trust or
    distrust). Entries that do not parse trust nothing (profiles are validated before)."""
    if not identity.online:
        return None
    mine = set(identity.networks)
    for text in entries:
        try:
            if parse_entry(text) in mine:
                return True
        except ValueError:
            continue
    return False


def _is_domain(text: str) -> bool:
    labels = text.rstrip(".").split(".")
    return 0 < len(text) <= 253 and all(_LABEL_RE.fullmatch(label) for label in labels)


def _show(value: str) -> str:
    return repr(value) if len(value) <= 60 else repr(value[:57]) + "..."
