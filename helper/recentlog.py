"""The helper's recent log records, kept in memory for clients that open late (the GUI's Logs
tab asks for them with ``recent_log``): the same fields as ``log`` events, newest last.

Bounded both ways: :data:`KEEP` records in all, and a reply stays well under the control
socket's line limit. The helper never logs key material, so nothing needs filtering here.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
from typing import Any

__all__ = ["KEEP", "REPLY_BUDGET", "RecentLog"]

KEEP = 2000
"""Records kept (every tunnel and the helper's own together); the oldest go first."""
REPLY_BUDGET = 48 * 1024
"""Bytes of JSON one reply may carry: below core.ipc.MAX_LINE with room for the envelope."""
MESSAGE_LIMIT = 1024
"""Characters of one message kept (a record is for reading, not a dump)."""


class RecentLog(logging.Handler):
    def __init__(self, level: int = logging.INFO, keep: int = KEEP):
        super().__init__(level)
        self._records: collections.deque[dict[str, Any]] = collections.deque(maxlen=keep)
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        tunnel = getattr(record, "tunnel", "")
        try:
            entry = {"time": record.created, "level": record.levelname,
                     "tunnel": tunnel if isinstance(tunnel, str) else str(tunnel),
                     "message": record.getMessage()[:MESSAGE_LIMIT]}
        except (TypeError, ValueError):  # a malformed format string in some log call
            self.handleError(record)
            return
        with self._guard:
            self._records.append(entry)

    def entries(self, tunnel: str | None = None) -> list[dict[str, Any]]:
        """The newest records about ``tunnel`` and the helper's own (no tunnel), or all of
        them when ``tunnel`` is None, oldest first, as many as fit :data:`REPLY_BUDGET`."""
        with self._guard:
            records = list(self._records)
        out: list[dict[str, Any]] = []
        size = 0
        for entry in reversed(records):
            if tunnel is not None and entry["tunnel"] not in ("", tunnel):
                continue
            size += len(json.dumps(entry)) + 2
            if size > REPLY_BUDGET:
                break
            out.append(entry)
        out.reverse()
        return out
