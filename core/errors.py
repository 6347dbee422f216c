"""The Tunseal error hierarchy.

Every error a user or a script can meet derives from :class:`TunsealError` and carries a message
that says what is wrong and, where possible, what to do about it.
"""

from __future__ import annotations


class TunsealError(Exception):
    """Root of every error Tunseal raises on purpose."""


class WireError(TunsealError):
    """A packet does not parse: malformed, truncated, wrong version, unknown critical option."""


class CryptoError(TunsealError):
    """A packet or handshake failed authentication (wrong key, tampered, wrong cipher)."""


class ReplayError(TunsealError):
    """A packet's counter was already seen or is too old for the anti-replay window."""


class HandshakeError(TunsealError):
    """A handshake message was refused (bad MAC, stale timestamp, unknown peer, wrong state)."""


class ProfileError(TunsealError):
    """A profile is invalid. ``field`` names the offending field when there is one."""

    def __init__(self, message: str, *, field: str | None = None, profile: str | None = None):
        self.field = field
        self.profile = profile
        prefix = ""
        if profile:
            prefix += f"profile {profile!r}: "
        if field:
            prefix += f"{field}: "
        super().__init__(prefix + message)
        self.reason = message


class ProfileInvalid(ProfileError):
    """A profile has one or more invalid fields; ``problems`` lists each, in field order."""

    def __init__(self, problems: list[ProfileError], *, profile: str | None = None):
        self.problems = problems
        first = problems[0] if problems else ProfileError("invalid profile")
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        super().__init__(first.reason + more, field=first.field, profile=profile)


class IPCError(TunsealError):
    """A control-socket message is malformed, oversize, unknown, or the reply says an error."""

    def __init__(self, message: str, *, code: str = "error"):
        super().__init__(message)
        self.code = code


class HelperUnavailable(IPCError):
    """The helper is not running, or this user may not talk to it."""
