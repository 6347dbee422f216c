"""What a tunnel remembers across helper restarts to defeat replayed and reflected handshakes.

One small JSON file per tunnel, ``<state_dir>/handshakes/<tunnel>.json``::

    {"version": 1, "origin": "<32 hex>",
     "peers": {"<peer name>": {"credential": "<32 hex>", "newest": "<24 hex>"}}}

``origin`` is the tunnel's origin ID (PROTOCOL.md 8.2): its psk-mode initiations carry it and
its responder refuses initiations that do, so an initiation sent back to us never completes,
however old. ``newest`` is the greatest TAI64N timestamp accepted from that peer (8.4): without
it a listening end that restarted would answer, once more, any initiation captured before.
``credential`` is :attr:`core.handshake.Identity.fingerprint`: a peer whose keys changed starts
afresh. Nothing secret is stored (the fingerprint is a one-way hash of the peer's keys).

Writes are atomic (core/atomicfile.py) and happen off the receive path: :meth:`accepted` only
marks the memory dirty, :meth:`flush` (the tunnel's timer tick, and its stop) writes it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from pathlib import Path
from typing import Any

from core.atomicfile import write_atomic
from core.constants import ORIGIN_LEN, TIMESTAMP_LEN
from core.handshake import new_origin

log = logging.getLogger(__name__)

VERSION = 1
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class HandshakeStore:
    """The persisted :class:`core.endpoint.HandshakeMemory` of one tunnel. Thread-safe: the
    receive thread records, the timer thread flushes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._dirty = False
        self._peers: dict[str, tuple[bytes, bytes]] = {}
        loaded = self._load()
        if loaded is None:
            self._origin = new_origin()
            self._dirty = True  # the origin must survive a restart even if no peer ever calls
        else:
            self._origin, self._peers = loaded

    @classmethod
    def open(cls, state_dir: Path, tunnel: str) -> HandshakeStore:
        d = Path(state_dir) / "handshakes"
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        return cls(d / f"{_file_name(tunnel)}.json")

    def __repr__(self) -> str:
        return f"HandshakeStore({str(self.path)!r}, {len(self._peers)} peers)"

    @property
    def origin(self) -> bytes:
        return self._origin

    def newest(self, peer: str, credential: bytes) -> bytes:
        with self._lock:
            known = self._peers.get(peer)
        return known[1] if known is not None and known[0] == credential else b""

    def accepted(self, peer: str, credential: bytes, timestamp: bytes) -> None:
        with self._lock:
            known = self._peers.get(peer)
            if known is None or known[0] != credential or timestamp > known[1]:
                self._peers[peer] = (credential, timestamp)
                self._dirty = True

    def flush(self) -> None:
        """Write the memory if it changed. Raises OSError (the memory stays dirty)."""
        with self._lock:
            if not self._dirty:
                return
            # One line, no indent: json's C encoder then does the work (with an indent it
            # falls back to Python). A gateway of 1,000 peers writes this up to four times a
            # second while handshakes arrive: 4.5 ms of CPU a write indented, 2.5 ms so.
            data = json.dumps({
                "version": VERSION, "origin": self._origin.hex(),
                "peers": {name: {"credential": c.hex(), "newest": ts.hex()}
                          for name, (c, ts) in sorted(self._peers.items())},
            }, separators=(",", ":")).encode() + b"\n"
            self._dirty = False
        try:
            write_atomic(self.path, data, mode=0o600)
        except OSError:
            with self._lock:
                self._dirty = True
            raise

    def _load(self) -> tuple[bytes, dict[str, tuple[bytes, bytes]]] | None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return _decode(json.loads(raw))
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            # A damaged file must not keep the tunnel down; what is lost is replay memory,
            # and the endpoint rule (only transport packets move it) still holds.
            log.warning("handshake memory %s is unreadable (%s); starting afresh", self.path, e)
            return None


def _decode(d: Any) -> tuple[bytes, dict[str, tuple[bytes, bytes]]]:
    if d["version"] != VERSION:
        raise ValueError(f"version {d['version']!r}")
    origin = bytes.fromhex(d["origin"])
    if len(origin) != ORIGIN_LEN:
        raise ValueError("origin of the wrong length")
    peers: dict[str, tuple[bytes, bytes]] = {}
    for name, entry in d["peers"].items():
        credential, newest = bytes.fromhex(entry["credential"]), bytes.fromhex(entry["newest"])
        if not isinstance(name, str) or len(newest) != TIMESTAMP_LEN:
            raise ValueError(f"peer {name!r}: malformed entry")
        peers[name] = (credential, newest)
    return origin, peers


def _file_name(tunnel: str) -> str:
    if _SAFE_NAME.fullmatch(tunnel):
        return tunnel
    return "h-" + hashlib.sha256(tunnel.encode()).hexdigest()[:32]
