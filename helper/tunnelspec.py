"""What a tunnel is made of, before it runs: a :class:`TunnelSpec` and its peers' specs,
from a profile (a client, one peer) or from the gateway's configuration (many peers).

The identity each peer is checked against is chosen from the mode here, once, for both; so are
the endpoint's address (looked up when the profile names a host) and the interface's own
addresses.
"""

from __future__ import annotations

import base64
import ipaddress
from dataclasses import dataclass, field

from core.constants import Cipher, Mode, TransportKind
from core.errors import TunsealError
from core.gateway import Gateway, GatewayPeer
from core.handshake import Identity
from core.peer import Address
from core.profile import Profile, ProfileSecrets
from core.responder import ANY_DEVICE
from helper import hostlookup, policyroute
from helper.lockdown import PeerAddress


class TunnelError(TunsealError):
    pass


def interface_addresses(addresses: tuple[str, ...]) -> tuple[bytes, bytes]:
    """(IPv4, IPv6) address of the tunnel interface, packed (b"" when it has none)."""
    v4 = v6 = b""
    for a in addresses:
        ip = ipaddress.ip_interface(a).ip
        if ip.version == 4 and not v4:
            v4 = ip.packed
        elif ip.version == 6 and not v6:
            v6 = ip.packed
    return v4, v6


def resolve_endpoint(profile: Profile) -> Address | None:
    if not profile.endpoint:
        return None
    return resolve(profile.name, profile.endpoint_host, profile.endpoint_port,
                   avoid=profile.dns)


def resolve(name: str, host: str, port: int, family: int = 0, *,
            avoid: tuple[str, ...] = (), known: tuple[str, ...] = (),
            direct: bool = False) -> Address:
    """``host`` looked up (``family``: only addresses the transport's socket can reach), past
    a lockdown if one is in force, or past the tunnel's DNS when ``direct``
    (helper/hostlookup.py); ``avoid``: the tunnel's own DNS servers, which only the tunnel
    reaches; ``known``: the network's servers that the tunnel's DNS settings replaced."""
    try:
        return hostlookup.resolve(host, port, family, avoid=avoid, known=known, direct=direct)
    except hostlookup.HostLookupError as e:
        raise TunnelError(f"profile {name!r}: cannot resolve endpoint {host!r}: "
                          f"{e.reason}") from None


def is_host_name(host: str) -> bool:
    return bool(host) and hostlookup.address_literal(host) is None


def identity(mode: Mode, *, static_private: bytes | None = None,
             peer_public: bytes | None = None, psk: bytes | None = None) -> Identity:
    """What this end proves and expects in ``mode``: its static key and the peer's in
    ``ephemeral`` (plus an optional psk), the psk alone in ``psk`` and ``rotating``, nothing in
    ``plain``. Profiles and the gateway both choose here."""
    if mode.uses_static_keys:
        return Identity(static_private=static_private, peer_public=peer_public, psk=psk)
    if mode.needs_psk:
        return Identity(psk=psk)
    return Identity()


def identity_for(profile: Profile, secrets: ProfileSecrets) -> Identity:
    """:func:`identity` for a profile, refusing with what to run when a key is missing."""
    mode = Mode(profile.mode)
    if mode.uses_static_keys:
        if secrets.private_key is None:
            raise TunnelError(f"profile {profile.name!r} has no private key in the keyring: "
                              f"run 'tunseal genkey {profile.name}'")
        if not profile.public_key:
            raise TunnelError(f"profile {profile.name!r} does not know the peer's public key: "
                              f"run 'tunseal setpeerkey {profile.name} KEY' with the key the "
                              "peer's administrator gave you")
    elif mode.needs_psk and secrets.psk is None:
        raise TunnelError(f"profile {profile.name!r} has no pre-shared key in the keyring: "
                          f"run 'tunseal genpsk {profile.name}' or import it")
    peer_public = base64.b64decode(profile.public_key) if profile.public_key else None
    return identity(mode, static_private=secrets.private_key, peer_public=peer_public,
                    psk=secrets.psk)


@dataclass(frozen=True, slots=True)
class PeerSpec:
    """One peer of a tunnel: a client has one, a gateway many."""

    name: str
    ident: Identity
    remote_device_id: int = ANY_DEVICE
    allowed_ips: tuple[str, ...] = ()
    endpoint: Address | None = None
    keepalive: float = 0.0
    endpoint_host: str = ""
    """The endpoint's host name as the profile gives it, when it is a name: looked up again
    when handshakes keep failing or the network changes."""


@dataclass(frozen=True, slots=True)
class TunnelSpec:
    """Everything a running tunnel needs, whether it came from a profile or a gateway config.
    ``mode``, ``cipher`` and ``transport`` may be given as their strings."""

    name: str
    mode: Mode
    cipher: Cipher
    transport: TransportKind
    device_id: int
    addresses: tuple[str, ...]
    mtu: int
    routes: tuple[str, ...]
    listen_port: int
    ipv6_outer: bool
    static_private: bytes | None
    has_psk: bool
    peers: tuple[PeerSpec, ...]
    dns: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    rekey_seconds: float | None = None
    rekey_messages: int | None = None
    keepalive: float = 0.0
    masquerade: tuple[str, ...] = ()
    """Gateway: interfaces out of which traffic from peers is masqueraded (nftables)."""
    forward: bool = False
    """Gateway: route between peers and the LAN (IP forwarding on while up)."""
    lockdown: str = "off"
    """The effective lockdown: "off", "connected" or "always" (helper/lockdown.py)."""
    allow_lan: bool = False
    full_families: tuple[int, ...] = field(init=False, repr=False, compare=False)
    """The families ``routes`` send entirely through the tunnel (policyroute.full_families),
    worked out once: a gateway's routes are every peer's networks, and the status asks every
    second."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", Mode(self.mode))
        object.__setattr__(self, "cipher", Cipher(self.cipher))
        object.__setattr__(self, "transport", TransportKind(self.transport))
        object.__setattr__(self, "full_families", policyroute.full_families(self.routes))

    @property
    def blocks_ipv6(self) -> bool:
        """An IPv4 full tunnel that carries no IPv6: IPv6 must not leave beside it."""
        return self.full_families == (4,)

    def peer_addresses(self) -> tuple[PeerAddress, ...]:
        return tuple(PeerAddress(p.endpoint[0], int(p.endpoint[1]), self.transport)
                     for p in self.peers if p.endpoint is not None)

    def __repr__(self) -> str:
        return f"TunnelSpec({self.name!r}, {self.mode}, {len(self.peers)} peers)"


def spec_from_profile(profile: Profile, secrets: ProfileSecrets) -> TunnelSpec:
    ident = identity_for(profile, secrets)
    remote = resolve_endpoint(profile)
    host = profile.endpoint_host if profile.endpoint else ""
    peer = PeerSpec(profile.name, ident, ANY_DEVICE, profile.allowed_ips, remote,
                    float(profile.keepalive),
                    endpoint_host=host if is_host_name(host) else "")
    return TunnelSpec(
        name=profile.name, mode=Mode(profile.mode), cipher=Cipher(profile.cipher),
        transport=TransportKind(profile.transport), device_id=profile.device_id,
        addresses=profile.addresses, mtu=profile.mtu, routes=profile.allowed_ips,
        listen_port=profile.listen_port,
        ipv6_outer=(remote is not None and ":" in remote[0])
        or (remote is None and profile.transport == TransportKind.UDP),
        static_private=ident.static_private, has_psk=ident.psk is not None, peers=(peer,),
        dns=profile.dns, dns_search=profile.dns_search,
        rekey_seconds=float(profile.rekey_seconds), rekey_messages=profile.rekey_messages,
        keepalive=float(profile.keepalive),
        lockdown=profile.effective_lockdown, allow_lan=profile.allow_lan,
    )


def spec_from_gateway(gw: Gateway, private: bytes, peers: tuple[PeerSpec, ...]) -> TunnelSpec:
    """The gateway's one tunnel: listening, forwarding, with ``peers``
    (:func:`peer_spec_from_gateway` each)."""
    mode = Mode(gw.mode)
    return TunnelSpec(
        name=gw.name, mode=mode, cipher=Cipher(gw.cipher), transport=TransportKind(gw.transport),
        device_id=gw.device_id, addresses=gw.addresses, mtu=gw.mtu,
        routes=tuple(r for p in gw.peers for r in p.allowed_ips),
        listen_port=gw.listen_port, ipv6_outer=gw.transport == TransportKind.UDP,
        static_private=private if mode.uses_static_keys else None,
        has_psk=not mode.uses_static_keys or any(p.psk_ref for p in gw.peers),
        peers=peers, masquerade=gw.masquerade, forward=True,
    )


def peer_spec_from_gateway(gw: Gateway, peer: GatewayPeer, *, private: bytes,
                           psk: bytes | None) -> PeerSpec:
    """One of the gateway's peers; ``psk`` is its pre-shared key from the keyring, if any."""
    peer_public = base64.b64decode(peer.public_key) if peer.public_key else None
    ident = identity(Mode(gw.mode), static_private=private, peer_public=peer_public, psk=psk)
    return PeerSpec(peer.name, ident, peer.device_id, peer.allowed_ips, None,
                    float(peer.keepalive))
