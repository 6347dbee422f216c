"""The engine: the set of running tunnels, their timers, and crash recovery.

The control socket's service calls :meth:`Engine.up` / :meth:`Engine.down` / :meth:`Engine.status`;
the engine reports state changes and live status through ``on_event``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from core.constants import TransportKind
from core.errors import TunsealError
from core.profile import Profile, ProfileSecrets
from core.status import PeerStatus, TunnelStatus
from helper import dns, lockdown, netdev, policyroute
from helper.lockdown import Hold, Lockdown, PeerAddress
from helper.netwatch import NetWatch
from helper.records import Records
from helper.timers import TimerThread
from helper.tunnel import Tunnel
from helper.tunnelspec import TunnelSpec, is_host_name, spec_from_profile

log = logging.getLogger(__name__)

EventSink = Callable[[str, dict[str, object]], None]


class EngineError(TunsealError):
    pass


class Engine:
    def __init__(self, *, on_event: EventSink, state_dir: Path):
        self._on_event = on_event
        self._records = Records(state_dir)
        self.lockdown = Lockdown(state_dir, on_change=self._lockdown_changed)
        removed = self._records.cleanup_stale(netdev, dns, policy=policyroute,
                                              firewall=self.lockdown)
        for what in removed:
            log.warning("removed a leftover from an earlier run: %s", what)
        self._tunnels: dict[str, Tunnel] = {}
        self._errors: dict[str, str] = {}
        """Why the last start of a tunnel failed, shown by status() until it is retried."""
        self._lock = threading.Lock()
        self._timers = TimerThread(self._ticks, self._publish)
        self._timers.start()
        self._network_listeners: list[Callable[[str], None]] = []
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
                            and other.spec.transport == spec.transport == TransportKind.UDP):
                        raise EngineError(f"tunnel {other.name!r} already listens on UDP port "
                                          f"{spec.listen_port}")
                for other in self._tunnels.values():
                    shared = set(spec.full_families) & set(other.spec.full_families)
                    if shared:
                        raise EngineError(
                            f"tunnel {other.name!r} already routes all IPv{min(shared)} "
                            f"traffic; take it down before bringing up {spec.name!r}")
                taken = {other.ifname for other in self._tunnels.values()}
                taken.update(netdev.list_links(netdev.IFNAME_PREFIX))
                ifname = netdev.unique_ifname(spec.name, taken)
                t = Tunnel(spec, records=self._records, on_change=self._changed, ifname=ifname,
                           on_endpoints=self._endpoints_moved)
                self._tunnels[spec.name] = t
                self._errors.pop(spec.name, None)
        except Exception as e:
            raise self._failed(spec.name, e) from None
        held_before = self.lockdown.holds(spec.name)
        try:
            # The lockdown is in force before the tunnel changes anything (from `up`).
            self._hold(t)
            t.start()
        except Exception as e:
            with self._lock:
                self._tunnels.pop(spec.name, None)
            if not held_before:
                self._release(spec.name)
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

    def _hold(self, t: Tunnel) -> None:
        hold = hold_for(t.spec, t.ifname)
        if hold.families or self.lockdown.status()["always"]:
            # Only then does the table change for it (the reconcile at start finds a table
            # without any record too).
            self._records.note_nft_table(t.ifname, lockdown.TABLE)
        self.lockdown.hold(t.name, hold)

    def _release(self, name: str) -> None:
        try:
            self.lockdown.release(name)
        except TunsealError as e:
            log.error("ending the lockdown of %s failed: %s", name, e)
            raise

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
        self._release(name)
        self._emit_status(TunnelStatus(name=name, state="down"))

    def release_lockdown(self, name: str) -> None:
        """The user took ``name`` down while it was not running (a failed persist restore,
        say): its lockdown ends too."""
        if name not in self._tunnels:
            self._release(name)

    def let_through(self, name: str, address: str, port: int
                    ) -> contextlib.AbstractContextManager[None]:
        """The helper's own marked UDP packets to ``address``:``port`` pass the lockdown, while
        inside (a join's enrolment; ``name`` says whose)."""
        return self.lockdown.let_through(name, PeerAddress(address, port, "udp"))

    def reconcile_lockdown(self, keep: Iterable[Profile] = ()) -> None:
        """At start: the table left by an earlier run is rewritten for ``always`` and the
        profiles about to come back up (``keep``), or removed. Their endpoints join when they
        are up (a host name is not looked up here)."""
        holds = []
        for p in keep:
            host = p.endpoint_host if p.endpoint else ""
            endpoints = () if not host or is_host_name(host) else (
                PeerAddress(host, p.endpoint_port, p.transport),)
            hold = _hold(p.effective_lockdown, p.allow_lan, policyroute.full_families(
                p.allowed_ips), netdev.ifname_for(p.name), endpoints)
            if hold.families:
                holds.append((p.name, hold))
        self.lockdown.reconcile(holds)

    def set_lockdown(self, on: bool, *, allow_lan: bool = False) -> dict[str, Any]:
        self.lockdown.set_always(on, allow_lan=allow_lan)
        return self.lockdown.status()

    def lockdown_status(self) -> dict[str, Any]:
        return self.lockdown.status()

    def status(self, name: str) -> TunnelStatus:
        t = self._tunnels.get(name)
        if t is None:
            error = self._errors.get(name)
            if error is not None:
                return TunnelStatus(name=name, state="error", error=error)
            return TunnelStatus(name=name, state="down")
        return self._status_of(t)

    def peer_statuses(self, name: str) -> list[PeerStatus]:
        """Every peer of running tunnel ``name``, sorted by name ([] when it is not running)."""
        t = self._tunnels.get(name)
        return t.peer_statuses() if t is not None else []

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

    def add_network_listener(self, listener: Callable[[str], None]) -> None:
        """Also tell ``listener`` of each network change (autoconnect)."""
        self._network_listeners.append(listener)

    def _network_changed(self, why: str) -> None:
        for t in list(self._tunnels.values()):
            t.path_changed(why)
        for listener in list(self._network_listeners):
            listener(why)

    def _publish(self) -> None:
        for t in list(self._tunnels.values()):
            t.sample_rates()
            self._emit_status(self._status_of(t))

    def _changed(self, t: Tunnel) -> None:
        self.lockdown.set_up(t.name, t.state == "up")
        self._emit_status(self._status_of(t))

    def _status_of(self, t: Tunnel) -> TunnelStatus:
        """The tunnel's status, with the lockdown in force now (`lockdown off` ends a
        connected one while the tunnel stays up)."""
        st = t.status()
        if st.lockdown != "off" and not self.lockdown.kill_switch(t.name):
            st = replace(st, lockdown="off")
        return st

    def _endpoints_moved(self, t: Tunnel) -> None:
        try:
            self.lockdown.update_endpoints(t.name, t.spec.peer_addresses())
        except TunsealError as e:
            log.error("tunnel %s: the lockdown could not follow the new endpoint: %s",
                      t.name, e)

    def _lockdown_changed(self, status: dict[str, Any]) -> None:
        try:
            self._on_event("lockdown", status)
        except Exception:
            log.exception("delivering a lockdown event failed")

    def _emit_status(self, st: TunnelStatus) -> None:
        try:
            self._on_event("status", st.to_dict())
        except Exception:
            log.exception("delivering a status event failed")


def hold_for(spec: TunnelSpec, ifname: str) -> Hold:
    hold = _hold(spec.lockdown, spec.allow_lan, spec.full_families, ifname,
                 spec.peer_addresses())
    return replace(hold, dns_servers=tuple(spec.dns))


def _hold(mode: str, allow_lan: bool, full: tuple[int, ...], ifname: str,
          endpoints: tuple[PeerAddress, ...]) -> Hold:
    """What a tunnel asks of the lockdown table: a kill switch, or only the IPv6 block of an
    IPv4 full tunnel (no IPv6 may leave beside it), or nothing but a way through whenever
    lockdown 'always' is on."""
    hold = Hold(ifname, endpoints, allow_lan=allow_lan, lockdown="connected",
                ipv6_block=full == (4,))
    return replace(hold, lockdown=mode) if mode == "always" else (
        hold if mode == "connected" else hold.without_kill_switch())
