"""Anti-replay window (RFC 6479 style: a ring of 64-bit blocks, cleared a block at a time).

A receiver calls :meth:`ReplayWindow.check` before decrypting (a cheap early drop) and
:meth:`ReplayWindow.update` only after the packet authenticated, so a forged packet can never
move the window.
"""

from __future__ import annotations

from enum import IntEnum

from core.constants import REJECT_AFTER_MESSAGES, REPLAY_WINDOW

_BLOCK_BITS = 64
_BLOCKS = REPLAY_WINDOW // _BLOCK_BITS + 1
"""One block more than the window so the block being cleared never holds live bits."""
WINDOW_SIZE = (_BLOCKS - 1) * _BLOCK_BITS


class Verdict(IntEnum):
    OK = 0
    DUPLICATE = 1
    TOO_OLD = 2
    EXHAUSTED = 3
    """The counter is at or past REJECT_AFTER_MESSAGES: the session must be replaced."""


_OK, _DUPLICATE, _TOO_OLD, _EXHAUSTED = Verdict.OK, Verdict.DUPLICATE, Verdict.TOO_OLD, \
    Verdict.EXHAUSTED


class ReplayWindow:
    __slots__ = ("_bitmap", "_last")

    def __init__(self) -> None:
        self._bitmap = [0] * _BLOCKS
        self._last = 0

    @property
    def highest(self) -> int:
        return self._last

    def check(self, counter: int) -> Verdict:
        """Would ``counter`` be accepted? Does not change the window."""
        if counter >= REJECT_AFTER_MESSAGES:
            return Verdict.EXHAUSTED
        if counter > self._last:
            return Verdict.OK
        if self._last - counter >= WINDOW_SIZE:
            return Verdict.TOO_OLD
        if self._bitmap[(counter >> 6) % _BLOCKS] >> (counter & 63) & 1:
            return Verdict.DUPLICATE
        return Verdict.OK

    def update(self, counter: int) -> Verdict:
        """Check and record ``counter``; call only for an authenticated packet."""
        if counter >= REJECT_AFTER_MESSAGES:
            return _EXHAUSTED
        bitmap = self._bitmap
        last = self._last
        if counter > last:
            current = last >> 6
            block = counter >> 6
            if block != current:
                for i in range(1, min(block - current, _BLOCKS) + 1):
                    bitmap[(current + i) % _BLOCKS] = 0
            self._last = counter
        elif last - counter >= WINDOW_SIZE:
            return _TOO_OLD
        index = (counter >> 6) % _BLOCKS
        bit = 1 << (counter & 63)
        word = bitmap[index]
        if word & bit:
            return _DUPLICATE
        bitmap[index] = word | bit
        return _OK
