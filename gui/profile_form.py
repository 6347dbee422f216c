"""The profile editor's form as plain data: a profile's fields as the text a person edits, and
that text back into the dict core.profile validates.

Only *parsing* happens here (a number field that holds no number, a list split on commas); every
rule about what a valid profile is stays in :mod:`core.profile`, whose problems the editor shows
next to their fields.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.constants import DEFAULT_MODE, Mode
from core.errors import ProfileError, ProfileInvalid
from core.fields import NAME_PATTERN
from core.profile import Profile, profile_from_dict

__all__ = ["FIELDS", "Field", "field_of", "for_form", "form_from_profile", "parse_form",
           "user_words"]


@dataclass(frozen=True, slots=True)
class Field:
    key: str
    """``section.key`` as in the .tunseal file and in core.profile's problems."""
    label: str
    kind: str = "text"
    """text, int, list, bool or choice."""
    hint: str = ""
    advanced: bool = False


FIELDS: tuple[Field, ...] = (
    Field("tunnel.name", "Name", hint="e.g. office"),
    Field("tunnel.mode", "Security", "choice"),
    Field("tunnel.cipher", "Cipher", "choice"),
    Field("peer.endpoint", "Server", hint="host or address, with :port if not 51900"),
    Field("peer.public_key", "Server's public key", hint="44 characters of base64"),
    Field("peer.transport", "Transport", "choice"),
    Field("interface.addresses", "Tunnel addresses", "list", hint="e.g. 10.77.0.2/24"),
    Field("peer.allowed_ips", "Networks through the tunnel", "list",
          hint="e.g. 10.0.0.0/8, 0.0.0.0/0 for everything"),
    Field("interface.dns", "DNS servers", "list", hint="optional"),
    Field("interface.dns_search", "DNS search domains", "list", hint="optional"),
    Field("tunnel.persist", "Connect when the computer starts", "bool"),
    Field("tunnel.autoconnect", "Connect by itself", "choice"),
    Field("tunnel.trusted_networks", "Trusted networks", "list",
          hint="e.g. gateway:MAC@domain"),
    Field("tunnel.lockdown", "Kill switch", "choice"),
    Field("tunnel.allow_lan", "Kill switch allows the LAN", "bool"),
    Field("tunnel.mtu", "MTU", "int", advanced=True),
    Field("peer.keepalive", "Keepalive (seconds, 0 = off)", "int", advanced=True),
    Field("interface.listen_port", "Listen port (0 = any)", "int", advanced=True),
    Field("tunnel.device_id", "Device ID", "int", advanced=True),
    Field("tunnel.rekey_seconds", "Rotate keys after (seconds)", "int", advanced=True),
    Field("tunnel.rekey_messages", "Rotate keys after (packets)", "int", advanced=True),
    Field("keys.private_key", "Private key (keyring item)", advanced=True),
    Field("keys.psk", "Pre-shared key (keyring item)", advanced=True),
)
FIELD_KEYS = frozenset(f.key for f in FIELDS)
_BY_KEY = {f.key: f for f in FIELDS}
KEY_FIELDS = ("peer.public_key", "keys.private_key", "keys.psk")
"""What plain mode does not use (it has no keys), so the editor hides them there."""

_INDEX = re.compile(r"\[[0-9]+\]$")


def field_of(problem_field: str | None) -> str | None:
    """The form field a core.profile problem belongs to ('interface.addresses[1]' ->
    'interface.addresses'), or None when it belongs to none (shown above the form)."""
    if not problem_field:
        return None
    base = _INDEX.sub("", problem_field)
    return base if base in FIELD_KEYS else None


_FILE_HINT = re.compile(r";?\s*\[[a-z]+\] needs [^;]*")
_KEY_MENTION = re.compile(r"\b(?:" + "|".join(re.escape(k) for k in sorted(FIELD_KEYS, key=len,
                                                                          reverse=True))
                          + r")\b")


def user_words(key: str, message: str) -> str:
    """A core.profile problem in the editor's words: the file format's table and key names
    become the labels the user sees ("missing; [interface] needs addresses = [...]" ->
    "Required, e.g. 10.77.0.2/24")."""
    field = _BY_KEY.get(key)
    text = message.strip()
    if text.startswith("missing"):
        hint = field.hint if field is not None else ""
        return f"Required, {hint}" if hint.startswith("e.g.") else "Required"
    if key == "peer.public_key" and "is not a public key" in text:
        return ("This is not a public key: paste the 44 characters (ending in '=') your "
                "administrator gave you")
    text = _FILE_HINT.sub("", text)
    text = _KEY_MENTION.sub(lambda m: f"'{_BY_KEY[m.group(0)].label}'", text)
    return text[:1].upper() + text[1:]


def for_form(problems: list[tuple[str, str]]) -> list[tuple[str | None, str]]:
    """(form field or None for above the form, message in the user's words) for each problem
    core.profile or the helper reported."""
    out: list[tuple[str | None, str]] = []
    for problem_field, message in problems:
        key = field_of(problem_field)
        if key == "interface.listen_port" and "no peer.endpoint" in message:
            # An empty Server, not an Advanced setting: say so where the user left it blank.
            out.append(("peer.endpoint", "Required: the server's address, e.g. vpn.example.com "
                        "(or, for a computer others connect to, a Listen port under Advanced)"))
            continue
        if key is None:
            out.append((None, f"{problem_field}: {message}" if problem_field else message))
        else:
            out.append((key, user_words(key, message)))
    return out


def form_from_profile(profile: Profile) -> dict[str, Any]:
    """Every field's value for the editor: str for text/int/list/choice, bool for bool."""
    full = _attributes(profile)
    values: dict[str, Any] = {}
    for f in FIELDS:
        value = full[f.key]
        if f.kind == "list":
            values[f.key] = ", ".join(value)
        elif f.kind == "bool":
            values[f.key] = bool(value)
        else:
            values[f.key] = str(value)
    return values


def _default_key_refs(tables: dict[str, dict[str, Any]]) -> None:
    """Name the keyring items a new profile's mode needs the way genkey/genpsk would
    ('<name>.private', '<name>.psk'), so nobody has to invent a keyring item name."""
    name = tables.get("tunnel", {}).get("name")
    mode = tables.get("tunnel", {}).get("mode", DEFAULT_MODE)
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        return  # the name's own problem is reported; a keyring item named after it is not
    keys = tables.setdefault("keys", {})
    if mode == Mode.EPHEMERAL:
        keys.setdefault("private_key", f"{name}.private")
    elif mode in (Mode.PSK, Mode.ROTATING):
        keys.setdefault("psk", f"{name}.psk")
    if not keys:
        del tables["keys"]


def _attributes(profile: Profile) -> dict[str, Any]:
    attrs = {
        "tunnel.name": profile.name, "tunnel.mode": profile.mode, "tunnel.cipher": profile.cipher,
        "tunnel.mtu": profile.mtu, "tunnel.device_id": profile.device_id,
        "tunnel.persist": profile.persist, "tunnel.rekey_seconds": profile.rekey_seconds,
        "tunnel.autoconnect": profile.autoconnect,
        "tunnel.trusted_networks": profile.trusted_networks,
        "tunnel.lockdown": profile.lockdown, "tunnel.allow_lan": profile.allow_lan,
        "tunnel.rekey_messages": profile.rekey_messages,
        "interface.addresses": profile.addresses, "interface.listen_port": profile.listen_port,
        "interface.dns": profile.dns, "interface.dns_search": profile.dns_search,
        "peer.endpoint": profile.endpoint, "peer.transport": profile.transport,
        "peer.public_key": profile.public_key, "peer.allowed_ips": profile.allowed_ips,
        "peer.keepalive": profile.keepalive, "keys.private_key": profile.private_key_ref,
        "keys.psk": profile.psk_ref,
    }
    return attrs


def parse_form(values: Mapping[str, Any]) -> Profile:
    """The profile the form describes, validated by core.profile.

    Raises :class:`~core.errors.ProfileInvalid` listing every problem: a number field holding
    something else is reported here, everything else by core.profile (both at once)."""
    tables: dict[str, dict[str, Any]] = {}
    problems: list[ProfileError] = []
    for f in FIELDS:
        raw = values.get(f.key, False if f.kind == "bool" else "")
        section, key = f.key.split(".")
        if f.kind == "bool":
            tables.setdefault(section, {})[key] = bool(raw)
            continue
        text = str(raw).strip()
        if not text:
            continue  # empty: the default (core.profile reports a required one as missing)
        if f.kind == "int":
            if not re.fullmatch(r"[0-9]+", text):
                problems.append(ProfileError(f"{text[:40]!r} is not a whole number",
                                             field=f.key))
                continue
            tables.setdefault(section, {})[key] = int(text)
        elif f.kind == "list":
            tables.setdefault(section, {})[key] = [x for x in re.split(r"[,\s]+", text) if x]
        else:
            tables.setdefault(section, {})[key] = text
    _default_key_refs(tables)
    data: dict[str, Any] = {"format": 1, **tables}
    try:
        profile = profile_from_dict(data)
    except ProfileInvalid as e:
        # A field that did not parse is left out, so core may call it missing: say it once.
        parsed = {p.field for p in problems}
        problems += [p for p in e.problems if p.field not in parsed]
        raise ProfileInvalid(problems, profile=e.profile) from None
    if problems:
        raise ProfileInvalid(problems, profile=profile.name)
    return profile
