"""A D-Bus peer for tests, on a real bus: the loop the fake services (a notification server,
NetworkManager) share. One jeepney connection, one thread that reads it and answers each
method call through :meth:`DBusService.answer`, and one lock for everything sent on it (jeepney's
blocking connection is not thread-safe)."""

from __future__ import annotations

import threading

from jeepney import Message, MessageType
from jeepney.bus_messages import message_bus
from jeepney.io.blocking import DBusConnection, open_dbus_connection

WAIT = 10.0
"""Bound on a round trip to the bus (they take milliseconds)."""
DO_NOT_QUEUE = 4


def own(conn: DBusConnection, name: str) -> None:
    """Claim ``name`` on the bus, or fail the test: someone else has it."""
    reply = conn.send_and_get_reply(message_bus.RequestName(name, DO_NOT_QUEUE), timeout=WAIT)
    assert reply.body[0] == 1, f"{name} is already owned on the test bus"


class DBusService:
    """A service on ``bus`` ("SESSION", "SYSTEM" or an address), owning ``name`` if given.

    Subclasses say what to answer. Without ``serve`` no thread reads the connection, so a test
    can wait for replies of its own on it (:meth:`round_trip`)."""

    def __init__(self, bus: str, name: str | None = None, *, serve: bool = True):
        self._conn: DBusConnection = open_dbus_connection(bus=bus)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        if name is not None:
            own(self._conn, name)
        self._thread = threading.Thread(target=self._serve, name=f"fake-{name}", daemon=True)
        if serve:
            self._thread.start()

    def answer(self, msg: Message) -> Message | None:
        """The reply to a method call, or None to leave it unanswered."""
        raise NotImplementedError

    def send(self, msg: Message) -> None:
        with self._lock:
            self._conn.send(msg)

    def round_trip(self) -> None:
        """A call to the bus itself: everything sent before it has been routed."""
        assert not self._thread.is_alive(), "the serving thread would take the reply"
        with self._lock:
            reply = self._conn.send_and_get_reply(message_bus.GetId(), timeout=WAIT)
        assert reply.header.message_type == MessageType.method_return

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(WAIT)
        self._conn.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self._conn.receive(timeout=0.2)
            except TimeoutError:
                continue
            except OSError:  # the connection closed under us: the test is ending
                return
            if msg.header.message_type != MessageType.method_call:
                continue
            reply = self.answer(msg)
            if reply is not None:
                self.send(reply)
