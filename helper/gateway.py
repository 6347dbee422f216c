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
from pathlib import Path
from typing import Any, Protocol

from core import gateway as gwconf
from core import noise
from core.constants import Mode
from core.errors import TunsealError
from core.gateway import Gateway, GatewayPeer
from core.ipc import RequestError
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


class GatewayService:
    def __init__(self, path: Path, *, keys: KeyStoreLike, engine: Engine):
        self.path = path
        self._keys = keys
        self._engine = engine
        self._lock = threading.Lock()
        self.config = gwconf.load(path)
        self._tunnel: Tunnel | None = None

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
        log.info("gateway %s listening on %s port %d with %d peer(s)", gw.name, gw.transport,
                 gw.listen_port, len(gw.peers))
        if not gw.public_endpoint:
            log.warning("gateway %s has no public_endpoint: client profiles from 'tunseal peer "
                        "add' will point at 0.0.0.0 until you set it (docs/GATEWAY.md)", gw.name)

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

    def peer_add(self, name: str, allowed_ips: list[str] | None = None) -> dict[str, Any]:
        """Add a peer: generate its keys, route its addresses, and return a client profile."""
        with self._lock:
            gw = self.config
            mode = Mode(gw.mode)
            if gw.peer(name) is not None:
                raise RequestError(f"gateway {gw.name!r} already has a peer named {name!r}",
                                   code="exists")
            allowed = tuple(allowed_ips) if allowed_ips else (gwconf.next_address(gw),)
            client_private = noise.generate_private_key() if mode.uses_static_keys else None
            need_psk = mode.needs_psk or (
                mode.uses_static_keys and any(p.psk_ref for p in gw.peers))
            psk = os.urandom(32) if need_psk else None
            peer = GatewayPeer(
                name=name, device_id=gwconf.next_device_id(gw), allowed_ips=allowed,
                public_key=_b64(noise.public_key(client_private)) if client_private else "",
                psk_ref=f"{gw.name}.{name}.psk" if psk else "",
            )
            new = gwconf.add_peer(gw, peer)
            if self._tunnel is not None:  # and against this host's own networks, before saving
                self._tunnel.check_peer(peer.name, peer.allowed_ips)
            # Before anything is saved: a peer whose profile cannot be made is not added.
            text = gwconf.client_profile(new, peer, gateway_public=self.public_key,
                                         client_private=client_private, psk=psk)
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

    def peer_list(self) -> dict[str, Any]:
        return {"gateway": self.config.name, "public_key": self.public_key,
                "peers": [self._describe(p) for p in self.config.peers]}

    def peer_show(self, name: str) -> dict[str, Any]:
        peer = self.config.peer(name)
        if peer is None:
            raise RequestError(f"no peer named {name!r}", code="not_found")
        return self._describe(peer)

    def _describe(self, peer: GatewayPeer) -> dict[str, Any]:
        live: dict[str, Any] = {}
        if self._tunnel is not None:
            for ps in self._tunnel.status().peers:
                if ps.name == peer.name:
                    live = {"state": ps.state, "endpoint": ps.endpoint,
                            "last_handshake": ps.last_handshake, "rx_bytes": ps.rx_bytes,
                            "tx_bytes": ps.tx_bytes, "rtt_ms": ps.rtt_ms}
        return {"name": peer.name, "public_key": peer.public_key, "device_id": peer.device_id,
                "allowed_ips": list(peer.allowed_ips), "has_psk": bool(peer.psk_ref), **live}

