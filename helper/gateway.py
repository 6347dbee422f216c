"""The office gateway: the engine's one tunnel with many peers, kept in sync with its
configuration file (core/gateway.py) as peers are added and removed.

`tunseal-helper --gateway CONFIG` creates one of these at start-up; the control socket's
``peer_*`` requests land here.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from core import gateway as gwconf
from core import invitation as invitation_format
from core import noise
from core.constants import Mode
from core.enrol import Accepted, EnrolGate
from core.errors import TunsealError
from core.gateway import Gateway, GatewayPeer
from core.ipc import RequestError
from core.status import PeerStatus
from helper import enrolment
from helper.engine import Engine
from helper.tunnel import Tunnel
from helper.tunnelspec import PeerSpec, TunnelSpec, peer_spec_from_gateway, spec_from_gateway

log = logging.getLogger(__name__)


class KeyStoreLike(Protocol):
    def get(self, ref: str) -> bytes | None: ...
    def put(self, ref: str, secret: bytes) -> None: ...
    def delete(self, ref: str) -> None: ...


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


_PLACEHOLDER_KEY = _b64(bytes(range(1, 33)))
"""Stands for the key of a peer that is only invited yet, in configuration checks."""


class GatewayService:
    def __init__(self, path: Path, *, keys: KeyStoreLike, engine: Engine,
                 notify: Callable[[str, dict[str, Any]], None] | None = None):
        self.path = path
        self._notify = notify
        self._keys = keys
        self._engine = engine
        self._lock = threading.Lock()
        self.config = gwconf.load(path)
        self._tunnel: Tunnel | None = None
        self.invitations = enrolment.InvitationStore(path.with_suffix(".invitations.json"))
        self.registrar: enrolment.GatewayRegistrar | None = None

    def __repr__(self) -> str:
        return f"GatewayService({self.config.name!r}, {len(self.config.peers)} peers)"

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        gw = self.config
        private = self._keys.get(gw.private_key_ref)
        if private is None:
            private = noise.generate_private_key()
            self._keys.put(gw.private_key_ref, private)
            log.info("gateway %s: generated its static key (%s in the keyring)", gw.name,
                     gw.private_key_ref)
        self._private = private
        self._tunnel = self._engine.up_spec(self._spec(gw))
        self._take_enrolments()
        log.info("gateway %s listening on %s port %d with %d peer(s)", gw.name, gw.transport,
                 gw.listen_port, len(gw.peers))
        if not gw.public_endpoint:
            log.warning("gateway %s has no public_endpoint: client profiles from 'tunseal peer "
                        "add' will point at 0.0.0.0 until you set it (docs/GATEWAY.md)", gw.name)

    def _take_enrolments(self) -> None:
        """Answer ENROL packets on the tunnel's port (docs/PROTOCOL.md 17): IK gateways only."""
        tunnel = self._tunnel
        if tunnel is None or tunnel.endpoint is None or self._enrol_problem() is not None:
            return

        def send(packet: bytes, source: bytes) -> None:
            host, _, port = source.decode().rpartition("|")
            if tunnel.datapath is not None:
                tunnel.datapath.transport.send(packet, (host, int(port)))

        self.registrar = enrolment.GatewayRegistrar(self.invitations, self, send)
        tunnel.endpoint.enrolment = EnrolGate(self._private, self.registrar)

    def _enrol_problem(self) -> str | None:
        gw = self.config
        if gw.mode != "ephemeral":
            return (f"gateway {gw.name!r} runs in {gw.mode} mode, where every peer shares a "
                    "key with the gateway by design; invitations need ephemeral mode (use "
                    "'tunseal peer add')")
        if any(p.psk_ref for p in gw.peers):
            return (f"gateway {gw.name!r}'s peers have pre-shared keys; invitations make peers "
                    "without one (use 'tunseal peer add')")
        if gw.transport != "udp":
            return f"gateway {gw.name!r} uses the raw transport; invitations need UDP"
        return None

    @property
    def name(self) -> str:
        """The gateway's tunnel name: reserved, no profile may take it (helper/service.py)."""
        return self.config.name

    def key_refs(self) -> set[str]:
        """Every keyring item the gateway uses: never deleted or handed out for a profile."""
        gw = self.config
        return {gw.private_key_ref, *(p.psk_ref for p in gw.peers if p.psk_ref)}

    @property
    def public_key(self) -> str:
        return _b64(noise.public_key(self._private))

    def _spec(self, gw: Gateway) -> TunnelSpec:
        return spec_from_gateway(gw, self._private,
                                 tuple(self._peer_spec(gw, p) for p in gw.peers))

    def _peer_spec(self, gw: Gateway, p: GatewayPeer) -> PeerSpec:
        psk = self._keys.get(p.psk_ref) if p.psk_ref else None
        if p.psk_ref and psk is None:
            raise TunsealError(f"gateway peer {p.name!r}: its psk {p.psk_ref!r} is not in the "
                               "keyring")
        return peer_spec_from_gateway(gw, p, private=self._private, psk=psk)

    # --- peer requests -----------------------------------------------------------------------

    def peer_add(self, name: str, allowed_ips: list[str] | None = None,
                 public_key: str | None = None) -> dict[str, Any]:
        """Add a peer: generate its keys (or take the public key the peer made itself), route
        its addresses, and return a client profile."""
        with self._lock:
            if self.invitations.open_for(name):
                raise RequestError(f"an invitation for {name!r} is open; withdraw it first "
                                   f"with 'tunseal peer revoke {name}', or let it be used",
                                   code="exists")
            return self._add(name, allowed_ips, public_key)

    def _add(self, name: str, allowed_ips: list[str] | tuple[str, ...] | None,
             public_key: str | None) -> dict[str, Any]:
        gw = self.config
        mode = Mode(gw.mode)
        if gw.peer(name) is not None:
            raise RequestError(f"gateway {gw.name!r} already has a peer named {name!r}",
                               code="exists")
        if public_key is not None and not mode.uses_static_keys:
            raise RequestError(f"gateway {gw.name!r} runs in {gw.mode} mode: peers have no "
                               "public key there", code="bad_args")
        allowed = tuple(allowed_ips) if allowed_ips else (self._free_address(gw),)
        client_private = noise.generate_private_key() \
            if mode.uses_static_keys and public_key is None else None
        need_psk = mode.needs_psk or (
            mode.uses_static_keys and any(p.psk_ref for p in gw.peers))
        psk = os.urandom(32) if need_psk else None
        peer = GatewayPeer(
            name=name, device_id=gwconf.next_device_id(gw), allowed_ips=allowed,
            public_key=public_key if public_key is not None
            else _b64(noise.public_key(client_private)) if client_private else "",
            psk_ref=f"{gw.name}.{name}.psk" if psk else "",
        )
        new = gwconf.add_peer(gw, peer)
        if self._tunnel is not None:  # and against this host's own networks, before saving
            self._tunnel.check_peer(peer.name, peer.allowed_ips)
        # Before anything is saved: a peer whose profile cannot be made is not added.
        text = gwconf.client_profile(new, peer, gateway_public=self.public_key,
                                     client_private=client_private, psk=psk,
                                     own_key=public_key is not None)
        if psk is not None:
            self._keys.put(peer.psk_ref, psk)
        try:
            gwconf.save(new, self.path)
        except OSError as e:
            if psk is not None:
                self._keys.delete(peer.psk_ref)
            raise RequestError(f"cannot write {self.path}: {e.strerror}",
                               code="storage") from None
        self.config = new
        if self._tunnel is not None:
            self._tunnel.add_peer(self._peer_spec(new, peer))
        log.info("gateway %s: added peer %s (%s)", gw.name, name, ", ".join(allowed))
        return {"peer": self._describe(peer), "profile": text}

    def peer_remove(self, name: str) -> dict[str, Any]:
        with self._lock:
            return self._remove(name)

    def _remove(self, name: str) -> dict[str, Any]:
        gw = self.config
        peer = gw.peer(name)
        if peer is None:
            raise RequestError(f"gateway {gw.name!r} has no peer named {name!r}",
                               code="not_found")
        new = gwconf.remove_peer(gw, name)
        gwconf.save(new, self.path)
        self.config = new
        if self._tunnel is not None:
            self._tunnel.remove_peer(name)
        if peer.psk_ref:
            self._keys.delete(peer.psk_ref)
        log.info("gateway %s: removed peer %s", gw.name, name)
        return {"removed": name}

    # --- invitations (docs/GATEWAY.md "Invitations", helper/enrolment.py) ------------------------

    def _reserved(self, gw: Gateway) -> Gateway:
        """``gw`` with the open invitations' peers in it (placeholders): their names and
        addresses are taken until the invitation is used or withdrawn."""
        now = time.time()
        held = tuple(GatewayPeer(name=r.name, allowed_ips=r.allowed_ips, device_id=0,
                                 public_key=_PLACEHOLDER_KEY)
                     for r in self.invitations.records()
                     if r.state == "open" and r.expires > now and gw.peer(r.name) is None)
        return replace(gw, peers=(*gw.peers, *held))

    def _free_address(self, gw: Gateway) -> str:
        return gwconf.next_address(self._reserved(gw))

    def peer_invite(self, name: str, allowed_ips: list[str] | None = None,
                    expires: str | None = None) -> dict[str, Any]:
        """Issue a one-time invitation for a new peer ``name``: its text (the only copy of
        its secret) and what it says."""
        try:
            lifetime = invitation_format.parse_duration(expires or "24h")
        except TunsealError as e:
            raise RequestError(str(e), code="bad_args") from None
        with self._lock:
            gw = self.config
            problem = self._enrol_problem()
            if problem is not None:
                raise RequestError(problem, code="refused")
            host, port = self._public_host_port()
            if gw.peer(name) is not None:
                raise RequestError(f"gateway {gw.name!r} already has a peer named {name!r}",
                                   code="exists")
            if self.invitations.open_for(name):
                raise RequestError(f"an invitation for {name!r} is open already; withdraw it "
                                   f"first with 'tunseal peer revoke {name}'", code="exists")
            reserved = self._reserved(gw)
            allowed = tuple(allowed_ips) if allowed_ips else (gwconf.next_address(reserved),)
            # The same checks as a real peer gets, now, so a bad invitation is never issued.
            gwconf.add_peer(reserved, GatewayPeer(name=name, allowed_ips=allowed,
                                                  device_id=gwconf.next_device_id(gw),
                                                  public_key=_PLACEHOLDER_KEY))
            if self._tunnel is not None:
                self._tunnel.check_peer(name, allowed)
            rec, secret = self.invitations.issue(name, allowed, lifetime)
        text = invitation_format.encode(invitation_format.Invitation(
            gateway_public=noise.public_key(self._private),
            invitation_id=bytes.fromhex(rec.id), secret=secret, expires=rec.expires,
            host=host, port=port, gateway=gw.name, address=allowed[0]))
        log.info("gateway %s: invitation %s issued for peer %s (%s), expires %s", gw.name,
                 rec.id, name, ", ".join(allowed),
                 time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(rec.expires)))
        return {"invitation": text, "id": rec.id, "name": name, "allowed_ips": list(allowed),
                "expires": rec.expires, "endpoint": f"{host}:{port}"}

    def _public_host_port(self) -> tuple[str, int]:
        gw = self.config
        text = gw.public_endpoint
        if not text:
            raise RequestError(f"gateway {gw.name!r} has no public_endpoint: an invitation "
                               "must say where to connect; set gateway.public_endpoint in "
                               f"{self.path} and restart the helper", code="refused")
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            port = rest.removeprefix(":")
        elif text.count(":") == 1:
            host, _, port = text.partition(":")
        else:
            host, port = text, ""
        return host, int(port) if port.isdigit() else gw.listen_port

    def enrol_peer(self, name: str, public_key: str, allowed_ips: tuple[str, ...]) -> None:
        """Register an enrolled laptop's public key (helper/enrolment.py's worker)."""
        with self._lock:
            try:
                self._add(name, allowed_ips, public_key)
            except RequestError as e:
                raise TunsealError(e.message) from None
        # As for 'peer add' (helper/service.py): a GUI or script watching the gateway sees it.
        if self._notify is not None:
            self._notify("profiles", {"change": "peer_added", "name": name})

    def accepted_for(self, name: str, public_key: str) -> Accepted | None:
        """What an enrolled laptop's profile needs from the gateway, if the peer ``name``
        has ``public_key``."""
        gw = self.config
        peer = gw.peer(name)
        if peer is None or peer.public_key != public_key:
            return None
        return Accepted(peer_name=name, addresses=peer.allowed_ips[:1],
                        routes=(str(gw.network), *gw.lan), dns=gw.dns, cipher=gw.cipher,
                        transport=gw.transport, mtu=gw.mtu, device_id=peer.device_id,
                        keepalive=peer.keepalive or 25)

    def peer_revoke(self, name: str) -> dict[str, Any]:
        """Remove a peer and end its sessions at once (its keypairs go with it, so its next
        packet is refused), and withdraw any open invitation for that name."""
        started = time.monotonic()
        with self._lock:
            withdrawn = self.invitations.withdraw(name)
            removed = self.config.peer(name) is not None
            if removed:
                self._remove(name)
            elif not withdrawn:
                raise RequestError(f"gateway {self.config.name!r} has no peer and no open "
                                   f"invitation named {name!r}", code="not_found")
        took = time.monotonic() - started
        log.info("gateway %s: revoked %s (peer removed: %s, invitations withdrawn: %s) in "
                 "%.3f s", self.config.name, name, "yes" if removed else "no",
                 ", ".join(withdrawn) or "none", took)
        return {"revoked": name, "peer_removed": removed, "withdrawn": withdrawn,
                "seconds": round(took, 4)}

    def invitation_list(self) -> list[dict[str, Any]]:
        return [{"id": r.id, "name": r.name, "state": r.state, "expires": r.expires,
                 "allowed_ips": list(r.allowed_ips)} for r in self.invitations.records()]

    def peer_list(self) -> dict[str, Any]:
        """Every peer (the helper pages them: service.peer_list), with its live state."""
        live = {ps.name: ps for ps in self._tunnel.peer_statuses()} \
            if self._tunnel is not None else {}
        return {"gateway": self.config.name, "public_key": self.public_key,
                "peers": [self._describe(p, live.get(p.name)) for p in self.config.peers],
                "invitations": [i for i in self.invitation_list() if i["state"] == "open"]}

    def peer_show(self, name: str) -> dict[str, Any]:
        peer = self.config.peer(name)
        if peer is None:
            raise RequestError(f"no peer named {name!r}", code="not_found")
        return self._describe(peer, self._tunnel.peer_status(name)
                              if self._tunnel is not None else None)

    def _describe(self, peer: GatewayPeer, ps: PeerStatus | None = None) -> dict[str, Any]:
        live: dict[str, Any] = {}
        if ps is not None:
            live = {"state": ps.state, "endpoint": ps.endpoint,
                    "last_handshake": ps.last_handshake, "rx_bytes": ps.rx_bytes,
                    "tx_bytes": ps.tx_bytes, "rtt_ms": ps.rtt_ms}
        return {"name": peer.name, "public_key": peer.public_key, "device_id": peer.device_id,
                "allowed_ips": list(peer.allowed_ips), "has_psk": bool(peer.psk_ref), **live}

