"""Tunnel profiles: the ``.tunseal`` file format, its validation and its canonical text.

A :class:`Profile` describes one tunnel. On disk it is TOML (docs/PROFILE.md is the reference);
over the control socket it is the same structure as a JSON object (:func:`profile_to_dict`,
:func:`profile_from_dict`). A profile never holds a secret: ``[keys]`` names keyring items. Only an
export the user explicitly asks for carries a ``[secrets]`` table, and :func:`loads` returns that
apart from the profile, as :class:`ProfileSecrets`.

Constructing a :class:`Profile` does not validate it (an editor may hold a draft); everything that
produces or consumes one (:func:`profile_from_dict`, :func:`loads`, :func:`dumps`,
:func:`profile_to_dict`, :meth:`Profile.replace`) validates, and :func:`validate` reports every
problem at once, each as a :class:`~core.errors.ProfileError` whose ``field`` is ``section.key``.

Values are kept exactly as written (an address stays ``"fd77:0::2/128"``), so a valid profile
round-trips unchanged: ``loads(dumps(p, s)) == (p, s)``.
"""

from __future__ import annotations

import base64
import dataclasses
import difflib
import ipaddress
import logging
import os
import re
import tomllib
from collections.abc import Callable, Hashable, Mapping
from dataclasses import KW_ONLY, dataclass
from typing import Any, TypeVar

import tomli_w

from core import fields
from core.atomicfile import write_atomic
from core.constants import (
    CIPHERS,
    DEFAULT_CIPHER,
    DEFAULT_MODE,
    DEFAULT_MTU,
    DEFAULT_PORT,
    DEFAULT_TRANSPORT,
    KEY_LEN,
    MODES,
    ROTATING_REKEY_AFTER_MESSAGES,
    ROTATING_REKEY_AFTER_TIME,
    TRANSPORTS,
    Mode,
    TransportKind,
)
from core.errors import ProfileError, ProfileInvalid
from core.fields import NAME_MAX, PORT_MAX, is_low_order
from core.trusted import TrustedNetwork, parse_entry

__all__ = [
    "FORMAT_VERSION",
    "Profile",
    "ProfileSecrets",
    "dump",
    "dumps",
    "is_low_order",
    "load",
    "loads",
    "profile_from_dict",
    "profile_to_dict",
    "validate",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""The ``format`` key. A reader refuses any other value rather than guess at its meaning."""

# Bounds, so that hostile input cannot make us allocate or compute much.
MAX_FILE_BYTES = 64 * 1024
MAX_LIST_LEN = 256

MTU_MIN, MTU_MAX = 576, 9000
"""576 is the smallest datagram every IPv4 host must accept; 9000 is a jumbo frame."""
MTU_MIN_IPV6 = 1280
"""IPv6 requires every link to carry 1280-byte packets (RFC 8200 section 5)."""
REKEY_SECONDS_MIN, REKEY_SECONDS_MAX = 10, 86400
REKEY_MESSAGES_MIN, REKEY_MESSAGES_MAX = 1000, 1 << 60
KEEPALIVE_MAX = 3600
DEVICE_ID_MAX = 0xFFFF

_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Profile:
    """One tunnel. Every field but ``name`` and ``addresses`` has a default; all but ``name`` are
    keyword-only. ``private_key_ref`` and ``psk_ref`` are keyring item names ("" when absent)."""

    name: str
    _: KW_ONLY
    mode: str = DEFAULT_MODE
    cipher: str = DEFAULT_CIPHER
    mtu: int = DEFAULT_MTU
    device_id: int = 0
    persist: bool = False
    autoconnect: str = "never"
    """"never", "login" or "untrusted": when the helper brings the tunnel up by itself
    (helper/autoconnect.py)."""
    trusted_networks: tuple[str, ...] = ()
    """Networks where ``untrusted`` autoconnect keeps the tunnel down (core/trusted.py)."""
    lockdown: str = ""
    """"off", "connected" or "always"; "" (not written) means the default: see
    :attr:`effective_lockdown`."""
    allow_lan: bool = False
    rekey_seconds: int = int(ROTATING_REKEY_AFTER_TIME)
    rekey_messages: int = ROTATING_REKEY_AFTER_MESSAGES
    addresses: tuple[str, ...]
    listen_port: int = 0
    dns: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    endpoint: str = ""
    transport: str = DEFAULT_TRANSPORT
    public_key: str = ""
    allowed_ips: tuple[str, ...] = ()
    keepalive: int = 0
    private_key_ref: str = ""
    psk_ref: str = ""

    @property
    def endpoint_host(self) -> str:
        """The endpoint's host name or address, without brackets; "" for a listening end.
        Raises :class:`~core.errors.ProfileError` if the endpoint is malformed."""
        return _split_endpoint(self)[0]

    @property
    def endpoint_port(self) -> int:
        """The endpoint's port: DEFAULT_PORT when the endpoint names none, 0 when there is no
        endpoint at all (a listening end)."""
        return _split_endpoint(self)[1]

    @property
    def effective_lockdown(self) -> str:
        """The lockdown in force for this profile: as written, else ``connected`` for a full
        tunnel (one that routes 0.0.0.0/0 or ::/0) and ``off`` for a split tunnel."""
        if self.lockdown:
            return self.lockdown
        return "connected" if self.full_families else "off"

    @property
    def full_families(self) -> tuple[int, ...]:
        """The address families (4, 6) this profile routes everything of."""
        out = []
        for text in self.allowed_ips:
            try:
                net = ipaddress.ip_network(text, strict=False)
            except ValueError:
                continue
            if net.prefixlen == 0 and net.version not in out:
                out.append(net.version)
        return tuple(sorted(out))

    @property
    def is_unsafe(self) -> bool:
        """True for ``plain`` mode: no encryption and no authentication."""
        return self.mode == Mode.PLAIN

    def replace(self, **changes: Any) -> Profile:
        """A validated copy with ``changes`` applied (lists are accepted for the tuple fields).

        Raises :class:`~core.errors.ProfileInvalid` if the copy is invalid, ``TypeError`` for a
        name that is not a field."""
        for attr in _TUPLE_ATTRS:
            if isinstance(changes.get(attr), list):
                changes[attr] = tuple(changes[attr])
        copy = dataclasses.replace(self, **changes)
        validate(copy)
        return copy


@dataclass(frozen=True, slots=True, repr=False)
class ProfileSecrets:
    """Key material carried by an explicit export: 32 raw bytes each, or None. Never logged:
    ``repr`` shows only whether each key is present."""

    private_key: bytes | None = None
    psk: bytes | None = None

    def __repr__(self) -> str:
        def shown(value: bytes | None) -> str:
            return "None" if value is None else "<redacted>"

        return f"ProfileSecrets(private_key={shown(self.private_key)}, psk={shown(self.psk)})"


# --- layout: TOML section and key of every Profile attribute, in file order ----------------------

_LAYOUT: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    (
        "tunnel",
        (
            ("name", "name"),
            ("mode", "mode"),
            ("cipher", "cipher"),
            ("mtu", "mtu"),
            ("device_id", "device_id"),
            ("persist", "persist"),
            ("autoconnect", "autoconnect"),
            ("trusted_networks", "trusted_networks"),
            ("lockdown", "lockdown"),
            ("allow_lan", "allow_lan"),
            ("rekey_seconds", "rekey_seconds"),
            ("rekey_messages", "rekey_messages"),
        ),
    ),
    (
        "interface",
        (
            ("addresses", "addresses"),
            ("listen_port", "listen_port"),
            ("dns", "dns"),
            ("dns_search", "dns_search"),
        ),
    ),
    (
        "peer",
        (
            ("endpoint", "endpoint"),
            ("transport", "transport"),
            ("public_key", "public_key"),
            ("allowed_ips", "allowed_ips"),
            ("keepalive", "keepalive"),
        ),
    ),
    ("keys", (("private_key", "private_key_ref"), ("psk", "psk_ref"))),
)
_SECRET_KEYS = ("private_key", "psk")
_SECTION_KEYS: dict[str, tuple[str, ...]] = {s: tuple(k for k, _ in keys) for s, keys in _LAYOUT}
_SECTION_KEYS["secrets"] = _SECRET_KEYS
_SECTIONS = tuple(_SECTION_KEYS)
_FIELD = {attr: f"{section}.{key}" for section, keys in _LAYOUT for key, attr in keys}
_REQUIRED = ("name", "addresses")
_TUPLE_ATTRS = ("addresses", "dns", "dns_search", "allowed_ips", "trusted_networks")
_ALWAYS_WRITTEN = frozenset({"name", "mode", "cipher", "mtu", "addresses", "transport"})
_DEFAULTS: dict[str, object] = {
    f.name: f.default for f in dataclasses.fields(Profile) if f.default is not dataclasses.MISSING
}


# --- public API -------------------------------------------------------------------------------


def validate(profile: Profile) -> None:
    """Raise :class:`~core.errors.ProfileInvalid` listing every problem of ``profile``."""
    if not isinstance(profile, Profile):
        raise ProfileError(f"expected a Profile, not {fields.type_name(profile)}")
    problems = _check_profile(profile, frozenset())
    if problems:
        raise ProfileInvalid(_in_field_order(problems), profile=_known_name(profile.name))


def profile_from_dict(d: Mapping[str, object]) -> Profile:
    """The profile a TOML- or JSON-shaped mapping describes, validated.

    The mapping never carries secrets: a ``secrets`` key is refused."""
    profile, problems = _build(d, allow_secrets=False)
    if problems:
        raise ProfileInvalid(_in_field_order(problems), profile=_known_name(profile.name))
    return profile


def profile_to_dict(p: Profile) -> dict[str, object]:
    """The canonical TOML/JSON structure of ``p`` (validated first).

    Optional keys that hold their default are left out, except the ones a reader should always
    see (name, mode, cipher, mtu, addresses, transport, and the rekey limits in rotating mode);
    :func:`profile_from_dict` restores the defaults."""
    validate(p)
    return _to_dict(p)


def _to_dict(p: Profile) -> dict[str, object]:
    out: dict[str, object] = {"format": FORMAT_VERSION}
    for section, keys in _LAYOUT:
        table: dict[str, object] = {}
        for key, attr in keys:
            value = getattr(p, attr)
            if _is_written(p, attr, value):
                table[key] = list(value) if isinstance(value, tuple) else value
        if table:
            out[section] = table
    return out


def loads(text: str) -> tuple[Profile, ProfileSecrets | None]:
    """Parse ``.tunseal`` text into a validated profile and the ``[secrets]`` it carries (None
    when the text has no ``[secrets]`` table).

    Raises :class:`~core.errors.ProfileError` when the text is not a readable TOML document
    (too large, syntax error with line and column), and :class:`~core.errors.ProfileInvalid`
    listing every problem when it is TOML but not a valid profile."""
    if not isinstance(text, str):
        raise ProfileError(f"profile text must be a string, not {fields.type_name(text)}")
    _check_size(text)
    data = _parse_toml(text)
    profile, problems = _build(data, allow_secrets=True)
    secrets: ProfileSecrets | None = None
    if "secrets" in data:
        secrets, secret_problems = _read_secrets(data["secrets"], profile)
        problems += secret_problems
    if problems:
        raise ProfileInvalid(_in_field_order(problems), profile=_known_name(profile.name))
    return profile, secrets


def dumps(p: Profile, secrets: ProfileSecrets | None = None) -> str:
    """The canonical ``.tunseal`` text of ``p``, with a ``[secrets]`` table if ``secrets`` is
    given. Raises :class:`~core.errors.ProfileInvalid` if either is invalid."""
    if not isinstance(p, Profile):
        raise ProfileError(f"expected a Profile, not {fields.type_name(p)}")
    problems = _check_profile(p, frozenset())
    if secrets is not None:
        problems += _check_secrets(secrets, p)
    if problems:
        raise ProfileInvalid(_in_field_order(problems), profile=_known_name(p.name))
    data = _to_dict(p)
    header = f"# Tunseal profile (format {FORMAT_VERSION}); reference: docs/PROFILE.md\n"
    if secrets is not None:
        data["secrets"] = {
            key: base64.b64encode(value).decode("ascii")
            for key, value in (("private_key", secrets.private_key), ("psk", secrets.psk))
            if value is not None
        }
        header += (
            "# WARNING: contains secret keys. Keep this file private; delete it after import.\n"
        )
    return header + "\n" + tomli_w.dumps(data)


def load(path: str | os.PathLike[str]) -> tuple[Profile, ProfileSecrets | None]:
    """Read and parse a ``.tunseal`` file (UTF-8, a leading BOM is tolerated)."""
    shown = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise ProfileError(f"cannot read {shown!r}: {e.strerror or e}") from e
    if len(raw) > MAX_FILE_BYTES:
        raise ProfileError(f"{shown!r} is larger than {MAX_FILE_BYTES} bytes; is it a profile?")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ProfileError(
            f"{shown!r} is not UTF-8 text (invalid byte at offset {e.start})"
        ) from None
    profile, secrets = loads(text)
    log.debug("loaded profile %r from %s", profile.name, shown)
    return profile, secrets


def dump(p: Profile, path: str | os.PathLike[str], secrets: ProfileSecrets | None = None) -> None:
    """Write ``dumps(p, secrets)`` to ``path`` atomically (a temporary file in the same
    directory, then rename). With secrets the file is created 0600; without, 0666 less the
    umask. Nothing is written if the profile or secrets are invalid."""
    text = dumps(p, secrets).encode("utf-8")
    target = os.fspath(path)
    try:
        write_atomic(target, text, mode=0o600 if secrets is not None else 0o666)
    except OSError as e:
        raise ProfileError(f"cannot write {target!r}: {e.strerror or e}") from e
    log.debug("wrote profile %r to %s (secrets: %s)", p.name, target, secrets is not None)


# --- reading the structure --------------------------------------------------------------------


def _parse_toml(text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(f"not valid TOML: {e}") from None
    except RecursionError:
        raise ProfileError("not valid TOML: arrays or tables are nested too deeply") from None
    except ValueError:  # tomllib lets int()'s 4300-digit limit through
        raise ProfileError("not valid TOML: a number is too long to read") from None


def _check_size(text: str) -> None:
    # Every character takes at least one byte, so only encode text that might fit.
    if len(text) > MAX_FILE_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
        raise ProfileError(
            f"the text is larger than {MAX_FILE_BYTES} bytes (64 KiB); is it a profile?"
        )


def _build(d: object, *, allow_secrets: bool) -> tuple[Profile, list[ProfileError]]:
    """Map the document onto Profile fields. Structure problems (not a table, unknown or missing
    keys, oversized lists) are found here; value problems by :func:`_check_profile`."""
    if not isinstance(d, Mapping):
        raise ProfileError(f"a profile must be a table (an object), not {fields.type_name(d)}")
    problems: list[ProfileError] = []
    reported: set[str] = set()

    def problem(field: str | None, message: str) -> None:
        problems.append(ProfileError(message, field=field))
        if field is not None:
            reported.add(field)

    allowed = ("format", *_SECTIONS) if allow_secrets else ("format", *_SECTIONS[:-1])
    for key in d:
        if key not in allowed:
            if key == "secrets":
                problem("secrets", "secrets never travel inside a profile; pass them separately")
            else:
                problem(_shown_key(key), _unknown_message("section", key, allowed))
    _check_format(d, problem)

    kwargs: dict[str, Any] = {"name": "", "addresses": ()}
    for section, keys in _LAYOUT:
        table = d.get(section, {})
        if not isinstance(table, Mapping):
            hint = "; a profile has exactly one [peer]" if section == "peer" else ""
            problem(section, f"must be a table, not {fields.type_name(table)}{hint}")
            reported.update(_FIELD[attr] for _, attr in keys)
            continue
        known = tuple(key for key, _ in keys)
        for key in table:
            if key not in known:
                problem(f"{section}.{_shown_key(key)}", _unknown_message("key", key, known))
        for key, attr in keys:
            field = f"{section}.{key}"
            if key not in table:
                if attr in _REQUIRED:
                    problem(field, f"missing; [{section}] needs {key} = {_EXAMPLE[attr]}")
                continue
            value = table[key]
            if isinstance(value, list | tuple):
                if len(value) > MAX_LIST_LEN:
                    problem(field, f"has {len(value)} entries; at most {MAX_LIST_LEN} are allowed")
                    continue
                value = tuple(value)
            kwargs[attr] = value
    profile = Profile(**kwargs)
    problems += _check_profile(profile, frozenset(reported))
    name = _known_name(profile.name)
    if name is not None:
        problems = [ProfileError(p.reason, field=p.field, profile=name) for p in problems]
    return profile, problems


_EXAMPLE = {"name": '"office"', "addresses": '["10.77.0.2/32"]'}


def _check_format(d: Mapping[Any, object], problem: Callable[[str, str], None]) -> None:
    if "format" not in d:
        problem("format", f"missing; the first line of a profile is `format = {FORMAT_VERSION}`")
        return
    value = d["format"]
    if type(value) is not int:
        problem("format", f"must be the integer {FORMAT_VERSION}, not {fields.type_name(value)}")
    elif value > FORMAT_VERSION:
        problem(
            "format",
            f"format {fields.show_int(value)} is newer than this Tunseal understands "
            f"(format {FORMAT_VERSION}); upgrade Tunseal",
        )
    elif value != FORMAT_VERSION:
        problem("format", f"{fields.show_int(value)} is not a profile format; use {FORMAT_VERSION}")


def _read_secrets(
    table: object, profile: Profile
) -> tuple[ProfileSecrets | None, list[ProfileError]]:
    name = _known_name(profile.name)
    problems: list[ProfileError] = []
    if not isinstance(table, Mapping):
        msg = f"must be a table, not {fields.type_name(table)}"
        return None, [ProfileError(msg, field="secrets", profile=name)]
    for key in table:
        if key not in _SECRET_KEYS:
            msg = _unknown_message("key", key, _SECRET_KEYS)
            problems.append(ProfileError(msg, field=f"secrets.{_shown_key(key)}", profile=name))
    values: dict[str, bytes | None] = {}
    for key in _SECRET_KEYS:
        value = table.get(key)
        if value is None:
            values[key] = None
            continue
        # Never echo a secret, not even a malformed one.
        raw = fields.decode_key(value) if isinstance(value, str) else None
        if raw is None:
            msg = f"must be the base64 encoding of a {KEY_LEN}-byte key"
            problems.append(ProfileError(msg, field=f"secrets.{key}", profile=name))
        values[key] = raw
    secrets = ProfileSecrets(private_key=values["private_key"], psk=values["psk"])
    if not problems:
        problems += _check_secrets(secrets, profile)
    return secrets, problems


def _check_secrets(secrets: object, profile: Profile) -> list[ProfileError]:
    name = _known_name(profile.name)
    if not isinstance(secrets, ProfileSecrets):
        msg = f"expected ProfileSecrets, not {fields.type_name(secrets)}"
        return [ProfileError(msg, field="secrets", profile=name)]
    problems: list[ProfileError] = []
    for key, value, ref in (
        ("private_key", secrets.private_key, profile.private_key_ref),
        ("psk", secrets.psk, profile.psk_ref),
    ):
        field = f"secrets.{key}"
        if value is None:
            continue
        if not isinstance(value, bytes) or len(value) != KEY_LEN:
            msg = f"must be {KEY_LEN} bytes"
            problems.append(ProfileError(msg, field=field, profile=name))
        elif ref == "":
            msg = f"is given but keys.{key} names no keyring item to store it in; set keys.{key}"
            problems.append(ProfileError(msg, field=field, profile=name))
    return problems


# --- checking values --------------------------------------------------------------------------


class _Problems:
    """Collects ProfileErrors, skipping fields whose structure was already reported."""

    def __init__(self, profile: str | None, skip: frozenset[str]) -> None:
        self.items: list[ProfileError] = []
        self.profile = profile
        self.skip = skip

    def add(self, field: str, message: str) -> None:
        self.items.append(ProfileError(message, field=field, profile=self.profile))

    def check(self, attr: str, check: Callable[[object], _T], value: object) -> _T | None:
        field = _FIELD[attr]
        if field in self.skip:
            return None
        try:
            return check(value)
        except fields.Invalid as e:
            self.add(field, str(e))
            return None

    def check_list(
        self,
        attr: str,
        check: Callable[[object], _T],
        value: object,
        identity: Callable[[_T], Hashable],
    ) -> list[_T] | None:
        """Check each entry; returns the entries that passed, or None if the list did not."""
        field = _FIELD[attr]
        if field in self.skip:
            return None
        if isinstance(value, list):
            self.add(field, "must be a tuple, not a list (Profile fields are immutable)")
            return None
        if not isinstance(value, tuple):
            self.add(field, f"must be an array of strings, not {fields.type_name(value)}")
            return None
        if len(value) > MAX_LIST_LEN:
            self.add(field, f"has {len(value)} entries; at most {MAX_LIST_LEN} are allowed")
            return None
        good: list[_T] = []
        seen: dict[Hashable, int] = {}
        for i, item in enumerate(value):
            try:
                parsed = check(item)
            except fields.Invalid as e:
                self.add(f"{field}[{i}]", str(e))
                continue
            key = identity(parsed)
            if key in seen:
                self.add(f"{field}[{i}]", f"{fields.show(item)} is already listed at [{seen[key]}]")
                continue
            seen[key] = i
            good.append(parsed)
        return good


def _check_profile(p: Profile, skip: frozenset[str]) -> list[ProfileError]:
    c = _Problems(_known_name(p.name), skip)
    c.check("name", fields.name, p.name)
    mode = c.check("mode", fields.choice(MODES, "mode"), p.mode)
    c.check("cipher", fields.choice(CIPHERS, "cipher"), p.cipher)
    mtu = c.check("mtu", fields.int_range(MTU_MIN, MTU_MAX), p.mtu)
    c.check("device_id", fields.int_range(0, DEVICE_ID_MAX), p.device_id)
    c.check("persist", fields.boolean, p.persist)
    c.check("autoconnect", _autoconnect, p.autoconnect)
    c.check_list("trusted_networks", _trusted_network, p.trusted_networks, lambda n: n)
    c.check("lockdown", _lockdown, p.lockdown)
    c.check("allow_lan", fields.boolean, p.allow_lan)
    rekey_seconds = fields.int_range(REKEY_SECONDS_MIN, REKEY_SECONDS_MAX)
    c.check("rekey_seconds", rekey_seconds, p.rekey_seconds)
    rekey_messages = fields.int_range(REKEY_MESSAGES_MIN, REKEY_MESSAGES_MAX, "1000-2**60")
    c.check("rekey_messages", rekey_messages, p.rekey_messages)

    addresses = c.check_list("addresses", fields.interface, p.addresses, lambda i: i.ip)
    if addresses is not None and p.addresses == ():
        c.add(_FIELD["addresses"], 'at least one address is required, e.g. ["10.77.0.2/32"]')
    listen_port = c.check("listen_port", fields.int_range(0, PORT_MAX), p.listen_port)
    c.check_list("dns", fields.host_address, p.dns, lambda a: a)
    c.check_list("dns_search", fields.search_domain, p.dns_search, fields.domain_identity)

    endpoint = c.check("endpoint", fields.endpoint, p.endpoint)
    transport = c.check("transport", fields.choice(TRANSPORTS, "transport"), p.transport)
    c.check("public_key", fields.public_key, p.public_key)
    allowed_ips = c.check_list("allowed_ips", fields.network, p.allowed_ips, lambda n: n)
    c.check("keepalive", fields.int_range(0, KEEPALIVE_MAX), p.keepalive)
    c.check("private_key_ref", fields.key_ref, p.private_key_ref)
    psk_ref = c.check("psk_ref", fields.key_ref, p.psk_ref)

    # Rules that tie fields together; each applies only when the fields it reads are valid.
    inner = [*(a.network for a in addresses or ()), *(allowed_ips or ())]
    if mtu is not None and mtu < MTU_MIN_IPV6 and any(n.version == 6 for n in inner):
        c.add(
            _FIELD["mtu"],
            f"{mtu} is too small for IPv6, which this tunnel carries; use {MTU_MIN_IPV6}-{MTU_MAX}",
        )
    # In ephemeral mode the two keys may be missing from a saved profile: setting up a tunnel
    # means generating this end's key, sending its public half to the peer and receiving
    # theirs, in that order, so the profile must exist before either key does. Connecting
    # without them is refused with what to run (helper/tunnel.py).
    if mode is not None and Mode(mode).needs_psk and psk_ref == "":
        c.add(
            _FIELD["psk_ref"],
            f"is required in {mode} mode: the keyring item holding the pre-shared key",
        )
    if transport == TransportKind.UDP and endpoint == ("", 0) and listen_port == 0:
        c.add(
            _FIELD["listen_port"],
            f"a listening end (no peer.endpoint) needs a fixed port; set 1-{PORT_MAX}, "
            f"e.g. {DEFAULT_PORT}",
        )
    return c.items


LOCKDOWNS = ("off", "connected", "always")
AUTOCONNECTS = ("never", "login", "untrusted")


def _autoconnect(value: object) -> str:
    s = fields.string(value)
    if s not in AUTOCONNECTS:
        raise fields.Invalid(f"{fields.show(s)} is not an autoconnect setting; choose one of "
                       f"{', '.join(AUTOCONNECTS)}")
    return s


def _trusted_network(value: object) -> TrustedNetwork:
    try:
        return parse_entry(fields.string(value))
    except ValueError as e:
        raise fields.Invalid(str(e)) from None


def _lockdown(value: object) -> str:
    s = fields.string(value)
    if s and s not in LOCKDOWNS:
        raise fields.Invalid(
            f"{fields.show(s)} is not a lockdown; choose one of {', '.join(LOCKDOWNS)}"
        )
    return s


def _split_endpoint(p: Profile) -> tuple[str, int]:
    try:
        return fields.endpoint(p.endpoint)
    except fields.Invalid as e:
        raise ProfileError(str(e), field=_FIELD["endpoint"], profile=_known_name(p.name)) from None


# --- small helpers ----------------------------------------------------------------------------


def _is_written(p: Profile, attr: str, value: object) -> bool:
    if attr in _ALWAYS_WRITTEN:
        return True
    if attr in ("rekey_seconds", "rekey_messages") and p.mode == Mode.ROTATING:
        return True
    return bool(value != _DEFAULTS[attr])


def _known_name(name: object) -> str | None:
    """The profile name for error messages, if it is a valid one."""
    if isinstance(name, str) and len(name) <= NAME_MAX and fields.NAME_PATTERN.fullmatch(name):
        return name
    return None


def _in_field_order(problems: list[ProfileError]) -> list[ProfileError]:
    def rank(p: ProfileError) -> tuple[int, int, int]:
        if p.field is None:
            return (-1, 0, 0)
        if p.field == "format":
            return (0, 0, 0)
        section, _, rest = p.field.partition(".")
        if section not in _SECTION_KEYS:
            return (len(_SECTIONS) + 1, 0, 0)
        keys = _SECTION_KEYS[section]
        number = _SECTIONS.index(section) + 1
        if not rest:
            return (number, -1, 0)
        match = re.fullmatch(r"([a-z_]+)(?:\[([0-9]+)\])?", rest)
        if match is None or match[1] not in keys:
            return (number, len(keys), 0)
        return (number, keys.index(match[1]), int(match[2]) if match[2] else -1)

    return sorted(problems, key=rank)


def _unknown_message(kind: str, key: object, known: tuple[str, ...]) -> str:
    message = f"unknown {kind}"
    if isinstance(key, str) and len(key) <= 64:
        close = difflib.get_close_matches(key, known, n=1)
        if close:
            return f"{message}; did you mean {close[0]!r}?"
    return f"{message}; expected one of {', '.join(known)}"


def _shown_key(key: object) -> str:
    if isinstance(key, str) and _BARE_KEY_RE.fullmatch(key):
        return key
    return fields.show(key)
