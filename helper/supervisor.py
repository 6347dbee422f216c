"""Keeping a tunnel's data-path loops alive, or saying loudly that they are not.

Every per-packet error in the loops is meant to be a counted drop (helper/datapath.py). A loop
that dies anyway (a bug, or its socket closed under it) is restarted after a short pause, a
bounded number of times; a loop that keeps dying is given up on and the tunnel is told why, so
it can show ``failed`` with the reason instead of carrying on half-dead (sending, never
receiving), which is what a logged-and-forgotten thread used to leave behind.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

RESTART_LIMIT = 3
"""Restarts allowed within RESTART_WINDOW; one more death and the loop is given up on."""
RESTART_WINDOW = 60.0
"""Seconds over which deaths are counted: a loop that dies once a day is restarted forever."""
BACKOFF = 0.2
"""Seconds before the first restart; each further death within the window waits one more."""


class Supervised:
    """One loop in its own thread. ``loop`` returns when ``stop`` is set; returning or raising
    otherwise is a death. After RESTART_LIMIT restarts within RESTART_WINDOW seconds the next
    death calls ``on_failed(reason)`` and the thread ends."""

    def __init__(self, name: str, loop: Callable[[], None], stop: threading.Event,
                 on_failed: Callable[[str], None], *, limit: int = RESTART_LIMIT,
                 window: float = RESTART_WINDOW, backoff: float = BACKOFF):
        self.name = name
        self.loop = loop
        self.stop = stop
        self.on_failed = on_failed
        self.limit = limit
        self.window = window
        self.backoff = backoff
        self.restarts = 0
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)

    def _run(self) -> None:
        deaths: list[float] = []
        while True:
            try:
                self.loop()
                why = "it returned without being asked to stop"
            except Exception as e:
                log.exception("%s: the loop died", self.name)
                why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            if self.stop.is_set():
                return
            now = time.monotonic()
            deaths = [t for t in deaths if now - t < self.window] + [now]
            if len(deaths) > self.limit:
                reason = (f"the {self.name} loop died {len(deaths)} times in "
                          f"{self.window:.0f} s (last: {why})")
                log.error("%s: giving up: %s", self.name, reason)
                self.on_failed(reason)
                return
            self.restarts += 1
            log.warning("%s: the loop died (%s); restarting it (%d of %d)", self.name, why,
                        len(deaths), self.limit)
            if self.stop.wait(self.backoff * len(deaths)):
                return
