"""Field checkers: the one definition of every value a profile, a gateway configuration or a
control request may carry (names, keyring references, keys, addresses, prefixes, ports,
endpoints, DNS domains).

Each checker takes the raw value and returns it parsed, or raises :class:`Invalid` whose message
says what is wrong in words a user can act on; the caller adds the field's name.
:mod:`core.profile`, :mod:`core.gateway`, :mod:`core.ipc` and ``helper/profilestore.py`` all
check with these, so a value one accepts the others accept too.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import TypeGuard

from core.constants import DEFAULT_PORT, KEY_LEN

MAX_STR_LEN = 256
"""The longest string any field holds, so that hostile input cannot make us allocate much."""
NAME_MAX = 32
REF_MAX = 128
PORT_MAX = 0xFFFF

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
"""A tunnel, gateway or peer name (``tunnel.name`` in docs/PROFILE.md). It can never name a
path: the helper's profile store and the control socket rely on that."""
REF_PATTERN = re.compile(r"[A-Za-z0-9._/:-]{1,128}")
"""A keyring item name. ':' is allowed for the helper's own names (``profile:office:psk``,
helper/keyrefs.py), which a gateway configuration cannot spell (:func:`key_ref` with
``colon=False``)."""
IFNAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,15}")
"""A Linux network interface name as we accept one: IFNAMSIZ is 16 bytes with the NUL."""
_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_IP_RE = re.compile(r"[0-9A-Fa-f:.]{2,45}")
_PREFIX_RE = re.compile(r"0|[1-9][0-9]{0,2}")

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Invalid(ValueError):
    """A value is wrong; the message says why. Callers turn it into their own error type with
    the field's name (:class:`~core.errors.ProfileError`, :class:`~core.errors.IPCError`)."""


def is_name(value: object) -> TypeGuard[str]:
    """Whether ``value`` is a valid name (:data:`NAME_PATTERN`)."""
    return isinstance(value, str) and NAME_PATTERN.fullmatch(value) is not None


def is_ifname(value: object) -> TypeGuard[str]:
    """Whether ``value`` is an interface name: :data:`IFNAME_PATTERN`, and not ``.`` or ``..``
    (which the kernel refuses)."""
    return (isinstance(value, str) and IFNAME_PATTERN.fullmatch(value) is not None
            and value not in (".", ".."))


def is_public_key_text(value: object) -> bool:
    """Whether ``value`` is the canonical base64 of a 32-byte key (:func:`decode_key`)."""
    return isinstance(value, str) and decode_key(value) is not None


def string(value: object, max_len: int = MAX_STR_LEN) -> str:
    if not isinstance(value, str):
        raise Invalid(f"must be a string, not {type_name(value)}")
    if len(value) > max_len:
        raise Invalid(f"is {len(value)} characters long; at most {max_len} are allowed")
    return value


def name(value: object) -> str:
    s = string(value, NAME_MAX)
    if not NAME_PATTERN.fullmatch(s):
        raise Invalid(
            f"{show(s)} is not a valid name; use 1-{NAME_MAX} letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return s


def choice(choices: tuple[str, ...], what: str) -> Callable[[object], str]:
    def check(value: object) -> str:
        s = string(value)
        if s not in choices:
            raise Invalid(f"{show(s)} is not a {what}; choose one of {', '.join(choices)}")
        return s

    return check


def int_range(lo: int, hi: int, shown: str | None = None) -> Callable[[object], int]:
    def check(value: object) -> int:
        if type(value) is not int:
            raise Invalid(f"must be an integer, not {type_name(value)}")
        if not lo <= value <= hi:
            raise Invalid(f"{show_int(value)} is out of range ({shown or f'{lo}-{hi}'})")
        return value

    return check


def boolean(value: object) -> bool:
    if type(value) is not bool:
        raise Invalid(f"must be true or false, not {type_name(value)}")
    return value


def ip_address(text: str) -> _IPAddress:
    """An IPv4 or IPv6 address literal, without zone index."""
    if _IP_RE.fullmatch(text):
        try:
            return ipaddress.ip_address(text)
        except ValueError:
            pass
    raise Invalid(f"{show(text)} is not an IPv4 or IPv6 address")


def prefixed(value: object, example: str) -> tuple[_IPAddress, int | None]:
    text = string(value)
    address, slash, prefix = text.partition("/")
    if "%" in address:
        raise Invalid(f"{show(text)}: zone indexes (%...) are not supported")
    ip = ip_address(address)
    if not slash:
        return ip, None
    if not _PREFIX_RE.fullmatch(prefix):
        raise Invalid(f"{show(text)}: the prefix length must be a number, e.g. {example}")
    length = int(prefix)
    if length > ip.max_prefixlen:
        raise Invalid(
            f"{show(text)}: /{length} is too long for IPv{ip.version} "
            f"(at most /{ip.max_prefixlen})"
        )
    return ip, length


def interface(value: object) -> _IPInterface:
    ip, length = prefixed(value, "10.77.0.2/24")
    if ip.is_unspecified or ip.is_multicast:
        raise Invalid(f"{ip} cannot be an interface address (it is unspecified or multicast)")
    return ipaddress.ip_interface(f"{ip}/{ip.max_prefixlen if length is None else length}")


def network(value: object) -> _IPNetwork:
    ip, length = prefixed(value, "10.77.0.0/24")
    text = f"{ip}/{ip.max_prefixlen if length is None else length}"
    network = ipaddress.ip_network(text, strict=False)
    if network.network_address != ip:
        raise Invalid(f"{show(value)} has host bits set; did you mean {network}?")
    return network


def host_address(value: object) -> _IPAddress:
    text = string(value)
    if "%" in text:
        raise Invalid(f"{show(text)}: zone indexes (%...) are not supported")
    ip = ip_address(text)
    if ip.is_unspecified or ip.is_multicast:
        raise Invalid(f"{ip} is not a usable server address (unspecified or multicast)")
    return ip


def search_domain(value: object) -> str:
    """A search domain, or a routing-only one for systemd-resolved: ``~corp.example`` sends
    names under it to the tunnel's servers without searching it, ``~.`` sends every name."""
    text = string(value)
    if text == "~.":
        return text
    if text.startswith("~"):
        try:
            return "~" + domain(text[1:])
        except Invalid:
            raise Invalid(
                f"{show(text)} is not a routing domain; use '~' and a domain name "
                "(~corp.example), or '~.' for every name"
            ) from None
    return domain(text)


def domain_identity(domain: str) -> str:
    """``corp.example`` and ``~corp.example`` name the same domain: one of them is enough."""
    return domain.removeprefix("~").lower()


def domain(value: object) -> str:
    text = string(value)
    labels = text.split(".")
    if len(text) > 253 or not all(_LABEL_RE.fullmatch(label) for label in labels):
        raise Invalid(
            f"{show(text)} is not a domain name; use dot-separated labels of letters, digits "
            "and '-' (at most 63 characters each, no leading or trailing '-' or '.')"
        )
    return text


def endpoint(value: object) -> tuple[str, int]:
    return endpoint_parts(string(value))


def endpoint_parts(text: str) -> tuple[str, int]:
    """Split ``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` into (host, port). ``("", 0)``
    for the empty endpoint. Raises Invalid (ProfileError when called from a property)."""
    if text == "":
        return "", 0
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise Invalid(f"{show(text)}: '[' without ']'; write IPv6 as [2001:db8::1]:51900")
        host, rest = text[1:close], text[close + 1 :]
        if "%" in host:
            raise Invalid(f"{show(text)}: zone indexes (%...) are not supported")
        if ip_address(host).version != 6:
            raise Invalid(f"{show(text)}: brackets are only for IPv6 addresses")
        if rest and not rest.startswith(":"):
            raise Invalid(f"{show(text)}: expected ':port' after ']'")
        port_text: str | None = rest[1:] if rest else None
    else:
        if text.count(":") > 1:
            raise Invalid(
                f"{show(text)}: an IPv6 endpoint needs brackets, e.g. [2001:db8::1]:{DEFAULT_PORT}"
            )
        host, colon, after = text.partition(":")
        port_text = after if colon else None
        endpoint_host(host)
    return host, DEFAULT_PORT if port_text is None else port(port_text)


def endpoint_host(host: str) -> None:
    labels = host.split(".")
    if labels[-1].isdigit():  # an all-numeric last label: meant as an IPv4 address
        try:
            ip = ipaddress.IPv4Address(host)
        except ValueError:
            raise Invalid(f"{show(host)} is not a valid IPv4 address") from None
        if ip.is_unspecified or ip.is_multicast:
            raise Invalid(f"{ip} cannot be an endpoint (unspecified or multicast)")
    elif len(host) > 253 or not all(_LABEL_RE.fullmatch(label) for label in labels):
        raise Invalid(
            f"{show(host)} is not a valid host name; use an IP address or dot-separated labels "
            "of letters, digits and '-'"
        )


def port(text: str) -> int:
    """A port number written as text (1-65535)."""
    if not (text.isascii() and text.isdigit()):
        raise Invalid(f"port {show(text)} is not a number (1-{PORT_MAX})")
    if len(text) > 5 or not 1 <= int(text) <= PORT_MAX:
        raise Invalid(f"port {text[:12]} is out of range (1-{PORT_MAX})")
    return int(text)


def decode_key(text: str) -> bytes | None:
    """The 32 bytes of a canonical (padded, standard-alphabet) base64 key, else None."""
    if len(text) != 44:
        return None
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) != KEY_LEN or base64.b64encode(raw).decode("ascii") != text:
        return None
    return raw


_P25519 = 2**255 - 19
_LOW_ORDER_U = frozenset({
    0,
    1,
    _P25519 - 1,
    325606250916557431795983626356110631294008115727848805560023387167927233504,
    39382357235489614581723060781553021112529911719440698176882885853963445705823,
})
"""u-coordinates of the Curve25519 points of order 1, 2, 4 and 8 (the list libsodium refuses).
X25519 with any of them yields the all-zero shared secret, whatever the private key."""


def is_low_order(key: bytes) -> bool:
    """Whether a 32-byte X25519 public key is a low-order point, in any of its encodings (the
    top bit is ignored and u is taken mod p, as RFC 7748 section 5 says a receiver does)."""
    u = int.from_bytes(key, "little") & ((1 << 255) - 1)
    return u % _P25519 in _LOW_ORDER_U


def public_key(value: object) -> str:
    text = string(value)
    if not text:
        return text
    raw = decode_key(text)
    if raw is None:
        raise Invalid(
            f"{show(text)} is not a public key; expected 44 characters of base64 "
            f"encoding {KEY_LEN} bytes"
        )
    if is_low_order(raw):
        raise Invalid(
            f"{show(text)} is not a usable public key: it is a low-order point, with which "
            "every key exchange gives the same all-zero secret; ask the peer for its real key "
            "('tunseal pubkey' on its side)"
        )
    return text


def ifname(value: object) -> str:
    text = string(value)
    if not is_ifname(text):
        raise Invalid(f"{show(text)} is not an interface name")
    return text


def key_ref(value: object, *, colon: bool = True) -> str:
    """A keyring item name, or "" for none. ``colon=False`` refuses ':', which only the
    helper's own names use (see :data:`REF_PATTERN`)."""
    text = string(value, REF_MAX)
    if text and (not REF_PATTERN.fullmatch(text) or (not colon and ":" in text)):
        allowed = "'.', '_', '/', ':' or '-'" if colon else "'.', '_', '/' or '-'"
        raise Invalid(
            f"{show(text)} is not a keyring item name; use letters, digits, {allowed} "
            f"(at most {REF_MAX})"
        )
    return text


def show(value: object) -> str:
    """A short repr of a user value for an error message."""
    if isinstance(value, str):
        return repr(value) if len(value) <= 60 else repr(value[:57]) + "..."
    if type(value) is int:
        return show_int(value)
    return type_name(value)


def show_int(value: int) -> str:
    return str(value) if -(10**30) < value < 10**30 else "a number with more than 30 digits"


def type_name(value: object) -> str:
    if value is None:
        return "null"
    kinds: tuple[tuple[type, str], ...] = (
        (bool, "a boolean"),
        (int, "an integer"),
        (float, "a float"),
        (str, "a string"),
        (list, "an array"),
        (tuple, "an array"),
        (Mapping, "a table"),
        (datetime.datetime, "a date-time"),
        (datetime.date, "a date"),
        (datetime.time, "a time"),
    )
    for kind, name in kinds:
        if isinstance(value, kind):
            return name
    return f"a {type(value).__name__}"
