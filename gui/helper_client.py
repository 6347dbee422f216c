"""The Qt bridge to the helper: requests run on a worker thread, events arrive from a
subscription thread, and both come back to the GUI thread as Qt signals. Nothing here blocks the
window, whatever the helper does.

Two :class:`core.ipcclient.Client` connections, as ipcclient's docstring asks: one for requests
(used by one worker thread, so requests run one at a time, in order) and one subscribed to
events (read by :class:`EventReader`, a QThread).
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QThread, QTimer, Signal, Slot

from core.errors import HelperUnavailable, IPCError
from core.ipcclient import Client, all_statuses, list_all_profiles, socket_path

__all__ = ["HelperClient"]

log = logging.getLogger(__name__)

CALL_TIMEOUT = 20.0
"""Seconds a request may take; connect loads keys from the keyring and starts a tunnel."""
RETRY_EVERY = 5000
"""Milliseconds between automatic reconnection attempts while the helper is away."""

OnResult = Callable[[Any], None]
OnError = Callable[[IPCError], None]


class EventReader(QThread):
    """Subscribes and forwards every event until the connection ends or :meth:`stop`."""

    received = Signal(str, object)
    subscribed = Signal()
    lost = Signal(str, str)
    """code, message: the helper could not be reached or went away."""

    def __init__(self, path: str, parent: QObject | None = None):
        super().__init__(parent)
        self._client = Client(path, timeout=CALL_TIMEOUT)
        self._stopping = False

    def run(self) -> None:
        try:
            self._client.call("subscribe")
            if self._stopping:
                return
            self.subscribed.emit()
            for event in self._client.events():
                self.received.emit(event.event, dict(event.data))
        except IPCError as e:  # HelperUnavailable, or a malformed message from the helper
            if not self._stopping:
                self.lost.emit(e.code, str(e))
        finally:
            self._client.close()

    def stop(self) -> None:
        self._stopping = True
        self._client.close()  # ends a blocked read quietly (ipcclient's contract)
        self.wait(5000)


class HelperClient(QObject):
    """Requests and events, the Qt way.

    ``call(op, on_result=..., on_error=..., **args)`` returns at once; the callback runs in the
    GUI thread. ``available(ok, code, message)`` says whether the helper can be used; while it
    cannot, the client retries on its own every few seconds (and at once on :meth:`retry`)."""

    received = Signal(str, object)
    available = Signal(bool, str, str)
    _finished = Signal(object)
    """(job, result, error) as one tuple: PySide6 6.12 miscounts references to None passed as
    a signal argument of type object (and the interpreter then aborts at exit)."""

    def __init__(self, path: str | None = None, parent: QObject | None = None):
        super().__init__(parent)
        self.path = socket_path(path)
        self._calls = Client(self.path, timeout=CALL_TIMEOUT)
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tunseal-call")
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[OnResult | None, OnError | None]] = {}
        self._reader: EventReader | None = None
        self._ok = False
        self._closed = False
        self._retry = QTimer(self)
        self._retry.setInterval(RETRY_EVERY)
        self._retry.timeout.connect(self.retry)
        self._finished.connect(self._deliver)

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Subscribe to the helper's events (in the background)."""
        if self._closed or self._subscribed():
            return
        reader = EventReader(self.path)  # replaces (and frees) a finished one
        reader.received.connect(self.received)
        reader.subscribed.connect(self._on_subscribed)
        reader.lost.connect(self._on_lost)
        self._reader = reader
        reader.start()

    @Slot()
    def retry(self) -> None:
        """Try again now: resubscribe, or, if the subscription is alive (only a request
        failed), ask the helper whether it answers requests again."""
        if self._subscribed():
            self.call("ping", on_result=lambda _r: self._on_subscribed())
        else:
            self.start()

    def _subscribed(self) -> bool:
        return self._reader is not None and self._reader.isRunning()

    def close(self) -> None:
        """Stop both threads; callbacks of unfinished requests are dropped."""
        self._closed = True
        self._retry.stop()
        if self._reader is not None:
            self._reader.stop()
            self._reader = None
        self._pending.clear()
        self._calls.close()
        self._pool.shutdown(wait=True, cancel_futures=True)

    # --- requests --------------------------------------------------------------------------

    def call(self, op: str, *, on_result: OnResult | None = None,
             on_error: OnError | None = None, **args: Any) -> None:
        self._submit(lambda: self._calls.call(op, **args), on_result, on_error)

    def list_profiles(self, *, on_result: OnResult | None = None,
                      on_error: OnError | None = None) -> None:
        """Every profile, as ``{"profiles": [...]}``: ``list_profiles`` pages followed on the
        worker thread (one reply holds at most 64 KiB)."""
        self._submit(lambda: {"profiles": list_all_profiles(self._calls)}, on_result, on_error)

    def statuses(self, *, on_result: OnResult | None = None,
                 on_error: OnError | None = None) -> None:
        """Every tunnel's status, as ``{"tunnels": [...]}``, following ``status``'s pages."""
        self._submit(lambda: {"tunnels": all_statuses(self._calls)}, on_result, on_error)

    def _submit(self, request: Callable[[], Any], on_result: OnResult | None,
                on_error: OnError | None) -> None:
        if self._closed:
            return
        job = next(self._ids)
        self._pending[job] = (on_result, on_error)
        future = self._pool.submit(request)
        future.add_done_callback(lambda f: self._done(job, f))

    def _done(self, job: int, future: concurrent.futures.Future[Any]) -> None:
        # On the worker thread: hand over to the GUI thread (a queued signal).
        if future.cancelled():
            return
        error = future.exception()
        if error is not None and not isinstance(error, IPCError):
            log.error("request failed unexpectedly", exc_info=error)
            error = IPCError(f"the request failed: {error}", code="internal")
        self._finished.emit((job, None if error else future.result(), error))

    @Slot(object)
    def _deliver(self, outcome: tuple[int, Any, IPCError | None]) -> None:
        job, result, error = outcome
        on_result, on_error = self._pending.pop(job, (None, None))
        if error is None:
            if on_result is not None:
                on_result(result)
            return
        if isinstance(error, HelperUnavailable):
            self._on_lost(error.code, str(error))
        if on_error is not None:
            on_error(error)
        else:
            log.warning("request failed: %s", error)

    # --- availability ----------------------------------------------------------------------

    @Slot()
    def _on_subscribed(self) -> None:
        if self._closed:  # a queued signal from the watcher, delivered after close()
            return
        self._retry.stop()
        if not self._ok:
            # The request connection may be a stale one to a helper that has since restarted:
            # start the requests that follow on a fresh one (queued behind any in flight).
            self._pool.submit(self._calls.close)
        self._set_available(True, "", "")

    @Slot(str, str)
    def _on_lost(self, code: str, message: str) -> None:
        if self._closed:
            return
        if not self._retry.isActive():
            self._retry.start()
        self._set_available(False, code, message)

    def _set_available(self, ok: bool, code: str, message: str) -> None:
        changed = ok != self._ok
        self._ok = ok
        if changed or not ok:
            self.available.emit(ok, code, message)
