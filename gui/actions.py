"""What a user can ask for, as requests to the helper: connect, disconnect, import, export,
save, duplicate, remove, keys. The window, the tray and the editor call these; failures come
back as one ``failed`` signal with a message a person can act on.

Profiles are read and written through :mod:`core.profile`, like the CLI does: an imported file
is parsed (and so checked) before it is sent, an export is written atomically, 0600 when it
holds secrets.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Signal

from core.errors import IPCError, ProfileError, ProfileInvalid
from core.ipc import OPS, RequestError
from core.profile import Profile, dump, dumps, load, loads, profile_to_dict
from gui.model import duplicate_name
from gui.state import LiveState

__all__ = ["Actions"]

log = logging.getLogger(__name__)

SECRET_WORDS = {"private_key": "private key", "psk": "pre-shared key"}

Problems = list[tuple[str, str]]
"""(field, message) pairs of an invalid profile; field '' when it is about no single field."""


class Actions(QObject):
    failed = Signal(str, str)
    """title, message."""
    done = Signal(str)
    """A short confirmation for the status bar."""
    imported = Signal(str, str)
    """(name, mode) of a profile just imported."""
    importClash = Signal(str, str)
    """(path, name): importing the file failed because a profile of that name exists."""
    secretsImported = Signal(str, str)
    """(name, path): the imported file carried secret keys, now in the keyring."""
    keyMissing = Signal(str, str)
    """(profile, 'private_key' or 'psk'): connecting failed for want of that key."""

    def __init__(self, state: LiveState, parent: QObject | None = None):
        super().__init__(parent)
        self.state = state
        self.helper = state.helper

    # --- tunnels ---------------------------------------------------------------------------

    def connect_tunnel(self, name: str) -> None:
        self.state.set_last_used(name)
        fail = self._fail(f"Could not connect {name}")

        def failed(error: IPCError) -> None:
            key = missing_key(error)
            if key:
                self.keyMissing.emit(name, key)
            else:
                fail(error)

        self.helper.call("connect", name=name, on_error=failed)

    def disconnect_tunnel(self, name: str) -> None:
        self.helper.call("disconnect", name=name,
                         on_error=self._fail(f"Could not disconnect {name}"))

    def disconnect_all(self, on_done: Callable[[], None]) -> None:
        """Disconnect every running tunnel; ``on_done`` once the helper answered them all
        (failures are reported as usual, and do not hold ``on_done`` back)."""
        names = self.state.model.active()
        if not names:
            on_done()
            return
        left = set(names)

        def answered(name: str) -> None:
            left.discard(name)
            if not left:
                on_done()

        for name in names:
            self._disconnect_then(name, answered)

    def _disconnect_then(self, name: str, then: Callable[[str], None]) -> None:
        fail = self._fail(f"Could not disconnect {name}")

        def failed(error: IPCError) -> None:
            fail(error)
            then(name)

        self.helper.call("disconnect", name=name, on_result=lambda _r: then(name),
                         on_error=failed)

    def reconnect(self, name: str) -> None:
        """Disconnect and connect again (a changed profile takes effect)."""
        self._disconnect_then(name, self.connect_tunnel)

    def toggle(self, name: str) -> None:
        if self.state.model.state(name) == "down":
            self.connect_tunnel(name)
        else:
            self.disconnect_tunnel(name)

    def unblock(self) -> None:
        """Turn lockdown off (the "Blocked: no tunnel" state's action)."""
        self.helper.call("lockdown", action="off", on_result=lambda _r: self.done.emit(
            "Lockdown off: traffic may leave without the tunnel"),
                         on_error=self._fail("Could not turn lockdown off"))

    # --- profiles --------------------------------------------------------------------------

    def import_file(self, path: str, *, replace: bool = False, as_copy: bool = False) -> None:
        """Import a .tunseal file: read and check it here, then hand it (with any [secrets])
        to the helper. ``as_copy``: under a free name (the file's is taken), with keyring
        items of its own."""
        title = f"Could not import {os.path.basename(path)}"
        try:
            profile, secrets = load(path)
        except ProfileInvalid as e:
            self.failed.emit(title, _problems_text(e.problems))
            return
        except ProfileError as e:
            self.failed.emit(title, str(e))
            return
        if as_copy:
            profile = _renamed(profile, duplicate_name(profile.name,
                                                       self.state.model.profiles))

        def imported(result: dict[str, Any]) -> None:
            stored = [SECRET_WORDS.get(s, s) for s in result.get("stored_secrets") or []]
            keys = (f"; its {' and '.join(stored)} {'is' if len(stored) == 1 else 'are'} now "
                    "in your keyring" if stored else "")
            self.done.emit(f"Imported {profile.name}{keys}")
            self.imported.emit(profile.name, profile.mode)
            if stored:
                self.secretsImported.emit(profile.name, path)

        fail = self._fail(title)

        def refused(error: IPCError) -> None:
            if error.code == "exists" and not replace:
                self.importClash.emit(path, profile.name)
            else:
                fail(error)

        self.helper.call("import_profile", text=dumps(profile, secrets), replace=replace,
                         on_result=imported, on_error=refused)

    def export(self, name: str, path: str, *, with_secrets: bool) -> None:
        title = f"Could not export {name}"

        def write(result: dict[str, Any]) -> None:
            try:
                profile, secrets = loads(result["text"])
                dump(profile, path, secrets)  # atomic; 0600 with secrets
            except ProfileError as e:
                self.failed.emit(title, str(e))
                return
            what = "with its secret keys " if secrets is not None else ""
            self.done.emit(f"Exported {name} {what}to {path}")

        self.helper.call("export_profile", name=name, with_secrets=with_secrets,
                         on_result=write, on_error=self._fail(title))

    def save(self, profile: Profile, *, original: str | None,
             on_saved: Callable[[], None], on_invalid: Callable[[Problems], None],
             on_error: Callable[[str], None]) -> None:
        """Add (``original`` None) or update a profile. A rename is an add of the new name and
        then a removal of the old one, so the old profile stays if the add fails."""
        op = "update_profile" if original == profile.name else "add_profile"

        def saved(_result: Any) -> None:
            if original is not None and original != profile.name:
                self.helper.call("remove_profile", name=original,
                                 on_error=self._fail(f"Could not remove {original}"))
            self.done.emit(f"Saved {profile.name}")
            on_saved()

        def refused(error: IPCError) -> None:
            if isinstance(error, RequestError) and error.code == "invalid_profile":
                on_invalid([(d.field, d.message) for d in error.details])
            else:
                on_error(str(error))

        self.helper.call(op, profile=profile_to_dict(profile), on_result=saved,
                         on_error=refused)

    def duplicate(self, name: str, *, on_done: Callable[[str], None] | None = None) -> None:
        source = self.state.model.profiles.get(name)
        if source is None:
            return
        new = duplicate_name(name, self.state.model.profiles)
        copy = _renamed(source, new)

        def added(_result: Any) -> None:
            self.done.emit(f"Duplicated {name} as {new} (without its keys: generate or "
                           "import them)")
            if on_done is not None:
                on_done(new)

        self.helper.call("add_profile", profile=profile_to_dict(copy), on_result=added,
                         on_error=self._fail(f"Could not duplicate {name}"))

    def remove(self, name: str) -> None:
        self.helper.call("remove_profile", name=name,
                         on_result=lambda _r: self.done.emit(f"Deleted {name} and its keys"),
                         on_error=self._fail(f"Could not delete {name}"))

    # --- keys ------------------------------------------------------------------------------

    def public_key(self, name: str, on_key: Callable[[str | None], None]) -> None:
        """``on_key(key)``, or ``on_key(None)`` if this end has no private key yet."""

        def missing(error: IPCError) -> None:
            if error.code == "not_found":
                on_key(None)
            else:
                self._fail(f"Could not read the public key of {name}")(error)

        self.helper.call("public_key", name=name,
                         on_result=lambda r: on_key(str(r["public_key"])), on_error=missing)

    def ensure_key(self, name: str, on_new: Callable[[str], None]) -> None:
        """Generate a key pair for ``name`` unless it has one; ``on_new(public key)`` only
        when one was made (a profile imported with its key, or edited, keeps its key)."""

        def have(key: str | None) -> None:
            if key is None:
                self.generate_key(name, on_new)

        self.public_key(name, have)

    def generate_key(self, name: str, on_key: Callable[[str], None]) -> None:
        def generated(result: dict[str, Any]) -> None:
            self.done.emit(f"New key pair for {name}: give the peer the new public key")
            on_key(str(result["public_key"]))

        self.helper.call("genkey", name=name, on_result=generated,
                         on_error=self._fail(f"Could not generate a key for {name}"))

    def generate_psk(self, name: str) -> None:
        self.helper.call("genpsk", name=name,
                         on_result=lambda _r: self.done.emit(
                             f"New pre-shared key for {name}: hand it to the peer with "
                             "Export with secret keys"),
                         on_error=self._fail(f"Could not generate a pre-shared key for {name}"))

    def set_peer_key(self, name: str, key: str, *, on_done: Callable[[], None],
                     on_error: Callable[[str], None]) -> None:
        def saved(_result: Any) -> None:
            self.done.emit(f"Peer key of {name} set; reconnect to use it")
            on_done()

        self.helper.call("set_peer_key", name=name, public_key=key, on_result=saved,
                         on_error=lambda e: on_error(_request_message(e)))

    # --- errors ----------------------------------------------------------------------------

    def trust_current_network(self, name: str) -> None:
        """Add the network this machine is on to ``name``'s trusted networks (autoconnect)."""
        def trusted(result: dict[str, Any]) -> None:
            self.done.emit(f"{name} trusts this network ({result.get('entry', '')})")

        self.helper.call("trust", name=name, current=True, on_result=trusted,
                         on_error=self._fail(f"Could not trust this network for {name}"))

    def _fail(self, title: str) -> Callable[[IPCError], None]:
        def report(error: IPCError) -> None:
            if error.code == "unavailable" or error.code == "forbidden":
                return  # the window already says so, with what to do
            self.failed.emit(title, _request_message(error))

        return report


def _renamed(profile: Profile, name: str) -> Profile:
    """``profile`` as ``name``. The copy must not share the original's keyring items:
    removing one would keep them, but a new key for one would silently change the other."""
    return profile.replace(
        name=name,
        private_key_ref=f"{name}.private" if profile.private_key_ref else "",
        psk_ref=f"{name}.psk" if profile.psk_ref else "",
    )


def missing_key(error: IPCError) -> str:
    """'private_key' or 'psk' when ``error`` says the profile lacks that key, else ''."""
    if isinstance(error, RequestError) and error.code == "not_found":
        for d in error.details:
            if d.field in ("keys.private_key", "keys.psk"):
                return d.field.removeprefix("keys.")
    return ""


def _request_message(error: IPCError) -> str:
    if isinstance(error, RequestError):
        if error.details:
            return "\n".join(f"{d.field}: {d.message}" if d.field else d.message
                             for d in error.details)
        return _strip_op(error.message)
    return str(error)


def _strip_op(message: str) -> str:
    """'set_peer_key: 'x' is not a public key...' -> ''x' is not a public key...'."""
    head, sep, rest = message.partition(": ")
    return rest if sep and head in OPS else message


def _problems_text(problems: list[ProfileError]) -> str:
    return "\n".join(f"{p.field}: {p.reason}" if p.field else p.reason for p in problems)
