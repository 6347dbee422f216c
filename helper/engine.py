"""The engine: the set of running tunnels, their timers, and crash recovery.

The control socket's service calls :meth:`Engine.up` / :meth:`Engine.down` / :meth:`Engine.status`;
the engine reports state changes and live status through ``on_event``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from core.errors import TunsealError
from core.profile import Profile, ProfileSecrets
from core.status import TunnelStatus
from helper import dns, netdev
from helper.netwatch import NetWatch
from helper.records import Records
from helper.timers import TimerThread
from helper.tunnel import Tunnel, TunnelSpec, spec_from_profile

log = logging.getLogger(__name__)

EventSink = Callable[[str, dict[str, object]], None]


class EngineError(TunsealError):
    pass


class Engine:
    def __init__(self, *, on_event: EventSink, state_dir: Path):
        self._on_event = on_event
        self._records = Records(state_dir)
        removed = self._records.cleanup_stale(netdev, dns)
        for what in removed:
            log.warning("removed a leftover from an earlier run: %s", what)
        self._tunnels: dict[str, Tunnel] = {}
        self._errors: dict[str, str] = {}
        """Why the last start of a tunnel failed, shown by status() until it is retried."""
        self._lock = threading.Lock()
        self._timers = TimerThread(self._ticks, self._publish)
        self._timers.start()
        self._netwatch = NetWatch(self._network_changed)
        self._netwatch.start()

    def up(self, profile: Profile, secrets: ProfileSecrets) -> None:
        """Bring up a client (or 1:1 listening) tunnel described by a profile."""
        try:
            spec = spec_from_profile(profile, secrets)
        except Exception as e:
            raise self._failed(profile.name, e) from None
        self.up_spec(spec)

    def up_spec(self, spec: TunnelSpec) -> Tunnel:
        """Bring up any tunnel: a profile's, or a gateway's with many peers. Whatever stops it
        from coming up is raised as an EngineError (or the TunsealError that says why) and
        kept for status(): state ``error`` with that message."""
        with self._lock:
            if spec.name in self._tunnels:
                raise EngineError(f"tunnel {spec.name!r} is already up")
        try:
            with self._lock:
                if spec.name in self._tunnels:  # came up since the check above
                    raise EngineError(f"tunnel {spec.name!r} is already up")
                for other in self._tunnels.values():
                    if (spec.listen_port and other.spec.listen_port == spec.listen_port
                            and other.spec.transport == spec.transport == "udp"):
                        raise EngineError(f"tunnel {other.name!r} already listens on UDP port "
                                          f"{spec.listen_port}")
                taken = {other.ifname for other in self._tunnels.values()}
                taken.update(netdev.list_links(netdev.IFNAME_PREFIX))
                ifname = netdev.unique_ifname(spec.name, taken)
                t = Tunnel(spec, records=self._records, on_change=self._changed, ifname=ifname)
                self._tunnels[spec.name] = t
                self._errors.pop(spec.name, None)
        except Exception as e:
            raise self._failed(spec.name, e) from None
        try:
            t.start()
        except Exception as e:
            with self._lock:
                self._tunnels.pop(spec.name, None)
            raise self._failed(spec.name, e) from None
        return t

    def _failed(self, name: str, e: Exception) -> TunsealError:
        """Record why ``name`` did not come up (status() shows it), tell subscribers, and
        return the error to raise."""
        if isinstance(e, TunsealError):
            error: TunsealError = e
        else:
            if not isinstance(e, OSError):  # not an expected failure: keep the traceback
                log.error("tunnel %s failed to start", name, exc_info=e, extra={"tunnel": name})
            error = EngineError(f"tunnel {name!r} failed to start: {e or type(e).__name__}")
        message = str(error) or f"tunnel {name!r} failed to start ({type(e).__name__})"
        self._errors[name] = message
        self._emit_status(TunnelStatus(name=name, state="error", error=message))
        return error

    def tunnel(self, name: str) -> Tunnel:
        t = self._tunnels.get(name)
        if t is None:
            raise EngineError(f"tunnel {name!r} is not up")
        return t

    def down(self, name: str) -> None:
        with self._lock:
            t = self._tunnels.pop(name, None)
        if t is None:
            raise EngineError(f"tunnel {name!r} is not up")
        t.stop()
        self._emit_status(TunnelStatus(name=name, state="down"))

    def status(self, name: str) -> TunnelStatus:
        t = self._tunnels.get(name)
        if t is None:
            error = self._errors.get(name)
            if error is not None:
                return TunnelStatus(name=name, state="error", error=error)
            return TunnelStatus(name=name, state="down")
        return t.status()

    def forget(self, name: str) -> None:
        """Clear the failure status() shows for a tunnel that is not running."""
        if self._errors.pop(name, None) is not None:
            self._emit_status(TunnelStatus(name=name, state="down"))

    def running(self) -> list[str]:
        return sorted(self._tunnels)

    def shutdown(self) -> None:
        self._netwatch.stop()
        self._timers.stop()
        for name in self.running():
            try:
                self.down(name)
            except TunsealError as e:
                log.warning("stopping %s: %s", name, e)

    # --- internals ---------------------------------------------------------------------------

    def _ticks(self) -> list[Callable[[], None]]:
        return [t.tick for t in list(self._tunnels.values())]

    def _network_changed(self, why: str) -> None:
        for t in list(self._tunnels.values()):
            t.path_changed(why)

    def _publish(self) -> None:
        for t in list(self._tunnels.values()):
            t.sample_rates()
            self._emit_status(t.status())

    def _changed(self, t: Tunnel) -> None:
        self._emit_status(t.status())

    def _emit_status(self, st: TunnelStatus) -> None:
        try:
            self._on_event("status", st.to_dict())
        except Exception:
            log.exception("delivering a status event failed")
