"""Which peer owns an inner address: longest-prefix match over the peers' allowed IPs.

Used both ways: to pick the peer a packet from the TUN device goes to, and to check that a
packet arriving from a peer has a source address that peer is allowed to use. One dict per
prefix length that is in use, searched longest first: a handful of dict look-ups per packet.
"""

from __future__ import annotations

import ipaddress
from typing import Generic, TypeVar

T = TypeVar("T")


class AllowedIPs(Generic[T]):
    def __init__(self) -> None:
        self._v4: dict[int, dict[int, T]] = {}
        self._v6: dict[int, dict[int, T]] = {}
        self._v4_lens: list[int] = []
        self._v6_lens: list[int] = []
        self.version = 0
        """Bumped on every change (the native receive path caches per-peer filters by it)."""

    def insert(self, prefix: str, value: T) -> None:
        net = ipaddress.ip_network(prefix, strict=False)
        table, bits = (self._v4, 32) if net.version == 4 else (self._v6, 128)
        shift = bits - net.prefixlen
        table.setdefault(net.prefixlen, {})[int(net.network_address) >> shift] = value
        self._reindex()

    def remove_value(self, value: T) -> None:
        for table in (self._v4, self._v6):
            for plen in list(table):
                d = table[plen]
                for k in [k for k, v in d.items() if v is value]:
                    del d[k]
                if not d:
                    del table[plen]
        self._reindex()

    def _reindex(self) -> None:
        self.version += 1
        self._v4_lens = sorted(self._v4, reverse=True)
        self._v6_lens = sorted(self._v6, reverse=True)

    def source_filter(self, value: T) -> tuple[list[tuple[int, int, bool]],
                                               list[tuple[int, int, bool]]]:
        """``value``'s prefixes as (key, length, True), plus every other value's longer prefix
        inside one of them as (key, length, False): the longest match in these lists is
        ``value`` exactly when :meth:`source_owner` would say ``value``."""
        out: tuple[list[tuple[int, int, bool]], list[tuple[int, int, bool]]] = ([], [])
        for table, dest in ((self._v4, out[0]), (self._v6, out[1])):
            own = [(plen, key) for plen, d in table.items() for key, v in d.items()
                   if v is value]
            dest.extend((key, plen, True) for plen, key in own)
            for plen, d in table.items():
                for key, v in d.items():
                    if v is not value and any(
                            plen > p and key >> (plen - p) == k for p, k in own):
                        dest.append((key, plen, False))
        return out

    def lookup_v4(self, addr: int) -> T | None:
        for plen in self._v4_lens:
            v = self._v4[plen].get(addr >> (32 - plen))
            if v is not None:
                return v
        return None

    def lookup_v6(self, addr: int) -> T | None:
        for plen in self._v6_lens:
            v = self._v6[plen].get(addr >> (128 - plen))
            if v is not None:
                return v
        return None

    def source_owner(self, pkt: bytes | memoryview) -> T | None:
        """The peer owning an inner packet's source address (None if no one, or junk)."""
        if len(pkt) >= 20 and pkt[0] >> 4 == 4:
            return self.lookup_v4(int.from_bytes(pkt[12:16], "big"))
        if len(pkt) >= 40 and pkt[0] >> 4 == 6:
            return self.lookup_v6(int.from_bytes(pkt[8:24], "big"))
        return None

    def destination_owner(self, pkt: bytes | memoryview) -> T | None:
        if len(pkt) >= 20 and pkt[0] >> 4 == 4:
            return self.lookup_v4(int.from_bytes(pkt[16:20], "big"))
        if len(pkt) >= 40 and pkt[0] >> 4 == 6:
            return self.lookup_v6(int.from_bytes(pkt[24:40], "big"))
        return None
