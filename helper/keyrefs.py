"""The keyring names of a profile's keys: chosen by the helper, never by whoever sends a profile.

A profile's ``keys.private_key`` and ``keys.psk`` used to be whatever the caller wrote, in the
same keyring namespace as the gateway's own keys (``<gw>.private``, ``<gw>.<peer>.psk``): a
profile naming the gateway's item could export, overwrite or delete it. Now a non-empty ref only
says "this profile has such a key", and the helper stores it under :func:`profile_ref`, a name
with ':' in it, which a gateway configuration cannot spell (core/gateway.py allows
``A-Z a-z 0-9 . _ / -``), and which depends on nothing but the profile's name.
"""

from __future__ import annotations

from typing import Final, Literal

from core.profile import Profile

__all__ = ["JOIN_PREFIX", "KINDS", "PREFIX", "is_profile_ref", "join_ref", "normalised",
           "profile_ref"]

Kind = Literal["private", "psk"]
KINDS: Final[tuple[Kind, ...]] = ("private", "psk")
PREFIX: Final = "profile:"
JOIN_PREFIX: Final = "join:"


def profile_ref(name: str, kind: Kind) -> str:
    """``profile:<name>:private`` or ``profile:<name>:psk``."""
    return f"{PREFIX}{name}:{kind}"


def join_ref(invitation_id: str) -> str:
    """``join:<invitation id>:private``: the key a join in progress made, kept until its profile
    is stored, so that a join whose profile could not be saved can be run again with the key
    the gateway registered (it burnt the invitation for that key alone)."""
    return f"{JOIN_PREFIX}{invitation_id}:private"


def is_profile_ref(ref: str) -> bool:
    """Whether ``ref`` lies in the profiles' namespace (a gateway ref never does)."""
    return ref.startswith(PREFIX)


def normalised(profile: Profile) -> Profile:
    """``profile`` with each non-empty key ref replaced by the helper's own name for it."""
    private = profile_ref(profile.name, "private") if profile.private_key_ref else ""
    psk = profile_ref(profile.name, "psk") if profile.psk_ref else ""
    if (private, psk) == (profile.private_key_ref, profile.psk_ref):
        return profile
    return profile.replace(private_key_ref=private, psk_ref=psk)
