"""The listening side of handshakes: from an initiation packet to a peer's new session.

One Responder serves every peer of an engine (one peer for a client, many for a gateway). The
order of checks is the point: everything that costs nothing comes before the Diffie-Hellman
(the header, MAC1, the origin, per-source rate, and, under load, a MAC2 cookie proving the
source address), so a flood of bogus initiations is refused at the price of a keyed hash each.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass

from core import handshake
from core.constants import PacketType
from core.errors import CryptoError, HandshakeError, WireError
from core.handshake import CookieGenerator, FloodGuard, Identity, Suite
from core.peer import IndexTable, Peer

ANY_DEVICE = -1
"""Register a peer under this DeviceID when it is the tunnel's only peer: any DeviceID then
reaches it (a 1:1 tunnel need not know the far end's DeviceID; MAC1 still authenticates)."""


class Refused(HandshakeError):
    """An initiation was not answered; ``reason`` is the drop counter it belongs to."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Reply:
    """What to send back to the initiation's source: a response (peer set) or a cookie reply."""

    packet: bytes
    peer: Peer | None


class Responder:
    def __init__(self, suite: Suite, *, own_static: bytes | None, device_id: int,
                 indices: IndexTable, clock: Callable[[], float] = time.monotonic,
                 guard: FloodGuard | None = None, origin: bytes | None = None):
        """``origin``: this end's origin ID (psk modes), the one its own initiations carry."""
        self.suite = suite
        self.device_id = device_id
        self.origin: bytes | None = None
        if suite.uses_origin:
            self.origin = (handshake.check_origin(origin) if origin is not None
                           else handshake.new_origin())
        self._own_static = own_static
        self._own_public: bytes | None = None
        self._indices = indices
        self._clock = clock
        self.guard = guard or FloodGuard(clock)
        self._by_key: dict[bytes, Peer] = {}
        self._by_device: dict[int, Peer] = {}
        self._mac1_key: bytes | None = None
        self._cookies: dict[int, CookieGenerator] = {}
        if suite.pattern != "NNpsk0":
            if own_static is None:
                raise HandshakeError("an ephemeral-mode responder needs its static private key")
            own = Identity(static_private=own_static)
            self._own_public = own.own_public
            self._mac1_key = own.mac1_key_for(own.own_public)
            self._shared_cookies = CookieGenerator(own.cookie_key_for(own.own_public), clock)

    def __repr__(self) -> str:
        return f"Responder({self.suite.mode}, {len(self._by_device)} peers)"

    def add(self, peer: Peer, remote_device_id: int) -> None:
        """Register a peer. psk-mode peers are told apart by the DeviceID they send."""
        if self.suite.pattern == "NNpsk0":
            if remote_device_id in self._by_device:
                raise HandshakeError(f"device ID {remote_device_id} is already used by a peer")
            if peer.ident.psk is None:
                raise HandshakeError(f"peer {peer.name!r} has no pre-shared key")
            self._cookies[remote_device_id] = CookieGenerator(
                peer.ident.cookie_key_for(None), self._clock)
        else:
            if peer.ident.peer_public is None:
                raise HandshakeError(f"peer {peer.name!r} has no public key")
            if peer.ident.peer_public == self._own_public:
                # The one way to reflect IK: this end would answer its own initiations.
                raise HandshakeError(f"peer {peer.name!r} is configured with this end's own "
                                     "public key: set the peer's public key instead")
            self._by_key[peer.ident.peer_public] = peer
        self._by_device[remote_device_id] = peer

    def remove(self, peer: Peer) -> None:
        for dev, p in list(self._by_device.items()):
            if p is peer:
                del self._by_device[dev]
                self._cookies.pop(dev, None)
        if peer.ident.peer_public is not None:
            self._by_key.pop(peer.ident.peer_public, None)

    def handle(self, packet: bytes, source: bytes) -> Reply:
        """Answer one initiation from ``source`` (the packed outer address and port)."""
        try:
            try:
                parsed = handshake.parse_handshake(packet, PacketType.HANDSHAKE_INIT)
            except WireError as e:
                raise Refused(str(e), "bad_header") from None
            device_id = parsed.device_id
            if self.suite.pattern == "NNpsk0":
                if device_id not in self._by_device:
                    device_id = ANY_DEVICE
                claimed = self._by_device.get(device_id)
                if claimed is None:
                    raise Refused(f"initiation from unknown device ID {device_id}", "unknown_peer")
                mac1_key = claimed.ident.mac1_key_for(None)
                cookies = self._cookies[device_id]
            else:
                claimed = None
                assert self._mac1_key is not None
                mac1_key = self._mac1_key
                cookies = self._shared_cookies
            try:
                init = handshake.verify_initiation(parsed, mac1_key)
            except HandshakeError as e:
                raise Refused(str(e), "handshake_mac") from None
            if self.origin is not None:
                if init.origin is None:
                    raise Refused("psk-mode initiation without an ORIGIN option",
                                  "handshake_failed")
                if hmac.compare_digest(init.origin, self.origin):
                    raise Refused("initiation carries this end's own origin ID: it was sent "
                                  "back to us (reflected)", "handshake_reflected")
            if self.guard.under_load() and not cookies.mac2_ok(init, source):
                self.guard.note()
                return Reply(cookies.reply(init, source, device_id=self.device_id), None)
            if not self.guard.admit(source):
                raise Refused("handshake rate limit for this source exceeded", "handshake_rate")
            return self._complete(init, claimed)
        except Refused:
            raise
        except (HandshakeError, CryptoError, WireError) as e:
            raise Refused(str(e), "handshake_failed") from None

    def _complete(self, init: handshake.Initiation, claimed: Peer | None) -> Reply:
        found: list[Peer] = []

        def ident_for(initiator_public: bytes | None) -> Identity:
            peer = claimed if initiator_public is None else self._by_key.get(initiator_public)
            if peer is None:
                raise Refused("initiation from a static key no peer has", "unknown_peer")
            found[:] = [peer]
            return peer.ident

        index = self._indices.allocate(None)
        try:
            resp = handshake.respond(init, self.suite, ident_for, own_static=self._own_static,
                                     device_id=self.device_id, local_index=index)
            peer = found[0]
            try:
                return Reply(peer.accept_response(resp), peer)
            except HandshakeError as e:
                raise Refused(str(e), "handshake_replay") from None
        finally:
            if self._indices.keypair(index) is None:
                self._indices.release(index)

    @property
    def peers(self) -> list[Peer]:
        return list(self._by_device.values())
