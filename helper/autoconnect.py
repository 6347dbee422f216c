"""Connecting by itself: profiles with ``autoconnect = "untrusted"`` come up on networks they do
not trust and go down on ones they do; ``autoconnect = "login"`` ones come up when their owner's
session starts (docs/PROFILE.md, "Connecting by itself").

:class:`Policy` is the decision alone (pure, tested without root): given the network now, the
profiles and what runs, which tunnels to bring up or down, and why, in words for the log. It acts
only on a change (another network, a profile's autoconnect settings, the helper starting, a
session starting), never against the user: a tunnel the user took down stays down until the
machine is on another network, and one the user brought up on a trusted network stays up until
the network changes.

:class:`Autoconnect` runs it in the helper: one worker thread, woken by the engine's netlink
watcher, the resolv.conf/lease file watcher, NetworkManager's signals, profile and status
events and the ``session_started`` request; it reads the network (helper/netident.py) and
connects or disconnects through the service, as the helper itself.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from core.errors import TunsealError
from core.ipc import RequestError
from core.profile import Profile
from core.trusted import NetworkIdentity, is_trusted, parse_entry
from helper import netident
from helper.netwatch import FileWatch, NmWatch

__all__ = ["Action", "Autoconnect", "Policy"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Action:
    name: str
    op: str
    """"up" or "down"."""
    why: str
    """The log line: ``on untrusted network ...: connecting office``."""


@dataclass(frozen=True, slots=True)
class Setting:
    """What the policy reads of a profile."""

    name: str
    autoconnect: str
    trusted_networks: tuple[str, ...]
    owner: int | None = None

    @classmethod
    def of(cls, p: Profile, owner: int | None = None) -> Setting:
        return cls(p.name, p.autoconnect, p.trusted_networks, owner)


@dataclass
class Policy:
    """The decisions (module docstring). Not thread-safe: the worker owns it."""

    network: NetworkIdentity | None = None
    """The network of the last decision; None before the first."""
    suspended: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    """Profiles the user took down, and the network (its key) they did it on."""
    seen: dict[str, Setting] = field(default_factory=dict)

    def decide(self, network: NetworkIdentity, settings: Iterable[Setting],
               running: set[str], *, sessions: Iterable[int] = (),
               everyone: bool = False) -> list[Action]:
        """The actions for ``network`` now. ``sessions``: uids whose session just started
        (``login`` profiles they own, or all of them for root, come up); ``everyone``:
        evaluate every profile (the helper is starting)."""
        settings = list(settings)
        moved = self.network is None or network.key != self.network.key
        if network.online and moved:
            for name, key in list(self.suspended.items()):
                if key != network.key:
                    del self.suspended[name]
                    log.info("%s: on another network now; autoconnect applies again", name)
        changed = {s.name for s in settings if self.seen.get(s.name) != s}
        self.seen = {s.name: s for s in settings}
        if network.online:
            self.network = network
        started = set(sessions)
        actions = []
        for s in settings:
            if s.autoconnect == "never" or s.name in self.suspended:
                continue
            if s.autoconnect == "login":
                if not (started and (0 in started or s.owner in started)):
                    continue
                if s.name not in running:
                    actions.append(Action(s.name, "up", f"session started: connecting {s.name}"))
                continue
            if not network.online or not (moved or everyone or s.name in changed):
                continue
            trusted = is_trusted(network, s.trusted_networks)
            if not trusted and s.name not in running:
                actions.append(Action(s.name, "up", f"on untrusted network {network.label}: "
                                      f"connecting {s.name}"))
            elif trusted and s.name in running:
                actions.append(Action(s.name, "down", f"on trusted network {network.label}: "
                                      f"disconnecting {s.name}"))
        return actions

    def user_down(self, name: str) -> None:
        """The user took ``name`` down: autoconnect leaves it until another network."""
        setting = self.seen.get(name)
        if setting is None or setting.autoconnect == "never":
            return
        key = self.network.key if self.network is not None else ("", "", "")
        self.suspended[name] = key
        log.info("%s: disconnected by the user; autoconnect waits for another network", name)


class ServiceLike(Protocol):
    def as_helper(self, op: str, **args: Any) -> Any: ...
    def add_handler(self, op: str, handler: Callable[..., Any], *, mutating: bool) -> None: ...
    def get_profile(self, caller: Any, name: str) -> dict[str, Any]: ...
    def update_profile(self, caller: Any, profile: dict[str, Any]) -> dict[str, Any]: ...


class ProfilesLike(Protocol):
    def list(self) -> list[Profile]: ...
    def owner(self, name: str) -> int | None: ...


@dataclass
class _Wake:
    reasons: list[str] = field(default_factory=list)
    sessions: set[int] = field(default_factory=set)
    everyone: bool = False
    user_downs: list[str] = field(default_factory=list)


class Autoconnect:
    """The policy at work in the helper (module docstring)."""

    def __init__(self, *, service: ServiceLike, profiles: ProfilesLike,
                 running: Callable[[], list[str]],
                 sources: netident.Sources | None = None):
        self._service = service
        self._profiles = profiles
        self._running = running
        self._sources = sources or netident.env_sources()
        self.policy = Policy()
        self._cond = threading.Condition()
        self._wake: _Wake | None = None
        self._stopping = False
        self._acting: set[str] = set()
        """Tunnels the worker is taking down itself (their down event is not the user's)."""
        self._up: set[str] = set()
        self._thread = threading.Thread(target=self._run, name="tunseal-autoconnect",
                                        daemon=True)
        self._files = FileWatch(self.network_changed, files=(str(self._sources.resolv_conf),),
                                dirs=tuple(str(d) for d in (self._sources.networkd_leases,
                                                            *self._sources.dhclient_dirs)
                                           if d.is_dir()))
        self._nm = NmWatch(self.network_changed)

    def start(self) -> None:
        """Watch, and make the first decisions (the helper is starting)."""
        self._files.start()
        if self._sources.use_nm and self._nm.start():
            log.info("following NetworkManager's signals")
        self._thread.start()
        self._trigger("the helper started", everyone=True)

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():  # (not started when the helper failed to start)
            self._thread.join(timeout=10)
        self._files.stop()
        self._nm.stop()

    # --- requests (core/ipc.py) ---------------------------------------------------------------

    def register(self, service: ServiceLike) -> None:
        service.add_handler("network", self.op_network, mutating=False)
        service.add_handler("session_started", self.op_session_started, mutating=False)
        service.add_handler("trust", self.op_trust, mutating=True)
        service.add_handler("untrust", self.op_untrust, mutating=True)

    def op_network(self, caller: Any) -> dict[str, Any]:
        """The network now, and for each profile whether it trusts it."""
        network = self.current_network()
        running = set(self._running())
        profiles = [{"name": p.name, "autoconnect": p.autoconnect,
                     "trusted": is_trusted(network, p.trusted_networks),
                     "running": p.name in running,
                     "suspended": p.name in self.policy.suspended}
                    for p in sorted(self._profiles.list(), key=lambda p: p.name)]
        return {"network": network.to_dict(), "profiles": profiles}

    def op_session_started(self, caller: Any) -> dict[str, Any]:
        self.session_started(int(caller.uid))
        return {}

    def op_trust(self, caller: Any, name: str, entry: str | None = None,
                 current: bool = False) -> dict[str, Any]:
        """Add a network to ``name``'s trusted_networks (the owner's or root's to do)."""
        wanted = self._entries(entry, current)[0]
        profile = self._service.get_profile(caller, name)["profile"]
        tunnel = profile.setdefault("tunnel", {})
        listed = list(tunnel.get("trusted_networks", []))
        if any(_same(e, wanted) for e in listed):
            return {"profile": profile, "entry": wanted, "changed": False}
        tunnel["trusted_networks"] = [*listed, wanted]
        result = self._service.update_profile(caller, profile=profile)
        log.info("%s: trusts %s now", name, wanted)
        return {"profile": result["profile"], "entry": wanted, "changed": True}

    def op_untrust(self, caller: Any, name: str, entry: str | None = None,
                   current: bool = False) -> dict[str, Any]:
        """Remove a network (with --current: every entry naming the network now)."""
        gone = self._entries(entry, current)
        profile = self._service.get_profile(caller, name)["profile"]
        tunnel = profile.setdefault("tunnel", {})
        listed = list(tunnel.get("trusted_networks", []))
        kept = [e for e in listed if not any(_same(e, g) for g in gone)]
        if kept == listed:
            raise RequestError(f"profile {name!r} does not trust {' or '.join(gone)}; "
                               "'tunseal network' shows what it trusts", code="not_found")
        tunnel["trusted_networks"] = kept
        result = self._service.update_profile(caller, profile=profile)
        log.info("%s: no longer trusts %s", name, ", ".join(sorted(set(listed) - set(kept))))
        return {"profile": result["profile"], "removed": sorted(set(listed) - set(kept)),
                "changed": True}

    def _entries(self, entry: str | None, current: bool) -> list[str]:
        """The canonical entries a trust/untrust request names."""
        if (entry is None) == (not current):
            raise RequestError("name one network: an entry (nm:UUID, gateway:MAC@DOMAIN) or "
                               "current", code="bad_args")
        if entry is not None:
            try:
                return [parse_entry(entry).entry]
            except ValueError as e:
                raise RequestError(str(e), code="bad_args") from None
        network = self.current_network()
        if not network.online:
            raise RequestError("this machine is on no network now (no default route, or its "
                               "gateway does not answer)", code="refused")
        return [n.entry for n in network.networks]

    # --- what wakes it ------------------------------------------------------------------------

    def network_changed(self, why: str) -> None:
        self._trigger(why)

    def session_started(self, uid: int) -> None:
        self._trigger(f"session of uid {uid} started", session=uid)

    def on_event(self, event: str, data: dict[str, Any]) -> None:
        """The helper's events: profile changes (settings may have changed) and status (a
        down that is not the worker's own is the user's)."""
        if event == "profiles":
            self._trigger(f"profile {data.get('name', '')} {data.get('change', 'changed')}")
        elif event == "status":
            name, state = str(data.get("name", "")), data.get("state")
            if state in ("connecting", "up"):
                self._up.add(name)
            elif state == "down" and name in self._up:
                self._up.discard(name)
                if name in self._acting:
                    return
                with self._cond:
                    self._merge(_Wake(user_downs=[name]))

    def _trigger(self, why: str, *, session: int | None = None, everyone: bool = False) -> None:
        with self._cond:
            self._merge(_Wake([why], {session} if session is not None else set(), everyone))

    def _merge(self, w: _Wake) -> None:
        if self._wake is None:
            self._wake = _Wake()
        self._wake.reasons += w.reasons
        self._wake.sessions |= w.sessions
        self._wake.everyone |= w.everyone
        self._wake.user_downs += w.user_downs
        self._cond.notify()

    # --- the worker --------------------------------------------------------------------------

    def current_network(self) -> NetworkIdentity:
        """The network now (search domains of running tunnels are not the network's)."""
        running = set(self._running())
        own = [d for p in self._profiles.list() if p.name in running for d in p.dns_search]
        return netident.current(self._sources, exclude_domains=own)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._wake is None and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                wake, self._wake = self._wake, None
            assert wake is not None
            try:
                self._step(wake)
            except Exception:
                log.exception("autoconnect failed (after %s)", ", ".join(wake.reasons))

    def _step(self, wake: _Wake) -> None:
        for name in wake.user_downs:
            self.policy.user_down(name)
        if not wake.reasons:
            return
        profiles = self._profiles.list()
        settings = [Setting.of(p, self._profiles.owner(p.name)) for p in profiles]
        if not any(s.autoconnect != "never" for s in settings):
            self.policy.seen = {s.name: s for s in settings}
            return
        network = self.current_network()
        before = self.policy.network
        if before is None or network.key != before.key:
            log.info("network: %s (%s)", netident.describe(network), ", ".join(wake.reasons))
        actions = self.policy.decide(network, settings, set(self._running()),
                                     sessions=wake.sessions, everyone=wake.everyone)
        for action in actions:
            log.info("%s", action.why, extra={"tunnel": action.name})
            self._act(action)

    def _act(self, action: Action) -> None:
        try:
            if action.op == "up":
                self._service.as_helper("connect", name=action.name)
            else:
                self._acting.add(action.name)
                try:
                    self._service.as_helper("disconnect", name=action.name)
                finally:
                    self._acting.discard(action.name)
        except (RequestError, TunsealError) as e:
            log.error("autoconnect could not %s %s: %s", "connect" if action.op == "up"
                      else "disconnect", action.name, e, extra={"tunnel": action.name})


def _same(a: str, b: str) -> bool:
    try:
        return parse_entry(a) == parse_entry(b)
    except ValueError:
        return a == b
