"""The engine's timer thread: the clock that drives every tunnel's timers.

One thread wakes every TICK seconds and runs each tunnel's timer work (Tunnel.tick: the
protocol timers, whose decisions all live in core/timers.py beside the event hooks that keep
their timestamps, and the path probes of core/probe.py); once a STATUS_EVERY it samples rates
and publishes status, which is what drives the GUI's live graph.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)

TICK = 0.25
"""Timer resolution: handshake retries (5 s) and keepalives (>= 1 s) need no finer."""
STATUS_EVERY = 1.0
"""Status events per tunnel per second: enough for a live graph, cheap for the socket."""


class TimerThread:
    def __init__(self, tick: Callable[[], Iterable[Callable[[], None]]],
                 status: Callable[[], None]):
        self._tunnels = tick
        self._status = status
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tunseal-timers", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)

    def _run(self) -> None:
        ticks_per_status = max(1, round(STATUS_EVERY / TICK))
        n = 0
        while not self._stop.wait(TICK):
            for tick in self._tunnels():
                try:
                    tick()
                except Exception:
                    log.exception("timer work failed")
            n += 1
            if n % ticks_per_status == 0:
                try:
                    self._status()
                except Exception:
                    log.exception("publishing status failed")
